#!/usr/bin/env bash
# Sets up a CUDA 13.0 build toolchain from PyPI on a machine with no GPU and no CUDA install, for building
# hearth's `cuda` feature (candle's kernels need nvcc; candle links cudart, cublas, curand, nvrtc and the driver).
# The device machine has driver 580 (CUDA 13.0): a newer nvcc may write PTX that driver cannot load, so the
# versions are pinned. Usage:
#     eval "$(scripts/cuda-toolchain.sh DIR)"      # DIR: where the toolchain goes (kept for reuse)
#     cargo build --release --features cuda
# It prints the environment to export: PATH, CUDA_ROOT/CUDA_PATH/CUDA_HOME, CUDA_COMPUTE_CAP=90, LIBRARY_PATH.
# libcuda.so is the driver itself and no package carries it, so a link-time stub is generated from the driver API
# names in cudarc's bindings (run `cargo fetch` first); on the GPU machine the real libcuda.so.1 is loaded instead.
# At run time there, LD_LIBRARY_PATH must reach the machine's own libcudart.so.13, libcublas.so.13 and
# libcurand.so.10.
set -euo pipefail
dir=${1:?usage: cuda-toolchain.sh DIR}
mkdir -p "$dir"
if [ ! -x "$dir/venv/bin/python" ]; then
  python3 -m venv "$dir/venv" >&2
fi
"$dir/venv/bin/pip" install --quiet --disable-pip-version-check \
  "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-crt==13.0.*" \
  "nvidia-nvvm==13.0.*" "nvidia-cuda-nvrtc==13.0.*" "nvidia-cublas==13.0.*" "nvidia-curand==10.4.0.*" >&2
cu=$(ls -d "$dir"/venv/lib/python3*/site-packages/nvidia/cu13)
for lib in "$cu"/lib/lib*.so.*; do
  base=${lib##*/}; short=${base%%.so*}.so
  [ -e "$cu/lib/$short" ] || ln -s "$base" "$cu/lib/$short"
done
stub=$dir/stub
if [ ! -f "$stub/libcuda.so" ]; then
  cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19* 2>/dev/null | tail -n 1)
  [ -n "$cudarc" ] || { echo "cudarc sources not found: run 'cargo fetch' in the workspace first" >&2; exit 1; }
  mkdir -p "$stub"
  grep -oE "fn cu[A-Za-z0-9_]+" "$cudarc/src/driver/sys/mod.rs" | sed 's/^fn //' | sort -u \
    | awk '{print "int " $1 "(void) { return 999; }"}' > "$stub/cuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so" "$stub/cuda_stub.c"
fi
cat <<ENV
export PATH="$cu/bin:\$PATH"
export CUDA_ROOT="$cu" CUDA_PATH="$cu" CUDA_HOME="$cu" CUDA_COMPUTE_CAP=90
export LIBRARY_PATH="$cu/lib:$stub\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
ENV
