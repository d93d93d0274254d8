#!/usr/bin/env bash
# Build `hearth` and `hearth-bench` with the `cuda` feature (candle's CUDA backend), on a machine with or
# without a GPU.
#
# Usage: scripts/build-cuda.sh [--system-cuda] [--check]
#
#   (default)      set up the pinned CUDA 13.0 toolchain from PyPI (scripts/cuda-toolchain.sh: nvcc, headers,
#                  runtime libraries and a link-time libcuda stub) in ${HEARTH_CUDA_TOOLCHAIN:-.cuda-toolchain}
#                  and build with it. Needs python3 with venv and pip, gcc, and PyPI access on the first run.
#   --system-cuda  use the CUDA toolkit already installed (nvcc on PATH, or under $CUDA_HOME) instead.
#   --check        `cargo check` the feature only (what CI runs with HEARTH_CI_CUDA=1); no binaries.
#
# The GPU architecture is $CUDA_COMPUTE_CAP (default 90: H100/H200). The build goes to target-cuda/ (not
# target/, so it never invalidates the CPU build), or to $HEARTH_CUDA_TARGET_DIR. Compiling candle's CUDA kernels takes a while on few cores.
# The binaries are target-cuda/release/hearth and target-cuda/release/hearth-bench; they load the CUDA
# driver (libcuda.so.1) and libcudart.so.13, libcublas.so.13, libcurand.so.10 at run time, so
# LD_LIBRARY_PATH must reach those on the GPU machine (see docs/cuda.md).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'build-cuda: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

system=0
check=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --system-cuda) system=1 ;;
        --check) check=1 ;;
        -h | --help) sed -n '5,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done

compute_cap="${CUDA_COMPUTE_CAP:-90}"
export CUDA_COMPUTE_CAP="$compute_cap"
if [[ $system -eq 1 ]]; then
    if ! command -v nvcc >/dev/null 2>&1; then
        [[ -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]] || die "--system-cuda: no nvcc on PATH and no \$CUDA_HOME/bin/nvcc"
        export PATH="$CUDA_HOME/bin:$PATH"
    fi
    log "using the system CUDA toolkit: $(nvcc --version | tail -n 1)"
else
    toolchain="${HEARTH_CUDA_TOOLCHAIN:-$PWD/.cuda-toolchain}"
    # The libcuda stub is generated from cudarc's sources, so they must be in the cargo registry first.
    cargo fetch --quiet
    log "setting up the pinned CUDA toolchain in $toolchain"
    env_file="$(mktemp)"
    trap 'rm -f "$env_file"' EXIT
    scripts/cuda-toolchain.sh "$toolchain" >"$env_file"
    # shellcheck disable=SC1090
    source "$env_file"
    # The toolchain's environment names 90; a CUDA_COMPUTE_CAP given by the caller wins.
    export CUDA_COMPUTE_CAP="$compute_cap"
fi

target_dir="${HEARTH_CUDA_TARGET_DIR:-$PWD/target-cuda}"
if [[ $check -eq 1 ]]; then
    log "cargo check --features cuda (compute capability $CUDA_COMPUTE_CAP) into $target_dir"
    cargo check --release -p models -p engine -p gateway -p benches --all-targets --features cuda --target-dir "$target_dir"
    log "the cuda feature compiles"
    exit 0
fi
log "cargo build --release --features cuda (compute capability $CUDA_COMPUTE_CAP) into $target_dir"
cargo build --release -p gateway -p benches --features cuda --target-dir "$target_dir"
for b in hearth hearth-bench; do
    [[ -x "$target_dir/release/$b" ]] || die "the build did not produce $target_dir/release/$b"
done
log "done:"
ls -l "$target_dir/release/hearth" "$target_dir/release/hearth-bench" | sed 's/^/  /' >&2
echo "$target_dir/release/hearth"
echo "$target_dir/release/hearth-bench"
