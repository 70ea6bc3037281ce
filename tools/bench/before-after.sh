#!/usr/bin/env bash
# tools/bench/before-after.sh: a commit against the one before it, on the
# single-node figures every change must hold (BENCHMARKS.md, "same-window
# pairs against the previous commit").
#
#   tools/bench/before-after.sh OLD_BIN NEW_BIN [FLOOR_BIN]
#
# OLD_BIN and NEW_BIN are two `lifeline` binaries (build the old commit in a
# worktree of its own); FLOOR_BIN is the C floor (gcc -O2 -o /tmp/floor
# tools/bench/peers/floor.c). lifeline-load comes from LOAD (default
# target/release/lifeline-load). What it measures, in this order:
#   cpu       same-window pairs (tools/bench/same-window.sh): OLD vs NEW and
#             FLOOR vs NEW, ROUNDS each (default 6), 5,000 conns x 1 ping/s each
#   syscalls  per round trip, `perf stat -e raw_syscalls:sys_enter` over 10 s
#             of 10,000 conns x 1 ping/s, OLD then NEW then OLD then NEW
#   rss       19,000 idle logged-in connections on a fresh server: user RSS
#             per connection (VmRSS and RssAnon before and while all are open)
#   silent    19,000 clients, half fall silent (deadline 3,000 ms): how late
#             the server closes them (client- and server-side), none early
# Servers run pinned to CPU 0, lifeline-load to CPU 1. Every run is bounded
# in time; only the PIDs started here are ever signalled. Not for CI.
set -uo pipefail
[[ -n ${CI:-} ]] && { echo "before-after.sh: not for CI" >&2; exit 2; }
[[ $# -ge 2 ]] || { sed -n '2,22p' "$0" >&2; exit 2; }
OLD=$1 NEW=$2 FLOOR=${3:-/tmp/floor}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOAD=${LOAD:-$HERE/../../target/release/lifeline-load}
ROUNDS=${ROUNDS:-6}
CASES=${CASES:-cpu syscalls rss silent}
PORT=26700
STARTED=()
cleanup() { for p in "${STARTED[@]}"; do kill "$p" 2>/dev/null; done; }
trap cleanup EXIT

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
rss_of() { awk '/^VmRSS:/{r=$2} /^RssAnon:/{a=$2} END{print r+0, a+0}' "/proc/$1/status"; }
kv() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1==k{print substr($0, length(k)+2); exit}'; }

start() { # bin [VAR=VALUE ...] -> SPID
    local bin=$1
    shift
    env LIFELINE_LISTEN=127.0.0.1:$PORT LIFELINE_ADMIN_ADDR= LIFELINE_LOG=warn "$@" \
        taskset -c 0 "$bin" >/dev/null 2>&1 &
    SPID=$!
    STARTED+=("$SPID")
    for _ in $(seq 100); do
        [[ -n $(ss -Hltn "sport = :$PORT" 2>/dev/null) ]] && { sleep 0.3; return 0; }
        sleep 0.05
    done
    log "server $bin did not listen"
    return 1
}
stop() { kill "$SPID" 2>/dev/null; wait "$SPID" 2>/dev/null; }

case_cpu() {
    log "cpu: OLD (A) vs NEW (B), same window, $ROUNDS rounds"
    ROUNDS=$ROUNDS LIFELINE_TARGET=$(dirname "$LOAD") bash "$HERE/same-window.sh" lifeline "$OLD" lifeline "$NEW"
    log "cpu: FLOOR (A) vs NEW (B), same window, $ROUNDS rounds"
    ROUNDS=$ROUNDS LIFELINE_TARGET=$(dirname "$LOAD") bash "$HERE/same-window.sh" redis "$FLOOR" lifeline "$NEW"
}

case_syscalls() {
    local bin label
    for label in old new old new; do
        [[ $label == old ]] && bin=$OLD || bin=$NEW
        start "$bin" LIFELINE_HEARTBEAT_MS=5000 || continue
        timeout 60 taskset -c 1 "$LOAD" --target 127.0.0.1:$PORT --conns 10000 --interval-ms 1000 \
            --ramp 4000 --duration 24 >/dev/null 2>&1 &
        local g=$!
        STARTED+=("$g")
        sleep 10
        local calls
        calls=$(perf stat -x, -e raw_syscalls:sys_enter -p "$SPID" -- sleep 10 2>&1 | awk -F, '/raw_syscalls/{print $1}')
        wait "$g"
        stop
        echo "syscalls $label: $calls in 10 s at 10,000 rt/s -> $(echo "scale=3; $calls/100000" | bc) per round trip"
    done
}

case_rss() {
    local bin label
    for label in old new old new; do
        [[ $label == old ]] && bin=$OLD || bin=$NEW
        start "$bin" LIFELINE_HEARTBEAT_MS=60000 || continue
        local before mid out
        before=$(rss_of "$SPID")
        out=$(mktemp)
        timeout 60 taskset -c 1 "$LOAD" --target 127.0.0.1:$PORT --conns 19000 --workers 2 --source-ips 4 \
            --ramp 5000 --interval-ms 30000 --warmup 9 --duration 14 >"$out" 2>/dev/null &
        local g=$!
        STARTED+=("$g")
        sleep 11 # all logged in at ~5 s; read while every connection is open and idle
        mid=$(rss_of "$SPID")
        wait "$g"
        stop
        local logins
        logins=$(kv "$(grep '^RESULT ' "$out" | tail -1)" logins)
        rm -f "$out"
        echo "rss $label: logins=$logins before=$before while-open=$mid -> $(((${mid% *} - ${before% *}) * 1024 / (logins > 0 ? logins : 1))) B/conn RSS, $(((${mid#* } - ${before#* }) * 1024 / (logins > 0 ? logins : 1))) B/conn anon"
    done
}

case_silent() {
    local bin label r
    for label in old new old new; do
        [[ $label == old ]] && bin=$OLD || bin=$NEW
        start "$bin" LIFELINE_HEARTBEAT_MS=1000 LIFELINE_MISSES=3 || continue
        r=$(timeout 90 taskset -c 1 "$LOAD" --target 127.0.0.1:$PORT --mode silent --silent-fraction 0.5 \
            --conns 19000 --workers 2 --ramp 5000 --source-ips 4 --server-pid "$SPID" --duration 40 2>/dev/null |
            grep '^RESULT ' | tail -1)
        stop
        echo "silent $label: closed=$(kv "$r" silent_closed)/$(kv "$r" silent_total) early=$(kv "$r" silent_early) delay_p50/p99/max_us=$(kv "$r" close_delay_p50_us)/$(kv "$r" close_delay_p99_us)/$(kv "$r" close_delay_max_us) server_lateness_max_us=$(kv "$r" lateness_max_us) wrong_timeouts=$(kv "$r" wrong_timeouts) healthy_closed=$(kv "$r" healthy_closed)"
    done
}

echo "machine: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "old: $OLD ($(stat -c %y "$OLD" | cut -d. -f1)), new: $NEW ($(stat -c %y "$NEW" | cut -d. -f1))"
for c in $CASES; do "case_$c"; done
