#!/usr/bin/env bash
# tools/bench/compare.sh: Lifeline against its peers (tools/bench/peers,
# Redis, Mosquitto), measured as BENCHMARKS.md describes.
#
#   server pinned to CPU 0 (taskset -c 0), lifeline-load pinned to CPU 1,
#   server CPU = utime+stime of /proc/PID/stat over the measured window
#   (lifeline-load --server-pid), ratios from interleaved rounds of ONE run,
#   medians.
#
# Cases (CASES, default all, in this order):
#   cpu      10,000 conns x 1 ping/s: server CPU us per round trip (total, user),
#            ratio to floor per round; then one extra round under
#            `perf stat -e raw_syscalls:sys_enter` for syscalls per round trip
#   closed   closed loop (--mode max), 1,000 conns, one ping outstanding: rt/s
#   rss      19,000 idle logged-in conns on a fresh server: RSS per conn
#   silent   silent detection: lifeline at 19,000 and 10,000, tokio at 10,000
#   latency  pong latency at 1,000 and 19,000 (10,000 comes from `cpu`)
#   micro    cargo bench --bench codec / --bench wheel
#
# Not for CI: it installs Debian packages (mosquitto, redis-server,
# nats-server, linux-perf) when they are missing, needs root for that and for
# perf, and takes ~20 minutes. It stops by itself: every load run is bounded by
# `timeout`, every server it starts is stopped, and only the PIDs it started
# are ever signalled.
#
# Environment:
#   OUT=DIR           results directory (default /tmp/lifeline-bench-DATE)
#   CASES="cpu ..."   subset of cases to run
#   ROUNDS=3          interleaved rounds for cpu and closed; RSS_ROUNDS=2, SILENT_ROUNDS=2
#   REV=HEAD          the commit measured: exported with git archive to $OUT/src and
#                     built there (REV=worktree: build the repo as it is, in place)
#   LOADGEN_REV=REV   take tools/lifeline-load/ from another commit (default: REV)
#   OVERLAY="web"     worktree paths copied into the export when the commit lacks them
#   LIFELINE_TARGET=DIR, PEER_TARGET=DIR
#                     CARGO_TARGET_DIRs (default /tmp/lifeline-bench-target/{lifeline,tokio-peer})
#   SHARED=DIR        where floor.c and tokio-peer/ live (default tools/bench/peers)
#   SKIP_BUILD=1      use binaries already in $OUT/bin
#
# Output: $OUT/results.txt (one line per run: tags, then the raw RESULT line
# of lifeline-load), $OUT/summary.md (tables and medians), $OUT/logs/.

set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SHARED=${SHARED:-$REPO/tools/bench/peers}
OUT=${OUT:-/tmp/lifeline-bench-$(date +%Y%m%d-%H%M%S)}
CASES=${CASES:-cpu closed rss silent latency micro}
ROUNDS=${ROUNDS:-3}
RSS_ROUNDS=${RSS_ROUNDS:-2}
SILENT_ROUNDS=${SILENT_ROUNDS:-2}
PEER_TARGET=${PEER_TARGET:-/tmp/lifeline-bench-target/tokio-peer}
LIFELINE_TARGET=${LIFELINE_TARGET:-/tmp/lifeline-bench-target/lifeline}
REV=${REV:-HEAD}
OVERLAY=${OVERLAY:-web}
LOADGEN_REV=${LOADGEN_REV:-}
BIN=$OUT/bin
RESULTS=$OUT/results.txt
LOGS=$OUT/logs

# One port per server kind, away from the defaults of anything else running.
declare -A PORT=([floor]=26400 [tokio]=26410 [lifeline]=26420 [redis]=26430 [mosquitto]=26440)
declare -A PROTO=([floor]=redis [tokio]=redis [lifeline]=lifeline [redis]=redis [mosquitto]=mqtt)

STARTED=()   # every PID this script started and may still have to stop
SPID=""      # the server of the current run

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$OUT/campaign.log" >&2; }
die() { log "FATAL: $*"; exit 1; }

cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null
        fi
    done
    sleep 0.5
    for pid in "${STARTED[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid" 2>/dev/null
        fi
    done
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

forget() { # drop a PID from STARTED once it is gone
    local keep=() pid
    for pid in "${STARTED[@]}"; do [[ $pid == "$1" ]] || keep+=("$pid"); done
    STARTED=("${keep[@]}")
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg | tr ' ' '/'; }

ticks_of() { # utime+stime of a process in clock ticks (fields after the last ')')
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    awk '{print $12 + $13}' <<<"${stat##*)}"
}

rss_of() { # VmRSS and RssAnon in kB, "VmRSS RssAnon"
    awk '/^VmRSS:/{r=$2} /^RssAnon:/{a=$2} END{print r+0, a+0}' "/proc/$1/status"
}

# ---------------------------------------------------------------- setup

preflight() {
    [[ -n ${CI:-} ]] && die "not for CI (it installs packages and takes ~20 minutes)"
    local missing=()
    command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || missing+=(mosquitto)
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v nats-server >/dev/null || missing+=(nats-server)
    command -v perf >/dev/null || missing+=(linux-perf)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y "${missing[@]}" >"$LOGS/apt.log" 2>&1 ||
            die "apt-get install ${missing[*]} failed, see $LOGS/apt.log"
    fi
    for tool in taskset gcc cargo ss; do command -v "$tool" >/dev/null || die "$tool is missing"; done
    MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
}

build() {
    mkdir -p "$BIN"
    if [[ -n ${SKIP_BUILD:-} ]]; then return; fi
    # The measured code is a commit, exported with git archive into $SRC and
    # built there: the worktree may be mid-edit, and another build in the repo
    # must not swap a binary mid-campaign. REV=worktree builds the repo in place.
    if [[ $REV == worktree ]]; then
        SRC=$REPO
    else
        SRC=$OUT/src
        rm -rf "$SRC" && mkdir -p "$SRC"
        git -C "$REPO" archive --format=tar "$REV" | tar -x -C "$SRC" || die "git archive $REV failed"
        git -C "$REPO" rev-parse "$REV" >"$OUT/commit.txt"
        # Paths the commit needs but does not hold (untracked in the worktree),
        # copied in from the worktree; said in machine.txt.
        local p
        for p in $OVERLAY; do
            if [[ ! -e $SRC/$p && -e $REPO/$p ]]; then
                cp -r "$REPO/$p" "$SRC/$p"
                echo "$p" >>"$OUT/overlay.txt"
                log "note: $p is not in $REV; copied from the worktree"
            fi
        done
        if [[ $LOADGEN_REV != "$REV" ]]; then
            log "note: tools/lifeline-load taken from $LOADGEN_REV"
            rm -rf "$SRC/tools/lifeline-load"
            git -C "$REPO" archive --format=tar "$LOADGEN_REV" tools/lifeline-load | tar -x -C "$SRC" ||
                die "git archive $LOADGEN_REV tools/lifeline-load failed"
        fi
    fi
    log "building lifeline and lifeline-load (release) from $REV in $SRC"
    (cd "$SRC" && CARGO_TARGET_DIR=$LIFELINE_TARGET timeout 900 cargo build --release --bins) \
        >"$LOGS/build-lifeline.log" 2>&1 || die "cargo build --release failed, see $LOGS/build-lifeline.log"
    cp "$LIFELINE_TARGET/release/lifeline" "$LIFELINE_TARGET/release/lifeline-load" "$BIN/"
    if [[ " $CASES " == *" micro "* ]]; then
        log "building the criterion benches"
        (cd "$SRC" && CARGO_TARGET_DIR=$LIFELINE_TARGET timeout 900 cargo bench --no-run --bench codec --bench wheel) \
            >"$LOGS/build-benches.log" 2>&1 || log "ANOMALY: benches do not build, see $LOGS/build-benches.log"
    fi
    log "building floor"
    gcc -O2 -o "$BIN/floor" "$SHARED/floor.c" || die "gcc floor.c failed"
    log "building tokio-peer (CARGO_TARGET_DIR=$PEER_TARGET)"
    (cd "$SHARED/tokio-peer" && CARGO_TARGET_DIR=$PEER_TARGET timeout 900 cargo build --release) \
        >"$LOGS/build-tokio-peer.log" 2>&1 || die "tokio-peer build failed, see $LOGS/build-tokio-peer.log"
    cp "$PEER_TARGET/release/tokio-peer" "$BIN/"
}

machine() {
    {
        echo "date:    $(date -Is)"
        echo "nproc:   $(nproc)"
        echo "cpu:     $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)"
        echo "kernel:  $(uname -r)"
        echo "uptime:  $(uptime)"
        echo "nofile:  $(ulimit -n)"
        echo "lifeline: $REV = $(git -C "$REPO" rev-parse --short "${REV/worktree/HEAD}")$([[ $REV == worktree ]] && echo " plus $(git -C "$REPO" status --short | wc -l) changed paths")$([[ -s $OUT/overlay.txt ]] && echo " plus untracked $(tr '\n' ' ' <"$OUT/overlay.txt")from the worktree")"
        echo "lifeline-load: $LOADGEN_REV"
        echo "redis:   $(redis-server --version 2>/dev/null)"
        echo "mosquitto: $(dpkg-query -W -f='${Version}' mosquitto 2>/dev/null)"
        echo "tokio:   $(awk '/^name = "tokio"$/{getline; print $3; exit}' "$SHARED/tokio-peer/Cargo.lock" | tr -d '"')"
    } | tee "$OUT/machine.txt" >&2
}

# ---------------------------------------------------------------- servers

wait_listening() { # port pid
    local i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$2" 2>/dev/null || return 1
        [[ -n $(ss -Hltn "sport = :$1" 2>/dev/null) ]] && return 0
        sleep 0.05
    done
    return 1
}

# start_server KIND TAG [VAR=VALUE ...]: a fresh server pinned to CPU 0; sets SPID.
start_server() {
    local kind=$1 tag=$2
    shift 2
    local port=${PORT[$kind]} errlog=$LOGS/server-$tag.log
    case $kind in
    floor) env "$@" taskset -c 0 "$BIN/floor" "$port" >"$errlog" 2>&1 & ;;
    tokio) env "$@" taskset -c 0 "$BIN/tokio-peer" "$port" >"$errlog" 2>&1 & ;;
    lifeline)
        env LIFELINE_LISTEN=127.0.0.1:$port LIFELINE_ADMIN_ADDR= LIFELINE_LOG=warn "$@" \
            taskset -c 0 "$BIN/lifeline" >"$errlog" 2>&1 &
        ;;
    redis)
        env "$@" taskset -c 0 redis-server --port "$port" --bind 127.0.0.1 --protected-mode no \
            --save '' --appendonly no --maxclients 19900 --loglevel warning --daemonize no \
            >"$errlog" 2>&1 &
        ;;
    mosquitto)
        printf '%s\n' "listener $port 127.0.0.1" "allow_anonymous true" "persistence false" \
            "max_connections -1" "log_dest stderr" "log_type error" "log_type warning" >"$OUT/mosquitto.conf"
        env "$@" taskset -c 0 "$MOSQUITTO" -c "$OUT/mosquitto.conf" >"$errlog" 2>&1 &
        ;;
    *) die "unknown server $kind" ;;
    esac
    SPID=$!
    STARTED+=("$SPID")
    if ! wait_listening "$port" "$SPID"; then
        log "ANOMALY: $tag did not start listening on $port, see $errlog"
        echo "ANOMALY server=$tag did-not-listen" >>"$RESULTS"
        kill "$SPID" 2>/dev/null
        wait "$SPID" 2>/dev/null
        forget "$SPID"
        return 1
    fi
    sleep 0.5 # let it settle before a "before" RSS reading
}

stop_server() { # tag
    local tag=$1 i rc
    if ! kill -0 "$SPID" 2>/dev/null; then
        wait "$SPID" 2>/dev/null
        rc=$?
        log "ANOMALY: server $tag (pid $SPID) died during the run, status $rc; see $LOGS/server-$tag.log"
        echo "ANOMALY server=$tag died status=$rc" >>"$RESULTS"
        forget "$SPID"
        return
    fi
    kill "$SPID" 2>/dev/null
    for ((i = 0; i < 50; i++)); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$SPID" 2>/dev/null && kill -9 "$SPID" 2>/dev/null
    wait "$SPID" 2>/dev/null
    forget "$SPID"
    if [[ -s $LOGS/server-$tag.log ]] && grep -iE 'error|panic|warn' "$LOGS/server-$tag.log" | grep -vq 'overcommit'; then
        log "note: server $tag logged: $(grep -iE 'error|panic|warn' "$LOGS/server-$tag.log" | grep -v overcommit | head -3 | tr '\n' ' ')"
    fi
}

# ---------------------------------------------------------------- load

# run_load TAGS SECONDS ARGS...: lifeline-load pinned to CPU 1, bounded; its
# RESULT line is appended to $RESULTS after TAGS. Sets LAST_RESULT.
LAST_RESULT=""
run_load() {
    local tags=$1 duration=$2
    shift 2
    local name out
    name=$(tagname "$tags")
    out=$LOGS/load-$name.out
    timeout --kill-after=5 $((duration + 45)) taskset -c 1 "$BIN/lifeline-load" --duration "$duration" "$@" \
        >"$out" 2>"$LOGS/load-$name.err" &
    local lpid=$!
    STARTED+=("$lpid")
    LOAD_PID=$lpid
}

finish_load() { # tags [extra k=v ...]
    local tags=$1 rc
    shift
    wait "$LOAD_PID"
    rc=$?
    forget "$LOAD_PID"
    local name
    name=$(tagname "$tags")
    LAST_RESULT=$(grep '^RESULT ' "$LOGS/load-$name.out" | tail -1)
    if [[ -z $LAST_RESULT ]]; then
        log "ANOMALY: no RESULT from lifeline-load for [$tags] (exit $rc), see $LOGS/load-$name.err"
        echo "$tags $* load_exit=$rc RESULT missing" >>"$RESULTS"
        return 1
    fi
    echo "$tags $* $LAST_RESULT" >>"$RESULTS"
    local k
    for k in connect_errors login_errors login_timeouts unexpected_closes wrong_timeouts server_errors protocol_errors pings_unanswered silent_early silent_not_closed healthy_closed; do
        local v
        v=$(kv "$LAST_RESULT" "$k")
        if [[ -n $v && $v != 0 && $v != - ]]; then log "ANOMALY? [$tags] $k=$v"; fi
    done
}

tagname() { sed 's/ loadavg=[^ ]*//; s/case=//; s/[^A-Za-z0-9]\+[a-z]*=/-/g' <<<"$1"; }

kv() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1==k{print substr($0, length(k)+2); exit}'; }

server_env() { # kind case -> VAR=VALUE words for start_server
    case "$1/$2" in
    lifeline/idle) echo LIFELINE_HEARTBEAT_MS=60000 ;;
    lifeline/silent) echo LIFELINE_HEARTBEAT_MS=1000 LIFELINE_MISSES=3 ;;
    lifeline/*) echo LIFELINE_HEARTBEAT_MS=5000 ;; # > the client's 1 s, so no probes cross pings
    tokio/silent) echo IDLE_TIMEOUT_MS=3000 ;;
    *) echo ;;
    esac
}

# ---------------------------------------------------------------- cases

case_cpu() {
    local kinds=(floor lifeline tokio redis mosquitto) r kind tags
    log "case cpu: 10,000 conns x 1 ping/s, $ROUNDS interleaved rounds + 1 perf round"
    for ((r = 1; r <= ROUNDS + 1; r++)); do
        for kind in "${kinds[@]}"; do
            local round=$r perf=""
            ((r > ROUNDS)) && round=perf && perf=1
            tags="case=cpu server=$kind round=$round loadavg=$(loadavg)"
            # shellcheck disable=SC2046
            start_server "$kind" "cpu-$kind-$round" $(server_env "$kind" cpu) || continue
            run_load "$tags" 17 --target "127.0.0.1:${PORT[$kind]}" --proto "${PROTO[$kind]}" \
                --conns 10000 --ramp 5000 --interval-ms 1000 --warmup 5 --server-pid "$SPID"
            local extra=""
            if [[ -n $perf ]]; then
                sleep 7
                local pf=$LOGS/perf-$kind.csv
                timeout 20 perf stat -x, -o "$pf" -e raw_syscalls:sys_enter -p "$SPID" -- sleep 5 \
                    >/dev/null 2>&1 || log "perf stat failed for $kind"
                extra="perf_syscalls=$(awk -F, '/raw_syscalls/{print $1; exit}' "$pf" 2>/dev/null) perf_s=5"
            fi
            finish_load "$tags" $extra
            log "  cpu $kind round $round: us/rt=$(kv "$LAST_RESULT" server_cpu_us_per_rt) user=$(kv "$LAST_RESULT" server_user_us_per_rt) rt/s=$(kv "$LAST_RESULT" rt_per_s) p99=$(kv "$LAST_RESULT" rtt_p99_us) $extra"
            stop_server "cpu-$kind-$round"
        done
    done
}

case_closed() {
    local kinds=(floor lifeline tokio redis mosquitto) r kind tags
    log "case closed: --mode max, 1,000 conns, $ROUNDS interleaved rounds"
    for ((r = 1; r <= ROUNDS; r++)); do
        for kind in "${kinds[@]}"; do
            tags="case=closed server=$kind round=$r loadavg=$(loadavg)"
            # shellcheck disable=SC2046
            start_server "$kind" "closed-$kind-$r" $(server_env "$kind" closed) || continue
            run_load "$tags" 13 --target "127.0.0.1:${PORT[$kind]}" --proto "${PROTO[$kind]}" \
                --mode max --conns 1000 --ramp 5000 --warmup 3 --server-pid "$SPID"
            # How busy the load core is: the loop is closed, so whichever side
            # saturates its core first sets the rate.
            local lp c0 c1 hz
            hz=$(getconf CLK_TCK)
            sleep 4
            lp=$(pgrep -P "$LOAD_PID" | head -1)
            c0=$(ticks_of "$lp")
            sleep 8
            c1=$(ticks_of "$lp")
            finish_load "$tags" "client_cpu_util=$(awk -v a="$c0" -v b="$c1" -v hz="$hz" 'BEGIN{printf "%.2f", (b-a)/hz/8}')"
            log "  closed $kind round $r: rt/s=$(kv "$LAST_RESULT" rt_per_s) us/rt=$(kv "$LAST_RESULT" server_cpu_us_per_rt) server_cpu_ms=$(kv "$LAST_RESULT" server_cpu_ms) load-core busy=$(tail -1 "$RESULTS" | tr ' ' '\n' | grep '^client_cpu_util=')"
            stop_server "closed-$kind-$r"
        done
    done
}

case_rss() {
    local kinds=(floor lifeline tokio redis mosquitto) r kind tags
    log "case rss: 19,000 idle logged-in conns on a fresh server, $RSS_ROUNDS rounds"
    for ((r = 1; r <= RSS_ROUNDS; r++)); do
        for kind in "${kinds[@]}"; do
            tags="case=rss server=$kind round=$r loadavg=$(loadavg)"
            # shellcheck disable=SC2046
            start_server "$kind" "rss-$kind-$r" $(server_env "$kind" idle) || continue
            local before mid
            before=$(rss_of "$SPID")
            run_load "$tags" 14 --target "127.0.0.1:${PORT[$kind]}" --proto "${PROTO[$kind]}" \
                --conns 19000 --workers 2 --source-ips 4 --ramp 5000 --interval-ms 30000 \
                --warmup 9 --server-pid "$SPID"
            sleep 11 # all logged in at ~4 s; read while every connection is open and idle
            mid=$(rss_of "$SPID")
            finish_load "$tags" "pre_rss_kb=${before% *} pre_anon_kb=${before#* } mid_rss_kb=${mid% *} mid_anon_kb=${mid#* }"
            local logins
            logins=$(kv "$LAST_RESULT" logins)
            log "  rss $kind round $r: before=$before mid=$mid logins=$logins -> $(((${mid% *} - ${before% *}) * 1024 / (logins > 0 ? logins : 1))) B/conn RSS, $(((${mid#* } - ${before#* }) * 1024 / (logins > 0 ? logins : 1))) B/conn anon"
            stop_server "rss-$kind-$r"
        done
    done
}

case_silent() {
    local r tags
    log "case silent: lifeline 19,000 & 10,000 (deadline 3000 ms), tokio 10,000 (IDLE_TIMEOUT_MS=3000), $SILENT_ROUNDS rounds"
    for ((r = 1; r <= SILENT_ROUNDS; r++)); do
        local spec kind conns
        for spec in lifeline:19000 tokio:10000 lifeline:10000; do
            kind=${spec%:*} conns=${spec#*:}
            tags="case=silent server=$kind n=$conns round=$r loadavg=$(loadavg)"
            # shellcheck disable=SC2046
            start_server "$kind" "silent-$kind-$conns-$r" $(server_env "$kind" silent) || continue
            local args=(--target "127.0.0.1:${PORT[$kind]}" --proto "${PROTO[$kind]}" --mode silent
                --silent-fraction 0.5 --conns "$conns" --ramp 5000 --source-ips 4 --server-pid "$SPID")
            ((conns > 10000)) && args+=(--workers 2)
            [[ $kind == tokio ]] && args+=(--interval-ms 1000 --deadline-ms 3000)
            run_load "$tags" 40 "${args[@]}"
            finish_load "$tags"
            log "  silent $kind $conns round $r: closed=$(kv "$LAST_RESULT" silent_closed)/$(kv "$LAST_RESULT" silent_total) early=$(kv "$LAST_RESULT" silent_early) delay p50/p99/max=$(kv "$LAST_RESULT" close_delay_p50_us)/$(kv "$LAST_RESULT" close_delay_p99_us)/$(kv "$LAST_RESULT" close_delay_max_us) late max=$(kv "$LAST_RESULT" lateness_max_us) wrong=$(kv "$LAST_RESULT" wrong_timeouts)"
            stop_server "silent-$kind-$conns-$r"
        done
    done
}

case_latency() {
    local n kind tags
    log "case latency: steady 1 ping/s at 1,000 and 19,000 (10,000: see case cpu)"
    for n in 1000 19000; do
        for kind in floor lifeline tokio; do
            tags="case=latency server=$kind n=$n round=1 loadavg=$(loadavg)"
            # shellcheck disable=SC2046
            start_server "$kind" "latency-$kind-$n" $(server_env "$kind" latency) || continue
            local args=(--target "127.0.0.1:${PORT[$kind]}" --proto "${PROTO[$kind]}" --conns "$n"
                --ramp 5000 --interval-ms 1000 --warmup 6 --server-pid "$SPID")
            ((n > 10000)) && args+=(--workers 2 --source-ips 4)
            run_load "$tags" 18 "${args[@]}"
            finish_load "$tags"
            log "  latency $kind $n: p50/p99/p999/max=$(kv "$LAST_RESULT" rtt_p50_us)/$(kv "$LAST_RESULT" rtt_p99_us)/$(kv "$LAST_RESULT" rtt_p999_us)/$(kv "$LAST_RESULT" rtt_max_us) us/rt=$(kv "$LAST_RESULT" server_cpu_us_per_rt)"
            stop_server "latency-$kind-$n"
        done
    done
}

case_micro() {
    log "case micro: cargo bench --bench codec; --bench wheel (loadavg $(loadavg))"
    (cd "$SRC" && CARGO_TARGET_DIR=$LIFELINE_TARGET timeout 900 cargo bench --bench codec) >"$OUT/micro-codec.txt" 2>&1 ||
        log "ANOMALY: cargo bench --bench codec failed, see $OUT/micro-codec.txt"
    (cd "$SRC" && CARGO_TARGET_DIR=$LIFELINE_TARGET timeout 900 cargo bench --bench wheel -- --warm-up-time 1 --measurement-time 4) \
        >"$OUT/micro-wheel.txt" 2>&1 || log "ANOMALY: cargo bench --bench wheel failed, see $OUT/micro-wheel.txt"
    echo "micro loadavg_after=$(loadavg)" >>"$RESULTS"
}

# ---------------------------------------------------------------- summary

summarize() {
    command -v python3 >/dev/null || { log "no python3: skipping summary (raw lines in $RESULTS)"; return; }
    python3 - "$RESULTS" >"$OUT/summary.md" <<'PY'
import sys, statistics as st
runs = []
for line in open(sys.argv[1]):
    if not line.startswith("case="):
        continue
    kv = {}
    for tok in line.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            kv.setdefault(k, v)
    runs.append(kv)

def num(r, k):
    try:
        return float(r[k])
    except (KeyError, ValueError):
        return None

def med(xs):
    xs = [x for x in xs if x is not None]
    return st.median(xs) if xs else None

def f(x, d=2):
    return "-" if x is None else f"{x:.{d}f}"

def sel(case, **kw):
    return [r for r in runs if r.get("case") == case and all(r.get(k) == v for k, v in kw.items())]

kinds = ["floor", "lifeline", "tokio", "redis", "mosquitto"]
out = []
# cpu
cpu = [r for r in sel("cpu") if r.get("round") != "perf"]
rounds = sorted({r["round"] for r in cpu}, key=int)
if cpu:
    out.append("## 10,000 conns x 1 ping/s: server CPU per round trip\n")
    out.append("| server | " + " | ".join(f"round {x} us/rt (user) [ratio]" for x in rounds) + " | median us/rt | median user us/rt | median ratio to floor | rt/s | rtt p50/p99 us |")
    out.append("|---" * (len(rounds) + 6) + "|")
    for k in kinds:
        cells, ratios = [], []
        for x in rounds:
            r = next(iter(sel("cpu", server=k, round=x)), None)
            fl = next(iter(sel("cpu", server="floor", round=x)), None)
            if r is None:
                cells.append("-"); continue
            c, u = num(r, "server_cpu_us_per_rt"), num(r, "server_user_us_per_rt")
            ratio = c / num(fl, "server_cpu_us_per_rt") if fl and c and num(fl, "server_cpu_us_per_rt") else None
            ratios.append(ratio)
            cells.append(f"{f(c)} ({f(u)}) [{f(ratio)}] load {r.get('loadavg','')}")
        rs = sel("cpu", server=k)
        rs = [r for r in rs if r.get("round") != "perf"]
        if not rs:
            continue
        out.append(f"| {k} | " + " | ".join(cells) +
                   f" | {f(med(num(r,'server_cpu_us_per_rt') for r in rs))} | {f(med(num(r,'server_user_us_per_rt') for r in rs))}"
                   f" | {f(med(ratios))} | {f(med(num(r,'rt_per_s') for r in rs),0)}"
                   f" | {f(med(num(r,'rtt_p50_us') for r in rs),0)}/{f(med(num(r,'rtt_p99_us') for r in rs),0)} |")
    perf = sel("cpu", round="perf")
    if perf:
        out.append("\n### syscalls per round trip (perf stat -e raw_syscalls:sys_enter, 5 s inside the window)\n")
        out.append("| server | syscalls in 5 s | rt/s | syscalls per rt | us/rt in this (perf) round |")
        out.append("|---|---|---|---|---|")
        for r in perf:
            s, rt = num(r, "perf_syscalls"), num(r, "rt_per_s")
            per = s / (rt * 5) if s and rt else None
            out.append(f"| {r['server']} | {f(s,0)} | {f(rt,0)} | {f(per)} | {f(num(r,'server_cpu_us_per_rt'))} |")
# closed
cl = sel("closed")
if cl:
    rounds = sorted({r["round"] for r in cl}, key=int)
    out.append("\n## Closed loop, 1,000 conns, 1 outstanding: round trips/s\n")
    out.append("| server | " + " | ".join(f"round {x}" for x in rounds) + " | median rt/s | median ratio to redis | median server us/rt | server core busy | load-tool core busy | server-bound capacity 1e6/(us/rt) |")
    out.append("|---" * (len(rounds) + 7) + "|")
    for k in kinds:
        rs = sel("closed", server=k)
        if not rs:
            continue
        cells, ratios = [], []
        for x in rounds:
            r = next(iter(sel("closed", server=k, round=x)), None)
            rd = next(iter(sel("closed", server="redis", round=x)), None)
            v = num(r, "rt_per_s") if r else None
            ratios.append(v / num(rd, "rt_per_s") if v and rd and num(rd, "rt_per_s") else None)
            cells.append(f"{f(v,0)} (load {r.get('loadavg','') if r else ''})")
        busy = med(num(r, 'server_cpu_ms') / 1000 / num(r, 'window_s') for r in rs if num(r, 'server_cpu_ms') is not None)
        upr = med(num(r, 'server_cpu_us_per_rt') for r in rs)
        out.append(f"| {k} | " + " | ".join(cells) + f" | {f(med(num(r,'rt_per_s') for r in rs),0)} | {f(med(ratios))} | {f(upr)}"
                   f" | {f(busy)} | {f(med(num(r,'client_cpu_util') for r in rs))} | {f(1e6/upr if upr else None,0)} |")
# rss
rs_all = sel("rss")
if rs_all:
    out.append("\n## 19,000 idle logged-in conns, fresh server: RSS per connection\n")
    out.append("| server | round | logins | VmRSS before/with kB | RssAnon before/with kB | VmRSS B/conn | RssAnon B/conn | load |")
    out.append("|---|---|---|---|---|---|---|---|")
    for k in kinds:
        for r in sel("rss", server=k):
            n = num(r, "logins") or 1
            d = (num(r, "mid_rss_kb") - num(r, "pre_rss_kb")) * 1024 / n
            a = (num(r, "mid_anon_kb") - num(r, "pre_anon_kb")) * 1024 / n
            out.append(f"| {k} | {r['round']} | {f(num(r,'logins'),0)} | {r['pre_rss_kb']}/{r['mid_rss_kb']} | {r['pre_anon_kb']}/{r['mid_anon_kb']} | {f(d,0)} | {f(a,0)} | {r.get('loadavg','')} |")
# silent
si = sel("silent")
if si:
    out.append("\n## Silent detection (deadline 3000 ms)\n")
    out.append("| server | conns | round | silent closed/total | early | delay min/p50/p99/max ms | lateness p50/p99/max ms | wrong timeouts | healthy closed | load |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    ms = lambda r, k: f(num(r, k) / 1000 if num(r, k) is not None else None, 1)
    for r in si:
        out.append(f"| {r['server']} | {r['n']} | {r['round']} | {r.get('silent_closed')}/{r.get('silent_total')} | {r.get('silent_early')} | "
                   f"{ms(r,'close_delay_min_us')}/{ms(r,'close_delay_p50_us')}/{ms(r,'close_delay_p99_us')}/{ms(r,'close_delay_max_us')} | "
                   f"{ms(r,'lateness_p50_us')}/{ms(r,'lateness_p99_us')}/{ms(r,'lateness_max_us')} | {r.get('wrong_timeouts')} | {r.get('healthy_closed')} | {r.get('loadavg','')} |")
# latency
la = sel("latency") + [dict(r, n="10000") for r in sel("cpu") if r.get("round") != "perf" and r["server"] in ("floor", "lifeline", "tokio")]
if la:
    out.append("\n## Pong latency, steady 1 ping/s (us; 10,000 = median over the cpu rounds)\n")
    out.append("| server | conns | p50 | p99 | p999 | max | server us/rt | runs |")
    out.append("|---|---|---|---|---|---|---|---|")
    for n in ["1000", "10000", "19000"]:
        for k in ["floor", "lifeline", "tokio"]:
            rs = [r for r in la if r["server"] == k and r.get("n") == n]
            if not rs:
                continue
            g = lambda key: f(med(num(r, key) for r in rs), 0)
            out.append(f"| {k} | {n} | {g('rtt_p50_us')} | {g('rtt_p99_us')} | {g('rtt_p999_us')} | {g('rtt_max_us')} | {f(med(num(r,'server_cpu_us_per_rt') for r in rs))} | {len(rs)} |")
print("\n".join(out))
PY
    log "summary: $OUT/summary.md"
}

# ---------------------------------------------------------------- main

mkdir -p "$OUT" "$LOGS"
SRC=$OUT/src
if [[ $REV == worktree ]]; then SRC=$REPO; else REV=$(git -C "$REPO" rev-parse "$REV") || die "no commit $REV"; fi
if [[ -z $LOADGEN_REV || $LOADGEN_REV == "$REV" ]]; then LOADGEN_REV=$REV; else
    LOADGEN_REV=$(git -C "$REPO" rev-parse "$LOADGEN_REV") || die "no commit $LOADGEN_REV"; fi
touch "$RESULTS"
preflight
build
machine
for c in $CASES; do
    case $c in
    cpu | closed | rss | silent | latency | micro) "case_$c" ;;
    *) die "unknown case $c" ;;
    esac
done
summarize
log "done: $RESULTS"
