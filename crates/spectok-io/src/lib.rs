//! spectok-io: ingestion of survey spectra on their native grids.
//!
//! This crate owns the [`Spectrum`] type, one [`Reader`] per survey family
//! (SDSS/BOSS, DESI, APOGEE, GALAH, LAMOST, Gaia XP, MaNGA, Multimodal
//! Universe HDF5), content-based format detection ([`detect`]), input
//! planning ([`plan_inputs`]: files, directories, globs, GALAH CCD grouping,
//! DESI redrock pairing) and spectok's own HDF5 shard format ([`shard`]).
//!
//! Invariants: the io crate never interpolates, resamples or normalises a
//! flux value; it never panics on file content (every problem is an
//! [`Error`] naming file, HDU/dataset and field); it knows nothing of
//! batching, tensors or the command line.

pub mod embeddings;
pub mod error;
pub mod fits;
pub mod format;
pub mod hdf5util;
pub mod input;
pub mod predictions;
pub mod reader;
pub mod readers;
pub mod shard;
pub mod spectrum;
pub mod testdata;

pub use error::{Error, Location, Result};
pub use format::{detect, Format};
pub use input::{expand_inputs, plan_inputs, Plan};
pub use reader::{count_unit, read_unit, reader_for, InputUnit, Reader, SpectrumIter};
pub use spectrum::{Labels, Medium, Segment, Source, Spectrum, Survey};
