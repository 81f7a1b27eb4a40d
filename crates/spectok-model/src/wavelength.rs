//! Continuous wavelength encoding, computed on the host in f64.
//!
//! The encoding has no parameters. For each patch it yields two feature
//! blocks, which learned linear maps (in [`crate::PatchEmbedding`] and
//! [`crate::QueryEmbedding`]) take to the model width:
//!
//! - **pooled absolute encoding** (`2 · wavelength_freqs` features): for
//!   periods `p_k` log-spaced from `min_period` to `max_period`, the mean
//!   over the patch's present pixels of `[sin(2πλ/p_k) …, cos(2πλ/p_k) …]`
//!   (all sines first, then all cosines);
//! - **per-pixel offsets** (`P · 2 · offset_freqs` features): for pixel `j`
//!   with offset `δ_j = λ_j − λ_c` from the patch centre `λ_c` (mean of the
//!   present wavelengths) and periods `q_k` log-spaced from
//!   `offset_min_period` to `offset_max_period`, `[sin(2πδ_j/q_k) …,
//!   cos(2πδ_j/q_k) …]`, pixel after pixel; zeros for absent pixels.
//!
//! Phases are computed in f64 (λ up to 17000 Å against periods of 0.1 Å
//! needs it) and the features are cast to f32 at the end.
//!
//! **Present pixels.** Pixel `j` of a patch is present when its wavelength
//! is finite, positive and larger than the last present wavelength of the
//! patch. This drops the tail padding of a short patch (which repeats the
//! last real wavelength) and batch-padding slots (wavelength 0), so neither
//! changes a patch's features. Invalid pixels (bad flux) still count: the
//! encoding describes where the patch lies, not which pixels are good.

use std::f64::consts::TAU;

use candle_core::{DType, Device, Tensor};
use multiversion::multiversion;
use rayon::prelude::*;
use spectok_data::Batch;

use crate::config::Config;
use crate::error::{Error, Result};

/// Wavelengths of a set of patches to encode or decode onto:
/// `[batch_size][n_patches][patch_size]`, row-major, Å.
#[derive(Clone, Debug, PartialEq)]
pub struct WavelengthGrid {
    /// Spectra.
    pub batch_size: usize,
    /// Patches per spectrum.
    pub n_patches: usize,
    /// Pixels per patch.
    pub patch_size: usize,
    /// Wavelength of each pixel, Å; see the module docs for which pixels
    /// count as present.
    pub wavelength: Vec<f64>,
}

impl WavelengthGrid {
    /// A grid from its parts; the length of `wavelength` must be
    /// `batch_size · n_patches · patch_size`.
    pub fn new(
        batch_size: usize,
        n_patches: usize,
        patch_size: usize,
        wavelength: Vec<f64>,
    ) -> Result<Self> {
        let want = batch_size * n_patches * patch_size;
        if wavelength.len() != want {
            return Err(Error::batch(
                "wavelength",
                format!(
                    "{} values for {batch_size} × {n_patches} × {patch_size} = {want}",
                    wavelength.len()
                ),
            ));
        }
        Ok(WavelengthGrid {
            batch_size,
            n_patches,
            patch_size,
            wavelength,
        })
    }

    /// The input grid of a batch: decoding onto it is the training case.
    pub fn from_batch(batch: &Batch) -> Self {
        WavelengthGrid {
            batch_size: batch.batch_size,
            n_patches: batch.max_patches,
            patch_size: batch.patch_size,
            wavelength: batch.wavelength.clone(),
        }
    }

    /// Cuts one increasing wavelength array per spectrum into patches of
    /// `patch_size` consecutive pixels (pixel `i` lands in patch
    /// `i / patch_size`, slot `i % patch_size`); a short tail patch repeats
    /// its last wavelength and shorter spectra are padded with all-zero
    /// patches. Use it to decode onto another survey's grid.
    pub fn from_spectra<W: AsRef<[f64]>>(spectra: &[W], patch_size: usize) -> Result<Self> {
        if patch_size == 0 {
            return Err(Error::batch("patch_size", "must be at least 1"));
        }
        let n_patches = spectra
            .iter()
            .map(|w| w.as_ref().len().div_ceil(patch_size))
            .max()
            .unwrap_or(0);
        let row = n_patches * patch_size;
        let mut wavelength = vec![0.0; spectra.len() * row];
        for (b, w) in spectra.iter().enumerate() {
            let w = w.as_ref();
            let out = &mut wavelength[b * row..(b + 1) * row];
            out[..w.len()].copy_from_slice(w);
            if let Some(&last) = w.last() {
                let end = w.len().div_ceil(patch_size) * patch_size;
                out[w.len()..end].fill(last);
            }
        }
        WavelengthGrid::new(spectra.len(), n_patches, patch_size, wavelength)
    }
}

/// Host-side features of a set of patches (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct PatchFeatures {
    /// `[n][2 · wavelength_freqs]` pooled absolute encodings.
    pub pooled: Vec<f32>,
    /// `[n][P · 2 · offset_freqs]` per-pixel offset encodings.
    pub offsets: Vec<f32>,
    /// `[n][P]` whether each pixel is present.
    pub present: Vec<bool>,
}

/// The sinusoidal wavelength encoding (no parameters).
#[derive(Clone, Debug, PartialEq)]
pub struct WavelengthEncoding {
    periods: Vec<f64>,
    offset_periods: Vec<f64>,
    /// Angular frequencies `2π / p` of `periods` (phases are `λ · ω`).
    freqs: Vec<f64>,
    /// Angular frequencies of `offset_periods`.
    offset_freqs: Vec<f64>,
    patch_size: usize,
}

/// Angular frequencies `2π / p` of periods `p` (the ones the tensor path
/// of [`WavelengthEncoding::forward_tensors`] multiplies by, too).
fn angular(periods: &[f64]) -> Vec<f64> {
    periods.iter().map(|&p| TAU / p).collect()
}

/// `n` periods log-spaced from `lo` to `hi` (just `lo` when `n == 1`).
fn log_spaced(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![lo];
    }
    let ratio = hi / lo;
    (0..n)
        .map(|k| lo * ratio.powf(k as f64 / (n - 1) as f64))
        .collect()
}

impl WavelengthEncoding {
    /// The encoding a config describes.
    pub fn new(cfg: &Config) -> Self {
        let periods = log_spaced(cfg.min_period, cfg.max_period, cfg.wavelength_freqs);
        let offset_periods = log_spaced(
            cfg.offset_min_period,
            cfg.offset_max_period,
            cfg.offset_freqs,
        );
        WavelengthEncoding {
            freqs: angular(&periods),
            offset_freqs: angular(&offset_periods),
            periods,
            offset_periods,
            patch_size: cfg.patch_size,
        }
    }

    /// Periods of the absolute encoding, Å, shortest first.
    pub fn periods(&self) -> &[f64] {
        &self.periods
    }

    /// Periods of the offset encoding, Å, shortest first.
    pub fn offset_periods(&self) -> &[f64] {
        &self.offset_periods
    }

    /// Features of the absolute encoding.
    pub fn dim(&self) -> usize {
        2 * self.periods.len()
    }

    /// Offset features per patch (all its pixels).
    pub fn offsets_dim(&self) -> usize {
        2 * self.offset_periods.len() * self.patch_size
    }

    /// Features of every patch of `wavelength` (`[n][patch_size]`),
    /// computed in parallel over patches (the result does not depend on
    /// the thread count).
    pub fn features(&self, wavelength: &[f64]) -> PatchFeatures {
        let p = self.patch_size;
        let n = wavelength.len() / p;
        let e = self.dim();
        let o = 2 * self.offset_periods.len() * p;
        let mut pooled = vec![0f32; n * e];
        let mut offsets = vec![0f32; n * o];
        let mut present = vec![false; n * p];
        pooled
            .par_chunks_mut(e)
            .zip(offsets.par_chunks_mut(o))
            .zip(present.par_chunks_mut(p))
            .zip(wavelength.par_chunks_exact(p))
            .with_min_len(16)
            .for_each(|(((pooled, offsets), present), patch)| {
                encode_patch(
                    (&self.freqs, &self.offset_freqs),
                    patch,
                    (pooled, offsets, present),
                )
            });
        PatchFeatures {
            pooled,
            offsets,
            present,
        }
    }

    /// Encodes a grid as tensors: pooled `(B, T, 2·wavelength_freqs)` and
    /// offsets `(B, T, P·2·offset_freqs)`, in `dtype` on `device`.
    pub fn forward(
        &self,
        grid: &WavelengthGrid,
        device: &Device,
        dtype: DType,
    ) -> Result<(Tensor, Tensor)> {
        if grid.patch_size != self.patch_size {
            return Err(Error::batch(
                "patch_size",
                format!(
                    "grid has {} pixels per patch, model {}",
                    grid.patch_size, self.patch_size
                ),
            ));
        }
        if device.is_cuda() {
            // Same values either way; should a device lack one of the f64
            // kernels the tensor path needs, the host path still serves.
            if let Ok(features) = self.forward_tensors(grid, device, dtype) {
                return Ok(features);
            }
        }
        let f = self.features(&grid.wavelength);
        let (b, t) = (grid.batch_size, grid.n_patches);
        let pooled = Tensor::from_vec(f.pooled, (b, t, self.dim()), device)?.to_dtype(dtype)?;
        let offsets =
            Tensor::from_vec(f.offsets, (b, t, self.offsets_dim()), device)?.to_dtype(dtype)?;
        Ok((pooled, offsets))
    }

    /// [`Self::forward`] computed with tensor ops on `device` (the path
    /// CUDA devices take, so that only the f64 wavelengths and a presence
    /// mask cross to the device instead of `2·(F + K·P)` features per
    /// patch). Phases are f64, as on the host; results agree with
    /// [`Self::features`] to f32 rounding.
    pub fn forward_tensors(
        &self,
        grid: &WavelengthGrid,
        device: &Device,
        dtype: DType,
    ) -> Result<(Tensor, Tensor)> {
        let (b, t, p) = (grid.batch_size, grid.n_patches, grid.patch_size);
        if p != self.patch_size || grid.wavelength.len() != b * t * p {
            return Err(Error::batch(
                "wavelength",
                format!(
                    "{} values for a {b} × {t} × {p} grid",
                    grid.wavelength.len()
                ),
            ));
        }
        // Presence exactly as `patch_features` decides it (host side, one
        // pass); absent pixels get wavelength 0 so every value is finite.
        let mut present = vec![0f64; b * t * p];
        let mut w = vec![0f64; b * t * p];
        for ((patch, m), wo) in grid
            .wavelength
            .chunks_exact(p)
            .zip(present.chunks_exact_mut(p))
            .zip(w.chunks_exact_mut(p))
        {
            let mut last = 0.0f64;
            for ((&x, m), wo) in patch.iter().zip(m.iter_mut()).zip(wo.iter_mut()) {
                if x.is_finite() && x > 0.0 && x > last {
                    last = x;
                    *m = 1.0;
                    *wo = x;
                }
            }
        }
        let w = Tensor::from_vec(w, (b, t, p, 1), device)?;
        let m = Tensor::from_vec(present, (b, t, p, 1), device)?;
        let count = m.sum_keepdim(2)?; // (B, T, 1, 1)
        let denom = count.clamp(1f64, f64::INFINITY)?;
        let freqs = |f: &[f64]| -> Result<Tensor> {
            Ok(Tensor::from_slice(f, (1, 1, 1, f.len()), device)?)
        };
        // Absolute encoding: mean over present pixels of sin and cos.
        let phase = w.broadcast_mul(&freqs(&self.freqs)?)?; // (B, T, P, F)
        let mean = |x: Tensor| -> Result<Tensor> {
            Ok(x.broadcast_mul(&m)?
                .sum(2)?
                .broadcast_div(&denom.squeeze(3)?)?)
        };
        let pooled =
            Tensor::cat(&[mean(phase.sin()?)?, mean(phase.cos()?)?], 2)?.to_dtype(dtype)?;
        // Offsets from the present pixels' mean wavelength.
        let centre = w.broadcast_mul(&m)?.sum_keepdim(2)?.broadcast_div(&denom)?;
        let off = w.broadcast_sub(&centre)?.broadcast_mul(&m)?;
        let phase = off.broadcast_mul(&freqs(&self.offset_freqs)?)?; // (B, T, P, K)
        let offsets = Tensor::cat(
            &[
                phase.sin()?.broadcast_mul(&m)?,
                phase.cos()?.broadcast_mul(&m)?,
            ],
            3,
        )?
        .reshape((b, t, self.offsets_dim()))?
        .to_dtype(dtype)?;
        Ok((pooled, offsets))
    }
}

/// The first 33 bits of π/2 and the rest (fdlibm's `pio2_1`, `pio2_1t`).
const PIO2_1: f64 = 1.570_796_326_734_125_6;
const PIO2_1T: f64 = 6.077_100_506_506_192e-11;

/// Where the two-part reduction by π/2 stays exact: |x| < 2²⁰·π/2.
const REDUCTION_LIMIT: f64 = 1_647_099.0;

/// Whether every phase `x · ω` for angular frequencies up to `highest`
/// lies where [`sin_cos_reduced`] applies: the largest is that of the
/// highest frequency (a correctly rounded product is monotonic), and a NaN
/// fails the test.
#[inline(always)]
fn in_reach(x: f64, highest: f64) -> bool {
    x.abs() * highest < REDUCTION_LIMIT
}

/// The highest of `freqs` (0 for none).
fn highest(freqs: &[f64]) -> f64 {
    freqs.iter().copied().fold(0.0, f64::max)
}

/// `put(out, sin, cos)` of the phase `x · ω` for each angular frequency
/// `ω` and its output, `highest` being the largest `ω`: when every phase
/// is in reach of [`sin_cos_reduced`], one loop of it (which vectorises),
/// else libm's `sin_cos` for all.
#[inline(always)]
fn each_sin_cos<'a, O>(
    x: f64,
    highest: f64,
    outs: impl Iterator<Item = (&'a f64, O)>,
    put: impl Fn(O, f64, f64),
) {
    if in_reach(x, highest) {
        for (&f, o) in outs {
            let (s, c) = sin_cos_reduced(x * f);
            put(o, s, c);
        }
    } else {
        for (&f, o) in outs {
            let (s, c) = sin_cos(x * f);
            put(o, s, c);
        }
    }
}

/// Features of one patch into zeroed outputs `(pooled, offsets,
/// present)`, for angular frequencies `(absolute, offset)`. Compiled for
/// AVX2 too and chosen at run time: the loops over frequencies are
/// straight-line f64 arithmetic, four lanes wide there against two in
/// the baseline x86-64 target (the same operations, so the same values).
#[multiversion(targets = "simd")]
fn encode_patch(
    (freqs, offset_freqs): (&[f64], &[f64]),
    patch: &[f64],
    (pooled, offsets, present): (&mut [f32], &mut [f32], &mut [bool]),
) {
    let mut last = 0.0f64;
    let mut count = 0usize;
    let mut sum_w = 0.0f64;
    for (&w, here) in patch.iter().zip(present.iter_mut()) {
        if w.is_finite() && w > 0.0 && w > last {
            *here = true;
            last = w;
            count += 1;
            sum_w += w;
        }
    }
    if count == 0 {
        return;
    }
    let half = freqs.len();
    let mut acc = vec![0f64; 2 * half];
    let (acc_sin, acc_cos) = acc.split_at_mut(half);
    let top = highest(freqs);
    for (&w, _) in patch.iter().zip(present.iter()).filter(|(_, &h)| h) {
        let sums = freqs.iter().zip(acc_sin.iter_mut().zip(acc_cos.iter_mut()));
        each_sin_cos(w, top, sums, |(s_acc, c_acc), s, c| {
            *s_acc += s;
            *c_acc += c;
        });
    }
    for (o, a) in pooled.iter_mut().zip(&acc) {
        *o = (a / count as f64) as f32;
    }
    let centre = sum_w / count as f64;
    let kf = offset_freqs.len();
    let top = highest(offset_freqs);
    for ((&w, &h), px) in patch
        .iter()
        .zip(present.iter())
        .zip(offsets.chunks_exact_mut(2 * kf))
    {
        if !h {
            continue;
        }
        let d = w - centre;
        let (px_sin, px_cos) = px.split_at_mut(kf);
        let outs = offset_freqs
            .iter()
            .zip(px_sin.iter_mut().zip(px_cos.iter_mut()));
        each_sin_cos(d, top, outs, |(ps, pc), s, c| {
            *ps = s as f32;
            *pc = c as f32;
        });
    }
}

/// `(sin x, cos x)` of a wavelength phase, as `f64::sin_cos` within
/// 1e-13 (the features are f32): [`sin_cos_reduced`] where it applies,
/// libm's `sin_cos` beyond (and for NaN).
#[inline]
fn sin_cos(x: f64) -> (f64, f64) {
    if x.abs() >= REDUCTION_LIMIT || x.is_nan() {
        return x.sin_cos();
    }
    sin_cos_reduced(x)
}

/// `(sin x, cos x)` for |x| < [`REDUCTION_LIMIT`], in straight-line
/// arithmetic that the compiler vectorises over the periods: reduction by
/// π/2 in the two-part Cody–Waite form of fdlibm (`n` rounded by the
/// 1.5·2⁵² shift, so no libm `round`; the quadrant from the low bits of
/// the shifted value), Taylor polynomials on |r| ≤ π/4 to the 15th and
/// 16th order, and the quadrant's swap and signs as selects. About eight
/// times faster than libm's `sincos`, which was 8 % of an embedding.
#[inline(always)]
fn sin_cos_reduced(x: f64) -> (f64, f64) {
    const SHIFT: f64 = 6_755_399_441_055_744.0; // 1.5 · 2⁵²
    let t = x * std::f64::consts::FRAC_2_PI + SHIFT;
    let n = t - SHIFT;
    let r = (x - n * PIO2_1) - n * PIO2_1T;
    let r2 = r * r;
    // sin r = r Σ (−1)ᵏ r²ᵏ / (2k+1)!, cos r = Σ (−1)ᵏ r²ᵏ / (2k)!.
    let s = r
        * (1.0
            + r2 * (-1.0 / 6.0
                + r2 * (1.0 / 120.0
                    + r2 * (-1.0 / 5040.0
                        + r2 * (1.0 / 362_880.0
                            + r2 * (-1.0 / 39_916_800.0
                                + r2 * (1.0 / 6_227_020_800.0
                                    + r2 * (-1.0 / 1_307_674_368_000.0))))))));
    let c = 1.0
        + r2 * (-0.5
            + r2 * (1.0 / 24.0
                + r2 * (-1.0 / 720.0
                    + r2 * (1.0 / 40_320.0
                        + r2 * (-1.0 / 3_628_800.0
                            + r2 * (1.0 / 479_001_600.0
                                + r2 * (-1.0 / 87_178_291_200.0
                                    + r2 * (1.0 / 20_922_789_888_000.0))))))));
    // t's mantissa holds 2⁵¹ + n, so its low two bits are n mod 4.
    let q = t.to_bits() & 3;
    let (s, c) = if q & 1 == 1 { (c, s) } else { (s, c) };
    let sign_s = if q & 2 != 0 { -1.0 } else { 1.0 };
    let sign_c = if (q + 1) & 2 != 0 { -1.0 } else { 1.0 };
    (sign_s * s, sign_c * c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(p: usize) -> WavelengthEncoding {
        WavelengthEncoding::new(&Config {
            patch_size: p,
            wavelength_freqs: 6,
            offset_freqs: 3,
            ..Config::demo()
        })
    }

    #[test]
    fn tensor_path_equals_the_host_features() {
        // Default-config frequencies, P = 8; patches that are full, empty,
        // partly padded (NaN, 0), non-monotonic and at GALAH / APOGEE /
        // Gaia wavelengths.
        let e = WavelengthEncoding::new(&Config {
            patch_size: 8,
            ..Config::paper()
        });
        let p = 8;
        let mut w = Vec::new();
        for (k, start) in [3600.0, 4718.2, 15100.7, 16990.0, 10450.0, 5500.0]
            .into_iter()
            .enumerate()
        {
            for i in 0..p {
                let mut x = start + 0.37 * i as f64 + 0.001 * (i * i) as f64;
                if k == 1 && i >= 5 {
                    x = f64::NAN; // padded tail
                }
                if k == 2 && i == 3 {
                    x = start - 1.0; // not increasing: absent
                }
                if k == 4 {
                    x = 0.0; // empty patch
                }
                if k == 5 && i % 2 == 1 {
                    x = -1.0;
                }
                w.push(x);
            }
        }
        let grid = WavelengthGrid::new(2, 3, p, w).unwrap();
        let dev = Device::Cpu;
        let (a_pooled, a_off) = e.forward(&grid, &dev, DType::F32).unwrap();
        let (b_pooled, b_off) = e.forward_tensors(&grid, &dev, DType::F32).unwrap();
        assert_eq!(a_pooled.dims(), b_pooled.dims());
        assert_eq!(a_off.dims(), b_off.dims());
        for (a, b) in [(a_pooled, b_pooled), (a_off, b_off)] {
            let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(worst < 2e-6, "host and tensor features differ by {worst}");
            assert!(a.iter().any(|&x| x != 0.0));
        }
    }

    #[test]
    fn periods_are_log_spaced_between_the_bounds() {
        let e = enc(4);
        let p = e.periods();
        assert_eq!(p.len(), 6);
        assert!((p[0] - 0.1).abs() < 1e-12 && (p[5] - 1e5).abs() < 1e-6);
        let r = p[1] / p[0];
        assert!(p.windows(2).all(|w| (w[1] / w[0] - r).abs() < 1e-9));
        assert_eq!(log_spaced(2.0, 5.0, 1), vec![2.0]);
    }

    #[test]
    fn fast_sin_cos_matches_libm_over_the_phases_of_any_grid() {
        // The two constants add up to π/2, the first with 33 bits.
        assert_eq!(PIO2_1.to_bits(), PIO2_1_BITS);
        assert_eq!(PIO2_1_BITS & ((1 << 20) - 1), 0);
        assert_eq!(PIO2_1 + PIO2_1T, std::f64::consts::FRAC_PI_2);
        let mut worst = 0f64;
        let mut x = -2e6f64;
        while x < 2e6 {
            let (s, c) = sin_cos(x);
            let (es, ec) = x.sin_cos();
            worst = worst.max((s - es).abs()).max((c - ec).abs());
            x += 0.618_033_988_7 * 37.0;
        }
        for x in [
            0.0,
            1e-300,
            std::f64::consts::FRAC_PI_4,
            1e7,
            -1e12,
            f64::INFINITY,
        ] {
            let (s, c) = sin_cos(x);
            let (es, ec) = x.sin_cos();
            assert!(
                (s - es).abs() < 1e-13 || (s.is_nan() && es.is_nan()),
                "{x}: sin {s} vs {es}"
            );
            assert!(
                (c - ec).abs() < 1e-13 || (c.is_nan() && ec.is_nan()),
                "{x}: cos {c} vs {ec}"
            );
        }
        assert!(worst < 1e-13, "off by {worst}");
        assert_eq!(sin_cos(0.0), (0.0, 1.0));
    }

    /// The bits of `sin_cos`'s first part of π/2.
    const PIO2_1_BITS: u64 = 0x3FF9_21FB_5440_0000;

    #[test]
    fn pooling_counts_present_pixels_only() {
        let e = enc(5);
        // Tail patch: 3 real pixels, padding repeats the last wavelength.
        let padded = [16999.8, 16999.95, 17000.3, 17000.3, 17000.3];
        let f = e.features(&padded);
        assert_eq!(f.present, vec![true, true, true, false, false]);
        for (k, &period) in e.periods().iter().enumerate() {
            let mean_sin: f64 = padded[..3]
                .iter()
                .map(|w| (TAU * w / period).sin())
                .sum::<f64>()
                / 3.0;
            assert!(
                (f.pooled[k] - mean_sin as f32).abs() <= 1e-6,
                "period {period}: {} vs {mean_sin}",
                f.pooled[k]
            );
        }
        // Absent pixels have zero offsets; padding slots have no features.
        let kf = e.offset_periods().len();
        assert!(f.offsets[3 * 2 * kf..].iter().all(|&v| v == 0.0));
        let empty = e.features(&[0.0; 5]);
        assert!(empty.pooled.iter().chain(&empty.offsets).all(|&v| v == 0.0));
        assert!(empty.present.iter().all(|p| !p));
    }

    #[test]
    fn phases_keep_f64_precision_at_long_wavelengths() {
        // Two GALAH-like pixels 0.05 Å apart at 17000 Å: the 0.1 Å sinusoid
        // is in opposite phase, exactly as f64 arithmetic says.
        let e = enc(1);
        let a = e.features(&[16999.85]).pooled[0];
        let b = e.features(&[16999.90]).pooled[0];
        assert!((a - (TAU * 16999.85 / 0.1).sin() as f32).abs() <= 1e-6);
        assert!((b - (TAU * 16999.90 / 0.1).sin() as f32).abs() <= 1e-6);
        assert!((a + b).abs() < 1e-6, "{a} {b}");
    }

    #[test]
    fn offsets_are_relative_to_the_patch_centre() {
        let e = enc(3);
        let f = e.features(&[5000.0, 5001.0, 5002.0]);
        let kf = e.offset_periods().len();
        // Middle pixel sits on the centre: sin 0, cos 1.
        let mid = &f.offsets[2 * kf..4 * kf];
        assert!(mid[..kf].iter().all(|&v| v == 0.0));
        assert!(mid[kf..].iter().all(|&v| v == 1.0));
        // Shifting the whole patch leaves offsets unchanged.
        let g = e.features(&[6000.0, 6001.0, 6002.0]);
        assert_eq!(f.offsets, g.offsets);
        assert_ne!(f.pooled, g.pooled);
    }

    #[test]
    fn grids_from_spectra_pad_like_batches() {
        let g = WavelengthGrid::from_spectra(&[vec![1.0, 2.0, 3.0], vec![4.0]], 2).unwrap();
        assert_eq!((g.batch_size, g.n_patches, g.patch_size), (2, 2, 2));
        assert_eq!(g.wavelength, vec![1.0, 2.0, 3.0, 3.0, 4.0, 4.0, 0.0, 0.0]);
        assert!(WavelengthGrid::new(1, 2, 2, vec![0.0; 3]).is_err());
        assert!(WavelengthGrid::from_spectra(&[vec![1.0]], 0).is_err());
    }
}
