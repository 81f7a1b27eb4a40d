#!/usr/bin/env python3
"""astropy baseline of ``cargo xtask bench``: survey FITS files to padded
model batches, and a PyTorch+astropy embedding pipeline.

``bench_astropy.py ingest SURVEY=FILE,FILE... [...] [--repeat N] [--batch B]``
    For each survey (sdss, desi, apogee, galah), reads its files with
    astropy.io.fits ``--repeat`` times, and turns each spectrum into
    patches of ``--patch`` pixels (a new patch at every arm/chip/CCD
    boundary, flux and σ over the median valid flux, weight ivar·scale²,
    short tail patch padded) collated into ``B × T × P`` batches padded
    to their longest spectrum. Prints one JSON object with spectra/s per
    survey (and each timed pass in ``seconds``).

``bench_astropy.py pipeline CHECKPOINT_DIR FILE... [--batch B]``
    Files in, embeddings out, the plain way: read every file with astropy
    in the order given, batch ``B`` spectra at a time padded to the batch's
    longest spectrum, and run the PyTorch reference encoder
    (scripts/reference_model.py, eager, default threads) on each batch.
    Prints spectra, tokens (real and padded patch slots) and seconds.

GALAH files are grouped by star (``<sobject_id><ccd>.fits``, CCDs 1–4 form
one spectrum). Layouts are those of /work/shared/data/real/README.md.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits


def sdss(path):
    with fits.open(path, memmap=False) as h:
        d = h[1].data
        wl = 10.0 ** np.asarray(d["loglam"], np.float64)
        flux = np.asarray(d["flux"], np.float64)
        ivar = np.asarray(d["ivar"], np.float64)
        ok = ivar > 0
        sigma = np.where(ok, 1.0 / np.sqrt(np.where(ok, ivar, 1.0)), 0.0)
        yield [(wl, flux, sigma)]


def desi(path):
    with fits.open(path, memmap=False) as h:
        tid = np.asarray(h["FIBERMAP"].data["TARGETID"])
        arms = []
        for arm in "BRZ":
            wl = np.asarray(h[f"{arm}_WAVELENGTH"].data, np.float64)
            flux = np.asarray(h[f"{arm}_FLUX"].data, np.float64)
            ivar = np.asarray(h[f"{arm}_IVAR"].data, np.float64)
            mask = np.asarray(h[f"{arm}_MASK"].data)
            arms.append((wl, flux.reshape(-1, wl.size), ivar.reshape(-1, wl.size),
                         mask.reshape(-1, wl.size)))
        for i in range(tid.size):
            if tid[i] < 0:
                continue
            segs = []
            for wl, flux, ivar, mask in arms:
                ok = (ivar[i] > 0) & (mask[i] == 0)
                sigma = np.where(ok, 1.0 / np.sqrt(np.where(ok, ivar[i], 1.0)), 0.0)
                segs.append((wl, np.where(ok, flux[i], np.nan), sigma))
            yield segs


def apogee(path):
    with fits.open(path, memmap=False) as h:
        hdr = h[1].header
        flux = np.asarray(h[1].data, np.float64)
        err = np.asarray(h[2].data, np.float64)
        if flux.ndim == 2:
            flux, err = flux[0], err[0]
        wl = 10.0 ** (hdr["CRVAL1"] + hdr["CDELT1"] * np.arange(flux.size))
        ok = (err > 0) & (flux != 0)
        yield [(wl, np.where(ok, flux, np.nan), np.where(ok, err, 0.0))]


def galah(paths):
    segs = []
    for path in paths:
        with fits.open(path, memmap=False) as h:
            hdr = h[1].header
            norm = np.asarray(h[1].data, np.float64)
            rel = np.asarray(h[2].data, np.float64)
            wl = hdr["CRVAL1"] + hdr["CDELT1"] * np.arange(norm.size)
            segs.append((wl, norm, np.abs(rel * norm)))
    yield segs


def units(survey, files):
    """(reader, argument) per unit; GALAH CCD files grouped by star."""
    if survey == "galah":
        stars = {}
        for f in files:
            m = re.match(r"(\d+)([1-4])\.fits$", Path(f).name)
            key = m.group(1) if m else f
            stars.setdefault(key, []).append(f)
        return [(galah, sorted(v)) for _, v in sorted(stars.items())]
    reader = {"sdss": sdss, "desi": desi, "apogee": apogee}[survey]
    return [(reader, f) for f in files]


def patchify(segs, p):
    """Spectrum segments -> (flux, sigma, weight, wavelength) patches
    (n, p) and log10 scale, or None when nothing is valid."""
    ok_all = [np.isfinite(f) & (s > 0) for _, f, s in segs]
    valid = np.concatenate([f[o] for (_, f, _), o in zip(segs, ok_all)])
    if valid.size == 0:
        return None
    scale = float(np.median(valid))
    if not scale > 0:
        scale = float(np.median(np.abs(valid)))
        if not scale > 0:
            return None
    out = [[], [], [], []]
    for (wl, f, s), ok in zip(segs, ok_all):
        n = wl.size
        padded = -(-n // p) * p
        fl = np.zeros(padded, np.float32)
        sg = np.zeros(padded, np.float32)
        wl2 = np.empty(padded, np.float64)
        fl[:n] = np.where(ok, f / scale, 0.0)
        sg[:n] = np.where(ok, s / scale, 0.0)
        wl2[:n] = wl
        wl2[n:] = wl[-1]
        wt = np.minimum(np.divide(1.0, sg.astype(np.float64) ** 2, out=np.zeros(padded), where=sg > 0), 1e4)
        for arr, dst in zip((fl, sg, wt.astype(np.float32), wl2), out):
            dst.append(arr.reshape(-1, p))
    return [np.concatenate(x) for x in out], np.log10(scale)


def collate(prepared, p):
    b = len(prepared)
    t = max(x[0][0].shape[0] for x in prepared)
    flux = np.zeros((b, t, p), np.float32)
    sigma = np.zeros((b, t, p), np.float32)
    weight = np.zeros((b, t, p), np.float32)
    wavelength = np.zeros((b, t, p), np.float64)
    state = np.zeros((b, t), np.uint8)
    log_scale = np.zeros(b, np.float32)
    for i, ((fl, sg, wt, wl), ls) in enumerate(prepared):
        n = fl.shape[0]
        flux[i, :n], sigma[i, :n], weight[i, :n], wavelength[i, :n] = fl, sg, wt, wl
        state[i, :n] = np.where((wt > 0).sum(1) * 2 >= p, 2, 1)
        log_scale[i] = ls
    return dict(flux=flux, sigma=sigma, weight=weight, wavelength=wavelength,
                patch_state=state, log_scale=log_scale)


def batches(unit_list, p, b):
    pending = []
    for reader, arg in unit_list:
        for segs in reader(arg):
            x = patchify(segs, p)
            if x is not None:
                pending.append(x)
            if len(pending) == b:
                yield collate(pending, p), len(pending)
                pending = []
    if pending:
        yield collate(pending, p), len(pending)


def cmd_ingest(args) -> int:
    out = {"impl": "astropy"}
    for spec in args.surveys:
        survey, _, files = spec.partition("=")
        unit_list = units(survey, [f for f in files.split(",") if f])
        times, spectra = [], 0
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            n = 0
            for batch, k in batches(unit_list, args.patch, args.batch):
                n += k
            times.append(time.perf_counter() - t0)
            spectra = n
        best = min(times)
        out[survey] = {"spectra": spectra, "seconds": times,
                       "spectra_per_s": spectra / best if best > 0 else 0.0}
    print(json.dumps(out))
    return 0


def cmd_pipeline(args) -> int:
    import torch
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import reference_model as ref

    model = ref.load_checkpoint(Path(args.checkpoint), "cpu", torch.float32)
    p = model.cfg.patch_size
    t0 = time.perf_counter()
    unit_list = []
    galah_files = [f for f in args.files if re.match(r"\d+[1-4]\.fits$", Path(f).name)]
    for f in args.files:
        name = Path(f).name
        if f in galah_files:
            continue
        if name.startswith("coadd-"):
            unit_list.append((desi, f))
        elif name.startswith("apStar-"):
            unit_list.append((apogee, f))
        else:
            unit_list.append((sdss, f))
    unit_list += units("galah", galah_files)
    spectra = slots = real = 0
    pooled = []
    with torch.no_grad():
        for batch, k in batches(unit_list, p, args.batch):
            enc = model.encode(model.inputs(batch, "cpu", torch.float32))
            pooled.append(enc["pooled"].numpy())
            spectra += k
            slots += batch["patch_state"].size
            real += int((batch["patch_state"] > 0).sum())
    seconds = time.perf_counter() - t0
    print(json.dumps({"impl": "pytorch+astropy", "spectra": spectra, "patch_slots": slots,
                      "real_patches": real, "seconds": seconds,
                      "checksum": float(sum(float(x.sum()) for x in pooled))}))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("ingest")
    i.add_argument("surveys", nargs="+", help="SURVEY=FILE,FILE,...")
    i.add_argument("--repeat", type=int, default=3)
    i.add_argument("--batch", type=int, default=16)
    i.add_argument("--patch", type=int, default=32)
    i.set_defaults(func=cmd_ingest)
    q = sub.add_parser("pipeline")
    q.add_argument("checkpoint")
    q.add_argument("files", nargs="+")
    q.add_argument("--batch", type=int, default=16)
    q.set_defaults(func=cmd_pipeline)
    args = ap.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
