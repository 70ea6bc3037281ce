#!/bin/bash
# Cluster benchmark (issue 14): one redis-server, NODES Lifeline nodes behind
# one SO_REUSEPORT port (each with its own admin port), a standalone node
# beside them carrying one node's share, CONNS heartbeating clients from
# several lifeline-load processes over 16+ source addresses, for DURATION s.
#
# Every SAMPLE s it prints one line: HLEN ll:presence against the sum of the
# nodes' lifeline_clients_online (equal at every sample when no one is
# mid-login), Redis commands per heartbeat (INFO commandstats delta over the
# sum of lifeline_heartbeats_received_total delta), CPU per heartbeat per
# node and for the standalone node (utime+stime from /proc), Redis CPU, and
# wrong timeouts (lifeline_connections_closed_total{reason="timeout"}). The commands
# per heartbeat include a fixed background that does not grow with
# heartbeats (each node's liveness refresh, 3 per TTL; its event feed's
# XREAD; this script's own HLEN and INFO): compare redis_cmds_per_s with
# the heartbeat rate, and commandstats by name at the end. Mid-run it
# measures cross-node msg latency (tools/bench/xmsg.py) and cross-node push
# latency (lifeline-load --mode push against node 0's admin API), then
# kill -9's the last node and reports the time until its clients are out of
# presence everywhere (ll:nodeids:NODE empty, HLEN = sum of survivors) and
# until they are back on the survivors (the load reconnects: restart mode).
# At the end: the memory model inputs (per-connection user RSS, kernel socket
# memory from /proc/net/sockstat, Redis used_memory per online id).
#
# Each process's /metrics is read once per sample (nodes and the standalone
# alike), so the scrapes cost every process the same.
#
# SILENT=N adds N clients (from their own load process, on 127.0.0.240-247)
# of which half fall silent one interval after login: every node's close
# lateness (how long after a deadline the server closed, its own
# lifeline_close_lateness_seconds) is printed at the end. The samples'
# last column (timeouts the nodes counted) then includes those closes: the
# wrong timeouts are the load processes' own count (wrong_timeouts in
# their JSON at the end).
#
# CONTROL=1 starts the same nodes without LIFELINE_REDIS_URL (standalone
# processes sharing the SO_REUSEPORT port): what the same number of
# processes on 2 cores costs per heartbeat without cluster mode, to tell
# that apart from what cluster mode costs. The Redis columns are then void.
#
#   cargo build --release && tools/bench/cluster.sh           # the full run (>= 5 min)
#   CONNS=600 NODES=3 DURATION=20 SAMPLE=2 LOADS=2 tools/bench/cluster.sh   # smoke
#
# Limits: one process holds at most 20,000 files, so 6 nodes x ~16,700 =
# 100,000; after the kill, 5 survivors hold at most 5 x 19,936 = 99,680,
# so up to ~320 clients cannot come back (reported as such). Only PIDs
# started here are killed; everything is bounded by DURATION.
set -u
cd "$(dirname "$0")/../.."
BIN=${LIFELINE_TARGET:-target/release}
CONNS=${CONNS:-100000}
NODES=${NODES:-6}
DURATION=${DURATION:-330}
SAMPLE=${SAMPLE:-5}
LOADS=${LOADS:-4}               # lifeline-load processes
LOAD_WORKERS=${LOAD_WORKERS:-2} # worker processes in each (<= 19,000 conns each)
SOURCES=${SOURCES:-16}          # source addresses 127.0.0.1..127.0.0.N per load
HEARTBEAT_MS=${HEARTBEAT_MS:-5000}
TTL_MS=${TTL_MS:-10000}
PORT=${PORT:-27070}
ADMIN=${ADMIN:-29090}
REDIS_PORT=${REDIS_PORT:-26379}
ALONE_PORT=$((PORT + 1))
ALONE_ADMIN=$((ADMIN + 100))
OUT=${OUT:-$(mktemp -d /tmp/lifeline-cluster.XXXXXX)}; mkdir -p "$OUT"
KILL_AT=${KILL_AT:-$((DURATION * 2 / 3))}
PROBE_AT=${PROBE_AT:-$((DURATION / 3))}
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT INT TERM

rcli() { redis-cli -p "$REDIS_PORT" "$@"; }
metric() { # admin-port name -> value (sum over label sets when a label is given)
  curl -s -m 2 "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n {print $2; exit}'
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
TCK=$(getconf CLK_TCK)

echo "results in $OUT"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  >"$OUT/redis.log" 2>&1 & REDIS=$!; PIDS+=("$REDIS")
for _ in $(seq 100); do [ "$(rcli PING 2>/dev/null)" = PONG ] && break; sleep 0.05; done
rcli FLUSHALL >/dev/null

NODE_PIDS=()
CLUSTER_URL=redis://127.0.0.1:$REDIS_PORT/0
[ "${CONTROL:-0}" = 1 ] && CLUSTER_URL=
for i in $(seq 0 $((NODES - 1))); do
  LIFELINE_REDIS_URL=$CLUSTER_URL LIFELINE_NODE_ID=n$i \
  LIFELINE_NODE_TTL_MS=$TTL_MS LIFELINE_REUSEPORT=1 LIFELINE_LISTEN=127.0.0.1:$PORT \
  LIFELINE_ADMIN_ADDR=127.0.0.1:$((ADMIN + i)) LIFELINE_HEARTBEAT_MS=$HEARTBEAT_MS \
  LIFELINE_LOG=warn "$BIN/lifeline" >"$OUT/node$i.log" 2>&1 &
  NODE_PIDS+=($!); PIDS+=($!)
done
LIFELINE_LISTEN=127.0.0.1:$ALONE_PORT LIFELINE_ADMIN_ADDR=127.0.0.1:$ALONE_ADMIN \
  LIFELINE_HEARTBEAT_MS=$HEARTBEAT_MS LIFELINE_LOG=warn "$BIN/lifeline" >"$OUT/alone.log" 2>&1 &
ALONE=$!; PIDS+=("$ALONE")
sleep 1
for i in $(seq 0 $((NODES - 1))); do
  curl -s -m 2 "http://127.0.0.1:$((ADMIN + i))/healthz" >/dev/null || { echo "node $i did not start"; exit 1; }
done
declare -A RSS0
for i in $(seq 0 $((NODES - 1))); do RSS0[$i]=$(rss_kb "${NODE_PIDS[$i]}"); done
RSS0_ALONE=$(rss_kb "$ALONE")

# The load: LOADS processes, each over its own SOURCES addresses, restart
# mode so that the killed node's clients come back on the survivors.
PER_LOAD=$((CONNS / LOADS))
for l in $(seq 0 $((LOADS - 1))); do
  first=$((l * SOURCES + 1)); last=$(((l + 1) * SOURCES))
  "$BIN/lifeline-load" --target 127.0.0.1:$PORT --conns $PER_LOAD --workers $LOAD_WORKERS \
    --source-ips "127.0.0.$first-127.0.0.$last" --ramp 4000 --mode restart --id-prefix "l$l" \
    --duration "$DURATION" --json >"$OUT/load$l.json" 2>"$OUT/load$l.err" &
  PIDS+=($!)
done
# The standalone node gets one node's share, from its own load process,
# spread over as many load workers as a node's share comes from: a node
# reads its heartbeats from LOADS x LOAD_WORKERS senders, and how many
# arrive per wake-up moves CPU per heartbeat by ~20 % (CONTROL=1 showed it).
"$BIN/lifeline-load" --target 127.0.0.1:$ALONE_PORT --conns $((CONNS / NODES)) \
  --workers $((LOADS * LOAD_WORKERS)) \
  --source-ips 127.0.0.200-127.0.0.215 --ramp 4000 --duration "$DURATION" --json \
  >"$OUT/alone-load.json" 2>"$OUT/alone-load.err" & PIDS+=($!)

SILENT=${SILENT:-0}
if [ "$SILENT" -gt 0 ]; then
  "$BIN/lifeline-load" --target 127.0.0.1:$PORT --conns "$SILENT" --workers 1 \
    --source-ips 127.0.0.240-127.0.0.247 --ramp 4000 --mode silent --silent-fraction 0.5 \
    --id-prefix silent --duration "$DURATION" --json >"$OUT/silent.json" 2>"$OUT/silent.err" &
  PIDS+=($!)
fi
lateness() { # per node: silent clients closed, within 5 / 10 ms, the latest (last 5 min)
  echo "--- close lateness (server-measured) per node"
  for i in "${LIVE[@]}"; do
    curl -s -m 2 "http://127.0.0.1:$((ADMIN + i))/metrics" | awk -v n="n$i" '
      /^lifeline_close_lateness_seconds_bucket\{le="0.005"\}/ {a = $2}
      /^lifeline_close_lateness_seconds_bucket\{le="0.01"\}/ {b = $2}
      /^lifeline_close_lateness_seconds_count/ {c = $2}
      /^lifeline_close_lateness_max_seconds/ {m = $2}
      END {printf "%s: %d closed at their deadline, %d within 5 ms, %d within 10 ms, latest %.1f ms\n", n, c, a, b, m * 1000}'
  done | tee "$OUT/lateness.txt"
}

memory_model() { # under load, before the kill
  echo "--- memory model inputs"
  for i in "${LIVE[@]}"; do
    n=$(metric $((ADMIN + i)) lifeline_connections_open); r=$(rss_kb "${NODE_PIDS[$i]}")
    echo "node n$i: $n connections, user RSS $r KiB (+$((r - RSS0[$i])) KiB since start): $(( (r - RSS0[$i]) * 1024 / (n + 1) )) B/connection"
  done | tee "$OUT/memory.txt"
  n=$(metric $ALONE_ADMIN lifeline_connections_open); r=$(rss_kb "$ALONE")
  echo "standalone: $n connections, $(( (r - RSS0_ALONE) * 1024 / (n + 1) )) B/connection" | tee -a "$OUT/memory.txt"
  echo "kernel: $(grep '^TCP:' /proc/net/sockstat) (mem in pages, both ends of every loopback connection)" | tee -a "$OUT/memory.txt"
  echo "kernel, the nodes' port only: $(ss -tmnH state established "( sport = :$PORT )" | grep -o 'skmem:([^)]*)' | \
    awk -F'[(,)]' '{for (i = 2; i <= NF; i++) {v = $i; gsub(/[a-z]/, "", v); k = $i; gsub(/[0-9]/, "", k); if (k == "r" || k == "t" || k == "f" || k == "w") s[k] += v}; n++}
      END {printf "%d sockets, rmem_alloc %.0f B, wmem_alloc %.0f B, fwd_alloc %.0f B, queued %.0f B per socket", n, s["r"]/n, s["t"]/n, s["f"]/n, s["w"]/n}')" | tee -a "$OUT/memory.txt"
  echo "redis: used_memory $(rcli INFO memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r') for $(rcli HLEN ll:presence) ids" | tee -a "$OUT/memory.txt"
}
# One read of every node's /metrics per sample; the figures come from it.
scrape() { for i in "$@"; do curl -s -m 2 "http://127.0.0.1:$((ADMIN + i))/metrics" >"$OUT/metrics.n$i"; done; }
scraped() { awk -v n="$2" '$1 == n {print $2; exit}' "$OUT/metrics.n$1"; }
heartbeats() { local s=0 v; for i in "$@"; do v=$(scraped "$i" lifeline_heartbeats_received_total); s=$((s + ${v:-0})); done; echo $s; }
online_sum() { local s=0 v; for i in "$@"; do v=$(scraped "$i" lifeline_clients_online); s=$((s + ${v:-0})); done; echo $s; }
timeouts() { local s=0 v; for i in "$@"; do
  v=$(awk '$1 ~ /lifeline_connections_closed_total\{reason="timeout"\}/ {print $2}' "$OUT/metrics.n$i")
  s=$((s + ${v:-0})); done; echo $s; }
redis_calls() { rcli INFO commandstats | awk -F'[=,]' '/^cmdstat_/ {s += $2} END {print s + 0}'; }

LIVE=($(seq 0 $((NODES - 1))))
START=$(date +%s)
scrape "${LIVE[@]}"
prev_t=$START; prev_hb=$(heartbeats "${LIVE[@]}"); prev_calls=$(redis_calls)
declare -A PREV_CPU; for i in "${LIVE[@]}"; do PREV_CPU[$i]=$(cpu_ticks "${NODE_PIDS[$i]}"); done
prev_alone_cpu=$(cpu_ticks "$ALONE"); prev_alone_hb=$(metric $ALONE_ADMIN lifeline_heartbeats_received_total)
prev_redis_cpu=$(cpu_ticks "$REDIS")
probed=0; killed=0
echo "t_s hlen sum_online equal redis_cmds_per_hb redis_cmds_per_s cpu_us_per_hb_nodes(min/max) cpu_us_per_hb_alone redis_cpu_pct wrong_timeouts" | tee "$OUT/samples.txt"
while [ $(( $(date +%s) - START )) -lt "$DURATION" ]; do
  sleep "$SAMPLE"
  t=$(date +%s)
  scrape "${LIVE[@]}"
  hlen=$(rcli HLEN ll:presence); sum=$(online_sum "${LIVE[@]}")
  hb=$(heartbeats "${LIVE[@]}"); calls=$(redis_calls)
  dhb=$((hb - prev_hb)); dcalls=$((calls - prev_calls))
  per_node=""
  for i in "${LIVE[@]}"; do
    c=$(cpu_ticks "${NODE_PIDS[$i]}"); h=$(scraped "$i" lifeline_heartbeats_received_total)
    eval "ph=\${PREV_HB_$i:-0}"
    d=$((h - ph)); [ "$d" -gt 0 ] && per_node="$per_node $(echo "scale=2; ($c - ${PREV_CPU[$i]}) * 1000000 / $TCK / $d" | bc)"
    PREV_CPU[$i]=$c; eval "PREV_HB_$i=$h"
  done
  ac=$(cpu_ticks "$ALONE"); ah=$(metric $ALONE_ADMIN lifeline_heartbeats_received_total)
  alone=$(echo "scale=2; ($ac - $prev_alone_cpu) * 1000000 / $TCK / ($ah - $prev_alone_hb + 1)" | bc)
  rc=$(cpu_ticks "$REDIS")
  rpct=$(echo "scale=1; ($rc - $prev_redis_cpu) * 100 / $TCK / ($t - $prev_t)" | bc)
  mm=$(echo "$per_node" | tr ' ' '\n' | grep . | sort -n | awk 'NR==1{a=$1} {b=$1} END{print a "/" b}')
  eq=$([ "$hlen" = "$sum" ] && echo yes || echo NO)
  echo "$((t - START)) $hlen $sum $eq $(echo "scale=5; $dcalls / ($dhb + 1)" | bc) $((dcalls / (t - prev_t + 1))) $mm $alone $rpct $(timeouts "${LIVE[@]}")" | tee -a "$OUT/samples.txt"
  prev_t=$t; prev_hb=$hb; prev_calls=$calls; prev_alone_cpu=$ac; prev_alone_hb=$ah; prev_redis_cpu=$rc

  if [ "$probed" = 0 ] && [ $((t - START)) -ge "$PROBE_AT" ]; then
    probed=1
    rcli INFO commandstats >"$OUT/commandstats-before-probes.txt"
    # The probes end before the kill.
    PROBE_S=$(( (KILL_AT - PROBE_AT) * 3 / 4 )); [ "$PROBE_S" -gt 25 ] && PROBE_S=25
    python3 tools/bench/xmsg.py --target 127.0.0.1:$PORT --admin http://127.0.0.1:$ADMIN \
      --pairs 100 --rate 200 --duration "$PROBE_S" --interval-ms "$HEARTBEAT_MS" >"$OUT/xmsg.txt" 2>&1 &
    PIDS+=($!)
    "$BIN/lifeline-load" --target 127.0.0.1:$PORT --conns 600 --source-ips 127.0.0.250 \
      --mode push --admin http://127.0.0.1:$ADMIN --push-rate 100 --wait-ack-ms 5000 --id-prefix push \
      --duration "$PROBE_S" --json >"$OUT/push.json" 2>"$OUT/push.err" &
    PIDS+=($!)
  fi
  if [ "$killed" = 0 ] && [ $((t - START)) -ge "$KILL_AT" ]; then
    killed=1
    memory_model
    victim=$((NODES - 1)); held=$(metric $((ADMIN + victim)) lifeline_clients_online)
    before=$(rcli HLEN ll:presence)
    kill -9 "${NODE_PIDS[$victim]}"; k0=$(date +%s.%N)
    LIVE=($(seq 0 $((NODES - 2))))
    # Offline everywhere: no presence entry names the dead node any more
    # (its id set is empty once a survivor's cleanup is done). Bounded.
    while { [ "$(rcli SCARD ll:nodeids:n$victim)" != 0 ] || rcli --raw HVALS ll:presence | grep -q "^n$victim"; } \
          && [ "$(echo "$(date +%s.%N) - $k0 < $((TTL_MS / 1000 + 30))" | bc)" = 1 ]; do sleep 0.05; done
    gone=$(echo "$(date +%s.%N) - $k0" | bc)
    # Back on the survivors: presence as large as before the kill (at most
    # what the survivors' descriptors allow), polled until the run ends.
    cap=$(( (NODES - 1) * 19936 )); target=$before; [ "$target" -gt "$cap" ] && target=$cap
    end=$((START + DURATION))
    while [ "$(rcli HLEN ll:presence)" -lt "$target" ] && [ "$(date +%s)" -lt "$end" ]; do sleep 0.1; done
    back=$(echo "$(date +%s.%N) - $k0" | bc)
    echo "kill -9 n$victim holding $held of $before: offline everywhere after ${gone}s; presence $(rcli HLEN ll:presence) (target $target) after ${back}s" | tee "$OUT/kill.txt"
  fi
done
rcli INFO commandstats >"$OUT/commandstats.txt"
[ "$SILENT" -gt 0 ] && lateness && echo "silent load: $(cat "$OUT/silent.json" 2>/dev/null)"
cat "$OUT/xmsg.txt" 2>/dev/null
echo "push (cross-node for (NODES-1)/NODES of them): $(grep -o '"push_latency_[a-z0-9_]*":[0-9]*' "$OUT/push.json" 2>/dev/null | tr '\n' ' ')"
for l in $(seq 0 $((LOADS - 1))); do echo "load $l: $(cat "$OUT/load$l.json" 2>/dev/null)"; done
echo "standalone load: $(cat "$OUT/alone-load.json" 2>/dev/null)"
echo "redis commands by name (whole run): $(awk -F'[:=,]' '/^cmdstat_/ {printf "%s=%s ", $1, $3}' "$OUT/commandstats.txt")"
