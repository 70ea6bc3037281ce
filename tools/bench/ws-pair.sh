#!/bin/bash
L=${LIFELINE_TARGET:-target/release}
one() { # transport
  LIFELINE_LISTEN=127.0.0.1:7676 LIFELINE_ADMIN_ADDR= LIFELINE_HEARTBEAT_MS=5000 LIFELINE_LOG=warn taskset -c 0 $L/lifeline 2>/dev/null & P=$!
  sleep 0.3; R0=$(awk '/VmRSS/{print $2}' /proc/$P/status)
  taskset -c 1 $L/lifeline-load --target 127.0.0.1:7676 --transport $1 --conns 10000 --interval-ms 1000 --ramp 5000 --duration 18 --warmup 8 --server-pid $P 2>/dev/null | tr ' ' '\n' | grep -E "transport|server_cpu_us_per_rt|server_user_us_per_rt|server_rss_kb|rt_per_s" | paste -sd' ' | sed "s/^/rss_before_kb=$R0 /"
  kill $P; wait $P 2>/dev/null
}
for i in 1 2; do one tcp; one ws; done
