#!/bin/bash
# one lifeline window and one floor window, 10k conns x 1 ping/s; CPU from schedstat (exact ns) and stat (ticks; user = utime)
L=${LIFELINE_TARGET:-target/release}
measure() { # pid label
  local p=$1; sleep 8
  local s0=$(awk '{print $1}' /proc/$p/schedstat) t0=$(awk '{print $14+$15}' /proc/$p/stat) u0=$(awk '{print $14}' /proc/$p/stat)
  sleep 8
  local s1=$(awk '{print $1}' /proc/$p/schedstat) t1=$(awk '{print $14+$15}' /proc/$p/stat) u1=$(awk '{print $14}' /proc/$p/stat)
  echo "$2 schedstat_us_per_rt=$(echo "scale=2; ($s1-$s0)/1000/80000" | bc) stat_us_per_rt=$(echo "scale=2; ($t1-$t0)*10000/80000" | bc) user_us_per_rt=$(echo "scale=2; ($u1-$u0)*10000/80000" | bc)"
}
LIFELINE_LISTEN=127.0.0.1:7272 LIFELINE_ADMIN_ADDR= LIFELINE_HEARTBEAT_MS=5000 LIFELINE_LOG=warn taskset -c 0 $L/lifeline 2>/dev/null & P=$!
sleep 0.3; taskset -c 1 $L/lifeline-load --target 127.0.0.1:7272 --conns 10000 --interval-ms 1000 --ramp 5000 --duration 19 >/dev/null 2>&1 & G=$!
measure $P lifeline; wait $G; kill $P; wait $P 2>/dev/null
taskset -c 0 ${FLOOR:-/tmp/floor} 26400 & P=$!
sleep 0.3; taskset -c 1 $L/lifeline-load --proto redis --target 127.0.0.1:26400 --conns 10000 --interval-ms 1000 --ramp 5000 --duration 19 >/dev/null 2>&1 & G=$!
measure $P floor; wait $G; kill $P; wait $P 2>/dev/null
