#!/bin/bash
# TLS benchmarks for BENCHMARKS.md (issue 15). Server pinned to CPU 0, load
# generator(s) to CPU 1; every run bounded by --duration; only the PIDs
# started here are killed. Certificates: certs.sh (throw-away CA).
#
#   tools/bench/tls/run.sh cpu         # CPU per heartbeat: lifeline plaintext, lifeline TLS,
#                                      # mosquitto TLS; CONNS (10000) x 1 ping/s, one after another
#   tools/bench/tls/run.sh idle        # bytes per idle connection at IDLE_CONNS (19000):
#                                      # lifeline TLS, lifeline plaintext, mosquitto TLS
#   tools/bench/tls/run.sh handshakes  # full, then resumed, TLS handshakes per second on one core
#   tools/bench/tls/run.sh storm       # heartbeat p99 of CONNS established TLS clients, without
#                                      # and with STORM (1000) new TLS clients connecting at once
#
# Build first: cargo build --release (the server and target/release/lifeline-load).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
L=${LIFELINE_TARGET:-target/release}
DIR=${TLS_DIR:-/tmp/lifeline-bench-tls}
CONNS=${CONNS:-10000}
IDLE_CONNS=${IDLE_CONNS:-19000}
STORM=${STORM:-1000}
[[ -f $DIR/server.pem ]] || "$HERE/certs.sh" "$DIR" >/dev/null
TLS_LOAD=(--tls --tls-ca "$DIR/ca.pem")
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
field() { grep -o "$1=[^ ]*" | head -1 | cut -d= -f2; } # KEY < RESULT line
rss_kb() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
oncpu_ns() { awk '{print $1}' "/proc/$1/schedstat"; }

# lifeline PORT tls|plain [ENV...]: server on CPU 0; its PID in SERVER_PID, its
# admin API's port in ADMIN_PORT
lifeline() {
    local port=$1 mode=$2
    shift 2
    ADMIN_PORT=$(free_port)
    local env=(LIFELINE_LISTEN=127.0.0.1:$port LIFELINE_ADMIN_ADDR=127.0.0.1:$ADMIN_PORT LIFELINE_LOG=warn "$@")
    [[ $mode == tls ]] && env+=(LIFELINE_TLS_CERT=$DIR/server.pem LIFELINE_TLS_KEY=$DIR/server.key)
    env "${env[@]}" taskset -c 0 "$L/lifeline" 2>>"$DIR/lifeline.log" >/dev/null &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    sleep 0.3
}

# load ARGS... : lifeline-load on CPU 1, RESULT line on stdout
load() { taskset -c 1 "$L/lifeline-load" "$@" 2>/dev/null | grep '^RESULT'; }

cpu() {
    local port pid line
    for kind in lifeline-plain lifeline-tls mosquitto-tls; do
        case $kind in
        lifeline-plain)
            port=$(free_port); lifeline "$port" plain LIFELINE_HEARTBEAT_MS=5000; pid=$SERVER_PID
            line=$(load --target 127.0.0.1:$port --conns "$CONNS" --interval-ms 1000 --ramp 5000 \
                --warmup 6 --duration 16 --server-pid "$pid") ;;
        lifeline-tls)
            port=$(free_port); lifeline "$port" tls LIFELINE_HEARTBEAT_MS=5000; pid=$SERVER_PID
            line=$(load --target 127.0.0.1:$port --conns "$CONNS" --interval-ms 1000 --ramp 2000 \
                --warmup 8 --duration 18 --server-pid "$pid" "${TLS_LOAD[@]}") ;;
        mosquitto-tls)
            read -r pid port < <("$HERE/mosquitto-tls.sh" "$DIR" taskset -c 0) || return 1
            PIDS+=("$pid")
            line=$(load --proto mqtt --target 127.0.0.1:$port --conns "$CONNS" --interval-ms 1000 \
                --ramp 2000 --warmup 8 --duration 18 --server-pid "$pid" "${TLS_LOAD[@]}") ;;
        esac
        echo "$kind conns=$CONNS rt_per_s=$(field rt_per_s <<<"$line") server_cpu_us_per_rt=$(field server_cpu_us_per_rt <<<"$line") rtt_p99_us=$(field rtt_p99_us <<<"$line") logins=$(field logins <<<"$line")"
        kill "$pid"; wait "$pid" 2>/dev/null
    done
}

idle() {
    local port pid before after load_pid n=$IDLE_CONNS
    for kind in lifeline-tls lifeline-plain mosquitto-tls; do
        local tls=("${TLS_LOAD[@]}") proto=lifeline
        case $kind in
        lifeline-tls) port=$(free_port); lifeline "$port" tls LIFELINE_HEARTBEAT_MS=120000; pid=$SERVER_PID ;;
        lifeline-plain) port=$(free_port); lifeline "$port" plain LIFELINE_HEARTBEAT_MS=120000; pid=$SERVER_PID; tls=() ;;
        mosquitto-tls)
            read -r pid port < <("$HERE/mosquitto-tls.sh" "$DIR" taskset -c 0) || return 1
            PIDS+=("$pid"); proto=mqtt ;;
        esac
        before=$(rss_kb "$pid")
        # Idle: one ping a minute, so the window sees connections at rest.
        taskset -c 1 "$L/lifeline-load" --proto $proto --target 127.0.0.1:$port --conns "$n" \
            --interval-ms 60000 --mqtt-keepalive 120 --ramp 2000 --duration 25 "${tls[@]}" \
            >"$DIR/idle-load.log" 2>&1 &
        load_pid=$!
        sleep 20 # ramp (<= 10 s) plus settling
        after=$(rss_kb "$pid")
        echo "$kind conns=$n rss_before_kib=$before rss_idle_kib=$after bytes_per_conn=$(((after - before) * 1024 / n))"
        wait "$load_pid"
        grep -E '^  (connects|tls) ' "$DIR/idle-load.log" | sed 's/^/    /'
        kill "$pid"; wait "$pid" 2>/dev/null
    done
}

handshakes() {
    # Churn: each leave is followed by a connect, so handshakes/s follow the
    # churn rate until the server's core (or the generator's) is full. The
    # counts are the server's own (lifeline_tls_handshakes_total).
    local rate=${RATE:-20000}
    for kind in full resumed; do
        local port pid extra=() h0 h1 c0 c1
        port=$(free_port); lifeline "$port" tls LIFELINE_HEARTBEAT_MS=5000; pid=$SERVER_PID
        [[ $kind == full ]] && extra=(--tls-no-resume)
        taskset -c 1 "$L/lifeline-load" --target 127.0.0.1:$port --conns 2000 --ramp 4000 --mode churn \
            --churn-rate "$rate" --interval-ms 1000 --duration 20 "${TLS_LOAD[@]}" "${extra[@]}" \
            >"$DIR/handshake-load.log" 2>&1 &
        local g=$!
        sleep 6
        h0=$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | grep "^lifeline_tls_handshakes_total{kind=\"$kind\"}" | awk '{print $2}')
        c0=$(oncpu_ns "$pid")
        sleep 10
        h1=$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | grep "^lifeline_tls_handshakes_total{kind=\"$kind\"}" | awk '{print $2}')
        c1=$(oncpu_ns "$pid")
        echo "$kind handshakes_per_s=$(((h1 - h0) / 10)) server_cpu_percent=$(((c1 - c0) / 100000000)) us_per_handshake=$(((c1 - c0) / 1000 / ((h1 - h0) > 0 ? (h1 - h0) : 1)))"
        echo "    (below ~95% server CPU the generator on CPU 1 was the limit: raise RATE or add a --workers process elsewhere)"
        wait "$g"
        kill "$pid"; wait "$pid" 2>/dev/null
    done
}

storm() {
    for with in baseline storm; do
        local port pid line g
        port=$(free_port); lifeline "$port" tls LIFELINE_HEARTBEAT_MS=5000; pid=$SERVER_PID
        taskset -c 1 "$L/lifeline-load" --target 127.0.0.1:$port --conns "$CONNS" --interval-ms 1000 \
            --ramp 2000 --warmup 12 --duration 30 "${TLS_LOAD[@]}" 2>/dev/null | grep '^RESULT' >"$DIR/storm-main.log" &
        g=$!
        if [[ $with == storm ]]; then
            sleep 16 # inside the measured window (12 s .. 30 s)
            # All at once, full handshakes: the worst a reconnect wave can do.
            load --target 127.0.0.1:$port --conns "$STORM" --ramp 100000 --interval-ms 1000 --duration 8 \
                --tls-no-resume "${TLS_LOAD[@]}" | sed 's/^/    storm: /' | cut -c1-200
        fi
        wait "$g"
        line=$(cat "$DIR/storm-main.log")
        echo "$with conns=$CONNS rtt_p50_us=$(field rtt_p50_us <<<"$line") rtt_p99_us=$(field rtt_p99_us <<<"$line") rtt_p999_us=$(field rtt_p999_us <<<"$line") unanswered=$(field pings_unanswered <<<"$line")"
        kill "$pid"; wait "$pid" 2>/dev/null
    done
}

case ${1:-} in
cpu | idle | handshakes | storm) "$1" ;;
*) sed -n '2,15p' "$0"; exit 2 ;;
esac
