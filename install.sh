#!/usr/bin/env bash
# Install hearth on this machine: build the release binary (portable x86-64-v3: AVX2/FMA/F16C), fetch the
# default model, and put `hearth` in $PREFIX/bin.
#
# Usage: ./install.sh [--prefix DIR]        (default prefix: /usr/local)
#
# The offline bundle, --cuda, --native, systemd and `hearth doctor` come with the install issue; this script
# covers the build-and-run path only.
set -euo pipefail
cd "$(dirname "$0")"

PREFIX=/usr/local
while [[ $# -gt 0 ]]; do
    case "$1" in
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift ;;
        -h | --help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

missing=()
for tool in cargo cc python3; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "install.sh: missing prerequisites: ${missing[*]} (Rust from rustup, a C compiler, Python 3 with pip)" >&2
    exit 1
fi
if ! grep -qw avx2 /proc/cpuinfo || ! grep -qw fma /proc/cpuinfo; then
    echo "install.sh: this CPU lacks AVX2/FMA, which the portable x86-64-v3 build needs" >&2
    exit 1
fi

cargo build --release --bin hearth
scripts/fetch-models.sh
install -d "$PREFIX/bin"
install -m 0755 target/release/hearth "$PREFIX/bin/hearth"
echo "installed $PREFIX/bin/hearth; start it with: hearth serve"
