//! Errors of the io crate. Every error renders as one line naming the file,
//! the HDU or dataset and the field where that is known.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where in a file something went wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    /// HDU name/number or HDF5 dataset/group.
    pub hdu: Option<String>,
    /// Column, keyword or dataset field.
    pub field: Option<String>,
    /// Row (fibre, visit, object) inside the HDU.
    pub row: Option<u64>,
}

impl Location {
    pub fn file(file: impl AsRef<Path>) -> Self {
        Location {
            file: file.as_ref().to_path_buf(),
            hdu: None,
            field: None,
            row: None,
        }
    }

    pub fn hdu(mut self, hdu: impl fmt::Display) -> Self {
        self.hdu = Some(hdu.to_string());
        self
    }

    pub fn field(mut self, field: impl fmt::Display) -> Self {
        self.field = Some(field.to_string());
        self
    }

    pub fn row(mut self, row: u64) -> Self {
        self.row = Some(row);
        self
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(h) = &self.hdu {
            write!(f, "[{h}]")?;
        }
        if let Some(r) = self.row {
            write!(f, " row {r}")?;
        }
        if let Some(c) = &self.field {
            write!(f, " field {c}")?;
        }
        Ok(())
    }
}

/// An error while finding, detecting or reading survey files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The content at a location is missing or malformed.
    #[error("{loc}: {reason}")]
    Bad { loc: Location, reason: String },
    /// The file is of no format spectok reads.
    #[error("{}: not a spectrum format spectok reads ({found})", .path.display())]
    Unrecognised { path: PathBuf, found: String },
    /// The file was recognised but holds nothing spectok can turn into a
    /// spectrum (e.g. Gaia XP basis coefficients).
    #[error("{}: {format} refused: {reason}", .path.display())]
    Refused {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    /// An input path, directory or glob matched nothing or cannot be listed.
    #[error("{input}: {reason}")]
    Input { input: String, reason: String },
    /// Operating-system error on a file.
    #[error("{}: {source}", .path.display())]
    Os {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn bad(loc: Location, reason: impl Into<String>) -> Self {
        Error::Bad {
            loc,
            reason: reason.into(),
        }
    }

    /// The file this error is about, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Error::Bad { loc, .. } => Some(&loc.file),
            Error::Unrecognised { path, .. }
            | Error::Refused { path, .. }
            | Error::Os { path, .. } => Some(path),
            Error::Input { .. } => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
