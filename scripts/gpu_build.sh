#!/usr/bin/env bash
# Builds the CUDA binaries that scripts/gpu_check.sh runs, on a machine
# without a GPU, and packs them as gpu-build.tar.xz (stripped, a few tens
# of MB) to carry to a GPU machine that has no Rust toolchain.
#
#   bash scripts/gpu_build.sh            # repo root; writes gpu-build.tar.xz
#
# Needs CUDA 13.0's nvcc, headers and the libraries candle links
# (cublas, cublasLt, curand, nvrtc, cudart). When no nvcc is on PATH and
# CUDA_ROOT is unset, they are fetched as NVIDIA's PyPI wheels into
# target/cuda-toolkit (about 1 GB unpacked); libcuda, which belongs to the
# driver, is replaced at link time by a stub with its soname, and the
# driver's real library is loaded at run time. Kernels are compiled for
# compute capability $CUDA_COMPUTE_CAP (default 90: H100/H200).
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"

if ! command -v nvcc >/dev/null 2>&1 && [ -z "${CUDA_ROOT:-}" ]; then
  root="$PWD/target/cuda-toolkit"
  if [ ! -x "$root/bin/nvcc" ]; then
    echo "fetching the CUDA 13.0 toolkit wheels into $root"
    whl="$root.whl"
    mkdir -p "$whl" "$root"
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$whl" \
      "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*" \
      "nvidia-nvvm==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-cublas==13.0.*" \
      "nvidia-curand==10.4.*" "nvidia-cuda-nvrtc==13.0.*"
    tmp="$root.unpack"
    rm -rf "$tmp"
    for w in "$whl"/*.whl; do python3 -m zipfile -e "$w" "$tmp"; done
    cp -a "$tmp"/nvidia/cu13/. "$root"/
    rm -rf "$tmp"
    chmod +x "$root"/bin/* "$root"/nvvm/bin/* 2>/dev/null || true
    (cd "$root/lib" && for l in cublas cublasLt curand nvrtc cudart; do
       ln -sf "$(ls lib$l.so.* | head -1)" "lib$l.so"; done)
    # Link-time stub of the driver library (soname libcuda.so.1).
    mkdir -p "$root/lib/stubs"
    src=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*cudarc-0.19*/src/driver/sys/mod.rs' | head -1)
    if [ -z "$src" ]; then
      cargo fetch
      src=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*cudarc-0.19*/src/driver/sys/mod.rs' | head -1)
    fi
    grep -o 'fn cu[A-Za-z0-9_]*(' "$src" | sed 's/fn //; s/(//' | sort -u \
      | awk '{print "int " $1 "(void){return 999;}"}' > "$root/lib/stubs/cuda_stub.c"
    cc -shared -fPIC -o "$root/lib/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 \
      "$root/lib/stubs/cuda_stub.c"
  fi
  export CUDA_ROOT="$root" PATH="$root/bin:$PATH"
fi

if [ -n "${GPU_BUILD_TOOLKIT_ONLY:-}" ]; then  # set up the toolkit and stop
  nvcc --version | tail -2
  exit 0
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/cuda}"
cargo build --release --features cuda -p spectok-cli -p xtask
rm -rf gpu-build && mkdir -p gpu-build/tests gpu-build/lib
cp "$CARGO_TARGET_DIR"/release/spectok "$CARGO_TARGET_DIR"/release/xtask gpu-build/
# The model tests (tests/model.rs: the ones that take SPECTOK_TEST_DEVICE).
cargo test --release --features cuda -p spectok-model --test model --no-run \
  --message-format=json | python3 -c 'import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("profile", {}).get("test") and m.get("executable"):
        shutil.copy(m["executable"], "gpu-build/tests/model")'
strip gpu-build/spectok gpu-build/xtask gpu-build/tests/*
# The shared libraries HDF5 and cfitsio need, from this machine (glibc,
# libstdc++ and CUDA's come from the GPU machine).
skip='libc\.so|libm\.so|libresolv|libgcc_s|libstdc\+\+|ld-linux|libcuda|libcublas|libcurand|libcudart|libnvrtc|libpthread|libdl\.so|librt\.so'
LD_LIBRARY_PATH="${CUDA_ROOT:+$CUDA_ROOT/lib:$CUDA_ROOT/lib/stubs:}${LD_LIBRARY_PATH:-}" \
  ldd gpu-build/spectok gpu-build/xtask | awk '/=> \// {print $3}' | { grep -Ev "$skip" || true; } \
  | sort -u | while read -r lib; do
      cp -L "$lib" gpu-build/lib/
      ldd "$lib" | awk '/=> \// {print $3}' | { grep -Ev "$skip" || true; } \
        | xargs -r -I{} cp -L {} gpu-build/lib/
    done
tar -cf - gpu-build | xz -T0 -9 > gpu-build.tar.xz
ls -la gpu-build gpu-build/tests gpu-build.tar.xz
