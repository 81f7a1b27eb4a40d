//! The model-ready batch: `B × T × P` pixel arrays plus a `B × T` patch
//! mask, built from spectra on their native grids without interpolating any
//! flux value.

use spectok_io::{Labels, Source, Survey};

use crate::error::{Error, Result};
use crate::prepare::PreparedSpectrum;

/// State of one patch slot in a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PatchState {
    /// Slot past the end of this spectrum's patches (batch padding).
    Padding = 0,
    /// A real patch with more than half its pixels invalid: excluded from
    /// attention and pooling, and its pixels carry zero weight.
    Invalid = 1,
    /// A real patch the encoder attends to.
    Valid = 2,
}

/// A batch of `batch_size` spectra, each cut into at most `max_patches`
/// patches of `patch_size` pixels.
///
/// Pixel arrays are row-major `[batch_size][max_patches][patch_size]`;
/// patch arrays are `[batch_size][max_patches]`. A spectrum's patches are
/// the same whatever batch it lands in and however much padding follows
/// them (padding slots are all zero with weight 0 and state `Padding`).
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Number of spectra `B`.
    pub batch_size: usize,
    /// Patch slots per spectrum `T` (the longest spectrum's patch count,
    /// possibly rounded up).
    pub max_patches: usize,
    /// Pixels per patch `P`.
    pub patch_size: usize,
    /// Normalised flux `f / scale` (after the configured bounded transform);
    /// 0 at invalid and padding pixels.
    pub flux: Vec<f32>,
    /// Normalised error `σ / scale` (same transform); 0 at invalid and
    /// padding pixels.
    pub sigma: Vec<f32>,
    /// Pixel wavelength, Å, in f64 so the finest sinusoid periods stay
    /// exact; padding pixels of a short tail patch repeat the patch's last
    /// real wavelength, padding slots are 0.
    pub wavelength: Vec<f64>,
    /// Per-pixel loss weight: normalised inverse variance `scale² · ivar`,
    /// clipped; 0 for invalid and padding pixels.
    pub weight: Vec<f32>,
    /// `[batch_size][max_patches]` patch states.
    pub patch_state: Vec<PatchState>,
    /// `[batch_size][max_patches]` centre wavelength of each patch, Å
    /// (0 for padding).
    pub patch_center: Vec<f64>,
    /// Number of real (valid or invalid) patches of each spectrum.
    pub n_patches: Vec<usize>,
    /// `log10(scale)` of each spectrum, the scale-token input.
    pub log_scale: Vec<f32>,
    /// Object id of each spectrum.
    pub ids: Vec<String>,
    /// Survey of each spectrum.
    pub surveys: Vec<Survey>,
    /// Where each spectrum was read from.
    pub sources: Vec<Source>,
    /// Labels of each spectrum, as the files give them.
    pub labels: Vec<Labels>,
}

impl Batch {
    /// Fraction of the `B × T` slots holding a real patch.
    pub fn real_token_fraction(&self) -> f64 {
        let total = self.batch_size * self.max_patches;
        if total == 0 {
            return 0.0;
        }
        self.n_patches.iter().sum::<usize>() as f64 / total as f64
    }

    /// Number of valid patches in the batch.
    pub fn valid_patches(&self) -> usize {
        self.patch_state
            .iter()
            .filter(|s| **s == PatchState::Valid)
            .count()
    }

    /// Number of real (valid or invalid) patches in the batch.
    pub fn real_patches(&self) -> usize {
        self.n_patches.iter().sum()
    }

    /// Number of `B × T` patch slots, real or padding.
    pub fn patch_slots(&self) -> usize {
        self.batch_size * self.max_patches
    }

    /// Offset of patch `t` of spectrum `b` in the patch arrays.
    pub fn patch_offset(&self, b: usize, t: usize) -> usize {
        b * self.max_patches + t
    }

    /// Offset of the first pixel of patch `t` of spectrum `b` in the pixel
    /// arrays.
    pub fn pixel_offset(&self, b: usize, t: usize) -> usize {
        self.patch_offset(b, t) * self.patch_size
    }
}

/// Collates prepared spectra into one batch of `max_patches` = the largest
/// patch count among them.
///
/// Each spectrum's patches are copied unchanged into its row; the slots
/// after them are padding (all zero, state `Padding`). Panics if the
/// spectra were prepared with different patch sizes (a programming error:
/// one loader uses one [`crate::PrepareConfig`]); [`try_collate`] returns
/// an error instead.
pub fn collate(spectra: &[PreparedSpectrum]) -> Batch {
    match try_collate(spectra, 0) {
        Ok(b) => b,
        Err(e) => panic!("collate: {e}"),
    }
}

/// Collates into a batch with at least `min_patches` patch slots per
/// spectrum (e.g. to round `T` up for the accelerator); errors if the
/// spectra have different patch sizes.
pub fn try_collate(spectra: &[PreparedSpectrum], min_patches: usize) -> Result<Batch> {
    let patch_size = spectra.first().map(|s| s.patch_size).unwrap_or(0);
    if let Some(s) = spectra.iter().find(|s| s.patch_size != patch_size) {
        return Err(Error::config(
            "patch_size",
            format!(
                "spectrum {} has patch size {}, the batch {}",
                s.id, s.patch_size, patch_size
            ),
        ));
    }
    let b = spectra.len();
    let t = spectra
        .iter()
        .map(|s| s.n_patches())
        .max()
        .unwrap_or(0)
        .max(min_patches);
    let p = patch_size;
    let mut batch = Batch {
        batch_size: b,
        max_patches: t,
        patch_size: p,
        flux: vec![0.0; b * t * p],
        sigma: vec![0.0; b * t * p],
        wavelength: vec![0.0; b * t * p],
        weight: vec![0.0; b * t * p],
        patch_state: vec![PatchState::Padding; b * t],
        patch_center: vec![0.0; b * t],
        n_patches: Vec::with_capacity(b),
        log_scale: Vec::with_capacity(b),
        ids: Vec::with_capacity(b),
        surveys: Vec::with_capacity(b),
        sources: Vec::with_capacity(b),
        labels: Vec::with_capacity(b),
    };
    for s in spectra {
        let np = s.n_patches();
        let bad = [
            ("flux", s.flux.len()),
            ("sigma", s.sigma.len()),
            ("wavelength", s.wavelength.len()),
            ("weight", s.weight.len()),
        ]
        .into_iter()
        .find(|(_, len)| *len != np * p)
        .map(|(name, len)| (name, len, np * p))
        .or_else(|| {
            (s.patch_center.len() != np).then_some(("patch_center", s.patch_center.len(), np))
        });
        if let Some((field, len, want)) = bad {
            return Err(Error::config(
                "prepared spectrum",
                format!(
                    "spectrum {}: {field} has {len} values, {want} expected",
                    s.id
                ),
            ));
        }
    }
    for (i, s) in spectra.iter().enumerate() {
        let np = s.n_patches();
        let px = i * t * p..i * t * p + np * p;
        batch.flux[px.clone()].copy_from_slice(&s.flux);
        batch.sigma[px.clone()].copy_from_slice(&s.sigma);
        batch.wavelength[px.clone()].copy_from_slice(&s.wavelength);
        batch.weight[px].copy_from_slice(&s.weight);
        batch.patch_state[i * t..i * t + np].copy_from_slice(&s.patch_state);
        batch.patch_center[i * t..i * t + np].copy_from_slice(&s.patch_center);
        batch.n_patches.push(np);
        batch.log_scale.push(s.log_scale);
        batch.ids.push(s.id.clone());
        batch.surveys.push(s.survey);
        batch.sources.push(s.source.clone());
        batch.labels.push(s.labels.clone());
    }
    Ok(batch)
}
