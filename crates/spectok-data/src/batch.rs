//! The model-ready batch: `B × T × P` pixel arrays plus a `B × T` patch
//! mask, built from spectra on their native grids without interpolating any
//! flux value.

use spectok_io::{Labels, Source, Survey};

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
    pub batch_size: usize,
    pub max_patches: usize,
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
    pub ids: Vec<String>,
    pub surveys: Vec<Survey>,
    pub sources: Vec<Source>,
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
        self.patch_state.iter().filter(|s| **s == PatchState::Valid).count()
    }
}
