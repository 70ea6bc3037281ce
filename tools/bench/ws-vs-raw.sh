#!/usr/bin/env bash
# tools/bench/ws-vs-raw.sh: what the WebSocket transport costs beside raw TCP.
#
#   cpu  10,000 connections x 1 ping/s (server heartbeat 5000 ms, so no probe
#        crosses a ping), raw and WebSocket interleaved (tcp, ws, tcp, ws, ...),
#        a fresh server per window pinned to CPU 0, lifeline-load on CPU 1:
#        server CPU (and user CPU) per heartbeat over a 12 s window, and the
#        ws/tcp ratio of each pair
#   rss  19,000 idle logged-in connections on a fresh server, per transport:
#        (VmRSS with them - VmRSS of the fresh process) / 19,000, and RssAnon
#
# Environment: OUT=DIR (default /tmp/lifeline-ws-DATE), ROUNDS=3 (cpu pairs),
# RSS_ROUNDS=2, CASES="cpu rss", CPU_CONNS=10000, RSS_CONNS=19000,
# LIFELINE=target/release/lifeline, LOAD=target/release/lifeline-load.
# Output: $OUT/results.txt (tags + RESULT line per run), $OUT/summary.md.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${OUT:-/tmp/lifeline-ws-$(date +%Y%m%d-%H%M%S)}
ROUNDS=${ROUNDS:-3}
RSS_ROUNDS=${RSS_ROUNDS:-2}
CASES=${CASES:-"cpu rss"}
CPU_CONNS=${CPU_CONNS:-10000}
RSS_CONNS=${RSS_CONNS:-19000}
LIFELINE=${LIFELINE:-$REPO/target/release/lifeline}
LOAD=${LOAD:-$REPO/target/release/lifeline-load}
PORT=26620
RESULTS=$OUT/results.txt
mkdir -p "$OUT/logs"
SPID=""

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$OUT/campaign.log" >&2; }
stop_server() {
    [[ -n $SPID ]] || return 0
    kill "$SPID" 2>/dev/null
    wait "$SPID" 2>/dev/null
    SPID=""
}
trap stop_server EXIT
trap 'log "interrupted"; exit 130' INT TERM
field() { grep -o " $1=[^ ]*" <<<"$2" | head -1 | cut -d= -f2; }

# start HEARTBEAT_MS: a fresh server on CPU 0; sets SPID and RSS0 (its VmRSS and RssAnon).
start() {
    LIFELINE_LISTEN=127.0.0.1:$PORT LIFELINE_ADMIN_ADDR= LIFELINE_HEARTBEAT_MS=$1 LIFELINE_LOG=warn \
        taskset -c 0 "$LIFELINE" >"$OUT/logs/server.$RUN.log" 2>&1 &
    SPID=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
    sleep 0.5
    RSS0=$(awk '/^VmRSS:/{r=$2} /^RssAnon:/{a=$2} END{print r + 0, a + 0}' "/proc/$SPID/status")
}

run() { # TAGS LOAD-ARGS...
    local tags=$1 result
    shift
    RUN=$((RUN + 1))
    result=$(timeout 120 taskset -c 1 "$LOAD" --target 127.0.0.1:$PORT --server-pid "$SPID" "$@" \
        2>"$OUT/logs/load.$RUN.err" | grep '^RESULT')
    stop_server
    echo "$tags rss_before_kb=${RSS0% *} rss_anon_before_kb=${RSS0#* } $result" >>"$RESULTS"
    log "run $RUN $tags: $(grep -o 'server_cpu_us_per_rt=[^ ]*\|server_user_us_per_rt=[^ ]*\|server_rss_kb=[^ ]*\|logins=[^ ]*' <<<"$result" | paste -sd' ')"
}

RUN=0
for round in $(seq "$ROUNDS"); do
    [[ " $CASES " == *" cpu "* ]] || break
    for transport in tcp ws; do
        start 5000
        run "case=cpu transport=$transport round=$round" --transport "$transport" \
            --conns "$CPU_CONNS" --interval-ms 1000 --ramp 5000 --source-ips 4 --warmup 8 --duration 20
    done
done
for round in $(seq "$RSS_ROUNDS"); do
    [[ " $CASES " == *" rss "* ]] || break
    for transport in tcp ws; do
        start 60000
        run "case=rss transport=$transport round=$round" --transport "$transport" \
            --conns "$RSS_CONNS" --workers 2 --source-ips 4 --ramp 5000 --interval-ms 30000 --warmup 9 --duration 14
    done
done

{
    echo "| case | round | transport | server us/heartbeat (user) | ws/tcp | RSS per connection (VmRSS / RssAnon) |"
    echo "|---|---|---|---|---|---|"
    awk '
    function val(key,   i) { for (i = 1; i <= NF; i++) if (index($i, key "=") == 1) return substr($i, length(key) + 2); return "" }
    {
        c = val("case"); t = val("transport"); r = val("round")
        if (c == "cpu") {
            cpu = val("server_cpu_us_per_rt"); ratio = ""
            if (t == "tcp") tcp[r] = cpu; else if (tcp[r] > 0) ratio = sprintf("%.3f", cpu / tcp[r])
            printf "| cpu | %s | %s | %s (%s) | %s | |\n", r, t, cpu, val("server_user_us_per_rt"), ratio
        } else {
            n = val("logins")
            printf "| rss | %s | %s | | | %.0f B / %.0f B (%s logged in) |\n", r, t,
                (val("server_rss_kb") - val("rss_before_kb")) * 1024 / n,
                (val("server_rss_anon_kb") - val("rss_anon_before_kb")) * 1024 / n, n
        }
    }' "$RESULTS"
} >"$OUT/summary.md"
log "done: $RESULTS, $OUT/summary.md"
cat "$OUT/summary.md"
