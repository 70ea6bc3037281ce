#!/usr/bin/env bash
# tools/bench/fanout.sh: broadcast fan-out, Lifeline beside Redis pub/sub,
# Mosquitto (MQTT QoS 0) and the bare C fan-out floor, measured the way
# BENCHMARKS.md describes: each server pinned to CPU 0 (taskset -c 0) and a
# fresh process per run, lifeline-load pinned to CPU 1, server CPU from
# /proc/PID/stat over the window (--server-pid), servers interleaved within
# each round (floor, lifeline, redis, mosquitto, floor, ...), medians of the
# rounds. `lifeline-load --mode fanout` keeps one broadcast in flight: the
# next goes when the last subscriber has the previous one, or at the rate,
# whichever is later.
#
# Cases:
#   fanout     SUBS subscribers x RATES broadcasts/s asked, every kind:
#              time to the first and last subscriber (p50/p99/max), broadcasts
#              sustained per second, server CPU per delivered message
#   bystander  BYSTANDER_SUBS subscribers at 1 broadcast/s, plus BYSTANDERS
#              connections pinging every 50 ms without subscribing (Lifeline:
#              without logging in): their pong p99/max while a broadcast is
#              in flight (not the floor: it answers no pings)
#
# Environment:
#   OUT=DIR              results (default /tmp/lifeline-fanout-DATE)
#   ROUNDS=3             interleaved rounds
#   SUBS="1000 19000"    subscriber counts;  RATES="1 10"  broadcasts/s asked
#   KINDS="floor lifeline redis mosquitto"
#   CASES="fanout bystander"
#   BYSTANDERS=20  BYSTANDER_SUBS=19000
#   WARMUP=8 DURATION=28 seconds (the window starts at the first broadcast,
#                        once every subscriber is subscribed, after WARMUP)
#   LIFELINE=target/release/lifeline  LOAD=target/release/lifeline-load
#   FLOOR=$OUT/fanout-floor (built from tools/bench/peers/fanout-floor.c with gcc if missing)
#   REDIS=redis-server  MOSQUITTO=mosquitto (a binary on PATH or /usr/sbin)
#
# Output: $OUT/results.txt (tags, then the RESULT line of lifeline-load, one
# line per run), $OUT/summary.md (medians per case and kind), $OUT/logs/.
# Bounded: every load run is under `timeout`, and only the PIDs this script
# started are signalled.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${OUT:-/tmp/lifeline-fanout-$(date +%Y%m%d-%H%M%S)}
ROUNDS=${ROUNDS:-3}
SUBS=${SUBS:-"1000 19000"}
RATES=${RATES:-"1 10"}
KINDS=${KINDS:-"floor lifeline redis mosquitto"}
CASES=${CASES:-"fanout bystander"}
BYSTANDERS=${BYSTANDERS:-20}
BYSTANDER_SUBS=${BYSTANDER_SUBS:-19000}
WARMUP=${WARMUP:-8}
DURATION=${DURATION:-28}
LIFELINE=${LIFELINE:-$REPO/target/release/lifeline}
LOAD=${LOAD:-$REPO/target/release/lifeline-load}
FLOOR=${FLOOR:-$OUT/fanout-floor}
REDIS=${REDIS:-redis-server}
MOSQUITTO=${MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}
RESULTS=$OUT/results.txt
LOGS=$OUT/logs
mkdir -p "$LOGS"

declare -A PORT=([floor]=26500 [lifeline]=26520 [redis]=26530 [mosquitto]=26540)
SPID=""

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$OUT/campaign.log" >&2; }

stop_server() {
    [[ -n $SPID ]] || return 0
    kill "$SPID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SPID" 2>/dev/null
    wait "$SPID" 2>/dev/null
    SPID=""
}
trap stop_server EXIT
trap 'log "interrupted"; exit 130' INT TERM

listening() { # port: wait until something accepts on it
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# start KIND: a fresh server on CPU 0; sets SPID and LOAD_ARGS.
start() {
    local kind=$1 port=${PORT[$1]} errlog=$LOGS/$1.$RUN.log
    case $kind in
    floor)
        taskset -c 0 "$FLOOR" "$port" $((port + 1)) >"$errlog" 2>&1 &
        LOAD_ARGS=(--proto fanout-floor --trigger 127.0.0.1:$((port + 1)))
        ;;
    lifeline)
        # Subscribers send nothing: an interval longer than the run means no probes.
        LIFELINE_LISTEN=127.0.0.1:$port LIFELINE_ADMIN_ADDR=127.0.0.1:$((port + 1)) \
            LIFELINE_HEARTBEAT_MS=60000 LIFELINE_LOG=warn taskset -c 0 "$LIFELINE" >"$errlog" 2>&1 &
        LOAD_ARGS=(--proto lifeline --admin http://127.0.0.1:$((port + 1)))
        ;;
    redis)
        taskset -c 0 "$REDIS" --port "$port" --bind 127.0.0.1 --protected-mode no --save '' \
            --appendonly no --maxclients 19900 --daemonize no >"$errlog" 2>&1 &
        LOAD_ARGS=(--proto redis)
        ;;
    mosquitto)
        taskset -c 0 "$MOSQUITTO" -c "$REPO/tools/bench/mosquitto-fanout.conf" -p "$port" >"$errlog" 2>&1 &
        LOAD_ARGS=(--proto mqtt)
        ;;
    esac
    SPID=$!
    listening "$port" || { log "$kind did not start: $(tail -3 "$errlog")"; stop_server; return 1; }
    LOAD_ARGS+=(--target "127.0.0.1:$port")
}

# run TAGS KIND EXTRA...: one measured run, its RESULT line appended with tags.
run() {
    local tags=$1 kind=$2
    shift 2
    RUN=$((RUN + 1))
    start "$kind" || return
    local load_log=$LOGS/load.$RUN.$kind.err result
    result=$(timeout $((DURATION + 60)) taskset -c 1 "$LOAD" --mode fanout "${LOAD_ARGS[@]}" \
        --source-ips 4 --ramp 5000 --warmup "$WARMUP" --duration "$DURATION" \
        --server-pid "$SPID" "$@" 2>"$load_log" | grep '^RESULT')
    stop_server
    if [[ -z $result ]]; then
        log "run $RUN $tags kind=$kind: no result, see $load_log"
        return
    fi
    echo "$tags kind=$kind load=$(cut -d' ' -f1 /proc/loadavg) $result" >>"$RESULTS"
    log "run $RUN $tags kind=$kind: $(grep -o 'broadcasts_per_s=[^ ]*\|last_p99_us=[^ ]*\|server_cpu_us_per_delivery=[^ ]*\|bystander_rtt_p99_us=[^ ]*' <<<"$result" | paste -sd' ')"
}

# ---------------------------------------------------------------- setup

for tool in taskset gcc; do command -v "$tool" >/dev/null || { log "$tool is missing"; exit 1; }; done
for bin in "$LIFELINE" "$LOAD"; do
    [[ -x $bin ]] || { log "$bin is missing: cargo build --release -p lifeline -p lifeline-load"; exit 1; }
done
if [[ ! -x $FLOOR ]]; then
    gcc -O2 -o "$FLOOR" "$REPO/tools/bench/peers/fanout-floor.c" || exit 1
fi
{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) x $(nproc)"
    echo "kernel: $(uname -r)"
    echo "redis: $("$REDIS" --version 2>/dev/null)"
    echo "mosquitto: $("$MOSQUITTO" -h 2>/dev/null | head -1)"
    echo "open files: $(ulimit -n)"
} >"$OUT/machine.txt"
RUN=0

# ---------------------------------------------------------------- cases

for round in $(seq "$ROUNDS"); do
    if [[ " $CASES " == *" fanout "* ]]; then
        for subs in $SUBS; do
            for rate in $RATES; do
                for kind in $KINDS; do
                    run "case=fanout subs=$subs rate=$rate round=$round" "$kind" \
                        --conns "$subs" --broadcast-rate "$rate"
                done
            done
        done
    fi
    if [[ " $CASES " == *" bystander "* ]]; then
        for kind in $KINDS; do
            [[ $kind == floor ]] && continue
            run "case=bystander subs=$BYSTANDER_SUBS rate=1 round=$round" "$kind" \
                --conns "$BYSTANDER_SUBS" --broadcast-rate 1 \
                --bystanders "$BYSTANDERS" --bystander-interval-ms 50
        done
    fi
done

# ---------------------------------------------------------------- summary

# Medians over the rounds, per case, subscribers, rate and kind.
awk '
function val(key,   i) { for (i = 1; i <= NF; i++) if (index($i, key "=") == 1) return substr($i, length(key) + 2); return "" }
function median(list,   n, a, i, j, t) {
    n = split(list, a, " "); if (n == 0 || list == "") return "-"
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{
    k = val("case") " | " val("subs") " | " val("rate") " | " val("kind")
    if (!(k in seen)) { seen[k] = 1; order[++n] = k }
    rounds[k]++
    split("first_p50_us last_p50_us last_p99_us last_max_us broadcasts_per_s server_cpu_us_per_delivery server_user_us_per_delivery deliveries_missing bystander_rtt_p99_us bystander_rtt_max_us", f, " ")
    for (i in f) { v = val(f[i]); if (v != "" && v != "na") vals[k, f[i]] = vals[k, f[i]] " " v }
}
END {
    print "| case | subscribers | rate asked | server | rounds | first p50 ms | last p50 ms | last p99 ms | last max ms | broadcasts/s | CPU us/delivery (user) | missing | bystander p99 / max ms |"
    print "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    for (i = 1; i <= n; i++) {
        k = order[i]
        ms = "first_p50_us last_p50_us last_p99_us last_max_us"
        split(ms, m, " ")
        line = "| " k " | " rounds[k]
        for (j = 1; j <= 4; j++) { x = median(vals[k, m[j]]); line = line " | " (x == "-" ? "-" : sprintf("%.1f", x / 1000)) }
        line = line " | " median(vals[k, "broadcasts_per_s"])
        line = line " | " median(vals[k, "server_cpu_us_per_delivery"]) " (" median(vals[k, "server_user_us_per_delivery"]) ")"
        line = line " | " median(vals[k, "deliveries_missing"])
        b99 = median(vals[k, "bystander_rtt_p99_us"]); bmax = median(vals[k, "bystander_rtt_max_us"])
        line = line " | " (b99 == "-" ? "-" : sprintf("%.1f / %.1f", b99 / 1000, bmax / 1000)) " |"
        print line
    }
}' "$RESULTS" >"$OUT/summary.md"
log "done: $RESULTS, $OUT/summary.md"
cat "$OUT/summary.md"
