//! HDF5 helpers shared by the MMU reader and the shard format, and HDF5
//! layout detection.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Location, Result};
use crate::format::Format;

/// Attribute that marks a spectok shard (value: format version).
pub const SHARD_MARKER: &str = "spectok_shard_version";

/// Opens an HDF5 file read-only with an error naming it, after checking
/// its superblock, its global heaps and the variable-length strings that
/// point into them (see [`check_global_heaps`] and [`check_datasets`]).
///
/// The checks run at every open: a cache keyed by the file's identity and
/// times could not tell a file rewritten in place within one timestamp
/// tick (libFuzzer does exactly that) from the file that passed.
pub fn open(path: &Path) -> Result<hdf5::File> {
    let heaps = check_global_heaps(path)?;
    let file = hdf5::File::open(path).map_err(|e| {
        Error::bad(
            Location::file(path),
            format!("cannot open as HDF5: {}", one_line(&e)),
        )
    })?;
    check_datasets(path, &file, heaps.as_ref())?;
    Ok(file)
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

/// The global heap objects of a file, as found by [`check_global_heaps`].
#[derive(Debug, Default)]
pub struct GlobalHeaps {
    /// Byte offset of the superblock; file addresses count from here.
    base: u64,
    /// Bytes in a file address (the superblock's "size of offsets").
    offset_size: usize,
    /// Object sizes by collection start (file offset) and object index.
    objects: HashMap<u64, HashMap<u16, u64>>,
}

/// Finds the superblock: at byte 0, or after a user block at 512, 1024,
/// 2048, … bytes. Returns its offset and its first 16 bytes.
fn find_superblock(file: &mut std::fs::File, len: u64) -> std::io::Result<Option<(u64, [u8; 16])>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut at = 0u64;
    while at + 16 <= len {
        let mut sb = [0u8; 16];
        file.seek(SeekFrom::Start(at))?;
        file.read_exact(&mut sb)?;
        if &sb[..8] == b"\x89HDF\r\n\x1a\n" {
            return Ok(Some((at, sb)));
        }
        at = if at == 0 { 512 } else { at * 2 };
    }
    Ok(None)
}

/// Checks the driver information block of a version 0 or 1 superblock.
///
/// The superblock holds, after its fixed fields (24 bytes, 28 in version
/// 1), the base address, the free-space address, the end-of-file address
/// and the driver information block address. The HDF5 library (1.10) reads
/// that block's 16-byte header (version, 3 reserved bytes, 4-byte size,
/// 8-byte driver name) and then as many bytes as the size claims, before
/// it compares the end-of-file address with the file's length: a block
/// claiming 4 GB in a 300 KB file makes it allocate and zero 4 GB. Both
/// the stored end of file (which the library itself requires to be within
/// the file) and the block are checked here.
fn check_driver_info(
    path: &Path,
    file: &mut std::fs::File,
    len: u64,
    base: u64,
    version: u8,
    offset_size: usize,
) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let loc = |field: &str| Location::file(path).hdu("superblock").field(field);
    let start = base + if version == 0 { 24 } else { 28 };
    let mut fields = [0u8; 32];
    let n = 4 * offset_size;
    file.seek(SeekFrom::Start(start))
        .and_then(|_| file.read_exact(&mut fields[..n]))
        .map_err(|_| Error::bad(loc("addresses"), "cut short"))?;
    let address = |i: usize| {
        let mut b = [0u8; 8];
        b[..offset_size].copy_from_slice(&fields[i * offset_size..(i + 1) * offset_size]);
        let v = u64::from_le_bytes(b);
        let undefined = if offset_size == 8 {
            u64::MAX
        } else {
            (1u64 << (8 * offset_size)) - 1
        };
        (v != undefined).then_some(v)
    };
    let available = len - base;
    if let Some(eof) = address(2) {
        if eof > available {
            return Err(Error::bad(
                loc("end-of-file address"),
                format!("{eof} lies past the file's {available} bytes"),
            ));
        }
    }
    let Some(driver) = address(3) else {
        return Ok(());
    };
    let mut head = [0u8; 16];
    let claim = driver
        .checked_add(16)
        .filter(|&end| end <= available)
        .and_then(|_| {
            file.seek(SeekFrom::Start(base + driver))
                .and_then(|_| file.read_exact(&mut head))
                .ok()
        });
    if claim.is_none() {
        return Err(Error::bad(
            loc("driver information block"),
            format!("address {driver} lies past the file's {available} bytes"),
        ));
    }
    let size = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as u64;
    if driver + 16 + size > available {
        return Err(Error::bad(
            loc("driver information block"),
            format!("claims {size} bytes at address {driver}; the file has {available}"),
        ));
    }
    Ok(())
}

/// Checks every global heap collection of the HDF5 file at `path` the way
/// the HDF5 library walks it, before the library does, and returns the
/// objects found (`None` when the file's superblock is not where this
/// check looks or uses lengths other than 8 bytes).
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
pub fn check_global_heaps(path: &Path) -> Result<Option<GlobalHeaps>> {
    use std::io::{Read, Seek, SeekFrom};
    let os = |source| Error::Os {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(os)?;
    let len = file.metadata().map_err(os)?.len();
    // The layout above assumes 8-byte lengths, which the superblock
    // states (byte 14 in versions 0 and 1, byte 10 in versions 2 and 3);
    // files that say otherwise are left to the library.
    let Some((base, sb)) = find_superblock(&mut file, len).map_err(os)? else {
        return Ok(None);
    };
    let (offsets, lengths) = match sb[8] {
        0 | 1 => (sb[13], sb[14]),
        _ => (sb[9], sb[10]),
    };
    if lengths != 8 || !matches!(offsets, 2 | 4 | 8) {
        return Ok(None);
    }
    if sb[8] <= 1 {
        check_driver_info(path, &mut file, len, base, sb[8], offsets as usize)?;
    }
    let mut heaps = GlobalHeaps {
        base,
        offset_size: offsets as usize,
        objects: HashMap::new(),
    };
    file.seek(SeekFrom::Start(0)).map_err(os)?;
    // Find collection starts and chunked-layout messages: scan in blocks,
    // carrying over the bytes whose patterns may continue in the next.
    const WINDOW: usize = 16;
    let mut starts = Vec::new();
    let mut layouts = Vec::new();
    let mut block = vec![0u8; 1 << 20];
    let mut offset: u64 = 0;
    let mut carry = 0usize;
    loop {
        let n = file.read(&mut block[carry..]).map_err(os)?;
        let filled = carry + n;
        let end = if n == 0 {
            filled
        } else {
            filled.saturating_sub(WINDOW - 1)
        };
        for i in 0..end {
            let at = &block[i..filled];
            if at.len() >= 8 && &at[..4] == GCOL && at[4..8] == [1, 0, 0, 0] {
                starts.push(offset + i as u64);
            }
            if at.len() >= LAYOUT_PATTERN_LEN && is_chunked_layout_message(at) {
                layouts.push(offset + i as u64);
            }
        }
        if n == 0 {
            break;
        }
        block.copy_within(end..filled, 0);
        offset += end as u64;
        carry = filled - end;
    }
    for at in layouts {
        check_chunked_layout(path, &mut file, len, at, offsets as usize)?;
    }
    let mut file = std::io::BufReader::with_capacity(1 << 16, file);
    // Where `file` stands: moves forward within its buffer are relative
    // seeks, which keep the buffer (an absolute seek always drops it).
    let mut pos = file.stream_position().map_err(os)?;
    for start in starts {
        let loc = || {
            Location::file(path)
                .hdu("global heap")
                .field(format!("collection at byte {start}"))
        };
        let mut head = [0u8; 16];
        let mut read_at = |at: u64, buf: &mut [u8; 16]| {
            let moved = match at.checked_sub(pos) {
                Some(ahead) => file.seek_relative(ahead as i64),
                None => file.seek(SeekFrom::Start(at)).map(|_| ()),
            };
            pos = at + 16;
            moved
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
        let objects = heaps.objects.entry(start).or_default();
        let mut p = start + 16;
        // Objects until less than an object header is left (free space).
        while p + 16 <= end {
            read_at(p, &mut head)?;
            let idx = u16::from_le_bytes([head[0], head[1]]);
            let osize = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
            let need = if idx > 0 {
                osize
                    .checked_add(7)
                    .and_then(|x| (x / 8 * 8).checked_add(16))
            } else {
                Some(osize)
            };
            match need {
                Some(n) if (idx > 0 || n >= 16) && n <= end - p => {
                    if idx > 0 {
                        objects.insert(idx, osize);
                    }
                    p += n
                }
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
    Ok(Some(heaps))
}

/// Bytes [`is_chunked_layout_message`] looks at.
const LAYOUT_PATTERN_LEN: usize = 11;

/// Whether `at` starts a version 1 object header message holding a
/// version 3 chunked data layout: message type 8 (2 bytes), data size (2),
/// flags (1), 3 reserved zero bytes, then layout version 3 and class 2.
fn is_chunked_layout_message(at: &[u8]) -> bool {
    at[0] == 8 && at[1] == 0 && at[5..10] == [0, 0, 0, 3, 2]
}

/// Most dimensions of a chunk, the dataset's rank plus one for the
/// element (HDF5's `H5O_LAYOUT_NDIMS`).
const LAYOUT_MAX_DIMS: usize = 33;

/// Checks the chunked layout message found at byte `at`.
///
/// After the message header and the version and class bytes, a version 3
/// chunked layout holds its dimensionality (the dataset's rank plus one),
/// the address of the chunk index and a 4-byte size per dimension. HDF5
/// 1.10.8 trusts all of them when it opens the dataset: a dimensionality
/// of 0 or a chunk size of 0 makes it divide by zero (SIGFPE, found by
/// fuzzing), one above 33 overruns its fixed arrays. Messages of version 2
/// object headers (files written for the latest format only) are not
/// matched.
fn check_chunked_layout(
    path: &Path,
    file: &mut std::fs::File,
    len: u64,
    at: u64,
    offset_size: usize,
) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let bad = |why: String| {
        Err(Error::bad(
            Location::file(path)
                .hdu("dataset layout")
                .field(format!("message at byte {at}")),
            why,
        ))
    };
    let mut head = [0u8; LAYOUT_PATTERN_LEN];
    file.seek(SeekFrom::Start(at))
        .and_then(|_| file.read_exact(&mut head))
        .map_err(|source| Error::Os {
            path: path.to_path_buf(),
            source,
        })?;
    let size = u16::from_le_bytes([head[2], head[3]]) as usize;
    let dims = head[10] as usize;
    if !(2..=LAYOUT_MAX_DIMS).contains(&dims) {
        return bad(format!("chunked layout of dimensionality {dims}"));
    }
    let need = 3 + offset_size + 4 * dims;
    if need > size || at + 8 + need as u64 > len {
        return bad(format!(
            "{dims} chunk dimensions do not fit its {size} bytes"
        ));
    }
    let mut sizes = vec![0u8; 4 * dims];
    file.seek(SeekFrom::Start(at + 8 + 3 + offset_size as u64))
        .and_then(|_| file.read_exact(&mut sizes))
        .map_err(|source| Error::Os {
            path: path.to_path_buf(),
            source,
        })?;
    if let Some(k) = sizes.chunks_exact(4).position(|d| d == [0, 0, 0, 0]) {
        return bad(format!("chunk dimension {k} is 0"));
    }
    Ok(())
}

/// Groups below the root that [`check_datasets`] descends into; spectok's
/// readers read datasets at depth 2 at most.
const STRING_CHECK_DEPTH: usize = 3;

/// Objects [`check_datasets`] visits at most before it refuses the file
/// (a corrupt file can link a group into itself).
const STRING_CHECK_OBJECTS: usize = 100_000;

/// Largest chunk of string descriptors that [`check_datasets`] decodes.
const STRING_CHECK_CHUNK_BYTES: u64 = 1 << 30;

/// Checks every dataset of `file` (to [`STRING_CHECK_DEPTH`] groups deep):
/// its numeric type ([`check_dataset_type`]) and the stored descriptor of
/// every variable-length string in it against the global heap object it
/// points to.
///
/// A descriptor is a 4-byte length and the address of a heap object
/// (collection address and 4-byte object index). HDF5 (1.10 at least)
/// trusts the length: it allocates and zeroes a conversion buffer of that
/// size before it reads the object, and then copies the whole object into
/// it — a corrupt length of 4 GB in a 300 KB file takes 4 GB of memory, and
/// a length shorter than the object overflows the buffer. So each
/// descriptor must point at an existing object of exactly its length (the
/// library writes them so). The stored bytes are read the way the library
/// stores them: contiguous, or chunked and passed through shuffle, deflate
/// and Fletcher-32; datasets stored otherwise (compact, virtual, other
/// filters) are refused rather than trusted. Strings in attributes are
/// not covered.
pub fn check_datasets(path: &Path, file: &hdf5::File, heaps: Option<&GlobalHeaps>) -> Result<()> {
    let mut queue: Vec<(String, usize)> = vec![(String::new(), 0)];
    let mut visited = 0usize;
    while let Some((group_name, depth)) = queue.pop() {
        let group = if group_name.is_empty() {
            file.as_group()
        } else {
            file.group(&group_name)
        };
        let Ok(group) = group else { continue };
        for name in group.member_names().unwrap_or_default() {
            visited += 1;
            if visited > STRING_CHECK_OBJECTS {
                return Err(Error::bad(
                    Location::file(path),
                    format!("more than {STRING_CHECK_OBJECTS} objects to check"),
                ));
            }
            let full = format!("{group_name}/{name}");
            if let Ok(ds) = group.dataset(&name) {
                check_dataset_type(path, &full, &ds)?;
                check_dataset_strings(path, &full, &ds, heaps)?;
            } else if depth < STRING_CHECK_DEPTH && group.group(&name).is_ok() {
                queue.push((full, depth + 1));
            }
        }
    }
    Ok(())
}

/// Checks that a dataset's integer or float type is one a reader can
/// convert: at most 8 bytes (16 for floats), precision and bit offset
/// inside them. HDF5 1.10.8 accepts a stored type of 255 bytes with 32 bits
/// of precision and then copies past its buffers when it converts the
/// values (SIGSEGV, found by fuzzing); later releases refuse such types.
fn check_dataset_type(path: &Path, name: &str, ds: &hdf5::Dataset) -> Result<()> {
    use hdf5_sys::h5t::{H5T_class_t, H5Tget_class, H5Tget_offset, H5Tget_precision};
    let name = name.trim_start_matches('/');
    let bad = |why: String| Err(Error::bad(Location::file(path).hdu(name), why));
    let dtype = match ds.dtype() {
        Ok(t) => t,
        Err(e) => return bad(format!("cannot read its type: {}", one_line(&e))),
    };
    // SAFETY: `dtype` is an open datatype handle for the calls, made under
    // hdf5-metno's lock.
    let (class, precision, offset) = hdf5::sync::sync(|| unsafe {
        (
            H5Tget_class(dtype.id()),
            H5Tget_precision(dtype.id()),
            H5Tget_offset(dtype.id()),
        )
    });
    let numeric = matches!(
        class,
        H5T_class_t::H5T_INTEGER | H5T_class_t::H5T_FLOAT | H5T_class_t::H5T_BITFIELD
    );
    if !numeric {
        return Ok(());
    }
    let size = dtype.size();
    let bits = 8 * size;
    let fits = offset >= 0 && precision >= 1 && (offset as usize).saturating_add(precision) <= bits;
    let largest = if class == H5T_class_t::H5T_FLOAT {
        16
    } else {
        8
    };
    if size > largest || !fits {
        return bad(format!(
            "numeric type of {size} bytes with {precision} bits of precision at bit offset {offset}"
        ));
    }
    Ok(())
}

/// [`check_datasets`] for one dataset.
fn check_dataset_strings(
    path: &Path,
    name: &str,
    ds: &hdf5::Dataset,
    heaps: Option<&GlobalHeaps>,
) -> Result<()> {
    use hdf5::dataset::Layout;
    use hdf5::types::TypeDescriptor;
    let is_string = matches!(
        ds.dtype().and_then(|t| t.to_descriptor()),
        Ok(TypeDescriptor::VarLenUnicode | TypeDescriptor::VarLenAscii)
    );
    if !is_string {
        return Ok(());
    }
    let name = name.trim_start_matches('/');
    let loc = || Location::file(path).hdu(name);
    let bad = |why: String| Error::bad(loc(), format!("variable-length strings: {why}"));
    let Some(heaps) = heaps else {
        return Err(bad(
            "cannot be checked in a file whose superblock is not at a standard place or whose lengths are not 8 bytes".into(),
        ));
    };
    let desc_size = 4 + heaps.offset_size + 4;
    let shape: Vec<u64> = ds.shape().iter().map(|&d| d as u64).collect();
    let elements = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    let os = |source| Error::Os {
        path: path.to_path_buf(),
        source,
    };
    let mut raw = std::fs::File::open(path).map_err(os)?;
    let file_len = raw.metadata().map_err(os)?.len();
    let mut read_bytes = |addr: u64, n: u64| -> Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let at = heaps.base.saturating_add(addr);
        if at.saturating_add(n) > file_len {
            return Err(bad(format!(
                "{n} stored bytes at address {addr} lie past the end of the file ({file_len} bytes)"
            )));
        }
        let mut buf = vec![0u8; n as usize];
        raw.seek(SeekFrom::Start(at))
            .and_then(|_| raw.read_exact(&mut buf))
            .map_err(os)?;
        Ok(buf)
    };
    let check = |bytes: &[u8], element: u64| -> Result<()> {
        let len = u32::from_le_bytes(bytes[..4].try_into().unwrap_or_default()) as u64;
        let mut addr_bytes = [0u8; 8];
        addr_bytes[..heaps.offset_size].copy_from_slice(&bytes[4..4 + heaps.offset_size]);
        let addr = u64::from_le_bytes(addr_bytes);
        let index = u32::from_le_bytes(
            bytes[4 + heaps.offset_size..desc_size]
                .try_into()
                .unwrap_or_default(),
        );
        if addr == 0 {
            // A null string: the library reads nothing.
            return Ok(());
        }
        let found = heaps
            .objects
            .get(&heaps.base.saturating_add(addr))
            .and_then(|objects| u16::try_from(index).ok().and_then(|i| objects.get(&i)));
        match found {
            Some(&size) if size == len => Ok(()),
            Some(&size) => Err(bad(format!(
                "element {element} claims {len} bytes; its heap object holds {size}"
            ))),
            None => Err(bad(format!(
                "element {element} points to heap object {index} at address {addr}, which does not exist"
            ))),
        }
    };
    match ds.layout() {
        Layout::Contiguous => {
            let Some(addr) = ds.offset() else {
                return Ok(()); // nothing stored: every element is the fill value
            };
            let n = elements
                .and_then(|e| e.checked_mul(desc_size as u64))
                .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
            let bytes = read_bytes(addr.saturating_sub(heaps.base), n)?;
            for (i, d) in bytes.chunks_exact(desc_size).enumerate() {
                check(d, i as u64)?;
            }
            Ok(())
        }
        Layout::Chunked => {
            let filters = ds
                .dcpl()
                .and_then(|p| p.get_filters())
                .map_err(|e| bad(format!("cannot read the filter pipeline: {}", one_line(&e))))?;
            let chunk: Vec<u64> = ds
                .chunk()
                .unwrap_or_default()
                .iter()
                .map(|&c| c as u64)
                .collect();
            if chunk.len() != shape.len() || chunk.contains(&0) {
                return Err(bad(format!(
                    "chunk shape {chunk:?} does not suit shape {shape:?}"
                )));
            }
            let chunk_bytes = chunk
                .iter()
                .try_fold(desc_size as u64, |a, &c| a.checked_mul(c))
                .filter(|&b| b <= STRING_CHECK_CHUNK_BYTES)
                .ok_or_else(|| {
                    bad(format!(
                        "chunks of {chunk:?} elements are too large to check"
                    ))
                })?;
            // Chunks by their grid coordinates (a B-tree lookup each) when
            // the grid is not much larger than the chunks stored, else by
            // the coordinates of each stored chunk (HDF5 1.10 walks its
            // index from the start to find the i-th one).
            let stored = ds.num_chunks().unwrap_or(0) as u64;
            let grid_dims: Vec<u64> = shape
                .iter()
                .zip(&chunk)
                .map(|(&s, &c)| s.div_ceil(c))
                .collect();
            let grid = grid_dims.iter().try_fold(1u64, |a, &g| a.checked_mul(g));
            let by_grid =
                matches!(grid, Some(g) if g <= stored.saturating_mul(4).saturating_add(1024));
            let count = if by_grid { grid.unwrap_or(0) } else { stored };
            for c in 0..count {
                let offset = if by_grid {
                    let mut rest = c;
                    let mut offset = vec![0u64; chunk.len()];
                    for k in (0..chunk.len()).rev() {
                        offset[k] = (rest % grid_dims[k]).saturating_mul(chunk[k]);
                        rest /= grid_dims[k];
                    }
                    offset
                } else {
                    let info = ds
                        .chunk_info(c as usize)
                        .ok_or_else(|| bad(format!("cannot locate chunk {c}")))?;
                    info.offset
                };
                let (filter_mask, stored) = match read_raw_chunk(ds, &offset, file_len) {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => continue, // not stored: fill values
                    Err(why) => return Err(bad(format!("chunk at {offset:?}: {why}"))),
                };
                let bytes = unfilter(stored, &filters, filter_mask, chunk_bytes, desc_size)
                    .map_err(|why| bad(format!("chunk at {offset:?}: {why}")))?;
                // Elements of the chunk inside the dataset's extent.
                for (i, d) in bytes.chunks_exact(desc_size).enumerate() {
                    let mut rest = i as u64;
                    let mut element = 0u64;
                    let mut inside = true;
                    for k in (0..chunk.len()).rev() {
                        let pos = offset
                            .get(k)
                            .copied()
                            .unwrap_or(0)
                            .saturating_add(rest % chunk[k]);
                        rest /= chunk[k];
                        inside &= pos < shape[k];
                        // (for messages only; saturates on absurd shapes)
                        let stride = shape[k + 1..]
                            .iter()
                            .fold(1u64, |a, &d| a.saturating_mul(d));
                        element = element.saturating_add(pos.saturating_mul(stride));
                    }
                    if inside {
                        check(d, element)?;
                    }
                }
            }
            Ok(())
        }
        other => Err(bad(format!(
            "stored with {other:?} layout, which cannot be checked"
        ))),
    }
}

// Not bound by hdf5-metno-sys: the stored (filtered) size of the chunk
// starting at `offset` (0 when it is not stored); HDF5 1.10.2 and later.
unsafe extern "C" {
    fn H5Dget_chunk_storage_size(
        dset_id: hdf5_sys::h5i::hid_t,
        offset: *const hdf5_sys::h5::hsize_t,
        chunk_bytes: *mut hdf5_sys::h5::hsize_t,
    ) -> hdf5_sys::h5::herr_t;
}

/// The stored bytes and filter mask of the chunk of `ds` starting at
/// `offset` (one B-tree lookup), `None` when it is not stored. A stored
/// size past `file_len` is refused before anything is allocated.
fn read_raw_chunk(
    ds: &hdf5::Dataset,
    offset: &[u64],
    file_len: u64,
) -> std::result::Result<Option<(u32, Vec<u8>)>, String> {
    let coords: Vec<hdf5_sys::h5::hsize_t> = offset.iter().map(|&o| o as _).collect();
    let mut size: hdf5_sys::h5::hsize_t = 0;
    // SAFETY: `coords` holds one coordinate per dimension of `ds` (the
    // caller builds it from the dataset's shape) and `size` is valid for
    // the call; the library is entered under hdf5-metno's lock.
    let status = hdf5::sync::sync(|| unsafe {
        H5Dget_chunk_storage_size(ds.id(), coords.as_ptr(), &mut size)
    });
    if status < 0 {
        return Err("the library cannot find it".into());
    }
    if size == 0 {
        return Ok(None);
    }
    if size > file_len {
        return Err(format!(
            "claims {size} stored bytes; the file has {file_len}"
        ));
    }
    let mut buf = vec![0u8; size as usize];
    let mut filter_mask = 0u32;
    // SAFETY: as above, and `buf` has room for the chunk's stored size,
    // which is what the library writes.
    let status = hdf5::sync::sync(|| unsafe {
        hdf5_sys::h5d::H5Dread_chunk(
            ds.id(),
            hdf5_sys::h5p::H5P_DEFAULT,
            coords.as_ptr(),
            &mut filter_mask,
            buf.as_mut_ptr().cast(),
        )
    });
    if status < 0 {
        return Err("the library cannot read it".into());
    }
    Ok(Some((filter_mask, buf)))
}

/// Undoes a chunk's filter pipeline (shuffle, deflate, Fletcher-32),
/// expecting `size` bytes out.
fn unfilter(
    mut data: Vec<u8>,
    filters: &[hdf5::filters::Filter],
    skipped: u32,
    size: u64,
    element: usize,
) -> std::result::Result<Vec<u8>, String> {
    use hdf5::filters::Filter;
    use std::io::Read;
    for (i, f) in filters.iter().enumerate().rev() {
        if i < 32 && skipped & (1 << i) != 0 {
            continue;
        }
        data = match f {
            Filter::Fletcher32 => {
                let keep = data
                    .len()
                    .checked_sub(4)
                    .ok_or("shorter than its checksum")?;
                data.truncate(keep);
                data
            }
            Filter::Deflate(_) => {
                // Grows with the data: the expected size comes from the file too.
                let mut out = Vec::with_capacity((size as usize).min(data.len().saturating_mul(8)));
                flate2::read::ZlibDecoder::new(&data[..])
                    .take(size + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| format!("cannot inflate: {e}"))?;
                out
            }
            Filter::Shuffle => {
                let n = data.len() / element;
                let mut out = data.clone();
                for (b, plane) in data.chunks_exact(n.max(1)).take(element).enumerate() {
                    for (j, &v) in plane.iter().enumerate() {
                        out[j * element + b] = v;
                    }
                }
                out
            }
            other => return Err(format!("filter {other:?} cannot be checked")),
        };
    }
    if data.len() as u64 != size {
        return Err(format!("holds {} bytes, not {size}", data.len()));
    }
    Ok(data)
}
