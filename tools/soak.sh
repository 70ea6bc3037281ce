#!/usr/bin/env bash
# tools/soak.sh: a bounded soak of the real server under mixed load (not for CI).
#
# Builds the release binaries, starts `lifeline` (admin API on, 1000 ms x 3
# heartbeat) and runs three lifeline-load processes against it at the same
# time for SOAK_SECONDS:
#
#   steady   SOAK_STEADY_CONNS connections pinging every interval, all along
#   churn    SOAK_CHURN_CONNS connections leaving and reconnecting at
#            SOAK_CHURN_RATE per second (half <bye/>, half RST), all along
#   silent   back-to-back runs of SOAK_SILENT_CONNS connections, half of which
#            go silent and must be timed out (SOAK_SILENT_RUN seconds each)
#
# It samples the server's RSS, open connections and online count every
# SOAK_SAMPLE seconds, then stops the load, waits for the server to settle and
# checks:
#
#   1. online count (lifeline_clients_online from GET /metrics) back to its
#      baseline from before the load
#   2. RSS at the end of the load and after it within 10 % above its level
#      after SOAK_WARMUP seconds (the "post-warm-up" level)
#   3. zero wrong timeouts: the sum of wrong_timeouts= over every RESULT line,
#      and every load run produced a RESULT line
#   4. zero panics in the server log, and the server still running at the end
#      (then it is stopped with SIGTERM; its exit code is reported)
#
# Exit status: 0 when every check passed, 1 when one failed, 2 on a setup
# error. Bounded: every load run is wrapped in `timeout`, the server and the
# load processes this script started are stopped by PID on exit, whatever
# happens.
#
# Environment (defaults in brackets):
#   SOAK_SECONDS [600]        length of the load
#   SOAK_WARMUP [60]          RSS baseline taken at the first sample after this
#   SOAK_SAMPLE [10]          seconds between samples
#   SOAK_STEADY_CONNS [1000]  SOAK_CHURN_CONNS [200]  SOAK_CHURN_RATE [20]
#   SOAK_SILENT_CONNS [200]   SOAK_SILENT_RUN [30]
#   SOAK_EVENT_BACKLOG [2000] LIFELINE_EVENT_BACKLOG for the server: the
#                             presence log grows until this many events are
#                             kept; the default fills during the warm-up, so
#                             later growth means a leak (the server's own
#                             default, 100000, takes about 40 minutes of this
#                             churn to fill and would look like one)
#   SOAK_RSS_TOLERANCE [10]   percent
#   OUT [/tmp/lifeline-soak-DATE]  logs, samples and RESULT lines
#   SKIP_BUILD=1              use target/release as it is
#
# Output: a summary on stdout (also $OUT/summary.txt), samples in
# $OUT/samples.csv, the server log in $OUT/server.log, RESULT lines in
# $OUT/*.result.

set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SOAK_SECONDS=${SOAK_SECONDS:-600}
SOAK_WARMUP=${SOAK_WARMUP:-60}
SOAK_SAMPLE=${SOAK_SAMPLE:-10}
SOAK_STEADY_CONNS=${SOAK_STEADY_CONNS:-1000}
SOAK_CHURN_CONNS=${SOAK_CHURN_CONNS:-200}
SOAK_CHURN_RATE=${SOAK_CHURN_RATE:-20}
SOAK_SILENT_CONNS=${SOAK_SILENT_CONNS:-200}
SOAK_SILENT_RUN=${SOAK_SILENT_RUN:-30}
SOAK_EVENT_BACKLOG=${SOAK_EVENT_BACKLOG:-2000}
SOAK_RSS_TOLERANCE=${SOAK_RSS_TOLERANCE:-10}
OUT=${OUT:-/tmp/lifeline-soak-$(date +%Y%m%d-%H%M%S)}
HEARTBEAT_MS=1000
MISSES=3

BIN=$REPO/target/release
SERVER_PID=
LOAD_PIDS=()

die() {
    echo "soak: $*" >&2
    exit 2
}

if (( SOAK_WARMUP >= SOAK_SECONDS )); then
    die "SOAK_WARMUP ($SOAK_WARMUP) must be shorter than SOAK_SECONDS ($SOAK_SECONDS)"
fi
mkdir -p "$OUT" || die "cannot create $OUT"

# Stops what this script started, by PID only.
cleanup() {
    local pid
    for pid in "${LOAD_PIDS[@]}"; do
        pkill -TERM -P "$pid" 2>/dev/null # the silent loop's current run
        kill "$pid" 2>/dev/null
    done
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null
        for _ in $(seq 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null
    fi
}
trap cleanup EXIT
trap 'exit 2' INT TERM

if [[ ${SKIP_BUILD:-} != 1 ]]; then
    echo "soak: building release binaries"
    (cd "$REPO" && cargo build --release --bins --quiet) || die "build failed"
fi
[[ -x $BIN/lifeline && -x $BIN/lifeline-load ]] || die "no binaries in $BIN"

# ------------------------------------------------------------------ server

env -i PATH="$PATH" \
    LIFELINE_LISTEN=127.0.0.1:0 \
    LIFELINE_ADMIN_ADDR=127.0.0.1:0 \
    LIFELINE_HEARTBEAT_MS=$HEARTBEAT_MS \
    LIFELINE_MISSES=$MISSES \
    LIFELINE_EVENT_BACKLOG=$SOAK_EVENT_BACKLOG \
    LIFELINE_LOG=info \
    "$BIN/lifeline" </dev/null >/dev/null 2>"$OUT/server.log" &
SERVER_PID=$!

for _ in $(seq 100); do
    grep -q 'listening on ' "$OUT/server.log" && break
    kill -0 "$SERVER_PID" 2>/dev/null || die "server exited: $(cat "$OUT/server.log")"
    sleep 0.1
done
ADDR=$(grep -o 'listening on [0-9.]*:[0-9]*' "$OUT/server.log" | head -1 | awk '{print $3}')
ADMIN=$(grep -o 'admin API on http://[0-9.]*:[0-9]*' "$OUT/server.log" | head -1 | awk '{print $4}')
[[ -n $ADDR && -n $ADMIN ]] || die "server did not start: $(cat "$OUT/server.log")"
ADMIN_HOST=${ADMIN#http://}
ADMIN_HOST=${ADMIN_HOST%:*}
ADMIN_PORT=${ADMIN##*:}
echo "soak: server PID $SERVER_PID on $ADDR, admin $ADMIN; output in $OUT"

# GET /metrics with bash's /dev/tcp (no curl needed); prints the body.
metrics() {
    local body
    body=$(timeout 5 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf "GET /metrics HTTP/1.1\r\nHost: lifeline\r\nConnection: close\r\n\r\n" >&3
        cat <&3' _ "$ADMIN_HOST" "$ADMIN_PORT" 2>/dev/null) || return 1
    printf '%s\n' "$body" | tr -d '\r'
}

# metric NAME: the value of an unlabelled metric, or empty.
metric() {
    metrics | awk -v name="$1" '$1 == name { print $2; exit }'
}

rss_kb() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$SERVER_PID/status" 2>/dev/null
}

BASELINE=$(metric lifeline_clients_online)
[[ -n $BASELINE ]] || die "cannot read lifeline_clients_online from $ADMIN/metrics"
echo "soak: baseline online $BASELINE, RSS $(rss_kb) kB"

# -------------------------------------------------------------------- load

START=$(date +%s)
END=$((START + SOAK_SECONDS))
# A run that does not finish by itself within this much is stopped.
GRACE=60

"$BIN/lifeline-load" --target "$ADDR" --mode steady --conns "$SOAK_STEADY_CONNS" \
    --ramp 500 --duration "$SOAK_SECONDS" \
    >"$OUT/steady.result" 2>"$OUT/steady.log" &
LOAD_PIDS+=($!)
STEADY_PID=$!

# lifeline-load names its clients load-W-SLOT (W: worker index) and has no
# id prefix option, so three plain runs would log in the same ids and replace
# each other's connections. Churn and silent therefore run as workers 1 and 2
# of a notional 3-worker run (its hidden --worker-index flag): their ids are
# load-1-* and load-2-*, disjoint from steady's load-0-*. --conns and the
# rates are per run, so they are given times 3; a worker prints its counters
# as one JSON line ("c.wrong_timeouts":N) instead of the RESULT line.
"$BIN/lifeline-load" --target "$ADDR" --mode churn --workers 3 --worker-index 1 \
    --conns $((3 * SOAK_CHURN_CONNS)) --churn-rate $((3 * SOAK_CHURN_RATE)) --ramp 600 \
    --duration "$SOAK_SECONDS" >"$OUT/churn.result" 2>"$OUT/churn.log" &
LOAD_PIDS+=($!)
CHURN_PID=$!

# Silent runs back to back until the end; each run's RESULT line is appended.
(
    run=0
    while :; do
        left=$((END - $(date +%s)))
        (( left >= 5 )) || break
        run=$((run + 1))
        len=$(( left < SOAK_SILENT_RUN ? left : SOAK_SILENT_RUN ))
        timeout $((len + GRACE)) "$BIN/lifeline-load" --target "$ADDR" --mode silent \
            --workers 3 --worker-index 2 --conns $((3 * SOAK_SILENT_CONNS)) --ramp 1500 \
            --duration "$len" >>"$OUT/silent.result" 2>>"$OUT/silent.log"
        echo "silent run $run exit $?" >>"$OUT/silent.runs"
    done
) &
LOAD_PIDS+=($!)
SILENT_PID=$!

# Stops the steady and churn runs if they overrun (they stop by themselves).
( sleep $((SOAK_SECONDS + GRACE)); kill "$STEADY_PID" "$CHURN_PID" 2>/dev/null ) &
WATCHDOG_PID=$!
LOAD_PIDS+=($WATCHDOG_PID)

echo "t_s,rss_kb,online,connections_open" >"$OUT/samples.csv"
sample() {
    local t=$(( $(date +%s) - START ))
    local m online open
    m=$(metrics)
    online=$(printf '%s\n' "$m" | awk '$1 == "lifeline_clients_online" { print $2 }')
    open=$(printf '%s\n' "$m" | awk '$1 == "lifeline_connections_open" { print $2 }')
    # The server's lateness maximum covers the last 4 to 5 minutes only: the
    # largest over the samples (SOAK_SAMPLE < 240 s) is the soak's maximum.
    late=$(printf '%s\n' "$m" | awk '$1 == "lifeline_close_lateness_max_seconds" { print $2 }')
    LATENESS_SEEN=$(awk -v a="${LATENESS_SEEN:-0}" -v b="${late:-0}" 'BEGIN { print (b > a) ? b : a }')
    echo "$t,$(rss_kb),${online:-?},${open:-?}" >>"$OUT/samples.csv"
    echo "soak: t=${t}s rss=$(rss_kb) kB online=${online:-?} open=${open:-?}"
}

WARM_RSS=
while (( $(date +%s) < END )); do
    sleep "$SOAK_SAMPLE"
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sample
    if [[ -z $WARM_RSS ]] && (( $(date +%s) - START >= SOAK_WARMUP )); then
        WARM_RSS=$(rss_kb)
        echo "soak: post-warm-up RSS $WARM_RSS kB"
    fi
done
LOAD_END_RSS=$(rss_kb)

wait "$STEADY_PID"; STEADY_EXIT=$?
wait "$CHURN_PID"; CHURN_EXIT=$?
wait "$SILENT_PID"
kill "$WATCHDOG_PID" 2>/dev/null
wait "$WATCHDOG_PID" 2>/dev/null
LOAD_PIDS=()

# ------------------------------------------------------------------ settle

# Connections left by the load close at once (RST/EOF) or time out within
# interval x misses; give it twice that and some.
SETTLE_S=$(( 2 * HEARTBEAT_MS * MISSES / 1000 + 10 ))
ONLINE_AFTER=
for _ in $(seq $((SETTLE_S * 10))); do
    ONLINE_AFTER=$(metric lifeline_clients_online)
    [[ $ONLINE_AFTER == "$BASELINE" ]] && break
    sleep 0.1
done
sleep 1
FINAL_RSS=$(rss_kb)
FINAL_OPEN=$(metric lifeline_connections_open)
# The server's own measure of its latest close after a deadline (seconds):
# the largest windowed maximum seen while sampling, or now.
LATENESS_MAX=$(awk -v a="${LATENESS_SEEN:-0}" -v b="$(metric lifeline_close_lateness_max_seconds)" \
    'BEGIN { b += 0; print (b > a) ? b : a }')
MAX_RSS=$(awk -F, 'NR > 1 && $2 > m { m = $2 } END { print m + 0 }' "$OUT/samples.csv")

# ------------------------------------------------------------------ checks

FAILED=0
report() { echo "$*" | tee -a "$OUT/summary.txt"; }
check() { # check OK|FAIL text
    report "  [$1] $2"
    [[ $1 == ok ]] || FAILED=1
}

: >"$OUT/summary.txt"
report "soak: ${SOAK_SECONDS}s at $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet 2>/dev/null || echo '+dirty'); steady $SOAK_STEADY_CONNS, churn $SOAK_CHURN_CONNS at $SOAK_CHURN_RATE/s, silent $SOAK_SILENT_CONNS per ${SOAK_SILENT_RUN}s run; heartbeat ${HEARTBEAT_MS} ms x $MISSES; event backlog $SOAK_EVENT_BACKLOG"

# 1. online back to baseline
if [[ $ONLINE_AFTER == "$BASELINE" ]]; then
    check ok "online back to baseline: $BASELINE -> $ONLINE_AFTER (connections open: $FINAL_OPEN)"
else
    check FAIL "online not back to baseline within ${SETTLE_S}s: $BASELINE -> ${ONLINE_AFTER:-unreadable} (connections open: $FINAL_OPEN)"
fi

# 2. RSS
if [[ -z $WARM_RSS || -z $FINAL_RSS ]]; then
    check FAIL "RSS not sampled (post-warm-up '${WARM_RSS}', final '${FINAL_RSS}')"
else
    LIMIT=$(( WARM_RSS * (100 + SOAK_RSS_TOLERANCE) / 100 ))
    pct() { awk -v a="$1" -v b="$WARM_RSS" 'BEGIN { printf "%+.1f%%", (a - b) * 100 / b }'; }
    RSS_TEXT="RSS post-warm-up $WARM_RSS kB; end of load $LOAD_END_RSS kB ($(pct "$LOAD_END_RSS")); after settling $FINAL_RSS kB ($(pct "$FINAL_RSS")); max sampled $MAX_RSS kB; limit $LIMIT kB"
    if (( LOAD_END_RSS <= LIMIT && FINAL_RSS <= LIMIT )); then
        check ok "$RSS_TEXT"
    else
        check FAIL "$RSS_TEXT"
    fi
fi

# 3. wrong timeouts, from every RESULT line
# sum_key KEY FILE...: KEY summed over RESULT lines (KEY=N) and worker JSON
# lines ("c.KEY":N).
sum_key() {
    cat "${@:2}" 2>/dev/null |
        grep -oE "(^| )$1=[0-9]+|\"c\.$1\" *: *[0-9]+" |
        grep -oE '[0-9]+$' | awk '{ s += $1 } END { print s + 0 }'
}
# Finished runs: RESULT lines and worker JSON lines.
runs_in() { cat "$@" 2>/dev/null | grep -cE '^RESULT |^\{.*"c\.logins"'; }
RESULTS=$(runs_in "$OUT"/*.result)
SILENT_RUNS=$(wc -l <"$OUT/silent.runs" 2>/dev/null || echo 0)
WRONG=$(sum_key wrong_timeouts "$OUT"/*.result)
EXPECTED_RESULTS=$(( 2 + SILENT_RUNS ))
for kind in steady churn silent; do
    report "  $kind: $(runs_in "$OUT/$kind.result") runs; $(for k in logins login_errors login_timeouts connect_errors unexpected_closes wrong_timeouts other_byes protocol_errors pings_unanswered silent_closed silent_early silent_not_closed healthy_closed; do printf '%s=%s ' "$k" "$(sum_key "$k" "$OUT/$kind.result")"; done)"
done
report "  steady: $(grep -oE '(rt_per_s|rtt_p99_us|rtt_max_us)=[0-9.]+' "$OUT/steady.result" | tr '\n' ' ')"
# Silent closes, as delay_us[:lateness_us] lists in the worker lines.
LATE_MAX=$(grep -oE '"silent" *: *"[^"]*"' "$OUT/silent.result" 2>/dev/null | cut -d'"' -f4 | tr ',' '\n' |
    awk -F: 'NF == 2 && $2 > m { m = $2 } END { print m + 0 }')
report "  silent: latest close seen by the clients $(awk -v u="$LATE_MAX" 'BEGIN { printf "%.1f", u / 1000 }') ms after the deadline; by the server (lifeline_close_lateness_max_seconds) $(awk -v s="${LATENESS_MAX:-0}" 'BEGIN { printf "%.1f", s * 1000 }') ms; the contract allows tick + 50 ms"
if (( RESULTS == EXPECTED_RESULTS && STEADY_EXIT == 0 && CHURN_EXIT == 0 && WRONG == 0 )); then
    check ok "wrong timeouts: $WRONG over $RESULTS load runs"
else
    check FAIL "wrong timeouts: $WRONG; RESULT lines $RESULTS of $EXPECTED_RESULTS expected (steady exit $STEADY_EXIT, churn exit $CHURN_EXIT; see $OUT/*.log)"
fi

# 4. panics, and the server still up
PANICS=$(grep -c 'panicked' "$OUT/server.log")
if kill -0 "$SERVER_PID" 2>/dev/null; then
    ALIVE=yes
else
    ALIVE=no
fi
if (( PANICS == 0 )) && [[ $ALIVE == yes ]]; then
    check ok "server log: 0 panics, $(grep -c ' WARN ' "$OUT/server.log") warnings, $(grep -c ' ERROR ' "$OUT/server.log") errors; server running"
else
    check FAIL "server log: $PANICS panics; server running: $ALIVE"
fi

CPU_S=$(awk -v hz="$(getconf CLK_TCK)" '{ printf "%.1f", ($14 + $15) / hz }' "/proc/$SERVER_PID/stat" 2>/dev/null)
kill -TERM "$SERVER_PID" 2>/dev/null
wait "$SERVER_PID" 2>/dev/null
report "  server: ${CPU_S:-?} s CPU in all; stopped with SIGTERM, exit code $?"
SERVER_PID=

if (( FAILED )); then
    report "soak: FAILED"
    exit 1
fi
report "soak: passed"
