//! Arbitrary bytes as a FITS (or gzip) file: detection, planning, and one
//! of the FITS readers forced on it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spectok_io::Format;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch_file("input.fits");
    std::fs::write(&path, data).expect("write scratch file");
    // One forced reader per input, picked by the input's length so that
    // the same bytes always take the same path and mutations that insert or
    // erase bytes visit every reader.
    let fits: Vec<Format> = Format::ALL
        .into_iter()
        .filter(|f| !matches!(f, Format::MmuHdf5 | Format::SpectokShard))
        .collect();
    common::read_every_way(&path, fits[data.len() % fits.len()]);
});
