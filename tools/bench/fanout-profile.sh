#!/usr/bin/env bash
# Where a broadcast's time goes, at small scale: syscalls, bytes and CPU per
# delivered message (perf stat over a window of a steady fan-out run), and
# instructions and allocations per delivered message (callgrind, from the
# difference of two runs at different broadcast rates, which cancels the
# logins and the idle loop). Meant for a busy machine: instruction counts
# and syscall counts are repeatable there; CPU times are not.
#
#   tools/bench/fanout-profile.sh lifeline target/release/lifeline
#   tools/bench/fanout-profile.sh redis                  # redis-server from PATH
#   tools/bench/fanout-profile.sh floor /tmp/fanout-floor
#
# Env: LOAD (lifeline-load binary, default target/release/lifeline-load),
# SUBS (subscribers, 1000), RATE (broadcasts/s, 20), WINDOW (perf seconds, 4),
# CG_SUBS / CG_RATES (callgrind: subscribers, two rates; 500 and "4 8"),
# CG_BIN (the server binary to run under callgrind, default the same),
# CALLGRIND=0 to skip the callgrind part. Prints "PROFILE key=value" lines.
#
# Lifeline under valgrind: rustix's vDSO lookup crashes there (rustix issue
# 1559), so build a copy with rustix's libc backend for callgrind only:
#   CARGO_TARGET_DIR=/tmp/cg-target cargo build --release -p lifeline --features rustix/use-libc
#   CG_BIN=/tmp/cg-target/release/lifeline tools/bench/fanout-profile.sh lifeline target/release/lifeline
set -euo pipefail
KIND=${1:?usage: fanout-profile.sh lifeline|redis|mosquitto|floor [server binary]}
BIN=${2:-}
LOAD=${LOAD:-target/release/lifeline-load}
SUBS=${SUBS:-1000}
RATE=${RATE:-20}
WINDOW=${WINDOW:-4}
CG_SUBS=${CG_SUBS:-500}
CG_RATES=${CG_RATES:-"4 8"}
CALLGRIND=${CALLGRIND:-1}
PORT=${PORT:-26700}
OUT=$(mktemp -d /tmp/fanout-profile.XXXXXX)
SERVER_PID=

cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

# start_server PREFIX...: starts the server (under the given prefix, e.g.
# valgrind) and sets SERVER_PID and LOAD_ARGS.
start_server() {
    case $KIND in
    lifeline)
        LIFELINE_LISTEN=127.0.0.1:$PORT LIFELINE_ADMIN_ADDR=127.0.0.1:$((PORT + 1)) \
            LIFELINE_LOG=warn LIFELINE_HEARTBEAT_MS=60000 "$@" "${BIN:-target/release/lifeline}" \
            >"$OUT/server.log" 2>&1 &
        LOAD_ARGS=(--proto lifeline --target 127.0.0.1:$PORT --admin http://127.0.0.1:$((PORT + 1)))
        ;;
    redis)
        "$@" "${BIN:-redis-server}" --port $PORT --bind 127.0.0.1 --protected-mode no --save '' \
            --appendonly no --daemonize no >"$OUT/server.log" 2>&1 &
        LOAD_ARGS=(--proto redis --target 127.0.0.1:$PORT)
        ;;
    mosquitto)
        # `user root`: started as root it would drop to its own user, which
        # cannot write the callgrind output valgrind opened as root.
        { cat "$(dirname "$0")/mosquitto-fanout.conf"; echo "user root"; } >"$OUT/mosquitto.conf"
        "$@" "${BIN:-mosquitto}" -c "$OUT/mosquitto.conf" -p $PORT >"$OUT/server.log" 2>&1 &
        LOAD_ARGS=(--proto mqtt --target 127.0.0.1:$PORT)
        ;;
    floor)
        "$@" "${BIN:-./fanout-floor}" $PORT $((PORT + 1)) >"$OUT/server.log" 2>&1 &
        LOAD_ARGS=(--proto fanout-floor --target 127.0.0.1:$PORT --trigger 127.0.0.1:$((PORT + 1)))
        ;;
    *)
        echo "unknown server kind $KIND" >&2
        exit 2
        ;;
    esac
    SERVER_PID=$!
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return 0
        sleep 0.1
    done
    echo "the server did not start; log:" >&2
    cat "$OUT/server.log" >&2
    exit 1
}

# Calls into the allocator recorded in a callgrind output: the `calls=`
# lines under a `cfn=` naming malloc, calloc, realloc or posix_memalign
# (names are given once per id, then referred to by the id alone).
alloc_calls() {
    awk '
    /^c?fn=/ {
        eq = index($0, "="); key = substr($0, 1, eq - 1); rest = substr($0, eq + 1)
        if (match(rest, /^\([0-9]+\)/)) {
            id = substr(rest, 2, RLENGTH - 2); name = substr(rest, RLENGTH + 2)
            if (name != "") names[id] = name; else name = names[id]
        } else name = rest
        if (key == "cfn") callee = name
    }
    /^calls=/ {
        split(substr($0, 7), a, " ")
        if (callee ~ /^(malloc|calloc|realloc|posix_memalign)$/) total += a[1]
    }
    END { print total + 0 }' "$1"
}

field() { grep -o "$1=[^ ]*" "$2" | head -1 | cut -d= -f2; }
stat_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
# Bytes the server's sockets on $PORT have sent (tcp_info bytes_sent; the
# peers send with send(2), which /proc/PID/io does not count).
bytes_sent() {
    ss -tinH state established "( sport = :$PORT )" |
        grep -o 'bytes_sent:[0-9]*' | cut -d: -f2 | awk '{s += $1} END {print s + 0}'
}

# ---- perf stat over a window of a steady run
start_server
DURATION=$((WINDOW + 5))
"$LOAD" --mode fanout "${LOAD_ARGS[@]}" --conns "$SUBS" --broadcast-rate "$RATE" \
    --warmup 2 --duration "$DURATION" --server-pid "$SERVER_PID" >"$OUT/load.out" 2>"$OUT/load.err" &
LOAD_PID=$!
sleep 3.5
read -r U0 S0 < <(stat_ticks "$SERVER_PID")
W0=$(bytes_sent)
perf stat -x, -o "$OUT/perf.csv" \
    -e raw_syscalls:sys_enter,syscalls:sys_enter_write,syscalls:sys_enter_sendto,syscalls:sys_enter_writev,syscalls:sys_enter_read,syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_brk,syscalls:sys_enter_mmap,syscalls:sys_enter_munmap \
    -p "$SERVER_PID" -- sleep "$WINDOW"
read -r U1 S1 < <(stat_ticks "$SERVER_PID")
W1=$(bytes_sent)
wait "$LOAD_PID"
cleanup
DELIVERIES=$(field deliveries "$OUT/load.out")
FWIN=$(field fanout_window_s "$OUT/load.out")
HZ=$(getconf CLK_TCK)
awk -F, -v d="$DELIVERIES" -v fw="$FWIN" -v w="$WINDOW" -v u=$((U1 - U0)) -v s=$((S1 - S0)) \
    -v hz="$HZ" -v bytes=$((W1 - W0)) -v kind="$KIND" '
    /^[0-9]/ { n[$3] = $1 }
    END {
        per = d / fw * w   # deliveries inside the perf window (steady rate)
        printf "PROFILE server=%s deliveries_in_window=%.0f syscalls=%.3f writes=%.3f writevs=%.3f reads=%.3f epoll_waits=%.4f brk_mmap_munmap=%.4f bytes=%.1f cpu_us=%.3f user_us=%.3f\n",
            kind, per, n["raw_syscalls:sys_enter"] / per,
            (n["syscalls:sys_enter_write"] + n["syscalls:sys_enter_sendto"]) / per,
            n["syscalls:sys_enter_writev"] / per,
            (n["syscalls:sys_enter_read"] + n["syscalls:sys_enter_recvfrom"]) / per,
            n["syscalls:sys_enter_epoll_wait"] / per,
            (n["syscalls:sys_enter_brk"] + n["syscalls:sys_enter_mmap"] + n["syscalls:sys_enter_munmap"]) / per,
            bytes / per, (u + s) * 1e6 / hz / per, u * 1e6 / hz / per
    }' "$OUT/perf.csv"
grep -E "^  (broadcasts|deliveries|last recv)" "$OUT/load.err" | sed 's/^/#/'

# ---- callgrind: instructions and allocations per delivery
[ "$CALLGRIND" = 1 ] || exit 0
declare -a IR ALLOCS DELIV
i=0
BIN=${CG_BIN:-$BIN}
for rate in $CG_RATES; do
    start_server valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.$rate"
    "$LOAD" --mode fanout "${LOAD_ARGS[@]}" --conns "$CG_SUBS" --broadcast-rate "$rate" \
        --broadcast-timeout-ms 20000 --login-timeout-ms 60000 --warmup 4 --duration 9 \
        >"$OUT/cgload.$rate" 2>"$OUT/cgload.$rate.err"
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
    IR[$i]=$(callgrind_annotate "$OUT/cg.$rate" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    ALLOCS[$i]=$(alloc_calls "$OUT/cg.$rate")
    DELIV[$i]=$(field deliveries "$OUT/cgload.$rate")
    i=$((i + 1))
done
awk -v i0="${IR[0]}" -v i1="${IR[1]}" -v a0="${ALLOCS[0]}" -v a1="${ALLOCS[1]}" \
    -v d0="${DELIV[0]}" -v d1="${DELIV[1]}" -v kind="$KIND" 'BEGIN {
    printf "PROFILE server=%s callgrind_deliveries=%d,%d instructions_per_delivery=%.0f allocations_per_delivery=%.3f\n",
        kind, d0, d1, (i1 - i0) / (d1 - d0), (a1 - a0) / (d1 - d0) }'
echo "# callgrind outputs in $OUT (callgrind_annotate $OUT/cg.RATE)"
