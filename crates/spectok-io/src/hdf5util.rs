//! HDF5 helpers shared by the MMU reader and the shard format, and HDF5
//! layout detection.

use std::path::Path;

use crate::error::{Error, Location, Result};
use crate::format::Format;

/// Attribute that marks a spectok shard (value: format version).
pub const SHARD_MARKER: &str = "spectok_shard_version";

/// Opens an HDF5 file read-only with an error naming it.
pub fn open(path: &Path) -> Result<hdf5::File> {
    hdf5::File::open(path).map_err(|e| {
        Error::bad(
            Location::file(path),
            format!("cannot open as HDF5: {}", one_line(&e)),
        )
    })
}

/// Detects the layout of an HDF5 file.
pub fn detect_hdf5(path: &Path) -> Result<Format> {
    let f = open(path)?;
    if f.attr(SHARD_MARKER).is_ok() {
        return Ok(Format::SpectokShard);
    }
    let names = f.member_names().unwrap_or_default();
    if names.iter().any(|n| n == "spectrum_flux") && names.iter().any(|n| n == "spectrum_lambda") {
        return Ok(Format::MmuHdf5);
    }
    let mut shown: Vec<String> = names.into_iter().take(8).collect();
    if shown.is_empty() {
        shown.push("nothing".into());
    }
    Err(Error::Unrecognised {
        path: path.to_path_buf(),
        found: format!("HDF5 with top-level {}", shown.join(", ")),
    })
}

/// HDF5 error messages on one line.
pub fn one_line(e: &hdf5::Error) -> String {
    e.to_string().replace('\n', " ").trim().to_string()
}
