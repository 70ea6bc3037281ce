#!/bin/bash
# Two servers measured in the SAME 8 s window: both pinned to CPU 0, each
# driven by its own lifeline-load (5,000 conns x 1 ping/s by default) on CPU 1.
# Noise from the VM's neighbours hits both alike, so the ratio B/A is far
# steadier than that of back-to-back windows (cpu-pair.sh). ROUNDS rounds
# alternate which server is A; prints each round's B/A and the median.
#
#   tools/bench/same-window.sh KIND_A BIN_A KIND_B BIN_B
#   KIND: lifeline | redis (a server answering PING, e.g. the floor: BIN PORT)
#   e.g. tools/bench/same-window.sh redis /tmp/floor lifeline target/release/lifeline
#
# Every run is bounded (--duration 18); only the PIDs started here are killed.
set -u
L=${LIFELINE_TARGET:-target/release}
CONNS=${CONNS:-5000}
ROUNDS=${ROUNDS:-4}
RT=$((CONNS * 8))

start() { # kind bin port -> pid
  if [ "$1" = redis ]; then
    taskset -c 0 "$2" "$3" >/dev/null 2>&1 &
  else
    LIFELINE_LISTEN=127.0.0.1:$3 LIFELINE_ADMIN_ADDR= LIFELINE_HEARTBEAT_MS=5000 LIFELINE_LOG=warn \
      taskset -c 0 "$2" >/dev/null 2>&1 &
  fi
  echo $!
}
oncpu() { awk '{print $1}' "/proc/$1/schedstat"; }

round() { # kindA binA kindB binB -> prints B/A
  local pa=$((26600 + RANDOM % 200 * 2)) ; local pb=$((pa + 1))
  local a b ga gb
  a=$(start "$1" "$2" $pa); b=$(start "$3" "$4" $pb)
  trap 'kill $a $b 2>/dev/null' RETURN
  sleep 0.3
  taskset -c 1 $L/lifeline-load --proto "$1" --target 127.0.0.1:$pa --conns $CONNS --interval-ms 1000 \
    --ramp 4000 --duration 18 >/dev/null 2>&1 & ga=$!
  taskset -c 1 $L/lifeline-load --proto "$3" --target 127.0.0.1:$pb --conns $CONNS --interval-ms 1000 \
    --ramp 4000 --duration 18 >/dev/null 2>&1 & gb=$!
  sleep 7
  local a0 b0 a1 b1
  a0=$(oncpu $a); b0=$(oncpu $b); sleep 8; a1=$(oncpu $a); b1=$(oncpu $b)
  wait $ga $gb
  echo "A $(echo "scale=2; ($a1-$a0)/1000/$RT" | bc) us/rt, B $(echo "scale=2; ($b1-$b0)/1000/$RT" | bc) us/rt" >&2
  echo "scale=3; ($b1-$b0)/($a1-$a0)" | bc
}

ratios=()
for i in $(seq 1 "$ROUNDS"); do
  if [ $((i % 2)) = 1 ]; then r=$(round "$1" "$2" "$3" "$4")
  else r=$(echo "scale=3; 1/$(round "$3" "$4" "$1" "$2")" | bc); fi
  ratios+=("$r")
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1; printf "%s ", $1}
  END {printf "\nB/A median %.3f\n", (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'
