#!/usr/bin/env bash
# One device call: checks spectok on a CUDA GPU and measures it against the
# PyTorch reference on the same card.
#
#   bash scripts/gpu_check.sh            # on the GPU machine, repo root
#
# What it does (each step prints a "== step" line; results go to $OUT or
# ./gpu-check-out):
#   1. builds spectok with `--features cuda` (needs cargo + nvcc there), or
#      uses prebuilt binaries from gpu-build/ (built elsewhere with the same
#      feature and carried along) when no cargo is present;
#   2. runs the model tests on the GPU (SPECTOK_TEST_DEVICE=cuda);
#   3. compares GPU (bf16) and CPU (f32) tokens of one checkpoint on real
#      spectra: relative error must stay within 1e-2;
#   4. measures embed throughput, train-step time and MFU against the
#      card's bf16 peak, and the same with scripts/reference_model.py on the
#      GPU for the ratio.
# It must fit one device call (≤ 10 minutes including the build).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check-out}"
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
peak_tflops="${SPECTOK_GPU_BF16_PEAK_TFLOPS:-989}" # H100 SXM dense bf16

echo "== build"
if command -v cargo >/dev/null 2>&1; then
  cargo build --release --features cuda -p spectok-cli -p spectok-model --examples
  bin=target/release
elif [ -x gpu-build/spectok ]; then
  bin=gpu-build
else
  echo "no cargo and no prebuilt gpu-build/spectok: cannot build the CUDA binaries here" >&2
  exit 3
fi

echo "== model tests on the GPU"
if command -v cargo >/dev/null 2>&1; then
  SPECTOK_TEST_DEVICE=cuda cargo test --release --features cuda -p spectok-model
else
  for t in gpu-build/tests/*; do SPECTOK_TEST_DEVICE=cuda "$t"; done
fi

echo "== GPU vs CPU, throughput, MFU"
ckpt="$out/ckpt"
"$bin"/export_reference "$ckpt" paper
"$bin"/spectok embed data/demo --checkpoint "$ckpt/checkpoint" -o "$out/cpu.h5" --device cpu --force --tokens
"$bin"/spectok embed data/demo --checkpoint "$ckpt/checkpoint" -o "$out/gpu.h5" --device cuda --dtype bf16 --force --tokens 2>&1 | tee "$out/embed_gpu.txt"
python3 - "$out/cpu.h5" "$out/gpu.h5" <<'PY'
import sys, h5py, numpy as np
a, b = (h5py.File(p, "r") for p in sys.argv[1:3])
x, y = a["embedding"][:], b["embedding"][:]
rel = np.abs(x - y).max() / np.abs(x).max()
print(f"gpu_vs_cpu_embedding_rel_err {rel:.3e}")
sys.exit(0 if rel <= 1e-2 else 1)
PY

echo "== PyTorch reference on the GPU"
python3 scripts/reference_model.py compare "$ckpt/checkpoint" "$ckpt/batch.safetensors"
python3 scripts/reference_model.py bench --config paper --device cuda --dtype bf16 | tee "$out/torch_gpu.json"
echo "bf16 peak assumed: ${peak_tflops} TFLOP/s (set SPECTOK_GPU_BF16_PEAK_TFLOPS)"
echo "== done"
