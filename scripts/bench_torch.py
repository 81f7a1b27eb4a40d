#!/usr/bin/env python3
"""PyTorch side of ``cargo xtask bench``: embed and train-step timings of
the reference model (scripts/reference_model.py) on a checkpoint and batch
written by the Rust benchmark, so both run the same weights, config, batch
and inputs.

``bench_torch.py CHECKPOINT_DIR BATCH_FILE [--reps N] [--warmup N] [--what embed,train]
[--device cpu|cuda[:N]] [--dtype f32|bf16]``

BATCH_FILE is a safetensors file with the batch arrays (``flux``, ``sigma``,
``weight``, ``wavelength``, ``patch_state``, ``log_scale``) and, when the
Rust side wrote them, its ``tokens`` and ``token_mask``: the relative error
of PyTorch's valid tokens against them is reported as ``max_rel_err``.

``embed`` is the encoder (host-side inputs, encoder, pooling) under
``torch.no_grad``; ``train`` is one pretraining step: encode, decode on the
input grid, the noise-weighted loss, backward and ``torch.optim.AdamW``.
PyTorch runs eagerly with its default thread count. ``--dtype bf16`` runs
under ``torch.autocast`` (bf16 matmuls, f32 weights and optimiser state),
PyTorch's usual mixed precision; ``f32`` keeps TF32 off, as spectok does.
On a GPU each timing synchronises the device. Prints one JSON object;
``seconds`` lists every timed repetition.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_model as ref  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("batch")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--what", default="embed,train")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    args = ap.parse_args()
    from safetensors.numpy import load_file

    data = load_file(args.batch)
    batch = {k: data[k] for k in ["flux", "sigma", "weight", "wavelength", "patch_state",
                                  "log_scale"]}
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = ref.load_checkpoint(Path(args.checkpoint), device, torch.float32)
    out = {"impl": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
           "device": str(device), "dtype": args.dtype}
    f32 = torch.float32

    def autocast():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                              enabled=args.dtype == "bf16")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def embed():
        with torch.no_grad(), autocast():
            enc = model.encode(model.inputs(batch, device, f32))
            enc["pooled"].float().sum().item()
            return enc

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train():
        with autocast():
            inp = model.inputs(batch, device, f32)
            enc = model.encode(inp)
            loss = model.loss(batch, inp, enc, device, f32)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    what = [w for w in args.what.split(",") if w]
    if "embed" in what and "tokens" in data:
        model.eval()
        enc = embed()
        mask = data["token_mask"].astype(bool)
        ours = enc["tokens"].float().cpu().numpy()[mask]
        theirs = data["tokens"][mask]
        scale = float(np.abs(theirs).max()) if theirs.size else 0.0
        err = float(np.abs(ours - theirs).max()) if theirs.size else 0.0
        out["max_rel_err"] = err / scale if scale > 0 else err
    for name, fn, training in [("embed", embed, False), ("train", train, True)]:
        if name not in what:
            continue
        model.train(training)
        for _ in range(args.warmup):
            fn()
        sync()
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        out[name] = {"seconds": times}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
