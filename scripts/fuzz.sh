#!/usr/bin/env bash
# The fuzz targets of fuzz/ (libFuzzer through libfuzzer-sys): build them, replay every committed input
# (fuzz/corpus/TARGET, fuzz/regressions/TARGET), then fuzz each target for a while, one after the other.
# CI runs it briefly from scripts/test.sh; the long runs are `scripts/fuzz.sh --seconds 600`.
#
# Usage: scripts/fuzz.sh [--seconds N] [--asan] [--keep DIR] [TARGET...]
#
#   --seconds N   fuzz each target N seconds (default 20; 0: only replay the committed inputs)
#   --asan        build with AddressSanitizer (needs a nightly toolchain: `rustup toolchain install nightly`)
#   --keep DIR    keep the inputs each run adds in DIR/TARGET (default: a temporary folder, deleted)
#   TARGET...     only these targets (default: gguf chat im_frames feishu_frame wecom_frame card_split)
#
# It builds with the toolchain already here and the flags cargo-fuzz passes (SanitizerCoverage with inline
# 8-bit counters, a PC table, compare tracing and stack depth; `--cfg fuzzing`; debug assertions and
# overflow checks), so nothing but crates needs fetching: stable Rust takes every one of these flags, and
# cargo-fuzz itself is not needed. Two differences from `cargo fuzz build`: no AddressSanitizer unless
# --asan (the code under test is safe Rust; a panic or an abort is what the fuzzer looks for), and the
# release profile's parallel codegen units (cargo-fuzz forces one, which costs minutes on two cores).
# Artifacts are kept between runs in $HEARTH_FUZZ_TARGET_DIR (default ~/.cache/hearth/target-fuzz).
# A crash leaves its input in fuzz/artifacts/TARGET/ and fails the script: fix the bug, then move the
# input to fuzz/regressions/TARGET/, where the owning crate's test replays it on stable Rust.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=20
asan=0
keep=""
targets=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --seconds) seconds="$2"; shift ;;
        --asan) asan=1 ;;
        --keep) keep="$2"; shift ;;
        -h | --help) sed -n '6,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1") ;;
    esac
    shift
done
((${#targets[@]})) || targets=(gguf chat im_frames feishu_frame wecom_frame card_split)

triple=$(rustc -vV | sed -n 's/^host: //p')
flags=(
    -Ctarget-cpu=x86-64-v3 # as .cargo/config.toml, which RUSTFLAGS replaces
    -Cpasses=sancov-module
    -Cllvm-args=-sanitizer-coverage-level=4
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
    -Cllvm-args=-sanitizer-coverage-pc-table
    -Cllvm-args=-sanitizer-coverage-trace-compares
    -Cllvm-args=-sanitizer-coverage-stack-depth
    -Cllvm-args=-simplifycfg-branch-fold-threshold=0
    --cfg fuzzing
    -Cdebug-assertions
    -Coverflow-checks
)
toolchain=()
target_dir="${HEARTH_FUZZ_TARGET_DIR:-$HOME/.cache/hearth/target-fuzz}"
if ((asan)); then
    toolchain=(+nightly)
    flags+=(-Zsanitizer=address)
    target_dir+="-asan"
    export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_odr_violation=0:detect_leaks=0"
fi

echo "== fuzz: building ${targets[*]} ($(cargo "${toolchain[@]}" --version))"
started=$SECONDS
# --target: RUSTFLAGS then reach only the target's crates, not build scripts and proc macros.
RUSTFLAGS="${flags[*]}" CARGO_TARGET_DIR="$target_dir" cargo "${toolchain[@]}" build --quiet --locked --release \
    --manifest-path fuzz/Cargo.toml --target "$triple" $(printf -- '--bin %s ' "${targets[@]}")
echo "== fuzz: built in $((SECONDS - started)) s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in "${targets[@]}"; do
    bin="$target_dir/$triple/release/$target"
    inputs=()
    for dir in fuzz/corpus/"$target" fuzz/regressions/"$target"; do
        [[ -d "$dir" ]] && inputs+=("$dir")
    done
    options=(-timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    [[ -f "fuzz/dicts/$target.dict" ]] && options+=("-dict=fuzz/dicts/$target.dict")
    artifacts="fuzz/artifacts/$target"
    mkdir -p "$artifacts"
    echo "== fuzz $target: replaying the committed inputs (${inputs[*]})"
    "$bin" "${options[@]}" -artifact_prefix="$artifacts/" -runs=0 "${inputs[@]}" 2>"$work/$target.replay.log" || {
        tail -n 40 "$work/$target.replay.log" >&2
        echo "fuzz $target: a committed input fails (see above; input saved under $artifacts/)" >&2
        exit 1
    }
    ((seconds > 0)) || continue
    out="${keep:+$keep/$target}"
    out="${out:-$work/$target}"
    mkdir -p "$out"
    echo "== fuzz $target: ${seconds} s"
    "$bin" "${options[@]}" -artifact_prefix="$artifacts/" -max_total_time="$seconds" "$out" "${inputs[@]}" \
        2>"$work/$target.log" || {
        tail -n 60 "$work/$target.log" >&2
        echo "fuzz $target: crash (input saved under $artifacts/; fix it, then move it to fuzz/regressions/$target/)" >&2
        exit 1
    }
    # The last status line (executions, coverage, corpus) and the final statistics.
    grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE)' "$work/$target.log" | tail -n 1
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$work/$target.log" |
        tr -s ' \n' ' '
    echo
done
echo "== fuzz: ${#targets[@]} targets, no crash"
