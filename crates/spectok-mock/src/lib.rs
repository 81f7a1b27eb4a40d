//! spectok-mock: labelled, physically grounded **mock** spectra in real
//! survey file layouts.
//!
//! **These are mocks for testing and benchmarking, not a substitute for
//! survey data.** Every file written carries `MOCK = T` (plus the
//! generator version and seed) in its primary header, and every shard
//! spectrum a `mock` text label.
//!
//! What it makes: galaxies (old + young stellar continuum with a 4000 Å
//! break, nebular emission lines, Ca H&K, G band, Mg b, Na D absorption,
//! velocity dispersion), quasars (power law, broad lines, Lyα forest and
//! Lyman-limit systems) and stars (Planck continuum with line strengths set
//! by Teff, log g, [Fe/H] and [α/M]: Balmer, Paschen and Brackett lines,
//! metal lines, TiO and CO bands, OH) — see [`objects`] and [`physics`].
//! Each object is observed by one or more surveys ([`survey`]: SDSS/BOSS,
//! DESI, APOGEE, GALAH, LAMOST LRS) on the survey's native grid, at its
//! resolution, with noise from its S/N distribution, bad pixels, chip gaps
//! and mask bits ([`mod@observe`]). The same object seen by two surveys has one
//! id and one set of labels.
//!
//! Outputs ([`mod@write`], driven by [`generate()`]): SDSS `spec-*`, DESI
//! `coadd-*` + `redrock-*`, APOGEE `apStar` + `aspcapStar`, GALAH per-CCD
//! files and LAMOST LRS `spec-*` files in the layouts spectok-io's readers
//! read, and spectok HDF5 shards. Everything is deterministic in the seed:
//! each object and each observation draws from its own random stream, so
//! parallelism never changes a byte.
//!
//! Invariants: the crate never reads survey data; it depends on the io
//! crate only for the [`spectok_io::Spectrum`] type and the shard writer.

mod fitsw;
pub mod generate;
pub mod lines;
pub mod objects;
pub mod observe;
pub mod physics;
pub mod plan;
mod rng;
pub mod survey;
pub mod write;

pub use generate::{generate, Summary};
pub use objects::{MockObject, ObjectClass, StarParams};
pub use observe::{observe, Observation, ObserveConfig};
pub use plan::{plan, MockConfig, Plan, PlannedObject, Unit};
pub use survey::MockSurvey;

/// Name and version of the generator, written into every file.
pub const GENERATOR: &str = concat!("spectok-mock ", env!("CARGO_PKG_VERSION"));

/// One-line statement that mocks are not survey data, written into every
/// file and printed by the command.
pub const DISCLAIMER: &str =
    "mock spectra for testing and benchmarking, not a substitute for survey data";

/// Errors of the mock generator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing a FITS file failed.
    #[error("{}: {reason}", .path.display())]
    Fits {
        path: std::path::PathBuf,
        reason: String,
    },
    /// A file-system operation failed.
    #[error("{}: {source}", .path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing a shard failed.
    #[error("shard: {0}")]
    Shard(#[from] spectok_io::Error),
    /// The configuration is not usable.
    #[error("configuration: {0}")]
    Config(String),
}

/// Result of the mock generator.
pub type Result<T, E = Error> = std::result::Result<T, E>;
