#!/usr/bin/env python3
"""PyTorch reference of spectok's universal spectral tokenizer.

The same architecture as crates/spectok-model (see its crate docs), module
for module and weight name for weight name, so a checkpoint written by the
Rust code (``model.safetensors`` + ``config.json``) loads here with
``strict=True``.

Sub-commands:

``compare CHECKPOINT_DIR BATCH_FILE``
    Runs the checkpoint on a batch exported by
    ``cargo run --example export_reference -p spectok-model -- OUT``
    and prints the error of the tokens (and of the scale token, pooled
    embedding and reconstruction) against the Rust values. Exits 1 when the
    tokens' relative error exceeds ``--tol`` (default 1e-4).

``bench``
    Times forward and training steps of a randomly initialised model on a
    random batch; the PyTorch performance baseline for spectok's benchmark.
    Prints one JSON object.

Requirements: scripts/requirements.txt (torch, safetensors, numpy).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

MASK_LOGIT = -1e9
FSQ_EPS = 1e-3


@dataclass
class Config:
    """Mirror of spectok_model::Config; defaults are Config::paper()."""

    patch_size: int = 32
    d_model: int = 512
    encoder_layers: int = 6
    decoder_layers: int = 6
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    wavelength_freqs: int = 64
    min_period: float = 0.1
    max_period: float = 1e5
    offset_freqs: int = 8
    offset_min_period: float = 0.1
    offset_max_period: float = 2000.0
    ivar_clip: float = 1e4
    mask_ratio: float = 0.0
    mask_score: str = "hidden"
    fsq_levels: list = field(default_factory=list)

    @staticmethod
    def from_json(text: str) -> "Config":
        data = json.loads(text)
        known = {f.name for f in fields(Config)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        return Config(**data)

    @staticmethod
    def demo() -> "Config":
        return Config(patch_size=8, d_model=32, encoder_layers=2, decoder_layers=2,
                      heads=4, mlp_ratio=2.0, wavelength_freqs=16, offset_freqs=4)

    def mlp_hidden(self) -> int:
        # Rust: (d_model as f64 * mlp_ratio).round(), half away from zero.
        return max(1, int(math.floor(self.d_model * self.mlp_ratio + 0.5)))


# ---------------------------------------------------------------- encoding

def log_spaced(lo: float, hi: float, n: int) -> np.ndarray:
    if n == 1:
        return np.array([lo], dtype=np.float64)
    ratio = hi / lo
    return np.array([lo * ratio ** (k / (n - 1)) for k in range(n)], dtype=np.float64)


def wavelength_features(cfg: Config, wavelength: np.ndarray):
    """Pooled absolute encoding (B,T,2F) and per-pixel offsets (B,T,P*2K),
    float32, from wavelengths (B,T,P) float64 (see the Rust module docs)."""
    b, t, p = wavelength.shape
    periods = log_spaced(cfg.min_period, cfg.max_period, cfg.wavelength_freqs)
    offset_periods = log_spaced(cfg.offset_min_period, cfg.offset_max_period, cfg.offset_freqs)
    nf, kf = len(periods), len(offset_periods)
    pooled = np.zeros((b, t, 2 * nf), dtype=np.float32)
    offsets = np.zeros((b, t, p, 2 * kf), dtype=np.float32)
    for s in range(b):
        w = wavelength[s].astype(np.float64)  # (T, P)
        finite = np.isfinite(w)
        wpos = np.where(finite & (w > 0), w, 0.0)
        # Last present wavelength before pixel j = running max of earlier
        # finite positive wavelengths (0 when none).
        runmax = np.maximum.accumulate(wpos, axis=1)
        before = np.concatenate([np.zeros((t, 1)), runmax[:, :-1]], axis=1)
        present = finite & (w > 0) & (w > before)
        count = present.sum(axis=1)  # (T,)
        wz = np.where(present, w, 0.0)
        phase = 2.0 * np.pi * wz[..., None] / periods  # (T, P, F)
        sin = np.where(present[..., None], np.sin(phase), 0.0).sum(axis=1)
        cos = np.where(present[..., None], np.cos(phase), 0.0).sum(axis=1)
        denom = np.maximum(count, 1)[:, None]
        enc = np.concatenate([sin, cos], axis=1) / denom
        enc[count == 0] = 0.0
        pooled[s] = enc.astype(np.float32)
        centre = wz.sum(axis=1) / np.maximum(count, 1)  # (T,)
        delta = wz - centre[:, None]
        ph = 2.0 * np.pi * delta[..., None] / offset_periods  # (T, P, K)
        off = np.concatenate([np.sin(ph), np.cos(ph)], axis=2)
        off[~present] = 0.0
        offsets[s] = off.astype(np.float32)
    return pooled, offsets.reshape(b, t, p * 2 * kf)


# ----------------------------------------------------------------- modules

class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        mean = x.mean(-1, keepdim=True)
        c = x - mean
        var = (c * c).mean(-1, keepdim=True)
        y = (c / torch.sqrt(var + self.eps)).to(dtype)
        return y * self.weight + self.bias


class Mlp(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        h = cfg.mlp_hidden()
        self.fc1 = nn.Linear(cfg.d_model, h)
        self.fc2 = nn.Linear(h, cfg.d_model)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        d = cfg.d_model
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.heads = cfg.heads
        self.head_dim = d // cfg.heads
        self.dropout = cfg.dropout

    def split(self, x):
        b, s, _ = x.shape
        return x.reshape(b, s, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, xq, xkv, key_mask):
        b, sq, d = xq.shape
        q, k, v = self.split(self.q(xq)), self.split(self.k(xkv)), self.split(self.v(xkv))
        logits = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
        logits = logits.float()
        logits = logits.masked_fill(~key_mask[:, None, None, :], MASK_LOGIT)
        w = torch.softmax(logits, dim=-1).to(v.dtype)
        w = F.dropout(w, self.dropout, self.training)
        y = (w @ v).transpose(1, 2).reshape(b, sq, d)
        return self.out(y)


class PatchEmbedding(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        p, d = cfg.patch_size, cfg.d_model
        self.signal = nn.Linear(3 * p, d)
        self.wavelength = nn.Linear(2 * cfg.wavelength_freqs, d, bias=False)
        self.offsets = nn.Linear(p * 2 * cfg.offset_freqs, d, bias=False)

    def forward(self, signal, pooled, offsets):
        return self.signal(signal) + self.wavelength(pooled) + self.offsets(offsets)


class ScaleEmbedding(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.proj = nn.Linear(1, cfg.d_model)

    def forward(self, log_scale):
        return self.proj(log_scale).unsqueeze(1)


class EncoderBlock(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.norm1 = LayerNorm(cfg.d_model, cfg.layer_norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = LayerNorm(cfg.d_model, cfg.layer_norm_eps)
        self.mlp = Mlp(cfg)
        self.dropout = cfg.dropout

    def forward(self, x, key_mask):
        h = self.norm1(x)
        x = x + F.dropout(self.attn(h, h, key_mask), self.dropout, self.training)
        return x + F.dropout(self.mlp(self.norm2(x)), self.dropout, self.training)


class Encoder(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.patch_embed = PatchEmbedding(cfg)
        self.scale_embed = ScaleEmbedding(cfg)
        self.blocks = nn.ModuleList([EncoderBlock(cfg) for _ in range(cfg.encoder_layers)])
        self.norm = LayerNorm(cfg.d_model, cfg.layer_norm_eps)
        self.dropout = cfg.dropout

    def forward(self, signal, pooled, offsets, log_scale, key_mask):
        x = torch.cat([self.scale_embed(log_scale), self.patch_embed(signal, pooled, offsets)], 1)
        x = F.dropout(x, self.dropout, self.training)
        for blk in self.blocks:
            x = blk(x, key_mask)
        return self.norm(x)


class Fsq(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        levels = list(cfg.fsq_levels)
        self.proj_in = nn.Linear(cfg.d_model, len(levels))
        self.proj_out = nn.Linear(len(levels), cfg.d_model)
        half_l = np.array([np.float32((l - 1) * (1 - FSQ_EPS) / 2) for l in levels], np.float32)
        offset = np.array([0.5 if l % 2 == 0 else 0.0 for l in levels], np.float32)
        shift = np.tan(offset.astype(np.float64) / half_l.astype(np.float64)).astype(np.float32)
        half_width = np.array([l // 2 for l in levels], np.float32)
        basis = np.cumprod([1] + levels[:-1]).astype(np.float32)
        for name, arr in [("half_l", half_l), ("offset", offset), ("shift", shift),
                          ("half_width", half_width), ("basis", basis)]:
            self.register_buffer(name, torch.from_numpy(arr), persistent=False)

    def forward(self, x):
        dtype = x.dtype
        z = self.proj_in(x).float()
        bounded = torch.tanh(z + self.shift) * self.half_l - self.offset
        rounded = torch.round(bounded)
        q = bounded + (rounded - bounded).detach()
        tokens = self.proj_out((q / self.half_width).to(dtype))
        ids = ((rounded + self.half_width) * self.basis).sum(-1).to(torch.int64)
        return tokens, ids


class QueryEmbedding(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.wavelength = nn.Linear(2 * cfg.wavelength_freqs, cfg.d_model)
        self.offsets = nn.Linear(cfg.patch_size * 2 * cfg.offset_freqs, cfg.d_model, bias=False)

    def forward(self, pooled, offsets):
        return self.wavelength(pooled) + self.offsets(offsets)


class DecoderBlock(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.norm1 = LayerNorm(cfg.d_model, cfg.layer_norm_eps)
        self.cross_attn = Attention(cfg)
        self.norm2 = LayerNorm(cfg.d_model, cfg.layer_norm_eps)
        self.mlp = Mlp(cfg)
        self.dropout = cfg.dropout

    def forward(self, x, memory, memory_mask):
        h = self.cross_attn(self.norm1(x), memory, memory_mask)
        x = x + F.dropout(h, self.dropout, self.training)
        return x + F.dropout(self.mlp(self.norm2(x)), self.dropout, self.training)


class CrossAttentionDecoder(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.query_embed = QueryEmbedding(cfg)
        self.blocks = nn.ModuleList([DecoderBlock(cfg) for _ in range(cfg.decoder_layers)])
        self.norm = LayerNorm(cfg.d_model, cfg.layer_norm_eps)

    def forward(self, pooled, offsets, memory, memory_mask):
        x = self.query_embed(pooled, offsets)
        for blk in self.blocks:
            x = blk(x, memory, memory_mask)
        return self.norm(x)


class ReconstructionHead(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.proj = nn.Linear(cfg.d_model, cfg.patch_size)

    def forward(self, x):
        return self.proj(x)


class Tokenizer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.fsq = Fsq(cfg) if cfg.fsq_levels else None
        self.decoder = CrossAttentionDecoder(cfg)
        self.head = ReconstructionHead(cfg)

    def inputs(self, batch: dict, device, dtype, hidden=None):
        """Host-side inputs, exactly as the Rust `Tokenizer::inputs`."""
        flux, sigma, weight = batch["flux"], batch["sigma"], batch["weight"]
        b, t, p = flux.shape
        ok = (weight > 0) & np.isfinite(flux) & np.isfinite(sigma)
        signal = np.concatenate([np.where(ok, flux, 0), np.where(ok, sigma, 0),
                                 ok.astype(np.float32)], axis=2).astype(np.float32)
        seen = batch["patch_state"] == 2
        if hidden is not None:
            seen &= ~hidden
        key_mask = np.concatenate([np.ones((b, 1), bool), seen], axis=1)
        log_scale = np.where(np.isfinite(batch["log_scale"]), batch["log_scale"], 0)
        pooled, offsets = wavelength_features(self.cfg, batch["wavelength"])
        tt = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)
        return dict(signal=tt(signal).to(dtype), pooled=tt(pooled).to(dtype),
                    offsets=tt(offsets).to(dtype),
                    log_scale=tt(log_scale.astype(np.float32)).reshape(b, 1).to(dtype),
                    key_mask=tt(key_mask), token_mask=tt(seen))

    def encode(self, inp):
        out = self.encoder(inp["signal"], inp["pooled"], inp["offsets"], inp["log_scale"],
                           inp["key_mask"])
        scale, tokens = out[:, 0], out[:, 1:]
        ids = None
        if self.fsq is not None:
            tokens, ids = self.fsq(tokens)
        m = inp["token_mask"].float()
        n = m.sum(1, keepdim=True)
        s = (tokens.float() * m[..., None]).sum(1) + scale.float() * (n == 0).float()
        pooled = (s / n.clamp(min=1)).to(tokens.dtype)
        return dict(tokens=tokens, scale_token=scale, pooled=pooled, token_ids=ids,
                    token_mask=inp["token_mask"])

    def decode(self, enc, target_wavelength: np.ndarray, device, dtype):
        pooled, offsets = wavelength_features(self.cfg, target_wavelength)
        pooled = torch.from_numpy(pooled).to(device).to(dtype)
        offsets = torch.from_numpy(offsets).to(device).to(dtype)
        b = enc["tokens"].shape[0]
        memory = torch.cat([enc["scale_token"].unsqueeze(1), enc["tokens"]], 1)
        mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=device), enc["token_mask"]], 1)
        return self.head(self.decoder(pooled, offsets, memory, mask))

    def loss(self, batch, inp, enc, device, dtype, hidden=None):
        recon = self.decode(enc, batch["wavelength"], device, dtype).float()
        valid_patch = (batch["patch_state"] == 2)[..., None]
        w = batch["weight"]
        ok = valid_patch & (w > 0) & np.isfinite(w) & np.isfinite(batch["flux"])
        target = torch.from_numpy(np.where(ok, batch["flux"], 0).astype(np.float32)).to(device)
        w_all = np.where(ok, np.minimum(w, self.cfg.ivar_clip), 0).astype(np.float32)
        sq = (recon - target) ** 2
        all_ = (sq * torch.from_numpy(w_all).to(device)).sum() / max(int(ok.sum()), 1)
        if hidden is None or not hidden.any():
            return all_
        okh = ok & hidden[..., None]
        w_h = np.where(okh, w_all, 0).astype(np.float32)
        hid = (sq * torch.from_numpy(w_h).to(device)).sum() / max(int(okh.sum()), 1)
        return {"hidden": hid, "all": all_, "both": all_ + hid}[self.cfg.mask_score]


# ------------------------------------------------------------------ helpers

def load_checkpoint(ckpt: Path, device, dtype) -> Tokenizer:
    from safetensors.torch import load_file

    cfg = Config.from_json((ckpt / "config.json").read_text())
    model = Tokenizer(cfg)
    state = load_file(str(ckpt / "model.safetensors"))
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval()


def forward_flops(cfg: Config, b: int, t: int) -> float:
    """Same count as spectok_model::forward_flops (matmuls, 2·m·n·k)."""
    d, p, h, s = cfg.d_model, cfg.patch_size, cfg.mlp_hidden(), t + 1
    mm = lambda m, k, n: 2.0 * m * k * n
    e, o = 2 * cfg.wavelength_freqs, p * 2 * cfg.offset_freqs
    enc = mm(b * t, 3 * p, d) + mm(b * t, e, d) + mm(b * t, o, d) + mm(b, 1, d)
    enc += cfg.encoder_layers * (4 * mm(b * s, d, d) + 2 * mm(b * s, d, s)
                                 + mm(b * s, d, h) + mm(b * s, h, d))
    if cfg.fsq_levels:
        c = len(cfg.fsq_levels)
        enc += mm(b * t, d, c) + mm(b * t, c, d)
    dec = mm(b * t, e, d) + mm(b * t, o, d)
    dec += cfg.decoder_layers * (2 * mm(b * t, d, d) + 2 * mm(b * s, d, d) + 2 * mm(b * t, d, s)
                                 + mm(b * t, d, h) + mm(b * t, h, d))
    dec += mm(b * t, d, p)
    return enc + dec


def report(name, ours, ref, mask=None):
    ours = ours.detach().float().cpu().numpy()
    ref = np.asarray(ref, dtype=np.float32)
    if mask is not None:
        ours, ref = ours[mask], ref[mask]
    diff = np.abs(ours - ref)
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    rel = max_abs / scale if scale > 0 else max_abs
    elem = diff / np.maximum(np.abs(ref), 1e-2 * max(scale, 1e-30))
    print(f"{name:15s} n={ref.size:8d} max|ref|={scale:.4g} max_abs_err={max_abs:.3e} "
          f"max_rel_err={rel:.3e} max_elem_rel_err(|ref|>=1%max)={float(elem.max()) if elem.size else 0:.3e}")
    return rel


# ----------------------------------------------------------------- commands

def cmd_compare(args) -> int:
    from safetensors.numpy import load_file

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_checkpoint(Path(args.checkpoint), "cpu", torch.float32)
    data = load_file(args.batch)
    batch = {k: data[k] for k in ["flux", "sigma", "weight", "wavelength", "patch_state", "log_scale"]}
    with torch.no_grad():
        inp = model.inputs(batch, "cpu", torch.float32)
        enc = model.encode(inp)
        recon = model.decode(enc, batch["wavelength"], "cpu", torch.float32)
    mask = data["token_mask"].astype(bool)
    if not np.array_equal(mask, enc["token_mask"].numpy()):
        print("token masks differ", file=sys.stderr)
        return 1
    b, t = mask.shape
    print(f"checkpoint {args.checkpoint}: B={b} T={t} valid tokens={int(mask.sum())} "
          f"D={model.cfg.d_model}")
    rel = report("tokens(valid)", enc["tokens"], data["tokens"], mask)
    report("tokens(all)", enc["tokens"], data["tokens"])
    report("scale_token", enc["scale_token"], data["scale_token"])
    report("pooled", enc["pooled"], data["pooled"])
    report("reconstruction", recon, data["reconstruction"])
    if "token_ids" in data and enc["token_ids"] is not None:
        same = (enc["token_ids"].numpy() == data["token_ids"].astype(np.int64))[mask]
        print(f"token_ids       agree on {int(same.sum())}/{same.size} valid tokens")
    ok = rel <= args.tol
    print(f"tokens max relative error {rel:.3e} {'<=' if ok else '>'} tol {args.tol:g}")
    return 0 if ok else 1


def random_batch(cfg: Config, b: int, t: int, rng: np.random.Generator) -> dict:
    p = cfg.patch_size
    start = rng.uniform(3600, 15000, size=(b, 1, 1))
    step = rng.uniform(0.05, 2.0, size=(b, 1, 1))
    idx = np.arange(t * p).reshape(1, t, p)
    wavelength = start + step * idx
    flux = (1 + 0.1 * rng.standard_normal((b, t, p))).astype(np.float32)
    sigma = np.full((b, t, p), 0.05, np.float32)
    weight = np.full((b, t, p), 400.0, np.float32)
    state = np.full((b, t), 2, np.uint8)
    return dict(flux=flux, sigma=sigma, weight=weight, wavelength=wavelength,
                patch_state=state, log_scale=np.zeros(b, np.float32))


def cmd_bench(args) -> int:
    cfg = Config.demo() if args.config == "demo" else Config()
    if args.config not in ("demo", "paper"):
        cfg = Config.from_json(Path(args.config).read_text())
    device = torch.device(args.device)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    model = Tokenizer(cfg).to(device=device, dtype=dtype)
    batch = random_batch(cfg, args.batch, args.patches, np.random.default_rng(0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def fwd():
        with torch.no_grad():
            inp = model.inputs(batch, device, dtype)
            enc = model.encode(inp)
            return model.decode(enc, batch["wavelength"], device, dtype)

    def train_step():
        inp = model.inputs(batch, device, dtype)
        enc = model.encode(inp)
        loss = model.loss(batch, inp, enc, device, dtype)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    results = {}
    for name, fn, train in [("forward", fwd, False), ("train_step", train_step, True)]:
        model.train(train)
        for _ in range(args.warmup):
            fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            fn()
        sync()
        dt = (time.perf_counter() - t0) / args.steps
        flops = forward_flops(cfg, args.batch, args.patches) * (3 if train else 1)
        results[name] = {"seconds": dt, "spectra_per_s": args.batch / dt,
                         "patches_per_s": args.batch * args.patches / dt,
                         "tflops_per_s": flops / dt / 1e12}
    print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "device": str(device),
                      "dtype": args.dtype, "config": args.config, "batch": args.batch,
                      "patches": args.patches,
                      "params": sum(p.numel() for p in model.parameters()),
                      "forward_flops": forward_flops(cfg, args.batch, args.patches),
                      **results}))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare", help="compare with tokens exported by the Rust model")
    c.add_argument("checkpoint", help="directory with model.safetensors and config.json")
    c.add_argument("batch", help="batch.safetensors written by the export_reference example")
    c.add_argument("--tol", type=float, default=1e-4)
    c.set_defaults(func=cmd_compare)
    b = sub.add_parser("bench", help="time forward and training steps")
    b.add_argument("--config", default="paper", help="paper, demo or a config.json path")
    b.add_argument("--batch", type=int, default=64)
    b.add_argument("--patches", type=int, default=128)
    b.add_argument("--steps", type=int, default=10)
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--device", default="cpu")
    b.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    b.set_defaults(func=cmd_bench)
    args = ap.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
