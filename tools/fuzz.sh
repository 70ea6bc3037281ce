#!/usr/bin/env bash
# Fuzzes the frame codec for a bounded time: fuzz/fuzz_targets/split_decode.rs
# feeds arbitrary bytes, cut at fuzzer-chosen points, through FrameReader the
# way the server does, and checks it against decoding the uncut stream.
#
# Usage: tools/fuzz.sh [SECONDS] [extra libFuzzer flags...]
#   SECONDS            total fuzzing time (default 300)
#   FUZZ_KEEP_GOING=1  do not stop at the first crash (libFuzzer -fork=1
#                      -ignore_crashes=1): collects every crash of the run
#   FUZZ_TOOLCHAIN=X   force a toolchain (default: nightly when rustup has it)
#
# Needs cargo-fuzz (installed here with `cargo install cargo-fuzz` when
# missing) and a nightly toolchain for -Zsanitizer=address. Without nightly it
# falls back to stable with RUSTC_BOOTSTRAP=1 and no sanitizer: the codec is
# safe Rust, so what it loses is only ASan's check of the dependencies'
# unsafe code.
#
# Output: the corpus grows in fuzz/corpus/split_decode (seeded from
# fuzz/seeds/split_decode), crashes land in fuzz/artifacts/split_decode, and
# the run's log is fuzz/artifacts/split_decode/last-run.log.
set -euo pipefail

cd "$(dirname "$0")/.."
seconds=${1:-300}
shift || true
target=split_decode

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

toolchain=${FUZZ_TOOLCHAIN:-}
if [[ -z $toolchain ]]; then
    if rustup toolchain list | grep -q '^nightly'; then
        toolchain=nightly
    elif rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
        toolchain=nightly
    else
        toolchain=stable
    fi
fi

fuzz_flags=()
if [[ $toolchain == stable* ]]; then
    echo "fuzz.sh: no nightly toolchain; using stable with RUSTC_BOOTSTRAP=1, no sanitizer" >&2
    export RUSTC_BOOTSTRAP=1
    fuzz_flags+=(--sanitizer none)
fi

libfuzzer_flags=(
    -max_total_time="$seconds"
    -dict=fuzz/xml.dict
    -max_len=8192
    -print_final_stats=1
)
if [[ ${FUZZ_KEEP_GOING:-0} == 1 ]]; then
    libfuzzer_flags+=(-fork=1 -ignore_crashes=1)
fi

corpus=fuzz/corpus/$target
artifacts=fuzz/artifacts/$target
mkdir -p "$corpus" "$artifacts"
log=$artifacts/last-run.log

echo "fuzz.sh: $target for ${seconds}s on $toolchain ($(cargo +"$toolchain" --version))" >&2
status=0
cargo +"$toolchain" fuzz run "${fuzz_flags[@]}" "$target" "$corpus" "fuzz/seeds/$target" -- \
    "${libfuzzer_flags[@]}" "$@" 2>&1 | tee "$log" || status=$?

crashes=$(find "$artifacts" -maxdepth 1 -name 'crash-*' | wc -l)
echo "fuzz.sh: exit $status; corpus $(find "$corpus" -type f | wc -l) inputs; $crashes crash file(s) in $artifacts" >&2
grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" >&2 || true
exit "$status"
