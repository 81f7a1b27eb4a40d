//! HDF5 helpers shared by the MMU reader and the shard format, and HDF5
//! layout detection.

use std::path::Path;

use crate::error::{Error, Location, Result};
use crate::format::Format;

/// Attribute that marks a spectok shard (value: format version).
pub const SHARD_MARKER: &str = "spectok_shard_version";

/// Opens an HDF5 file read-only with an error naming it.
pub fn open(path: &Path) -> Result<hdf5::File> {
    check_global_heaps(path)?;
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

/// Signature of an HDF5 global heap collection (where variable-length
/// strings live).
const GCOL: &[u8; 4] = b"GCOL";

/// Checks every global heap collection of the HDF5 file at `path` the way
/// the HDF5 library walks it, before the library does.
///
/// The HDF5 library (1.10 at least) trusts the object sizes inside a
/// collection: an object claiming more bytes than its collection holds
/// makes it copy past its buffer and crash the process (SIGSEGV) when a
/// variable-length string is read, and a free-space object of size 0
/// makes it loop forever. A collection is the signature `GCOL`, version 1,
/// three zero bytes and an 8-byte size, followed by objects (2-byte index,
/// 2-byte reference count, 4 reserved bytes, 8-byte size, data padded to 8
/// bytes; index 0 is free space whose size counts its header). The whole
/// file is scanned; 8 fixed bytes make a false match in other data
/// practically impossible. Other corruptions are left to the library,
/// which reports most of them as errors.
pub fn check_global_heaps(path: &Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let os = |source| Error::Os {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(os)?;
    let len = file.metadata().map_err(os)?.len();
    // The layout above assumes 8-byte lengths, which the superblock at the
    // start of the file states (byte 14 in versions 0 and 1, byte 10 in
    // versions 2 and 3); files that say otherwise are left to the library.
    let mut sb = [0u8; 16];
    if file.read_exact(&mut sb).is_err() || &sb[..8] != b"\x89HDF\r\n\x1a\n" {
        return Ok(());
    }
    let lengths = match sb[8] {
        0 | 1 => sb[14],
        _ => sb[10],
    };
    if lengths != 8 {
        return Ok(());
    }
    file.seek(SeekFrom::Start(0)).map_err(os)?;
    // Find collection starts: scan in blocks overlapping by 7 bytes.
    let mut starts = Vec::new();
    let mut block = vec![0u8; 1 << 20];
    let mut offset: u64 = 0;
    let mut carry = 0usize;
    loop {
        let n = file.read(&mut block[carry..]).map_err(os)?;
        let filled = carry + n;
        if filled < 8 {
            break;
        }
        for i in 0..=filled - 8 {
            if &block[i..i + 4] == GCOL && block[i + 4..i + 8] == [1, 0, 0, 0] {
                starts.push(offset + i as u64);
            }
        }
        if n == 0 {
            break;
        }
        let keep = 7.min(filled);
        block.copy_within(filled - keep..filled, 0);
        offset += (filled - keep) as u64;
        carry = keep;
    }
    let mut file = std::io::BufReader::new(file);
    for start in starts {
        let loc = || {
            Location::file(path)
                .hdu("global heap")
                .field(format!("collection at byte {start}"))
        };
        let mut head = [0u8; 16];
        let mut read_at = |at: u64, buf: &mut [u8; 16]| {
            file.seek(SeekFrom::Start(at))
                .and_then(|_| file.read_exact(buf))
                .map_err(|_| Error::bad(loc(), "cut short"))
        };
        read_at(start, &mut head)?;
        let size = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
        let end = start.saturating_add(size);
        if size < 16 || end > len {
            return Err(Error::bad(
                loc(),
                format!("claims {size} bytes; the file has {len}"),
            ));
        }
        let mut p = start + 16;
        // Objects until less than an object header is left (free space).
        while p + 16 <= end {
            read_at(p, &mut head)?;
            let idx = u16::from_le_bytes([head[0], head[1]]);
            let osize = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
            let need = if idx > 0 {
                osize.checked_add(7).map(|x| 16 + x / 8 * 8)
            } else {
                Some(osize)
            };
            match need {
                Some(n) if (idx > 0 || n >= 16) && n <= end - p => p += n,
                _ => {
                    return Err(Error::bad(
                        loc(),
                        format!(
                            "object {idx} claims {osize} bytes; {} are left in the collection",
                            end - p
                        ),
                    ))
                }
            }
        }
    }
    Ok(())
}
