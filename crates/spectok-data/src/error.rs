//! Errors of the data crate. Like the io crate's, every error renders as
//! one line naming what it is about: a spectrum by id and source, a loader
//! source by name, or the config field at fault.

use spectok_io::Source;

/// Why a spectrum was not turned into patches.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// The arrays break a [`spectok_io::Spectrum`] invariant (lengths,
    /// segments, wavelength order); the field and what is wrong.
    Malformed {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// No pixel passes the invalid-pixel rule.
    NoValidPixels,
    /// The median of valid flux is ≤ 0 or not finite and so is the median
    /// of |flux| over valid pixels: no positive scale exists.
    NoPositiveScale,
    /// Fewer valid patches than `PrepareConfig::min_valid_patches`.
    TooFewValidPatches {
        /// Valid patches the spectrum has.
        valid: usize,
        /// Valid patches required.
        required: usize,
    },
    /// The object is in the other side of the train/validation split.
    OtherSplit,
}

impl RejectReason {
    /// A short stable name for counting rejections by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            RejectReason::Malformed { .. } => "malformed",
            RejectReason::NoValidPixels => "no-valid-pixels",
            RejectReason::NoPositiveScale => "no-positive-scale",
            RejectReason::TooFewValidPatches { .. } => "too-few-valid-patches",
            RejectReason::OtherSplit => "other-split",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RejectReason::Malformed { field, problem } => write!(f, "field {field}: {problem}"),
            RejectReason::NoValidPixels => f.write_str("no valid pixel"),
            RejectReason::NoPositiveScale => f.write_str(
                "no positive flux scale (median of valid flux and of |flux| are both 0 or undefined)",
            ),
            RejectReason::TooFewValidPatches { valid, required } => {
                write!(f, "{valid} valid patches, {required} required")
            }
            RejectReason::OtherSplit => f.write_str("object belongs to the other split"),
        }
    }
}

/// An error of the data crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One spectrum could not be prepared; the loader skips and counts it.
    #[error("spectrum {id} ({origin}): rejected: {reason}")]
    Rejected {
        /// Object id of the spectrum.
        id: String,
        /// Where the spectrum was read from.
        origin: Box<Source>,
        /// Why it was rejected.
        reason: RejectReason,
    },
    /// Reading survey files failed (file- or spectrum-level).
    #[error(transparent)]
    Io(#[from] spectok_io::Error),
    /// A configuration value is out of range.
    #[error("config {field}: {reason}")]
    Config {
        /// The config field.
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// A loader source cannot be used.
    #[error("source {name}: {reason}")]
    Source {
        /// The source's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A saved loader state does not belong to this loader's config and
    /// sources.
    #[error("loader state: {reason}")]
    State {
        /// What does not match.
        reason: String,
    },
}

impl Error {
    /// Shorthand for [`Error::Config`].
    pub fn config(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Config {
            field,
            reason: reason.into(),
        }
    }

    /// The rejection reason if this is a per-spectrum rejection.
    pub fn reject_reason(&self) -> Option<&RejectReason> {
        match self {
            Error::Rejected { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

/// Result with the data crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
