//! spectok-data: resampling-free batching.
//!
//! Turns [`spectok_io::Spectrum`]s on their native grids into model-ready
//! [`Batch`]es: invalid-pixel rules, robust scale, patchification, padding,
//! length bucketing, source mixing, id-hash splits and a streaming loader.
//! It never interpolates a flux value and knows nothing about candle.

pub mod batch;

pub use batch::{Batch, PatchState};
