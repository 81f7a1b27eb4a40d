#!/usr/bin/env bash
# One device call: checks spectok on a CUDA GPU, measures it against the
# PyTorch reference on the same card, and pretrains on the mock survey.
#
#   bash scripts/gpu_check.sh            # on the GPU machine, repo root
#
# Binaries: built here with `--features cuda` when cargo and nvcc are
# present; otherwise taken from gpu-build.tar.xz (made on another machine
# by `scripts/gpu_build.sh`, carried along). Results go to $OUT (or
# ./gpu-check-out): gpu_check.log, gpu-bench.json, results.tar.gz.
#
# Steps (each prints "== step (elapsed)"; a failing step is reported and
# the script goes on, exiting non-zero at the end):
#   1. the model tests on the GPU (SPECTOK_TEST_DEVICE=cuda);
#   2. `cargo xtask gpu-bench`: GPU f32/bf16 tokens vs the CPU (1e-4 /
#      1e-2), mixed-precision gradients for every parameter, loss falls
#      in 30 steps; embed throughput, train-step time and MFU against the
#      bf16 peak, side by side with scripts/bench_torch.py on the GPU;
#   3. `spectok embed` of data/demo on the GPU (bf16) vs the CPU (f32);
#   4. while time is left (GPU_CHECK_SECONDS, default 540, for the whole
#      script): a 20k-object mock survey, `spectok pretrain
#      --config configs/mock-gpu.json` on the GPU (bf16 mixed precision,
#      stopped with Ctrl-C when its time is up: it checkpoints), `spectok
#      embed` of the survey, then `spectok finetune class|redshift|stellar`
#      with the heads on the GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check-out}"
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
budget="${GPU_CHECK_SECONDS:-540}"
dev="${GPU_CHECK_DEVICE:-cuda}"           # cpu: a dry run of this script off the GPU
model="${GPU_CHECK_MODEL:-paper}"         # gpu-bench model size
mock_count="${GPU_CHECK_MOCK_COUNT:-20000}"
pretrain_config="${GPU_CHECK_PRETRAIN_CONFIG:-configs/mock-gpu.json}"
read -r -a bench_args <<< "${GPU_CHECK_BENCH_ARGS:-}"   # extra gpu-bench options
peak_tflops="${SPECTOK_GPU_BF16_PEAK_TFLOPS:-989}" # H100 SXM dense bf16
failed=()
step() { echo; echo "== $1 (${SECONDS} s)"; }
left() { echo $((budget - SECONDS)); }
run() { # run NAME TIMEOUT CMD…: reports a failure and goes on
  local name="$1" t="$2" rc; shift 2
  timeout -k 10 "$t" "$@"; rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "!! $name failed (exit $rc)"; failed+=("$name")
  fi
}

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
nproc
# candle links libcublas/libcublasLt/libcurand/libnvrtc/libcudart of CUDA
# 13; the PyTorch wheels on the machine carry them.
libdirs=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
dirs = set()
for base in site.getsitepackages() + ["/usr/local/cuda/lib64", "/usr/local/cuda/lib"]:
    for f in glob.glob(os.path.join(base, "**", "libcublas.so.13"), recursive=True):
        dirs.add(os.path.dirname(f))
    for f in glob.glob(os.path.join(base, "**", "libcurand.so.10"), recursive=True):
        dirs.add(os.path.dirname(f))
    for f in glob.glob(os.path.join(base, "**", "libnvrtc.so.13"), recursive=True):
        dirs.add(os.path.dirname(f))
    for f in glob.glob(os.path.join(base, "**", "libcudart.so.13"), recursive=True):
        dirs.add(os.path.dirname(f))
# The driver's libcuda.so.1, when it is outside the loader's cache.
for base in ["/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/lib/x86_64-linux-gnu",
             "/usr/lib64", "/usr/local/cuda/compat"]:
    if os.path.exists(os.path.join(base, "libcuda.so.1")):
        dirs.add(base)
        break
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
torch_libs="$LD_LIBRARY_PATH"

step "build"
if command -v cargo >/dev/null 2>&1 && command -v nvcc >/dev/null 2>&1; then
  cargo build --release --features cuda -p spectok-cli -p xtask || exit 3
  mkdir -p gpu-build/tests
  cp target/release/spectok target/release/xtask gpu-build/
  cargo test --release --features cuda -p spectok-model --no-run --message-format=json \
    | python3 -c 'import json,sys,shutil
for l in sys.stdin:
    m = json.loads(l)
    if m.get("profile", {}).get("test") and m.get("executable"):
        shutil.copy(m["executable"], "gpu-build/tests/")'
elif [ -f gpu-build.tar.xz ]; then
  tar -xJf gpu-build.tar.xz
else
  echo "no cargo+nvcc and no gpu-build.tar.xz: cannot get the CUDA binaries" >&2
  exit 3
fi
bin="$PWD/gpu-build"
ls -la "$bin" "$bin/tests"
# spectok's own binaries also find the HDF5/cfitsio libraries packed in
# gpu-build/lib (when carried); Python keeps the machine's libraries.
ours="$bin/lib:$torch_libs"
SPECTOK=(env "LD_LIBRARY_PATH=$ours" "$bin/spectok")
XTASK=(env "LD_LIBRARY_PATH=$ours" "$bin/xtask")
printf '#!/bin/sh\nLD_LIBRARY_PATH="%s" exec python3 "$@"\n' "$torch_libs" > "$bin/python3"
chmod +x "$bin/python3"
"${SPECTOK[@]}" --version

step "model tests on the GPU"
for t in "$bin"/tests/*; do
  run "test $(basename "$t")" 120 env "LD_LIBRARY_PATH=$ours" SPECTOK_TEST_DEVICE="$dev" "$t" --test-threads 4
done

step "gpu-bench (agreement, gradients, speed vs PyTorch)"
run gpu-bench 200 "${XTASK[@]}" gpu-bench --device "$dev" --model "$model" \
  --peak-tflops "$peak_tflops" --python "$bin/python3" --json "$out/gpu-bench.json" \
  "${bench_args[@]}"

step "embed data/demo: GPU bf16 vs CPU f32"
ck=target/gpu-bench/checkpoint
run "embed cpu" 60 "${SPECTOK[@]}" embed data/demo --checkpoint "$ck" -o target/demo-cpu.h5 \
  --device cpu --force
run "embed gpu" 60 "${SPECTOK[@]}" embed data/demo --checkpoint "$ck" -o target/demo-gpu.h5 \
  --device "$dev" --dtype bf16 --force
run "embed agreement" 30 "$bin/python3" - target/demo-cpu.h5 target/demo-gpu.h5 <<'PY'
import sys, h5py, numpy as np
a, b = (h5py.File(p, "r") for p in sys.argv[1:3])
x, y = a["embedding"][:].astype(np.float64), b["embedding"][:].astype(np.float64)
rel = float(np.linalg.norm(x - y) / np.linalg.norm(x))
big = float(np.abs(x - y).max() / np.abs(x).max())
print(f"{len(x)} spectra: GPU bf16 vs CPU f32 embedding relative RMS error {rel:.3e} "
      f"(tol 1e-2), largest |d|/largest |x| {big:.3e}")
sys.exit(0 if rel <= 1e-2 else 1)
PY

step "mock survey pretraining ($(left) s left)"
mkdir -p "$out/results"
if [ "$(left)" -gt 200 ]; then
  run mock-survey 90 "${XTASK[@]}" mock-survey --count "$mock_count" --no-fits --out target/mock20k \
    --overwrite
  t_pre=$(( $(left) - 190 )); [ "$t_pre" -gt 240 ] && t_pre=240
  echo "pretraining for at most ${t_pre} s"
  rm -rf runs/mock-gpu
  timeout -s INT -k 60 "$t_pre" "${SPECTOK[@]}" pretrain --config "$pretrain_config" \
    --device "$dev" --no-plots
  echo "pretrain exit $? (124: stopped at its time limit by Ctrl-C, after a checkpoint)"
  cp runs/mock-gpu/metrics.jsonl runs/mock-gpu/config.json "$out/results/" 2>/dev/null
  step "embed the mock survey on the GPU ($(left) s left)"
  t_emb=$(( $(left) - 100 )); [ "$t_emb" -lt 60 ] && t_emb=60
  run "embed mock" "$t_emb" "${SPECTOK[@]}" embed target/mock20k/shards --checkpoint runs/mock-gpu \
    --device "$dev" --dtype bf16 --tokens -o target/mock20k-emb.h5 --force
  rm -rf runs/heads
  for task in class redshift stellar; do
    step "finetune $task ($(left) s left)"
    t_ft=$(( ($(left) - 15) / 2 )); [ "$t_ft" -gt 90 ] && t_ft=90
    [ "$task" = stellar ] && t_ft=$(( $(left) - 15 ))
    if [ "$t_ft" -lt 20 ]; then echo "no time left for $task"; failed+=("finetune $task (no time)"); continue; fi
    ft=("${SPECTOK[@]}" finetune "$task" target/mock20k/shards --checkpoint runs/mock-gpu
        --embeddings target/mock20k-emb.h5 --config "configs/finetune-$task.json")
    t0=$SECONDS
    run "finetune $task" "$t_ft" "${ft[@]}" --epochs "${GPU_CHECK_FINETUNE_EPOCHS:-40}" \
      --device "$dev" -o "runs/heads/$task"
    if [ ! -f "runs/heads/$task/metrics.json" ] && [ $((SECONDS - t0)) -lt 20 ] \
       && [ "$(left)" -gt 60 ]; then
      echo "retrying $task with the head on the CPU"
      run "finetune $task (cpu)" $(( $(left) / 2 )) "${ft[@]}" --device cpu --epochs 6 \
        -o "runs/heads/$task"
    fi
    mkdir -p "$out/results/$task"
    cp runs/heads/$task/*.json runs/heads/$task/*.png "$out/results/$task/" 2>/dev/null
  done
  # The newest checkpoint's weights in bf16 (under the 16 MiB a file).
  "$bin/python3" - "$out/results" <<'PY' || true
import glob, os, sys, torch
from safetensors.torch import load_file, save_file
import shutil
ck = sorted(glob.glob("runs/mock-gpu/checkpoints/step-*/model.safetensors"), key=os.path.getmtime)
if ck:
    dst = os.path.join(sys.argv[1], "checkpoint")
    os.makedirs(dst, exist_ok=True)
    w = {k: v.to(torch.bfloat16) for k, v in load_file(ck[-1]).items()}
    # Beside the archive: results.tar.gz stays small.
    save_file(w, os.path.join(sys.argv[1], "..", "mock-gpu-model-bf16.safetensors"))
    for f in ["config.json", "state.json", "train_config.json"]:
        src = os.path.join(os.path.dirname(ck[-1]), f)
        if os.path.exists(src):
            shutil.copy(src, dst)
    print("weights (bf16) of", ck[-1])
PY
  tar -czf "$out/results.tar.gz" -C "$out" results && rm -rf "$out/results"
else
  echo "not enough time left for the mock pretraining"
  failed+=("mock pretraining (no time)")
fi

step "done"
if [ "${#failed[@]}" -gt 0 ]; then
  printf '!! failed: %s\n' "${failed[@]}"
  exit 1
fi
echo "all steps passed"
