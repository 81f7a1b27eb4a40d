//! Arbitrary bytes as an HDF5 file: detection, planning, and the MMU or the
//! shard reader forced on it (picked by the input's length).
#![no_main]

use libfuzzer_sys::fuzz_target;
use spectok_io::Format;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch_file("input.hdf5");
    std::fs::write(&path, data).expect("write scratch file");
    let forced = if data.len() % 2 == 0 {
        Format::MmuHdf5
    } else {
        Format::SpectokShard
    };
    common::read_every_way(&path, forced);
});
