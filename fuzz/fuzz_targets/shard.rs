//! Structured mutations of a valid spectok shard built from real survey
//! files: values set to extremes, datasets truncated, extended, removed,
//! retyped, made 2-D or replaced by groups, the version marker changed.
//! Reading the result must give errors or counted skips, never a panic.
//!
//! The base shard is written once per process from a few real files found
//! through `spectok_io::testdata::real_data_dir` (`SPECTOK_REAL_DATA`).
#![no_main]

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use hdf5::types::VarLenUnicode;
use libfuzzer_sys::fuzz_target;
use spectok_io::hdf5util::SHARD_MARKER;
use spectok_io::shard::ShardWriter;
use spectok_io::{plan_inputs, read_unit, Format};

#[path = "common.rs"]
mod common;

/// One dataset's values.
#[derive(Clone, Debug)]
enum Data {
    U64(Vec<u64>),
    I64(Vec<i64>),
    U32(Vec<u32>),
    U16(Vec<u16>),
    U8(Vec<u8>),
    F64(Vec<f64>),
    F32(Vec<f32>),
    Str(Vec<String>),
}

/// The datasets of a shard and their element types.
const COLUMNS: &[(&str, &str)] = &[
    ("offsets", "u64"),
    ("wavelength", "f64"),
    ("flux", "f32"),
    ("ivar", "f32"),
    ("mask", "u32"),
    ("lsf_sigma", "f32"),
    ("has_lsf", "u8"),
    ("segment_offsets", "u64"),
    ("segment_names", "str"),
    ("segment_starts", "u64"),
    ("segment_ends", "u64"),
    ("id", "str"),
    ("survey", "str"),
    ("medium", "str"),
    ("source_file", "str"),
    ("source_hdu", "str"),
    ("source_row", "i64"),
    ("label_present", "u16"),
    ("redshift", "f64"),
    ("redshift_err", "f64"),
    ("redshift_warning", "i64"),
    ("class", "str"),
    ("subclass", "str"),
    ("teff", "f64"),
    ("logg", "f64"),
    ("fe_h", "f64"),
    ("alpha_m", "f64"),
    ("extra_offsets", "u64"),
    ("extra_names", "str"),
    ("extra_values", "f64"),
    ("text_offsets", "u64"),
    ("text_names", "str"),
    ("text_values", "str"),
];

impl Data {
    fn len(&self) -> usize {
        match self {
            Data::U64(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::U32(v) => v.len(),
            Data::U16(v) => v.len(),
            Data::U8(v) => v.len(),
            Data::F64(v) => v.len(),
            Data::F32(v) => v.len(),
            Data::Str(v) => v.len(),
        }
    }

    /// The values as f64 (strings parsed, unparsable ones 0).
    fn as_f64(&self) -> Vec<f64> {
        match self {
            Data::U64(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I64(v) => v.iter().map(|&x| x as f64).collect(),
            Data::U32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::U16(v) => v.iter().map(|&x| x as f64).collect(),
            Data::U8(v) => v.iter().map(|&x| x as f64).collect(),
            Data::F64(v) => v.clone(),
            Data::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::Str(v) => v.iter().map(|s| s.parse().unwrap_or(0.0)).collect(),
        }
    }

    /// The same values as element type `kind` (0..8).
    fn retype(&self, kind: u8) -> Data {
        let f = self.as_f64();
        match kind % 8 {
            0 => Data::U64(f.iter().map(|&x| x as u64).collect()),
            1 => Data::I64(f.iter().map(|&x| x as i64).collect()),
            2 => Data::U32(f.iter().map(|&x| x as u32).collect()),
            3 => Data::U16(f.iter().map(|&x| x as u16).collect()),
            4 => Data::U8(f.iter().map(|&x| x as u8).collect()),
            5 => Data::F64(f),
            6 => Data::F32(f.iter().map(|&x| x as f32).collect()),
            _ => Data::Str(f.iter().map(|x| x.to_string()).collect()),
        }
    }

    /// Sets element `i` from a number.
    fn set(&mut self, i: usize, x: f64, bits: u64) {
        match self {
            Data::U64(v) => v[i] = bits,
            Data::I64(v) => v[i] = bits as i64,
            Data::U32(v) => v[i] = bits as u32,
            Data::U16(v) => v[i] = bits as u16,
            Data::U8(v) => v[i] = bits as u8,
            Data::F64(v) => v[i] = x,
            Data::F32(v) => v[i] = x as f32,
            Data::Str(v) => v[i] = x.to_string(),
        }
    }

    fn truncate(&mut self, n: usize) {
        match self {
            Data::U64(v) => v.truncate(n),
            Data::I64(v) => v.truncate(n),
            Data::U32(v) => v.truncate(n),
            Data::U16(v) => v.truncate(n),
            Data::U8(v) => v.truncate(n),
            Data::F64(v) => v.truncate(n),
            Data::F32(v) => v.truncate(n),
            Data::Str(v) => v.truncate(n),
        }
    }

    /// Appends `n` copies of the last element (or of a zero).
    fn extend(&mut self, n: usize) {
        fn grow<T: Clone>(v: &mut Vec<T>, n: usize, zero: T) {
            let last = v.last().cloned().unwrap_or(zero);
            v.extend(std::iter::repeat_n(last, n));
        }
        match self {
            Data::U64(v) => grow(v, n, 0),
            Data::I64(v) => grow(v, n, 0),
            Data::U32(v) => grow(v, n, 0),
            Data::U16(v) => grow(v, n, 0),
            Data::U8(v) => grow(v, n, 0),
            Data::F64(v) => grow(v, n, 0.0),
            Data::F32(v) => grow(v, n, 0.0),
            Data::Str(v) => grow(v, n, String::new()),
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        match self {
            Data::U64(v) => v.swap(a, b),
            Data::I64(v) => v.swap(a, b),
            Data::U32(v) => v.swap(a, b),
            Data::U16(v) => v.swap(a, b),
            Data::U8(v) => v.swap(a, b),
            Data::F64(v) => v.swap(a, b),
            Data::F32(v) => v.swap(a, b),
            Data::Str(v) => v.swap(a, b),
        }
    }
}

/// A dataset as it will be written.
#[derive(Clone, Debug)]
struct Column {
    name: &'static str,
    data: Data,
    /// Written as `(len / 2, 2)` instead of 1-D.
    two_d: bool,
    /// Replaced by an (empty) group of the same name.
    group: bool,
    removed: bool,
}

/// What happens to the root version attribute.
#[derive(Arbitrary, Clone, Debug)]
enum Marker {
    Keep,
    Remove,
    Int(i64),
    Float(f64),
    Text(String),
}

/// One mutation. Column and element numbers are taken modulo the sizes.
#[derive(Arbitrary, Debug)]
enum Op {
    /// An extreme value: 0, 1, −1/MAX, the length, the length + 1, the
    /// pixel total, 2^24, 2^40, NaN, ±inf, −0, 1e300.
    Special {
        col: u8,
        idx: u16,
        which: u8,
    },
    Number {
        col: u8,
        idx: u16,
        bits: u64,
    },
    Float {
        col: u8,
        idx: u16,
        value: f64,
    },
    Text {
        col: u8,
        idx: u16,
        value: String,
    },
    Truncate {
        col: u8,
        keep: u16,
    },
    Extend {
        col: u8,
        by: u8,
    },
    Swap {
        col: u8,
        a: u16,
        b: u16,
    },
    Remove {
        col: u8,
    },
    Retype {
        col: u8,
        kind: u8,
    },
    TwoD {
        col: u8,
    },
    Group {
        col: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    marker: Marker,
    ops: Vec<Op>,
}

impl Input {
    fn marker_changed(&self) -> bool {
        !matches!(self.marker, Marker::Keep)
    }
}

fn read_base() -> Vec<Column> {
    let root = spectok_io::testdata::real_data_dir()
        .expect("the shard target needs the real survey files (SPECTOK_REAL_DATA)");
    let inputs: Vec<String> = [
        "sdss/spec-0266-51602-0013.fits",
        "desi/coadd-4-80613-thru20210324.fits",
        "desi/redrock-4-80613-thru20210324.fits",
        "apogee/apStar-r6-2M03290406+3117075.fits",
        "apogee/aspcapStar-r6-l30e.2-2M03290406+3117075.fits",
        "lamost/spec-55859-F5902_sp01-001.fits.gz",
        "galah/2101150001010011.fits",
    ]
    .iter()
    .map(|p| root.join(p).display().to_string())
    .collect();
    let plan = plan_inputs(&inputs, None);
    let dir = std::env::temp_dir().join(format!("spectok-fuzz-base-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create base dir");
    let base = dir.join("base.h5");
    let mut w = ShardWriter::create(&base).expect("create base shard");
    for unit in &plan.units {
        let Ok(stream) = read_unit(unit) else {
            continue;
        };
        for s in stream.take(2).flatten() {
            w.write(&s).expect("write base shard");
        }
    }
    w.finish().expect("finish base shard");
    let f = hdf5::File::open(&base).expect("open base shard");
    let cols = COLUMNS
        .iter()
        .map(|&(name, kind)| {
            let ds = f.dataset(name).expect("base shard dataset");
            let data = match kind {
                "u64" => Data::U64(ds.read_raw().expect("read")),
                "i64" => Data::I64(ds.read_raw().expect("read")),
                "u32" => Data::U32(ds.read_raw().expect("read")),
                "u16" => Data::U16(ds.read_raw().expect("read")),
                "u8" => Data::U8(ds.read_raw().expect("read")),
                "f64" => Data::F64(ds.read_raw().expect("read")),
                "f32" => Data::F32(ds.read_raw().expect("read")),
                _ => Data::Str(
                    ds.read_raw::<VarLenUnicode>()
                        .expect("read")
                        .into_iter()
                        .map(|s| s.as_str().to_string())
                        .collect(),
                ),
            };
            Column {
                name,
                data,
                two_d: false,
                group: false,
                removed: false,
            }
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    cols
}

fn base() -> &'static [Column] {
    static BASE: OnceLock<Vec<Column>> = OnceLock::new();
    BASE.get_or_init(read_base)
}

fn apply(cols: &mut [Column], op: &Op, pixels: usize) {
    let pick = |c: &u8| usize::from(*c) % COLUMNS.len();
    match op {
        Op::Special { col, idx, which } => {
            let c = &mut cols[pick(col)];
            let n = c.data.len();
            if n == 0 {
                return;
            }
            let i = usize::from(*idx) % n;
            let (x, bits) = match which % 13 {
                0 => (0.0, 0),
                1 => (1.0, 1),
                2 => (-1.0, u64::MAX),
                3 => (n as f64, n as u64),
                4 => (n as f64 + 1.0, n as u64 + 1),
                5 => (pixels as f64, pixels as u64),
                6 => (16777216.0, 1 << 24),
                7 => (1099511627776.0, 1 << 40),
                8 => (f64::NAN, u64::MAX - 1),
                9 => (f64::INFINITY, i64::MAX as u64),
                10 => (f64::NEG_INFINITY, i64::MIN as u64),
                11 => (-0.0, 2),
                _ => (1e300, 1 << 63),
            };
            c.data.set(i, x, bits);
        }
        Op::Number { col, idx, bits } => {
            let c = &mut cols[pick(col)];
            let n = c.data.len();
            if n > 0 {
                c.data.set(usize::from(*idx) % n, *bits as f64, *bits);
            }
        }
        Op::Float { col, idx, value } => {
            let c = &mut cols[pick(col)];
            let n = c.data.len();
            if n > 0 {
                c.data.set(usize::from(*idx) % n, *value, value.to_bits());
            }
        }
        Op::Text { col, idx, value } => {
            let c = &mut cols[pick(col)];
            let n = c.data.len();
            if let (Data::Str(v), true) = (&mut c.data, n > 0) {
                v[usize::from(*idx) % n] = value.replace('\0', "");
            }
        }
        Op::Truncate { col, keep } => {
            let c = &mut cols[pick(col)];
            let n = c.data.len();
            c.data.truncate(usize::from(*keep) % (n + 1));
        }
        Op::Extend { col, by } => cols[pick(col)].data.extend(usize::from(*by)),
        Op::Swap { col, a, b } => {
            let c = &mut cols[pick(col)];
            let n = c.data.len();
            if n > 0 {
                c.data.swap(usize::from(*a) % n, usize::from(*b) % n);
            }
        }
        Op::Remove { col } => cols[pick(col)].removed = true,
        Op::Retype { col, kind } => {
            let c = &mut cols[pick(col)];
            c.data = c.data.retype(*kind);
        }
        Op::TwoD { col } => cols[pick(col)].two_d = true,
        Op::Group { col } => cols[pick(col)].group = true,
    }
}

fn write_column(f: &hdf5::File, c: &Column) -> hdf5::Result<()> {
    if c.removed {
        return Ok(());
    }
    if c.group {
        f.create_group(c.name)?;
        return Ok(());
    }
    fn put<T: hdf5::H5Type>(f: &hdf5::File, c: &Column, v: &[T]) -> hdf5::Result<()> {
        let ds = if c.two_d && v.len() >= 2 {
            let v = &v[..v.len() / 2 * 2];
            let ds = f
                .new_dataset::<T>()
                .shape((v.len() / 2, 2))
                .create(c.name)?;
            ds.write_raw(v)?;
            return Ok(());
        } else {
            f.new_dataset::<T>().shape(v.len()).create(c.name)?
        };
        if !v.is_empty() {
            ds.write_raw(v)?;
        }
        Ok(())
    }
    match &c.data {
        Data::U64(v) => put(f, c, v),
        Data::I64(v) => put(f, c, v),
        Data::U32(v) => put(f, c, v),
        Data::U16(v) => put(f, c, v),
        Data::U8(v) => put(f, c, v),
        Data::F64(v) => put(f, c, v),
        Data::F32(v) => put(f, c, v),
        Data::Str(v) => {
            let s: Vec<VarLenUnicode> = v
                .iter()
                .map(|s| VarLenUnicode::from_str(s).unwrap_or_default())
                .collect();
            put(f, c, &s)
        }
    }
}

fn write_shard(path: &PathBuf, marker: &Marker, cols: &[Column]) -> hdf5::Result<()> {
    let f = hdf5::File::create(path)?;
    match marker {
        Marker::Keep => f
            .new_attr::<u32>()
            .create(SHARD_MARKER)?
            .write_scalar(&1u32)?,
        Marker::Remove => {}
        Marker::Int(v) => f.new_attr::<i64>().create(SHARD_MARKER)?.write_scalar(v)?,
        Marker::Float(v) => f.new_attr::<f64>().create(SHARD_MARKER)?.write_scalar(v)?,
        Marker::Text(s) => {
            let s = VarLenUnicode::from_str(&s.replace('\0', "")).unwrap_or_default();
            f.new_attr::<VarLenUnicode>()
                .create(SHARD_MARKER)?
                .write_scalar(&s)?
        }
    }
    for c in cols {
        write_column(&f, c)?;
    }
    Ok(())
}

fuzz_target!(|input: Input| {
    let mut cols = base().to_vec();
    let pixels = cols[1].data.len();
    for op in input.ops.iter().take(32) {
        apply(&mut cols, op, pixels);
    }
    let path = common::scratch_file("mutated.h5");
    let _ = std::fs::remove_file(&path);
    write_shard(&path, &input.marker, &cols).expect("write the mutated shard");
    match spectok_io::detect(&path) {
        Ok(f) => assert!(
            f == Format::SpectokShard || input.marker_changed(),
            "a shard with its marker detected as {f}"
        ),
        Err(e) => common::check_error(&e),
    }
    common::read_forced(&path, Format::SpectokShard);
});
