//! One spectrum on its native grid → its patches: invalid-pixel rule,
//! robust scale, normalised flux/σ/weight channels and patchification.
//!
//! Preparation is a pure, deterministic function of the spectrum and the
//! [`PrepareConfig`]; it never interpolates: every flux value it outputs is
//! one input pixel's flux divided by the spectrum's scale (then the
//! configured bounded transform), in input order.

use serde::{Deserialize, Serialize};
use spectok_io::{Labels, Medium, Source, Spectrum, Survey};

use crate::batch::PatchState;
use crate::error::{Error, RejectReason, Result};
use crate::mask::MaskRules;

/// `pixel_index` of a tail-padding slot (no input pixel).
pub const PAD_PIXEL: u32 = u32::MAX;

/// Bounded transform applied to the normalised flux and σ channels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transform {
    /// Channels are `f / scale` and `σ / scale` as they are.
    #[default]
    None,
    /// Channels are `asinh(f / scale)` and `asinh(σ / scale)`: linear
    /// around the continuum level and logarithmic for strong lines and
    /// large errors. The weight becomes the first-order inverse variance of
    /// the transformed flux, `ivar·scale²·(1 + (f/scale)²)`, so the loss
    /// stays a χ² in the units the model reconstructs.
    Arcsinh,
}

impl Transform {
    /// Applies the transform to a normalised value.
    #[inline]
    pub fn apply(self, x: f64) -> f64 {
        match self {
            Transform::None => x,
            Transform::Arcsinh => x.asinh(),
        }
    }

    /// Inverse of [`Transform::apply`] (to turn reconstructions back into
    /// normalised flux).
    #[inline]
    pub fn invert(self, y: f64) -> f64 {
        match self {
            Transform::None => y,
            Transform::Arcsinh => y.sinh(),
        }
    }
}

/// How a spectrum's scale was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScaleRule {
    /// Median of the valid flux.
    Median,
    /// Median of |flux| over valid pixels: the median was ≤ 0, not finite,
    /// or below `min_median_fraction` of this value.
    MedianAbs,
}

/// Settings of [`prepare`]. Every field has a default; a config file may
/// give any subset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrepareConfig {
    /// Pixels per patch `P` (paper: 32).
    pub patch_size: usize,
    /// A step between consecutive wavelengths larger than `gap_factor`
    /// times the median of the neighbouring steps starts a new patch.
    pub gap_factor: f64,
    /// Number of steps on each side of a step that form its neighbourhood
    /// for the gap rule (local, because log-linear grids have growing
    /// steps).
    pub gap_window: usize,
    /// Which mask bits invalidate a pixel, per survey.
    pub mask: MaskRules,
    /// Bounded transform of the flux and σ channels.
    pub transform: Transform,
    /// Clip of the per-pixel weight (normalised ivar `ivar·scale²`):
    /// 1e4 means pixels with S/N above 100 relative to the spectrum's
    /// scale weigh no more than S/N 100 (the ivar clipping of the method).
    pub max_weight: f32,
    /// The median of valid flux is the scale only if it is at least this
    /// fraction of the median of |flux|; otherwise (noise-dominated or
    /// negative spectra) the median of |flux| is.
    pub min_median_fraction: f64,
    /// Spectra with fewer valid patches are rejected (an all-invalid
    /// spectrum gives the encoder nothing to attend to).
    pub min_valid_patches: usize,
}

impl Default for PrepareConfig {
    fn default() -> Self {
        PrepareConfig {
            patch_size: 32,
            gap_factor: 3.0,
            gap_window: 4,
            mask: MaskRules::default(),
            transform: Transform::None,
            max_weight: 1e4,
            min_median_fraction: 0.1,
            min_valid_patches: 1,
        }
    }
}

impl PrepareConfig {
    /// Checks that every value is in range.
    pub fn validate(&self) -> Result<()> {
        if self.patch_size == 0 {
            return Err(Error::config("patch_size", "must be at least 1"));
        }
        if self.gap_factor.is_nan() || self.gap_factor <= 1.0 {
            return Err(Error::config(
                "gap_factor",
                format!("{} (must be > 1; use inf to disable)", self.gap_factor),
            ));
        }
        if self.gap_window == 0 {
            return Err(Error::config("gap_window", "must be at least 1"));
        }
        if self.max_weight.is_nan() || self.max_weight <= 0.0 {
            return Err(Error::config(
                "max_weight",
                format!("{} (must be > 0)", self.max_weight),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_median_fraction) {
            return Err(Error::config(
                "min_median_fraction",
                format!("{} (must be in 0..=1)", self.min_median_fraction),
            ));
        }
        Ok(())
    }
}

/// One spectrum cut into patches, ready to be collated.
///
/// Pixel arrays are `[n_patches][patch_size]` row-major, patch arrays are
/// `[n_patches]`; their meaning is that of the same fields of
/// [`crate::Batch`].
#[derive(Clone, Debug, PartialEq)]
pub struct PreparedSpectrum {
    /// Object id.
    pub id: String,
    /// Survey of the spectrum.
    pub survey: Survey,
    /// Where it was read from.
    pub source: Source,
    /// Vacuum or air wavelengths (never converted).
    pub medium: Medium,
    /// Labels as the file gives them.
    pub labels: Labels,
    /// Pixels per patch `P`.
    pub patch_size: usize,
    /// The flux scale, in the file's flux units.
    pub scale: f64,
    /// `log10(scale)`.
    pub log_scale: f32,
    /// How `scale` was chosen.
    pub scale_rule: ScaleRule,
    /// Normalised (and transformed) flux.
    pub flux: Vec<f32>,
    /// Normalised (and transformed) σ.
    pub sigma: Vec<f32>,
    /// Pixel wavelengths, Å.
    pub wavelength: Vec<f64>,
    /// Clipped normalised inverse variance (0 where invalid).
    pub weight: Vec<f32>,
    /// Input pixel behind each slot ([`PAD_PIXEL`] for tail padding):
    /// strictly increasing over the non-padding slots and covering every
    /// input pixel once, so outputs can be mapped back to the input grid.
    pub pixel_index: Vec<u32>,
    /// Valid or invalid, per patch.
    pub patch_state: Vec<PatchState>,
    /// Centre wavelength of each patch, Å.
    pub patch_center: Vec<f64>,
    /// Number of valid input pixels.
    pub valid_pixels: usize,
}

impl PreparedSpectrum {
    /// Number of (valid and invalid) patches.
    pub fn n_patches(&self) -> usize {
        self.patch_state.len()
    }

    /// Number of valid patches.
    pub fn n_valid_patches(&self) -> usize {
        self.patch_state
            .iter()
            .filter(|s| **s == PatchState::Valid)
            .count()
    }

    /// Bytes held by the pixel and patch arrays (for memory accounting).
    pub fn heap_bytes(&self) -> usize {
        self.flux.len() * (4 + 4 + 8 + 4 + 4) + self.patch_state.len() * 9
    }
}

/// Median of `v` (mean of the two middle values for an even count);
/// reorders `v`. `None` when empty.
pub fn median(v: &mut [f64]) -> Option<f64> {
    let n = v.len();
    if n == 0 {
        return None;
    }
    let (lo, mid, _) = v.select_nth_unstable_by(n / 2, f64::total_cmp);
    let mid = *mid;
    if n % 2 == 1 {
        Some(mid)
    } else {
        let below = lo.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(0.5 * (below + mid))
    }
}

/// The flux scale of valid pixels: the median of valid flux if it is
/// positive, finite and at least `min_median_fraction` × the median of
/// |flux|; otherwise the median of |flux|; `None` when that is 0 or
/// undefined too.
pub fn robust_scale(
    flux: &[f32],
    valid: &[bool],
    min_median_fraction: f64,
) -> Option<(f64, ScaleRule)> {
    // Selection on the f32 values (converting to f64 is exact and keeps
    // the order, so the medians are those of the f64 values).
    let mut vals: Vec<f32> = flux
        .iter()
        .zip(valid)
        .filter(|(_, ok)| **ok)
        .map(|(f, _)| *f)
        .collect();
    let med = median_f32(&mut vals)?;
    if med.is_finite() && med > 0.0 {
        // The median of |flux| is needed only to reject `med`: when more
        // than half the values have `fraction·|v| ≤ med`, both middle
        // order statistics of |flux| do (and so does their mean), so
        // `med` passes without a second selection.
        let within = vals
            .iter()
            .filter(|v| min_median_fraction * f64::from(v.abs()) <= med)
            .count();
        if within > vals.len() / 2 {
            return Some((med, ScaleRule::Median));
        }
    }
    for v in vals.iter_mut() {
        *v = v.abs();
    }
    let med_abs = median_f32(&mut vals)?;
    if med.is_finite() && med > 0.0 && med >= min_median_fraction * med_abs {
        Some((med, ScaleRule::Median))
    } else if med_abs.is_finite() && med_abs > 0.0 {
        Some((med_abs, ScaleRule::MedianAbs))
    } else {
        None
    }
}

/// [`median`] of f32 values, in f64 (the mean of the two middle values
/// is taken in f64); reorders `v`.
fn median_f32(v: &mut [f32]) -> Option<f64> {
    let n = v.len();
    if n == 0 {
        return None;
    }
    let (lo, mid, _) = v.select_nth_unstable_by(n / 2, f32::total_cmp);
    let mid = f64::from(*mid);
    if n % 2 == 1 {
        Some(mid)
    } else {
        let below = lo.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        Some(0.5 * (f64::from(below) + mid))
    }
}

/// Steps [`runs`] tests against the floor at once.
const FLOOR_BLOCK: usize = 16;

/// Pixel ranges `[start, end)` of the runs a spectrum splits into: a run
/// ends at each segment boundary and at each wavelength gap (a step larger
/// than `gap_factor` × the median of up to `gap_window` neighbouring steps
/// on each side, within the segment).
pub fn runs(spectrum: &Spectrum, gap_factor: f64, gap_window: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut steps: Vec<f64> = Vec::new();
    let mut window: Vec<f64> = Vec::with_capacity(2 * gap_window);
    for seg in &spectrum.segments {
        let w = match spectrum.wavelength.get(seg.start..seg.end) {
            Some(w) if !w.is_empty() => w,
            _ => continue,
        };
        steps.clear();
        steps.extend(w.iter().zip(&w[1..]).map(|(a, b)| b - a));
        // Fastest path: a step within gap_factor of the segment's smallest
        // step is within it of every neighbourhood's median (log-linear
        // and linear grids pass everywhere but at real gaps).
        let smallest = steps
            .iter()
            .fold(f64::INFINITY, |m, &s| if s < m { s } else { m });
        let floor = gap_factor * smallest;
        let mut run_start = seg.start;
        let mut next = 0;
        while next < steps.len() {
            let i = next;
            next += 1;
            // Whole blocks of steps within the floor are passed over in
            // one vectorised test.
            if let Some(block) = steps.get(i..i + FLOOR_BLOCK) {
                if block.iter().fold(true, |ok, &s| ok & (s <= floor)) {
                    next = i + FLOOR_BLOCK;
                    continue;
                }
            }
            if steps[i] <= floor {
                continue;
            }
            let lo = i.saturating_sub(gap_window);
            let hi = (i + gap_window + 1).min(steps.len());
            // Fast path: the median is at least the smallest neighbour, so
            // a step within gap_factor of every neighbour is no gap.
            let min = steps[lo..hi]
                .iter()
                .enumerate()
                .filter(|(k, _)| lo + k != i)
                .fold(f64::INFINITY, |m, (_, s)| m.min(*s));
            if steps[i] <= gap_factor * min {
                continue;
            }
            window.clear();
            window.extend(
                steps[lo..hi]
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| lo + k != i)
                    .map(|(_, s)| *s),
            );
            let is_gap = match median(&mut window) {
                Some(m) => steps[i] > gap_factor * m,
                None => false,
            };
            if is_gap {
                let cut = seg.start + i + 1;
                out.push((run_start, cut));
                run_start = cut;
            }
        }
        out.push((run_start, seg.end));
    }
    out
}

/// `x` as f32, saturating at ±`f32::MAX` so that no model input is
/// infinite (only reachable with absurd flux/scale ratios); NaN stays NaN
/// (as `f64::clamp`). Written as selects so that loops over it vectorise.
#[inline(always)]
fn finite_f32(x: f64) -> f32 {
    const MAX: f64 = f32::MAX as f64;
    let x = if x > MAX { MAX } else { x };
    let x = if x < -MAX { -MAX } else { x };
    x as f32
}

/// Appends the model channels of input pixels `range` — normalised (and
/// transformed) flux, σ and the loss weight, zero for invalid pixels — to
/// the three outputs. One short loop per channel, each branch-free (the
/// invalid pixels are computed and dropped by a select), so the compiler
/// vectorises them; nothing is zero-filled first.
struct Channels<'a> {
    flux: &'a [f32],
    ivar: &'a [f32],
    valid: &'a [bool],
    scale: f64,
    scale2: f64,
    max_w: f64,
    transform: Transform,
}

impl<'a> Channels<'a> {
    fn new(spectrum: &'a Spectrum, valid: &'a [bool], scale: f64, cfg: &PrepareConfig) -> Self {
        Channels {
            flux: &spectrum.flux,
            ivar: &spectrum.ivar,
            valid,
            scale,
            scale2: scale * scale,
            max_w: cfg.max_weight as f64,
            transform: cfg.transform,
        }
    }

    fn append(
        &self,
        range: std::ops::Range<usize>,
        flux: &mut Vec<f32>,
        sigma: &mut Vec<f32>,
        weight: &mut Vec<f32>,
    ) {
        let (f_in, iv_in, ok_in) = (
            &self.flux[range.clone()],
            &self.ivar[range.clone()],
            &self.valid[range],
        );
        let (scale, scale2, max_w) = (self.scale, self.scale2, self.max_w);
        let select = |ok: bool, x: f32| if ok { x } else { 0.0 };
        match self.transform {
            Transform::None => {
                flux.extend(
                    f_in.iter()
                        .zip(ok_in)
                        .map(|(&f, &ok)| select(ok, finite_f32(f as f64 / scale))),
                );
                sigma.extend(
                    iv_in.iter().zip(ok_in).map(|(&iv, &ok)| {
                        select(ok, finite_f32(1.0 / (iv as f64 * scale2).sqrt()))
                    }),
                );
                weight.extend(iv_in.iter().zip(ok_in).map(|(&iv, &ok)| {
                    let w = iv as f64 * scale2;
                    // `w.min(max_w)` as a select (also max_w for a NaN w).
                    select(ok, (if w < max_w { w } else { max_w }) as f32)
                }));
            }
            Transform::Arcsinh => {
                let t = Transform::Arcsinh;
                for ((&f, &iv), &ok) in f_in.iter().zip(iv_in).zip(ok_in) {
                    let f = f as f64 / scale;
                    let ivn = iv as f64 * scale2;
                    let s = 1.0 / ivn.sqrt();
                    let w = ivn * (1.0 + f * f);
                    let w = if w < max_w { w } else { max_w };
                    flux.push(select(ok, finite_f32(t.apply(f))));
                    sigma.push(select(ok, finite_f32(t.apply(s))));
                    weight.push(select(ok, w as f32));
                }
            }
        }
    }
}

/// Prepares one spectrum: validity, scale, normalised channels, patches.
///
/// Errors are [`Error::Rejected`] naming the spectrum and the reason.
pub fn prepare(spectrum: &Spectrum, cfg: &PrepareConfig) -> Result<PreparedSpectrum> {
    let reject = |reason| Error::Rejected {
        id: spectrum.id.clone(),
        origin: Box::new(spectrum.source.clone()),
        reason,
    };
    if let Err((field, problem)) = spectrum.validate() {
        return Err(reject(RejectReason::Malformed { field, problem }));
    }
    if spectrum.len() >= PAD_PIXEL as usize {
        return Err(reject(RejectReason::Malformed {
            field: "wavelength",
            problem: format!("{} pixels is too many", spectrum.len()),
        }));
    }
    let valid = cfg.mask.valid_pixels(spectrum);
    let valid_pixels = valid.iter().filter(|v| **v).count();
    if valid_pixels == 0 {
        return Err(reject(RejectReason::NoValidPixels));
    }
    let (scale, scale_rule) = robust_scale(&spectrum.flux, &valid, cfg.min_median_fraction)
        .ok_or_else(|| reject(RejectReason::NoPositiveScale))?;

    let p = cfg.patch_size;
    let runs = runs(spectrum, cfg.gap_factor, cfg.gap_window);
    let n_patches: usize = runs.iter().map(|(a, b)| (b - a).div_ceil(p)).sum();
    let n = n_patches * p;
    let mut out = PreparedSpectrum {
        id: spectrum.id.clone(),
        survey: spectrum.survey,
        source: spectrum.source.clone(),
        medium: spectrum.medium,
        labels: spectrum.labels.clone(),
        patch_size: p,
        scale,
        log_scale: scale.log10() as f32,
        scale_rule,
        flux: Vec::with_capacity(n),
        sigma: Vec::with_capacity(n),
        wavelength: Vec::with_capacity(n),
        weight: Vec::with_capacity(n),
        pixel_index: Vec::with_capacity(n),
        patch_state: Vec::with_capacity(n_patches),
        patch_center: Vec::with_capacity(n_patches),
        valid_pixels,
    };
    // Patches are appended in order: their pixels, then the tail padding.
    let channels = Channels::new(spectrum, &valid, scale, cfg);
    for (a, b) in runs {
        let mut start = a;
        while start < b {
            let end = (start + p).min(b);
            let pad = p - (end - start);
            let row = out.flux.len();
            let last = spectrum.wavelength[end - 1];
            out.wavelength
                .extend_from_slice(&spectrum.wavelength[start..end]);
            out.wavelength.resize(out.wavelength.len() + pad, last);
            out.pixel_index.extend(start as u32..end as u32);
            out.pixel_index
                .resize(out.pixel_index.len() + pad, PAD_PIXEL);
            channels.append(start..end, &mut out.flux, &mut out.sigma, &mut out.weight);
            for v in [&mut out.flux, &mut out.sigma, &mut out.weight] {
                v.resize(v.len() + pad, 0.0);
            }
            let n_ok = valid[start..end].iter().filter(|v| **v).count();
            // Tail padding counts as invalid: valid iff at most half invalid.
            let state = if 2 * (p - n_ok) <= p {
                PatchState::Valid
            } else {
                PatchState::Invalid
            };
            if state == PatchState::Invalid {
                out.weight[row..row + p].fill(0.0);
            }
            out.patch_state.push(state);
            out.patch_center
                .push(0.5 * (spectrum.wavelength[start] + last));
            start = end;
        }
    }
    let n_valid = out.n_valid_patches();
    if n_valid < cfg.min_valid_patches {
        return Err(reject(RejectReason::TooFewValidPatches {
            valid: n_valid,
            required: cfg.min_valid_patches,
        }));
    }
    Ok(out)
}
