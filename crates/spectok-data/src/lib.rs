//! spectok-data: resampling-free batching.
//!
//! Turns [`spectok_io::Spectrum`]s on their native grids into model-ready
//! [`Batch`]es: invalid-pixel rules, robust scale, patchification, padding,
//! length bucketing, source mixing, id-hash splits and a streaming loader.
//! It never interpolates a flux value and knows nothing about candle.
//!
//! # From a spectrum to patches ([`prepare()`])
//!
//! - **Invalid pixels**: flux or ivar not finite, ivar ≤ 0, or a mask bit
//!   that [`MaskRules`] lists as bad for the spectrum's survey (defaults
//!   and their sources are documented in [`mask`]).
//! - **Scale**: the median of valid flux. If it is ≤ 0, not finite, or
//!   below `min_median_fraction` (0.1) of the median of |flux| over valid
//!   pixels (a noise-dominated or negative spectrum), the median of |flux|
//!   is used instead ([`ScaleRule::MedianAbs`]); if that is 0 too, or no
//!   pixel is valid, the spectrum is rejected with
//!   [`Error::Rejected`] naming its id, source and [`RejectReason`].
//!   `log10(scale)` goes into [`Batch::log_scale`] so absolute flux can be
//!   restored.
//! - **Channels**: flux `f/scale`, error `σ/scale` (σ = ivar^-½) and
//!   weight `ivar·scale²` (the inverse variance of the normalised flux),
//!   clipped at `max_weight` (1e4, i.e. S/N 100 per pixel relative to the
//!   scale). A bounded transform is off by default
//!   ([`Transform::None`]); [`Transform::Arcsinh`] applies `asinh` to the
//!   flux and σ channels and carries the weight through the transform's
//!   derivative. Invalid pixels have flux, σ and weight 0 but keep their
//!   wavelength.
//! - **Patches** of `patch_size` P (32) consecutive pixels. A new patch
//!   starts at every segment (arm, chip, CCD) boundary and wherever the
//!   step to the next wavelength exceeds `gap_factor` (3) × the median of
//!   the 2×`gap_window` (8) neighbouring steps in the segment — local,
//!   because log-linear grids have growing steps. A short tail patch is
//!   padded with invalid pixels (flux/σ/weight 0, wavelength = the patch's
//!   last real wavelength). A patch with more than half its P pixels
//!   invalid (padding included) is [`PatchState::Invalid`] and all its
//!   weights are 0; exactly half invalid is still valid. Each patch has a
//!   centre wavelength: the midpoint of its first and last real pixel.
//!   Spectra with fewer than `min_valid_patches` (1) valid patches are
//!   rejected.
//!
//! # Batches ([`collate`])
//!
//! `B × T_max × P` pixel arrays plus a `B × T_max` patch state, per-
//! spectrum scale, ids, surveys, sources and labels. A spectrum's patches
//! are bit-identical whatever batch it lands in and wherever (padding is
//! appended, never interleaved).
//!
//! # Loading ([`Loader`])
//!
//! Weighted sources ([`SpectrumSource`]: survey files and shards via
//! [`FileSource`], [`MemorySource`], [`SyntheticSource`]), deterministic
//! shuffling from a seed, length bucketing with fixed or token-budget
//! batch sizes ([`BatchSize`]), train/validation split by a stable hash of
//! the object id ([`split_of`]), background reading with bounded queues,
//! and a serialisable [`LoaderState`] to resume exactly. See [`loader`].
//!
//! Architecture invariants: no flux value is ever interpolated, resampled
//! or smoothed (every output flux is one input pixel's flux over the
//! scale); preparation is pure and deterministic; memory is bounded by
//! queue and pool sizes, never by the dataset size.

pub mod batch;
pub mod bench;
pub mod bucket;
pub mod error;
pub mod loader;
pub mod mask;
pub mod prepare;
pub mod rng;
pub mod source;
pub mod split;
pub mod synthetic;

pub use batch::{collate, try_collate, Batch, PatchState};
pub use bench::{bench_loader, LoaderBench};
pub use bucket::{plan_batches, BatchSize};
pub use error::{Error, RejectReason, Result};
pub use loader::{Loader, LoaderConfig, LoaderState, LoaderStats, SourceSpec};
pub use mask::MaskRules;
pub use prepare::{
    median, prepare, robust_scale, runs, PrepareConfig, PreparedSpectrum, ScaleRule, Transform,
    PAD_PIXEL,
};
pub use source::{FileSource, MemorySource, SpectrumSource, SpectrumStream};
pub use split::{split_of, Split, SplitFilter};
pub use synthetic::{SyntheticConfig, SyntheticSource};
