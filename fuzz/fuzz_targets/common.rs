//! What every reader target does with a file: detect it, plan it, and read
//! it as planned and with a reader forced on it, asserting that no problem is
//! a panic, that every error is one line, and that every spectrum a reader
//! returns satisfies `Spectrum::validate`.

// Each target includes this file as its own module and uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use spectok_io::{count_unit, detect, plan_inputs, read_unit, Format, InputUnit};

/// Spectra read from one stream before moving on (bounds the time one
/// input may take).
const MAX_ITEMS: usize = 64;

/// A file in a directory of this process's own, rewritten for each input.
pub fn scratch_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spectok-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir.join(name)
}

/// Panics (a finding) when `e` spans several lines.
pub fn check_error(e: &spectok_io::Error) {
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "multi-line error: {msg:?}");
    assert!(!msg.is_empty(), "empty error message");
}

/// Reads `path` the ways the io crate offers: detection, planning (and
/// reading what was planned), and the reader of `forced` whatever the
/// file's layout.
pub fn read_every_way(path: &Path, forced: Format) {
    if let Err(e) = detect(path) {
        check_error(&e);
    }
    let name = path.display().to_string();
    let plan = plan_inputs(&[name.as_str()], None);
    for e in &plan.problems {
        check_error(e);
    }
    for unit in &plan.units {
        drain(unit);
    }
    read_forced(path, forced);
}

/// Counts and reads `path` with the reader of `forced`.
pub fn read_forced(path: &Path, forced: Format) {
    let unit = InputUnit::single(forced, path);
    if let Err(e) = count_unit(&unit) {
        check_error(&e);
    }
    drain(&unit);
}

fn drain(unit: &InputUnit) {
    match read_unit(unit) {
        Ok(stream) => {
            for item in stream.take(MAX_ITEMS) {
                match item {
                    Ok(s) => {
                        if let Err((field, why)) = s.validate() {
                            panic!(
                                "{} returned an invalid spectrum: {field}: {why}",
                                unit.format
                            );
                        }
                    }
                    Err(e) => check_error(&e),
                }
            }
        }
        Err(e) => check_error(&e),
    }
}
