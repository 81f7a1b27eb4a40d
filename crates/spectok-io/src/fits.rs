//! A thin wrapper over cfitsio that turns every failure into an
//! [`Error`] naming the file, HDU and field, and checks shapes before
//! trusting them.
//!
//! Readers use only this module to touch FITS files, so a cfitsio status
//! never escapes without a location. Headers are spectok's own index
//! ([`header`]), built in the single pass [`Fits::open`] makes over the
//! file; cfitsio is opened on the first data read and only reads data.

mod direct;
mod header;
#[cfg(test)]
mod oracle_tests;

use std::ops::Range;
use std::os::raw::{c_int, c_void};
use std::path::{Path, PathBuf};

use fitsio::sys;
use fitsio::FitsFile;

use crate::error::{Error, Location, Result};
use direct::Stored;
use header::{Hdu, Lookup, Walker};

/// Largest read [`direct`] makes at once (larger ones go to cfitsio).
const MAX_DIRECT_BYTES: u64 = 1 << 30;

/// Largest number of elements we agree to read from one HDU (guards against
/// headers that claim gigantic sizes).
pub const MAX_ELEMENTS: usize = 1 << 28;

/// What an HDU is, as far as detection needs to know.
#[derive(Clone, Debug, Default)]
pub struct HduDesc {
    /// `EXTNAME` (empty for an unnamed HDU; `PRIMARY` for HDU 0 if unnamed).
    pub name: String,
    /// Image shape in C order (slowest axis first, e.g. `[nspec, npix]`);
    /// empty for tables and empty images.
    pub shape: Vec<usize>,
    /// FITS `BITPIX` of an image (8, 16, 32, 64, −32, −64); 0 for tables.
    pub bitpix: i32,
    /// Table column names (empty for images).
    pub columns: Vec<String>,
    /// Repeat count of each table column (elements per cell).
    pub repeats: Vec<usize>,
    /// Table rows (0 for images).
    pub rows: usize,
    pub table: bool,
}

impl HduDesc {
    pub fn is_image(&self) -> bool {
        !self.table && !self.shape.is_empty()
    }

    /// One-line description for messages.
    pub fn summary(&self, index: usize) -> String {
        let name = if self.name.is_empty() {
            format!("HDU {index}")
        } else {
            format!("HDU {index} {}", self.name)
        };
        if self.table {
            let mut cols = self
                .columns
                .iter()
                .take(6)
                .cloned()
                .collect::<Vec<_>>()
                .join(",");
            if self.columns.len() > 6 {
                cols.push_str(",…");
            }
            format!("{name}: table {} rows [{cols}]", self.rows)
        } else if self.shape.is_empty() {
            format!("{name}: no data")
        } else {
            let dims = self
                .shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("×");
            format!("{name}: image {dims}")
        }
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
    }
}

/// An open FITS file (plain or gzip-compressed) with its path and its
/// header index.
pub struct Fits {
    /// cfitsio's handle, opened on the first data read.
    file: Option<FitsFile>,
    path: PathBuf,
    /// Every HDU's header, data offsets and description.
    hdus: Vec<Hdu>,
    /// Whether every card of the file has passed [`scan_cards`] (done
    /// before cfitsio first opens it).
    cards_checked: bool,
    /// The file itself when it is not compressed: unscaled data are read
    /// from it directly ([`direct`]).
    plain: Option<std::fs::File>,
    /// Tests: read everything through cfitsio.
    cfitsio_only: bool,
    /// The table rows last read directly: HDU, rows, bytes.
    rows_cache: Option<(usize, Range<usize>, std::sync::Arc<Vec<u8>>)>,
}

/// A value cfitsio reads into a Rust buffer: its cfitsio datatype code
/// for columns, and for images (cfitsio's tile-compressed image reader
/// takes `TLONG`, not `TLONGLONG`, for 64-bit integers where a C `long`
/// has 64 bits — as `fitsio` reads them).
///
/// `decode` converts a stored big-endian value as cfitsio does, or gives
/// `None` where cfitsio would do more (a float read as an integer, a
/// double out of f32 range): the read then goes to cfitsio.
trait Value: Copy + Default {
    const CODE: c_int;
    const IMAGE_CODE: c_int = Self::CODE;
    fn decode(stored: Stored, bytes: &[u8]) -> Option<Self>;

    /// Decodes consecutive stored values (`bytes` holds whole values);
    /// `None` as [`Value::decode`]. The common layouts have loops of their
    /// own (a byte swap a value, which the compiler vectorises).
    fn decode_all(stored: Stored, bytes: &[u8]) -> Option<Vec<Self>> {
        decode_each(stored, bytes)
    }
}

/// [`Value::decode`] value by value.
fn decode_each<T: Value>(stored: Stored, bytes: &[u8]) -> Option<Vec<T>> {
    let mut out = Vec::with_capacity(bytes.len() / stored.size().max(1));
    for v in bytes.chunks_exact(stored.size()) {
        out.push(T::decode(stored, v)?);
    }
    Some(out)
}

/// The big-endian `N`-byte values of `bytes`, each mapped by `f`.
fn map_be<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|b| {
            let mut a = [0u8; N];
            a.copy_from_slice(b);
            f(a)
        })
        .collect()
}

impl Value for f64 {
    const CODE: c_int = sys::TDOUBLE as c_int;
    fn decode(stored: Stored, bytes: &[u8]) -> Option<Self> {
        Some(stored.float(bytes))
    }
    fn decode_all(stored: Stored, bytes: &[u8]) -> Option<Vec<Self>> {
        Some(match stored {
            Stored::F64 => map_be(bytes, f64::from_be_bytes),
            Stored::F32 => map_be(bytes, |b| f64::from(f32::from_be_bytes(b))),
            _ => bytes
                .chunks_exact(stored.size())
                .map(|v| stored.float(v))
                .collect(),
        })
    }
}

impl Value for f32 {
    const CODE: c_int = sys::TFLOAT as c_int;
    fn decode(stored: Stored, bytes: &[u8]) -> Option<Self> {
        let v = stored.float(bytes);
        match stored {
            Stored::I64 => stored.int(bytes).map(|i| i as f32),
            Stored::U16 | Stored::U32 | Stored::U64 => Some(v as f32),
            Stored::F64 if v.is_finite() && v.abs() > f64::from(f32::MAX) => None,
            _ => Some(v as f32),
        }
    }
    fn decode_all(stored: Stored, bytes: &[u8]) -> Option<Vec<Self>> {
        match stored {
            Stored::F32 => Some(map_be(bytes, f32::from_be_bytes)),
            _ => decode_each(stored, bytes),
        }
    }
}

impl Value for i64 {
    const CODE: c_int = sys::TLONGLONG as c_int;
    fn decode(stored: Stored, bytes: &[u8]) -> Option<Self> {
        stored.int(bytes)
    }
    fn decode_all(stored: Stored, bytes: &[u8]) -> Option<Vec<Self>> {
        match stored {
            Stored::U8 => Some(bytes.iter().map(|&b| i64::from(b)).collect()),
            Stored::I16 => Some(map_be(bytes, |b| i64::from(i16::from_be_bytes(b)))),
            Stored::I32 => Some(map_be(bytes, |b| i64::from(i32::from_be_bytes(b)))),
            Stored::I64 => Some(map_be(bytes, i64::from_be_bytes)),
            _ => bytes
                .chunks_exact(stored.size())
                .map(|v| stored.int(v))
                .collect(),
        }
    }
    const IMAGE_CODE: c_int = if std::mem::size_of::<std::os::raw::c_long>() == 8 {
        sys::TLONG as c_int
    } else {
        sys::TLONGLONG as c_int
    };
}

impl Value for u64 {
    const CODE: c_int = sys::TULONGLONG as c_int;
    fn decode(stored: Stored, bytes: &[u8]) -> Option<Self> {
        stored.unsigned(bytes)
    }
}

impl Fits {
    /// Opens `path` read-only. gzip-compressed files are read as they are.
    ///
    /// Opening indexes the HDUs from their headers (spectok's own parser;
    /// a gzip file is decompressed once and checked whole); a file cut
    /// short anywhere, even inside an HDU no reader reads (e.g. SDSS
    /// per-exposure tables), is an error naming the HDU. cfitsio opens the
    /// file on the first data read, after every card of it has been
    /// checked — so detecting a format and reading keywords never reach
    /// cfitsio.
    pub fn open(path: &Path) -> Result<Fits> {
        let (hdus, cards_checked, plain) = check_compression(path)?;
        Ok(Fits {
            file: None,
            path: path.to_path_buf(),
            hdus,
            cards_checked,
            plain,
            cfitsio_only: false,
            rows_cache: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A location in this file.
    pub fn loc(&self, hdu: impl std::fmt::Display) -> Location {
        Location::file(&self.path).hdu(hdu)
    }

    pub fn num_hdus(&mut self) -> Result<usize> {
        Ok(self.hdus.len())
    }

    /// cfitsio's handle, opened on first use.
    fn raw(&mut self) -> Result<*mut sys::fitsfile> {
        if self.file.is_none() {
            if !self.cards_checked {
                check_cards(&self.path)?;
                self.cards_checked = true;
            }
            if self.path.to_str().is_none() {
                return Err(Error::bad(
                    Location::file(&self.path),
                    "cannot open as FITS: the path is not valid UTF-8",
                ));
            }
            let file = FitsFile::open(&self.path).map_err(|e| {
                Error::bad(
                    Location::file(&self.path),
                    format!("cannot open as FITS: {}", msg(&e)),
                )
            })?;
            self.file = Some(file);
        }
        match self.file.as_mut() {
            // SAFETY: the handle stays open while `self.file` holds it, and
            // every caller uses the pointer only within its own call.
            Some(f) => Ok(unsafe { f.as_raw() }),
            None => Err(Error::bad(
                Location::file(&self.path),
                "cannot open as FITS",
            )),
        }
    }

    /// The index entry of HDU `index`.
    fn entry(&self, index: usize) -> Result<&Hdu> {
        self.hdus.get(index).ok_or_else(|| {
            Error::bad(
                self.loc(index),
                format!("no such HDU (the file has {})", self.hdus.len()),
            )
        })
    }

    /// What HDU `index` holds (described on first use).
    fn described(&self, index: usize) -> Result<&header::Described> {
        self.entry(index)?
            .described()
            .map_err(|f| fault_error(f, &self.path))
    }

    /// The repeat count of `column` of table HDU `index` (values per
    /// cell), `None` if the HDU has no such column.
    pub fn column_repeat(&self, index: usize, column: &str) -> Option<usize> {
        let d = &self.described(index).ok()?.desc;
        d.column_index(column).map(|i| d.repeats[i])
    }

    /// Whether column `col` of table HDU `index` holds unsigned integers
    /// stored with the standard offset.
    fn unsigned_column(&self, index: usize, col: usize) -> bool {
        let Ok(d) = self.described(index) else {
            return false;
        };
        matches!(&d.direct, header::Direct::Table { columns, .. }
            if columns.get(col).is_some_and(|c| c.unsigned))
    }

    /// Makes HDU `index` cfitsio's current one (for a data read).
    fn move_to(&mut self, index: usize) -> Result<*mut sys::fitsfile> {
        self.entry(index)?;
        let hdunum = c_int::try_from(index + 1)
            .map_err(|_| Error::bad(self.loc(index), "HDU number out of range"))?;
        let fptr = self.raw()?;
        let (mut kind, mut status) = (0, 0);
        // SAFETY: the handle is open and both out-pointers are live locals.
        unsafe { sys::ffmahd(fptr, hdunum, &mut kind, &mut status) };
        if status != 0 {
            return Err(Error::bad(
                self.loc(index),
                format!("cannot move to HDU: {}", status_text(status)),
            ));
        }
        Ok(fptr)
    }

    /// Every HDU's `EXTNAME` (`PRIMARY` for an unnamed HDU 0, else empty
    /// when unnamed), without describing any HDU.
    pub fn hdu_names(&self) -> Vec<String> {
        self.hdus.iter().map(|h| h.name.clone()).collect()
    }

    /// Index of the HDU whose `EXTNAME` is `name` (case-insensitive).
    pub fn hdu_index(&mut self, name: &str) -> Result<Option<usize>> {
        Ok(self
            .hdus
            .iter()
            .position(|h| h.name.eq_ignore_ascii_case(name)))
    }

    /// Like [`Fits::hdu_index`] but an absent HDU is an error naming it.
    pub fn require_hdu(&mut self, name: &str) -> Result<usize> {
        self.hdu_index(name)?
            .ok_or_else(|| Error::bad(self.loc(name), "HDU missing"))
    }

    /// Describes HDU `index`.
    pub fn describe(&mut self, index: usize) -> Result<HduDesc> {
        Ok(self.desc(index)?.clone())
    }

    /// HDU `index`'s description, borrowed.
    fn desc(&self, index: usize) -> Result<&HduDesc> {
        Ok(&self.described(index)?.desc)
    }

    pub fn describe_all(&mut self) -> Result<Vec<HduDesc>> {
        (0..self.hdus.len()).map(|i| self.describe(i)).collect()
    }

    /// Header keyword as a number (numbers, logicals as 1/0, strings
    /// holding a number), `None` if absent or not numeric.
    pub fn key_f64(&mut self, index: usize, key: &str) -> Option<f64> {
        self.hdus.get(index)?.header.f64(key)
    }

    /// Header keyword as an integer, `None` if absent or not an integer.
    pub fn key_i64(&mut self, index: usize, key: &str) -> Option<i64> {
        self.hdus.get(index)?.header.i64(key)
    }

    /// Header keyword as text (other values as written), trimmed; `None`
    /// if absent.
    pub fn key_text(&mut self, index: usize, key: &str) -> Option<String> {
        self.hdus
            .get(index)?
            .header
            .text(key)
            .map(|s| s.trim().to_string())
    }

    /// A numeric keyword that must be present.
    pub fn require_key_f64(&mut self, index: usize, key: &str) -> Result<f64> {
        let v = self.key_f64(index, key).ok_or_else(|| {
            Error::bad(
                self.loc(index).field(key),
                "keyword missing or not a number",
            )
        })?;
        if !v.is_finite() {
            return Err(Error::bad(
                self.loc(index).field(key),
                format!("keyword is {v}"),
            ));
        }
        Ok(v)
    }

    /// Shape of image HDU `index`, checked to be an image with `ndim`
    /// axes (1 or 2) and a sane size.
    pub fn image_shape(&mut self, index: usize, field: &str) -> Result<Vec<usize>> {
        let d = self.describe(index)?;
        if d.table {
            return Err(Error::bad(
                self.loc(index).field(field),
                "expected an image, found a table",
            ));
        }
        if d.shape.is_empty() || d.shape.contains(&0) {
            return Err(Error::bad(self.loc(index).field(field), "image is empty"));
        }
        let n: usize = d
            .shape
            .iter()
            .try_fold(1usize, |a, &b| a.checked_mul(b))
            .unwrap_or(usize::MAX);
        if n > MAX_ELEMENTS {
            return Err(Error::bad(
                self.loc(index).field(field),
                format!("image claims {n} elements (limit {MAX_ELEMENTS})"),
            ));
        }
        Ok(d.shape)
    }

    /// Reads `n` pixels of image HDU `index` from pixel `first` (0-based,
    /// C order) as `T`, with cfitsio (any BITPIX; BSCALE/BZERO applied).
    fn read_pixels<T: Value>(
        &mut self,
        index: usize,
        first: usize,
        n: usize,
    ) -> Result<Vec<T>, Fail> {
        const BAD_ELEM: i32 = 308;
        if let Some(v) = self.direct_pixels(index, first, n) {
            return Ok(v);
        }
        let fptr = self.move_to(index).map_err(Fail::Before)?;
        let mut out = vec![T::default(); n];
        if n == 0 {
            return Ok(out);
        }
        let first = sys::LONGLONG::try_from(first + 1).map_err(|_| Fail::Status(BAD_ELEM))?;
        let nelem = sys::LONGLONG::try_from(n).map_err(|_| Fail::Status(BAD_ELEM))?;
        let mut status = 0;
        // SAFETY: the handle is open on HDU `index`; `out` holds `n` values
        // of the type `T::IMAGE_CODE` names; a null `nulval` asks for no
        // undefined-value substitution (as `fitsio` reads images).
        unsafe {
            sys::ffgpv(
                fptr,
                T::IMAGE_CODE,
                first,
                nelem,
                std::ptr::null_mut(),
                out.as_mut_ptr() as *mut c_void,
                std::ptr::null_mut(),
                &mut status,
            );
        }
        if status != 0 {
            return Err(Fail::Status(status));
        }
        Ok(out)
    }

    /// Reads a whole image as `T` (any BITPIX; BSCALE/BZERO applied by
    /// cfitsio). Returns the values and the shape (C order).
    fn read_image_as<T: Value>(
        &mut self,
        index: usize,
        field: &str,
    ) -> Result<(Vec<T>, Vec<usize>)> {
        let shape = self.image_shape(index, field)?;
        let n = shape.iter().product();
        let v: Vec<T> = self
            .read_pixels(index, 0, n)
            .map_err(|f| f.at(self.loc(index).field(field), "cannot read image"))?;
        check_len(&v, &shape, || self.loc(index).field(field))?;
        Ok((v, shape))
    }

    /// Reads a whole image as f64 (any BITPIX; BSCALE/BZERO applied by
    /// cfitsio). Returns the values and the shape (C order).
    pub fn read_image_f64(&mut self, index: usize, field: &str) -> Result<(Vec<f64>, Vec<usize>)> {
        self.read_image_as(index, field)
    }

    /// Reads a whole image as f32.
    pub fn read_image_f32(&mut self, index: usize, field: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        self.read_image_as(index, field)
    }

    /// Reads a whole integer image as i64 (for bitmasks).
    pub fn read_image_i64(&mut self, index: usize, field: &str) -> Result<(Vec<i64>, Vec<usize>)> {
        self.read_image_as(index, field)
    }

    /// Reads row `row` of a 2-D image (or the whole of a 1-D image when
    /// `row == 0`) as `T`, so multi-spectrum images stream one spectrum at a
    /// time.
    fn read_image_row_as<T: Value>(
        &mut self,
        index: usize,
        row: usize,
        field: &str,
    ) -> Result<Vec<T>> {
        let shape = self.image_shape(index, field)?;
        let (nrow, ncol) = rows_cols(&shape, || self.loc(index).field(field))?;
        let loc = self.loc(index).field(field).row(row as u64);
        let at = || loc.clone();
        if row >= nrow {
            return Err(Error::bad(
                at(),
                format!("row out of range (image has {nrow} rows)"),
            ));
        }
        let v: Vec<T> = self
            .read_pixels(index, row * ncol, ncol)
            .map_err(|f| f.at(at(), "cannot read row"))?;
        if v.len() != ncol {
            return Err(Error::bad(
                at(),
                format!("read {} of {ncol} values", v.len()),
            ));
        }
        Ok(v)
    }

    /// Reads row `row` of a 2-D image as f64 (see `read_image_row_as`).
    pub fn read_image_row_f64(
        &mut self,
        index: usize,
        row: usize,
        field: &str,
    ) -> Result<Vec<f64>> {
        self.read_image_row_as(index, row, field)
    }

    /// Reads row `row` of a 2-D image as f32.
    pub fn read_image_row_f32(
        &mut self,
        index: usize,
        row: usize,
        field: &str,
    ) -> Result<Vec<f32>> {
        self.read_image_row_as(index, row, field)
    }

    /// Reads row `row` of a 2-D integer image as i64 (bitmasks).
    pub fn read_image_row_i64(
        &mut self,
        index: usize,
        row: usize,
        field: &str,
    ) -> Result<Vec<i64>> {
        self.read_image_row_as(index, row, field)
    }

    /// Checks that `column` of table HDU `index` can be read (a table
    /// without variable-length array columns, the column present, a sane
    /// size) and makes the HDU cfitsio's current one. Returns the column
    /// index (0-based) and the description.
    fn table(&mut self, index: usize, column: &str) -> Result<(usize, usize)> {
        let d = self.desc(index)?;
        if !d.table {
            return Err(Error::bad(
                self.loc(index).field(column),
                "expected a table, found an image",
            ));
        }
        let Some(i) = d.column_index(column) else {
            return Err(Error::bad(self.loc(index).field(column), "column missing"));
        };
        let rows = d.rows;
        let n = rows.saturating_mul(d.repeats[i].max(1));
        self.refuse_var_columns(index)?;
        if n > MAX_ELEMENTS {
            return Err(Error::bad(
                self.loc(index).field(column),
                format!("column claims {n} values"),
            ));
        }
        Ok((i, rows))
    }

    /// Whether table HDU `index` has `column`.
    pub fn has_column(&mut self, index: usize, column: &str) -> bool {
        self.desc(index)
            .is_ok_and(|d| d.column_index(column).is_some())
    }

    /// Reads rows `rows` of column `col` (0-based) of table HDU `index`
    /// as `T` (array cells flattened row-major), with cfitsio; the HDU is
    /// current (see [`Fits::table`]). Bit columns give one value per `T`
    /// worth of bits, as `fitsio` reads them.
    fn read_cells<T: Value>(
        &mut self,
        index: usize,
        col: usize,
        rows: Range<usize>,
    ) -> Result<Vec<T>, Fail> {
        const BAD_ROW: i32 = 307;
        if let Some(v) = self.direct_cells(index, col, rows.clone()) {
            return Ok(v);
        }
        let fptr = self.move_to(index).map_err(Fail::Before)?;
        let form = self
            .described(index)
            .map_err(Fail::Before)?
            .forms
            .get(col)
            .copied()
            .ok_or(Fail::Status(BAD_ROW))?;
        let repeat = if form.code == b'X' {
            (form.repeat / (std::mem::size_of::<T>() * 8)).max(1)
        } else {
            form.repeat
        };
        let n = rows
            .len()
            .checked_mul(repeat)
            .ok_or(Fail::Status(BAD_ROW))?;
        let mut out = vec![T::default(); n];
        if n == 0 {
            return Ok(out);
        }
        let colnum = c_int::try_from(col + 1).map_err(|_| Fail::Status(BAD_ROW))?;
        let first = sys::LONGLONG::try_from(rows.start + 1).map_err(|_| Fail::Status(BAD_ROW))?;
        let nelem = sys::LONGLONG::try_from(n).map_err(|_| Fail::Status(BAD_ROW))?;
        let mut status = 0;
        // SAFETY: the handle is open on table HDU `index`; `out` holds `n`
        // values of the type `T::CODE` names; a null `nulval` asks for no
        // undefined-value substitution (as `fitsio` reads columns).
        unsafe {
            sys::ffgcv(
                fptr,
                T::CODE,
                colnum,
                first,
                1,
                nelem,
                std::ptr::null_mut(),
                out.as_mut_ptr() as *mut c_void,
                std::ptr::null_mut(),
                &mut status,
            );
        }
        if status != 0 {
            return Err(Fail::Status(status));
        }
        Ok(out)
    }

    /// Reads a numeric column as `T` (all rows; array cells flattened
    /// row-major).
    fn read_col_as<T: Value>(&mut self, index: usize, column: &str) -> Result<Vec<T>> {
        let (i, rows) = self.table(index, column)?;
        self.read_cells(index, i, 0..rows)
            .map_err(|f| f.at(self.loc(index).field(column), "cannot read column"))
    }

    /// Reads a numeric column (all rows; array cells flattened row-major).
    pub fn read_col_f64(&mut self, index: usize, column: &str) -> Result<Vec<f64>> {
        self.read_col_as(index, column)
    }

    /// Reads a numeric column as f32.
    pub fn read_col_f32(&mut self, index: usize, column: &str) -> Result<Vec<f32>> {
        self.read_col_as(index, column)
    }

    /// Reads an integer column as i64.
    pub fn read_col_i64(&mut self, index: usize, column: &str) -> Result<Vec<i64>> {
        self.read_col_as(index, column)
    }

    /// Reads a numeric column for rows `rows` only (streaming large tables).
    pub fn read_col_range_f64(
        &mut self,
        index: usize,
        column: &str,
        rows: Range<usize>,
    ) -> Result<Vec<f64>> {
        let (i, nrows) = self.table(index, column)?;
        if rows.end > nrows || rows.start > rows.end {
            return Err(Error::bad(
                self.loc(index).field(column),
                format!("rows {rows:?} out of {nrows} rows"),
            ));
        }
        self.read_cells(index, i, rows)
            .map_err(|f| f.at(self.loc(index).field(column), "cannot read column"))
    }

    /// Reads a text column (one string per row, trimmed).
    pub fn read_col_text(&mut self, index: usize, column: &str) -> Result<Vec<String>> {
        let (col, rows) = self.table(index, column)?;
        self.read_text_cells(index, col, 0..rows)
            .map(|v| v.into_iter().map(|s| s.trim().to_string()).collect())
            .map_err(|f| f.at(self.loc(index).field(column), "cannot read column"))
    }
}

fn rows_cols(shape: &[usize], loc: impl Fn() -> Location) -> Result<(usize, usize)> {
    match shape {
        [n] => Ok((1, *n)),
        [r, c] => Ok((*r, *c)),
        _ => Err(Error::bad(
            loc(),
            format!("expected a 1-D or 2-D image, found {} axes", shape.len()),
        )),
    }
}

fn check_len<T>(v: &[T], shape: &[usize], loc: impl Fn() -> Location) -> Result<()> {
    let n: usize = shape.iter().product();
    if v.len() != n {
        return Err(Error::bad(loc(), format!("read {} of {n} values", v.len())));
    }
    Ok(())
}

/// cfitsio's messages, on one line.
fn msg(e: &fitsio::errors::Error) -> String {
    e.to_string().replace('\n', " ").trim().to_string()
}

impl Fits {
    /// Reads row `row` of an integer bitmask image (as
    /// [`Fits::read_image_row_i64`]) and returns each value's bit pattern
    /// as `u32` (see [`mask_bits`]), so unsigned masks stored with `BZERO`
    /// and signed 16/32-bit masks with the top bit set keep their bits.
    pub fn read_image_row_mask(
        &mut self,
        index: usize,
        row: usize,
        field: &str,
    ) -> Result<Vec<u32>> {
        let bitpix = self.describe(index)?.bitpix;
        let v = self.read_image_row_i64(index, row, field)?;
        Ok(v.into_iter().map(|x| mask_bits(x, bitpix)).collect())
    }
}

/// The bit pattern of one bitmask value read as `i64` from an image of
/// `BITPIX` `bitpix`: values in `0..=u32::MAX` are kept; a negative value is
/// reinterpreted in the image's own width (so an `int16` mask with bit 15
/// set gives `0x8000`, not `0xFFFF8000`); bits above 31 are dropped.
pub fn mask_bits(v: i64, bitpix: i32) -> u32 {
    if (0..=u32::MAX as i64).contains(&v) {
        return v as u32;
    }
    match bitpix {
        8 => v as u8 as u32,
        16 => v as u16 as u32,
        _ => v as u32,
    }
}

impl Fits {
    /// A string keyword that may continue over several cards (the FITS
    /// long-string `CONTINUE` convention, e.g. a sampling grid written as
    /// one long list), joined and trimmed; `None` if absent or not text.
    pub fn key_long_text(&mut self, index: usize, key: &str) -> Option<String> {
        self.hdus
            .get(index)?
            .header
            .long_text(key)
            .map(|s| s.trim().to_string())
    }

    /// A logical keyword (`T`/`F`; also accepts `1`/`0`, `TRUE`/`FALSE`);
    /// `None` if absent or of another kind.
    pub fn key_bool(&mut self, index: usize, key: &str) -> Option<bool> {
        let text = self.key_text(index, key)?;
        match text
            .trim()
            .trim_matches('\'')
            .trim()
            .to_ascii_uppercase()
            .as_str()
        {
            "T" | "TRUE" | "1" => Some(true),
            "F" | "FALSE" | "0" => Some(false),
            _ => None,
        }
    }

    /// Reads one cell of a scalar identifier column as text: a text column
    /// trimmed, an integer column exactly (signed, or unsigned 64-bit stored
    /// with `TZERO`), so 19-digit ids never pass through a float.
    pub fn read_cell_id(&mut self, index: usize, column: &str, row: usize) -> Result<String> {
        let (i, rows) = self.table(index, column)?;
        let loc = self.loc(index).field(column).row(row as u64);
        let at = || loc.clone();
        if row >= rows {
            return Err(Error::bad(
                at(),
                format!("row out of range (table has {rows} rows)"),
            ));
        }
        let fail = |f: Fail| f.at(at(), "cannot read identifier");
        let code = self.described(index)?.forms.get(i).map_or(0, |f| f.code);
        let first = match code {
            b'A' => self
                .read_text_cells(index, i, row..row + 1)
                .map_err(fail)?
                .into_iter()
                .next()
                .map(|s| s.trim().to_string()),
            // Integers: signed, or unsigned 64-bit (`TZERO` = 2^63) when
            // they overflow an i64.
            // Unsigned 64-bit identifiers (SDSS `SPECOBJID`) directly.
            b'B' | b'I' | b'J' | b'K' if self.unsigned_column(index, i) => {
                match self.direct_cells::<u64>(index, i, row..row + 1) {
                    Some(v) => v.first().map(|x| x.to_string()),
                    None => self
                        .read_cells::<u64>(index, i, row..row + 1)
                        .map_err(fail)?
                        .first()
                        .map(|x| x.to_string()),
                }
            }
            b'B' | b'I' | b'J' | b'K' => match self.read_cells::<i64>(index, i, row..row + 1) {
                Ok(v) => v.first().map(|x| x.to_string()),
                Err(_) => self
                    .read_cells::<u64>(index, i, row..row + 1)
                    .map_err(fail)?
                    .first()
                    .map(|x| x.to_string()),
            },
            _ => {
                return Err(Error::bad(
                    self.loc(index).field(column),
                    "not a text or integer column",
                ))
            }
        };
        first.ok_or_else(|| Error::bad(at(), "no value read"))
    }
}

/// Why a cfitsio read failed: its status, or an error before cfitsio ran
/// (the card check refused the file, or cfitsio could not open it).
#[derive(Debug)]
enum Fail {
    Status(i32),
    Before(Error),
}

impl Fail {
    /// The error at `loc`: `what: <cfitsio's text>` for a status, the
    /// earlier error as it is.
    fn at(self, loc: Location, what: &str) -> Error {
        match self {
            Fail::Status(s) => Error::bad(loc, format!("{what}: {}", status_text(s))),
            Fail::Before(e) => e,
        }
    }
}

/// cfitsio's text for a status code.
fn status_text(status: i32) -> String {
    let mut buf = vec![0 as std::os::raw::c_char; 81];
    // SAFETY: ffgerr writes at most 30 characters plus a NUL into `buf`.
    unsafe {
        fitsio::sys::ffgerr(status, buf.as_mut_ptr());
        std::ffi::CStr::from_ptr(buf.as_ptr())
            .to_string_lossy()
            .trim()
            .to_string()
    }
}

impl Fits {
    /// An error for a table with variable-length array columns
    /// (`TFORMn = 'PD(55)'`, as in Gaia XP coefficient tables), which
    /// spectok does not read.
    fn refuse_var_columns(&mut self, index: usize) -> Result<()> {
        let h = self.entry(index)?;
        if h.has_var_columns() {
            let desc = &self.described(index)?.desc;
            return Err(Error::bad(
                self.loc(index),
                format!(
                    "{}: variable-length array columns are not read",
                    desc.summary(index)
                ),
            ));
        }
        Ok(())
    }
}

impl Fits {
    /// Reads rows `rows` of text column `col` (0-based) of table HDU
    /// `index` with cfitsio directly. Each row gets a buffer as wide as cfitsio may write: the
    /// column's string width or display width, whichever is larger, plus
    /// the terminating NUL (`fitsio`'s own string-column reader leaves no
    /// room for the NUL and writes one byte past its buffers). Errors are
    /// cfitsio status codes.
    fn read_text_cells(
        &mut self,
        index: usize,
        col: usize,
        rows: Range<usize>,
    ) -> Result<Vec<String>, Fail> {
        use std::os::raw::c_char;
        const BAD_COL_NUM: i32 = 302;
        let colnum = c_int::try_from(col + 1).map_err(|_| Fail::Status(BAD_COL_NUM))?;
        let nrows = rows.len();
        if nrows == 0 {
            return Ok(Vec::new());
        }
        if let Some(v) = self.direct_text(index, col, rows.clone()) {
            return Ok(v);
        }
        let fptr = self.move_to(index).map_err(Fail::Before)?;
        let (mut status, mut typecode, mut repeat, mut width) = (0, 0, 0, 0);
        let mut display: c_int = 0;
        // SAFETY: the handle is open and positioned on a table HDU; the
        // out-pointers are live locals.
        unsafe {
            sys::ffgtclll(
                fptr,
                colnum,
                &mut typecode,
                &mut repeat,
                &mut width,
                &mut status,
            );
            // A text column is copied as stored (at most `repeat` characters
            // per cell); other columns are formatted to their display width,
            // which cfitsio finds by searching the header for `TDISPn`.
            if typecode != sys::TSTRING as c_int {
                sys::ffgcdw(fptr, colnum, &mut display, &mut status);
            }
        }
        if status != 0 {
            return Err(Fail::Status(status));
        }
        let chars = [repeat, width, sys::LONGLONG::from(display)]
            .into_iter()
            .max()
            .unwrap_or(0)
            .max(0);
        let chars = usize::try_from(chars).map_err(|_| Fail::Status(BAD_COL_NUM))?;
        // The table's own size was checked against MAX_ELEMENTS by the
        // caller; guard the buffer total all the same.
        if nrows.saturating_mul(chars + 1) > MAX_ELEMENTS {
            return Err(Fail::Status(BAD_COL_NUM));
        }
        let mut bufs: Vec<Vec<c_char>> = vec![vec![0; chars + 1]; nrows];
        let mut ptrs: Vec<*mut c_char> = bufs.iter_mut().map(|b| b.as_mut_ptr()).collect();
        let mut nulval = [0 as c_char; 1];
        let mut anynul: c_int = 0;
        let first =
            sys::LONGLONG::try_from(rows.start + 1).map_err(|_| Fail::Status(BAD_COL_NUM))?;
        let nelem = sys::LONGLONG::try_from(nrows).map_err(|_| Fail::Status(BAD_COL_NUM))?;
        // SAFETY: `ptrs` holds `nrows` pointers to buffers of `chars + 1`
        // bytes, and cfitsio writes at most the column's string (or display)
        // width plus a NUL into each; `bufs` outlives the call.
        unsafe {
            sys::ffgcvs(
                fptr,
                colnum,
                first,
                1,
                nelem,
                nulval.as_mut_ptr(),
                ptrs.as_mut_ptr(),
                &mut anynul,
                &mut status,
            );
        }
        if status != 0 {
            return Err(Fail::Status(status));
        }
        Ok(bufs
            .iter()
            .map(|b| {
                let bytes: Vec<u8> = b
                    .iter()
                    .take_while(|&&c| c != 0)
                    .map(|&c| c as u8)
                    .collect();
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .collect())
    }
}

/// Largest size a gzip-compressed FITS file may decompress to. cfitsio
/// decompresses such files into memory, so this bounds what a small
/// compressed file can make it allocate.
pub const MAX_GZIP_BYTES: u64 = 1 << 30;

/// Refuses, before cfitsio sees them, compressed files that would make it
/// allocate without bound: cfitsio decompresses gzip files into memory,
/// sized first by the gzip trailer (which a corrupt file can set to 4 GiB)
/// and then growing with the data (which a small file can make huge).
/// A gzip file must decompress cleanly to at most [`MAX_GZIP_BYTES`] and
/// agree with its trailer; the other compressions cfitsio would accept
/// (Unix compress, pack, LZH, zip) are refused.
///
/// Returns the HDU index and whether every card of the file has been
/// checked ([`scan_cards`]): a gzip file is checked in the pass that
/// decompresses it; a plain file is indexed by reading its headers only
/// ([`walk_headers`]) and checked whole before cfitsio opens it
/// ([`check_cards`]).
fn check_compression(path: &Path) -> Result<(Vec<Hdu>, bool, Option<std::fs::File>)> {
    use std::io::{Read, Seek, SeekFrom};
    let os = |source| Error::Os {
        path: path.to_path_buf(),
        source,
    };
    let bad = |why: String| Error::bad(Location::file(path), why);
    let mut file = std::fs::File::open(path).map_err(os)?;
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic).map_err(os)?;
    let magic = &magic[..n];
    match magic {
        [0x1f, 0x8b, ..] => {}
        [0x1f, 0x9d | 0x1e | 0xa0, ..] | [b'P', b'K', 3, 4] => {
            return Err(bad(
                "compressed with a method spectok does not read (only gzip is)".into(),
            ))
        }
        _ => return walk_headers(&file, path).map(|h| (h, false, Some(file))),
    }
    file.seek(SeekFrom::Start(0)).map_err(os)?;
    let mut decoder =
        flate2::read::GzDecoder::new(std::io::BufReader::new(&mut file)).take(MAX_GZIP_BYTES + 1);
    let mut walk = Walker::new();
    let size = scan_cards(&mut decoder, path, Some(&mut walk)).map_err(|e| match e {
        CardScan::Io(e) => bad(format!("corrupt gzip data: {e}")),
        CardScan::Bad(e) => e,
    })?;
    if size > MAX_GZIP_BYTES {
        return Err(bad(format!(
            "gzip data decompresses to more than {MAX_GZIP_BYTES} bytes"
        )));
    }
    let mut trailer = [0u8; 4];
    file.seek(SeekFrom::End(-4))
        .and_then(|_| file.read_exact(&mut trailer))
        .map_err(os)?;
    let claimed = u32::from_le_bytes(trailer);
    // cfitsio allocates what the file's last four bytes claim before it
    // inflates anything. A smaller claim (trailing padding, several
    // members) only makes it grow the buffer as the data come, up to the
    // size checked above; a larger one is refused (`size` < 2^32, so the
    // claim cannot have wrapped).
    if u64::from(claimed) > size {
        return Err(bad(format!(
            "gzip trailer claims {claimed} bytes but the data decompresses to {size}"
        )));
    }
    index(walk, size, path).map(|h| (h, true, None))
}

/// Indexes the HDUs of the plain file `file` by reading its header blocks
/// only, skipping from each header over its data to the next.
fn walk_headers(file: &std::fs::File, path: &Path) -> Result<Vec<Hdu>> {
    use std::os::unix::fs::FileExt;
    let os = |source| Error::Os {
        path: path.to_path_buf(),
        source,
    };
    let len = file.metadata().map_err(os)?.len();
    let mut walk = Walker::new();
    // Headers are read HEADER_READ_BLOCKS blocks at a time: a primary
    // header of a few blocks takes one read, not one a block.
    let mut block = vec![0u8; HEADER_READ_BLOCKS * header::BLOCK as usize];
    let mut pos = 0u64;
    while let Some(at) = walk.wants(pos).filter(|&at| at < len) {
        let want = (len - at).min(block.len() as u64) as usize;
        let block = &mut block[..want];
        let mut filled = 0;
        while filled < block.len() {
            match file.read_at(&mut block[filled..], at + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(os(e)),
            }
        }
        // Cards past a header's end are data the walk passes over (or,
        // after an HDU without data, the next header), as in a stream.
        for (i, card) in block[..filled].chunks_exact(80).enumerate() {
            walk.card(at + (i * 80) as u64, card)
                .map_err(|f| fault_error(f, path))?;
        }
        pos = at + filled as u64;
        if filled < block.len() {
            break;
        }
    }
    index(walk, len, path)
}

/// Blocks read at once while walking a header.
const HEADER_READ_BLOCKS: usize = 4;

/// Checks every 80-byte card of the plain file `path` ([`scan_cards`])
/// before cfitsio may parse any of it.
fn check_cards(path: &Path) -> Result<()> {
    let os = |source| Error::Os {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(os)?;
    scan_cards(file, path, None)
        .map(|_| ())
        .map_err(|e| match e {
            CardScan::Io(e) => os(e),
            CardScan::Bad(e) => e,
        })
}

/// The error for a fault found while indexing `path`.
fn fault_error(f: header::Fault, path: &Path) -> Error {
    let loc = Location::file(path).hdu(f.hdu);
    Error::bad(
        match f.field {
            Some(k) => loc.field(k),
            None => loc,
        },
        f.why,
    )
}

/// The HDU index a finished walk over `size` bytes of `path` gives.
fn index(walk: Walker, size: u64, path: &Path) -> Result<Vec<Hdu>> {
    walk.finish(size).map_err(|f| fault_error(f, path))
}

/// Table keywords whose string values cfitsio copies into fixed-size
/// buffers when it parses a table header.
const STRING_TABLE_KEYS: [&str; 5] = ["TTYPE", "TFORM", "TUNIT", "TDISP", "TDIM"];

/// Why [`scan_cards`] stopped.
enum CardScan {
    Io(std::io::Error),
    Bad(Error),
}

/// Reads `reader` to its end as 80-byte cards (header cards start at
/// multiples of 80 bytes) and refuses a file with a string-valued table
/// keyword (`TTYPEn`, `TFORMn`, `TUNITn`, `TDISPn`, `TDIMn`) whose value
/// is not a quoted string: cfitsio copies such a value — up to 70
/// characters — into a 70-byte buffer without room for its terminator (a
/// heap overflow found by fuzzing). Returns the number of bytes read.
fn scan_cards(
    mut reader: impl std::io::Read,
    path: &Path,
    mut walk: Option<&mut Walker>,
) -> std::result::Result<u64, CardScan> {
    let mut buf = vec![0u8; 2880 * 16];
    let (mut total, mut filled) = (0u64, 0usize);
    loop {
        let n = reader.read(&mut buf[filled..]).map_err(CardScan::Io)?;
        filled += n;
        let whole = filled - filled % 80;
        for (i, card) in buf[..whole].chunks_exact(80).enumerate() {
            let offset = total + (i * 80) as u64;
            if let Some(walk) = walk.as_deref_mut() {
                walk.card(offset, card)
                    .map_err(|f| CardScan::Bad(fault_error(f, path)))?;
            }
            if let Some(key) = unquoted_string_key(card) {
                return Err(CardScan::Bad(Error::bad(
                    Location::file(path).field(key),
                    format!("header card at byte {offset}: string value is not quoted"),
                )));
            }
        }
        total += whole as u64;
        buf.copy_within(whole..filled, 0);
        filled -= whole;
        if n == 0 {
            return Ok(total + filled as u64);
        }
    }
}

/// The keyword of `card` when it is one of [`STRING_TABLE_KEYS`] with an
/// index and a value that does not start with a quote, as cfitsio reads
/// them: the index is what `strtol` accepts (leading spaces, a sign,
/// digits), the value indicator is `=` in column 9 whatever follows it,
/// and the value starts at the first non-space after it.
fn unquoted_string_key(card: &[u8]) -> Option<String> {
    let mut key = &card[..8];
    while let [rest @ .., b' '] = key {
        key = rest;
    }
    let stem = STRING_TABLE_KEYS
        .iter()
        .find(|k| key.starts_with(k.as_bytes()))?;
    let index = &key[stem.len()..];
    let digits = index.trim_ascii_start();
    let digits = digits
        .strip_prefix(b"+")
        .or_else(|| digits.strip_prefix(b"-"))
        .unwrap_or(digits);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) || card[8] != b'=' {
        return None;
    }
    let value = card[9..].iter().find(|&&b| b != b' ');
    matches!(value, Some(&b) if b != b'\'').then(|| String::from_utf8_lossy(key).into_owned())
}

#[cfg(test)]
mod card_tests {
    use super::*;

    fn card(text: &str) -> Vec<u8> {
        format!("{text:<80}").into_bytes()
    }

    #[test]
    fn unquoted_string_table_values_are_refused_before_cfitsio() {
        assert_eq!(
            unquoted_string_key(&card(&format!("TTYPE3  = {}", "x".repeat(70)))),
            Some("TTYPE3".into())
        );
        assert_eq!(
            unquoted_string_key(&card("TFORM12 = 1E")),
            Some("TFORM12".into())
        );
        // cfitsio takes `=` in column 9 as the value indicator whatever
        // follows it (fuzzing: `TTYPE13 =` and 70 bytes of binary data).
        let mut binary = b"TTYPE13 =".to_vec();
        binary.extend((0..71).map(|i| 0xE0u8.wrapping_add(i)));
        assert_eq!(unquoted_string_key(&binary), Some("TTYPE13".into()));
        assert_eq!(
            unquoted_string_key(&card("TUNIT+2 =km")),
            Some("TUNIT+2".into())
        );
        for ok in [
            "TTYPE3  = 'FLUX    '           / label for field   3",
            "TUNIT1  = ''",
            "TDISP2  =",
            "TSCAL1  = 1.0",
            "TTYPES  = abc",
            "TTYPE1  'not a value'",
            "COMMENT TTYPE1  = abc",
        ] {
            assert_eq!(unquoted_string_key(&card(ok)), None, "{ok}");
        }
        // A whole file: the offending card is named with its byte offset.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.fits");
        let mut bytes = Vec::new();
        for c in ["SIMPLE  = T", "BITPIX  = 8", "NAXIS   = 0", "END"] {
            bytes.extend(card(c));
        }
        bytes.resize(2880, b' ');
        for c in [
            "XTENSION= 'BINTABLE'",
            "BITPIX  = 8",
            "NAXIS   = 2",
            "NAXIS1  = 4",
            "NAXIS2  = 0",
            "PCOUNT  = 0",
            "GCOUNT  = 1",
            "TFIELDS = 1",
            "TTYPE1  = FLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFL",
            "TFORM1  = '1E      '",
            "END",
        ] {
            bytes.extend(card(c));
        }
        bytes.resize(5760, b' ');
        std::fs::write(&path, &bytes).unwrap();
        // spectok's own header index and direct reads take it; cfitsio
        // never sees it.
        let mut fits = Fits::open(&path).unwrap();
        assert_eq!(fits.describe(1).unwrap().columns.len(), 1);
        let column = "FLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFL";
        assert_eq!(fits.read_col_f32(1, column).unwrap(), Vec::<f32>::new());
        // A read that needs cfitsio is refused before cfitsio opens the file.
        fits.cfitsio_only = true;
        let msg = fits
            .read_col_f32(
                1,
                "FLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFLUXFL",
            )
            .expect_err("refused")
            .to_string();
        assert!(msg.contains("TTYPE1") && msg.contains("byte 3520"), "{msg}");
        assert!(!msg.contains('\n'));
    }
}
