//! Where the real survey test files live.

use std::path::PathBuf;

/// Directory of the real survey files used by tests: `$SPECTOK_REAL_DATA`
/// if set, else `../shared/data/real` beside the workspace root. `None`
/// (and a line saying the test skips) when it does not exist.
pub fn real_data_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("SPECTOK_REAL_DATA") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/real"),
    };
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: real survey data not found at {} (set SPECTOK_REAL_DATA)",
            dir.display()
        );
        None
    }
}
