#!/usr/bin/env bash
# tools/bench/kernel-mem.sh: kernel memory per idle TCP socket on loopback,
# for the memory model in BENCHMARKS.md (cluster section). Reads `Slab:` of
# /proc/meminfo and `TCP mem` of /proc/net/sockstat before and while 19,000
# idle logged-in connections are open; both ends are on this host, so the
# delta is divided by every established socket on the port (38,000).
#
#   tools/bench/kernel-mem.sh [LIFELINE_BIN] [LOAD_BIN]
#
# Needs root (it drops the page cache's slab objects first, so that the
# baseline is not shrinking under the measurement). Bounded: the load runs
# 16 s; only the server started here is signalled. Not for CI.
set -u
[[ -n ${CI:-} ]] && { echo "kernel-mem.sh: not for CI" >&2; exit 2; }
BIN=${1:-target/release/lifeline}
LOAD=${2:-target/release/lifeline-load}
PORT=${PORT:-27170}
slab() { awk '/^Slab:/ {print $2}' /proc/meminfo; }
tcpmem() { awk '/^TCP:/ {for (i = 1; i <= NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat; }

LIFELINE_LISTEN=127.0.0.1:$PORT LIFELINE_ADMIN_ADDR= LIFELINE_LOG=warn LIFELINE_HEARTBEAT_MS=60000 \
    taskset -c 0 "$BIN" >/dev/null 2>&1 &
sp=$!
trap 'kill "$sp" 2>/dev/null' EXIT
sleep 0.5
sync
echo 2 >/proc/sys/vm/drop_caches
sleep 1
s0=$(slab) t0=$(tcpmem)
taskset -c 1 "$LOAD" --target 127.0.0.1:$PORT --conns 19000 --workers 2 --source-ips 4 --ramp 5000 \
    --interval-ms 30000 --duration 16 >/dev/null 2>&1 &
lp=$!
sleep 11 # the ramp takes ~4 s; all 19,000 are logged in and idle by now
s1=$(slab) t1=$(tcpmem)
n=$(ss -Htn state established "( sport = :$PORT or dport = :$PORT )" | wc -l)
((n > 0)) || { echo "kernel-mem.sh: no established connection on port $PORT" >&2; exit 1; }
echo "slab_kib before=$s0 during=$s1 delta=$((s1 - s0)); tcp_mem_pages before=$t0 during=$t1;" \
    "established_sockets=$n; kernel_bytes_per_socket=$(((s1 - s0) * 1024 / n + (t1 - t0) * 4096 / n))"
wait "$lp"
