//! A thin wrapper over `fitsio` that turns every failure into an
//! [`Error`] naming the file, HDU and field, and checks shapes before
//! trusting them.
//!
//! Readers use only this module to touch FITS files, so a cfitsio status
//! never escapes without a location.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use fitsio::hdu::{FitsHdu, HduInfo};
use fitsio::images::{ImageType, ReadImage};
use fitsio::tables::ReadsCol;
use fitsio::FitsFile;

use crate::error::{Error, Location, Result};

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

/// An open FITS file (plain or gzip-compressed) with its path.
pub struct Fits {
    file: FitsFile,
    path: PathBuf,
    /// Per-HDU results of header parsing, kept because the file is only
    /// read: describing a wide table (SDSS `SPECOBJ` has ~200 columns)
    /// dominated the reading of a small file when every column access
    /// parsed the header again.
    cache: HduCache,
}

/// What [`Fits`] has learnt of each HDU's header.
#[derive(Default)]
struct HduCache {
    /// `var_column_table` per HDU.
    var_tables: HashMap<usize, Option<HduDesc>>,
    /// `fitsio`'s description per HDU.
    infos: HashMap<usize, HduInfo>,
    /// `describe` per HDU.
    descs: HashMap<usize, HduDesc>,
}

/// A copy of `fitsio`'s HDU description (which is not `Clone`).
fn copy_info(info: &HduInfo) -> HduInfo {
    match info {
        HduInfo::ImageInfo { shape, image_type } => HduInfo::ImageInfo {
            shape: shape.clone(),
            image_type: *image_type,
        },
        HduInfo::TableInfo {
            column_descriptions,
            num_rows,
        } => HduInfo::TableInfo {
            column_descriptions: column_descriptions.clone(),
            num_rows: *num_rows,
        },
        HduInfo::AnyInfo => HduInfo::AnyInfo,
    }
}

fn bitpix_of(t: &ImageType) -> i32 {
    match t {
        ImageType::UnsignedByte | ImageType::Byte => 8,
        ImageType::Short | ImageType::UnsignedShort => 16,
        ImageType::Long | ImageType::UnsignedLong => 32,
        ImageType::LongLong => 64,
        ImageType::Float => -32,
        ImageType::Double => -64,
    }
}

impl Fits {
    /// Opens `path` read-only. gzip-compressed files are read as they are.
    pub fn open(path: &Path) -> Result<Fits> {
        check_compression(path)?;
        let file = FitsFile::open(path).map_err(|e| {
            Error::bad(
                Location::file(path),
                format!("cannot open as FITS: {}", msg(&e)),
            )
        })?;
        let mut fits = Fits {
            file,
            path: path.to_path_buf(),
            cache: HduCache::default(),
        };
        fits.check_complete()?;
        Ok(fits)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A location in this file.
    pub fn loc(&self, hdu: impl std::fmt::Display) -> Location {
        Location::file(&self.path).hdu(hdu)
    }

    pub fn num_hdus(&mut self) -> Result<usize> {
        self.file.num_hdus().map_err(|e| {
            Error::bad(
                Location::file(&self.path),
                format!("cannot count HDUs: {}", msg(&e)),
            )
        })
    }

    /// HDU `index`, made the current HDU.
    fn hdu(&mut self, index: usize) -> Result<FitsHdu> {
        self.refuse_var_columns(index)?;
        if let Some(info) = self.cache.infos.get(&index) {
            let info = copy_info(info);
            self.move_to(index)?;
            return Ok(FitsHdu {
                info,
                number: index,
            });
        }
        let hdu = self
            .file
            .hdu(index)
            .map_err(|e| Error::bad(self.loc(index), format!("cannot move to HDU: {}", msg(&e))))?;
        self.cache.infos.insert(index, copy_info(&hdu.info));
        Ok(hdu)
    }

    /// Makes HDU `index` the current one.
    fn move_to(&mut self, index: usize) -> Result<()> {
        let hdunum = std::os::raw::c_int::try_from(index + 1)
            .map_err(|_| Error::bad(self.loc(index), "HDU number out of range"))?;
        let (mut kind, mut status) = (0, 0);
        // SAFETY: the handle is open and both out-pointers are live locals.
        unsafe { fitsio::sys::ffmahd(self.file.as_raw(), hdunum, &mut kind, &mut status) };
        if status != 0 {
            return Err(Error::bad(
                self.loc(index),
                format!("cannot move to HDU: {}", status_text(status)),
            ));
        }
        Ok(())
    }

    /// Index of the HDU whose `EXTNAME` is `name` (case-insensitive).
    pub fn hdu_index(&mut self, name: &str) -> Result<Option<usize>> {
        let n = self.num_hdus()?;
        for i in 0..n {
            if self.describe(i)?.name.eq_ignore_ascii_case(name) {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// Like [`Fits::hdu_index`] but an absent HDU is an error naming it.
    pub fn require_hdu(&mut self, name: &str) -> Result<usize> {
        self.hdu_index(name)?
            .ok_or_else(|| Error::bad(self.loc(name), "HDU missing"))
    }

    /// Describes HDU `index`.
    pub fn describe(&mut self, index: usize) -> Result<HduDesc> {
        if let Some(d) = self.cache.descs.get(&index) {
            return Ok(d.clone());
        }
        let d = self.describe_uncached(index)?;
        self.cache.descs.insert(index, d.clone());
        Ok(d)
    }

    fn describe_uncached(&mut self, index: usize) -> Result<HduDesc> {
        if let Some(d) = self.var_column_table(index)? {
            return Ok(d);
        }
        let hdu = self.hdu(index)?;
        let name = hdu
            .read_key::<String>(&mut self.file, "EXTNAME")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| {
                if index == 0 {
                    "PRIMARY".into()
                } else {
                    String::new()
                }
            });
        let mut d = HduDesc {
            name,
            ..HduDesc::default()
        };
        match &hdu.info {
            HduInfo::ImageInfo { shape, image_type } => {
                d.shape = shape.clone();
                d.bitpix = bitpix_of(image_type);
            }
            HduInfo::TableInfo {
                column_descriptions,
                num_rows,
            } => {
                d.table = true;
                d.rows = *num_rows;
                d.columns = column_descriptions.iter().map(|c| c.name.clone()).collect();
                d.repeats = column_descriptions
                    .iter()
                    .map(|c| c.data_type.repeat)
                    .collect();
            }
            HduInfo::AnyInfo => {}
        }
        Ok(d)
    }

    pub fn describe_all(&mut self) -> Result<Vec<HduDesc>> {
        let n = self.num_hdus()?;
        (0..n).map(|i| self.describe(i)).collect()
    }

    /// Header keyword as a number, `None` if absent or not numeric.
    pub fn key_f64(&mut self, index: usize, key: &str) -> Option<f64> {
        let hdu = self.hdu(index).ok()?;
        match hdu.read_key::<f64>(&mut self.file, key) {
            Ok(v) => Some(v),
            Err(_) => hdu
                .read_key::<String>(&mut self.file, key)
                .ok()
                .and_then(|s| s.trim().parse::<f64>().ok()),
        }
    }

    /// Header keyword as an integer, `None` if absent or not an integer.
    pub fn key_i64(&mut self, index: usize, key: &str) -> Option<i64> {
        let hdu = self.hdu(index).ok()?;
        hdu.read_key::<i64>(&mut self.file, key).ok()
    }

    /// Header keyword as text (numbers are formatted), trimmed; `None` if
    /// absent.
    pub fn key_text(&mut self, index: usize, key: &str) -> Option<String> {
        let hdu = self.hdu(index).ok()?;
        hdu.read_key::<String>(&mut self.file, key)
            .ok()
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

    /// Reads a whole image as `T` (any BITPIX; BSCALE/BZERO applied by
    /// cfitsio). Returns the values and the shape (C order).
    fn read_image_as<T>(&mut self, index: usize, field: &str) -> Result<(Vec<T>, Vec<usize>)>
    where
        Vec<T>: ReadImage,
    {
        let shape = self.image_shape(index, field)?;
        let hdu = self.hdu(index)?;
        let v: Vec<T> = hdu.read_image(&mut self.file).map_err(|e| {
            Error::bad(
                self.loc(index).field(field),
                format!("cannot read image: {}", msg(&e)),
            )
        })?;
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
    fn read_image_row_as<T>(&mut self, index: usize, row: usize, field: &str) -> Result<Vec<T>>
    where
        Vec<T>: ReadImage,
    {
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
        let hdu = self.hdu(index)?;
        let v: Vec<T> = hdu
            .read_section(&mut self.file, row * ncol, (row + 1) * ncol)
            .map_err(|e| Error::bad(at(), format!("cannot read row: {}", msg(&e))))?;
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

    fn table(&mut self, index: usize, column: &str) -> Result<(FitsHdu, HduDesc)> {
        let d = self.describe(index)?;
        if !d.table {
            return Err(Error::bad(
                self.loc(index).field(column),
                "expected a table, found an image",
            ));
        }
        if d.column_index(column).is_none() {
            return Err(Error::bad(self.loc(index).field(column), "column missing"));
        }
        let i = d.column_index(column).unwrap_or(0);
        let n = d.rows.saturating_mul(d.repeats[i].max(1));
        if n > MAX_ELEMENTS {
            return Err(Error::bad(
                self.loc(index).field(column),
                format!("column claims {n} values"),
            ));
        }
        Ok((self.hdu(index)?, d))
    }

    /// Whether table HDU `index` has `column`.
    pub fn has_column(&mut self, index: usize, column: &str) -> bool {
        self.describe(index)
            .is_ok_and(|d| d.column_index(column).is_some())
    }

    /// Reads a numeric column as `T` (all rows; array cells flattened
    /// row-major).
    fn read_col_as<T: ReadsCol>(&mut self, index: usize, column: &str) -> Result<Vec<T>> {
        let (hdu, d) = self.table(index, column)?;
        let name = d.columns[d.column_index(column).unwrap_or(0)].clone();
        hdu.read_col::<T>(&mut self.file, &name).map_err(|e| {
            Error::bad(
                self.loc(index).field(column),
                format!("cannot read column: {}", msg(&e)),
            )
        })
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
        let (hdu, d) = self.table(index, column)?;
        if rows.end > d.rows {
            return Err(Error::bad(
                self.loc(index).field(column),
                format!("rows {rows:?} out of {} rows", d.rows),
            ));
        }
        let name = d.columns[d.column_index(column).unwrap_or(0)].clone();
        hdu.read_col_range::<f64>(&mut self.file, &name, &rows)
            .map_err(|e| {
                Error::bad(
                    self.loc(index).field(column),
                    format!("cannot read column: {}", msg(&e)),
                )
            })
    }

    /// Reads a text column (one string per row, trimmed).
    pub fn read_col_text(&mut self, index: usize, column: &str) -> Result<Vec<String>> {
        let (_, d) = self.table(index, column)?;
        let col = d.column_index(column).unwrap_or(0);
        self.read_text_cells(col, 0..d.rows)
            .map(|v| v.into_iter().map(|s| s.trim().to_string()).collect())
            .map_err(|status| {
                Error::bad(
                    self.loc(index).field(column),
                    format!("cannot read column: {}", status_text(status)),
                )
            })
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
        self.hdu(index).ok()?;
        let name = std::ffi::CString::new(key).ok()?;
        let mut value: *mut std::os::raw::c_char = std::ptr::null_mut();
        let mut comment = vec![0 as std::os::raw::c_char; 81];
        let mut status = 0;
        // SAFETY: the file handle is open and positioned on HDU `index`;
        // cfitsio allocates `value` (freed below with its own allocator) and
        // writes at most 72 characters plus a NUL into `comment`.
        unsafe {
            fitsio::sys::ffgkls(
                self.file.as_raw(),
                name.as_ptr(),
                &mut value,
                comment.as_mut_ptr(),
                &mut status,
            );
            let text = if status == 0 && !value.is_null() {
                Some(
                    std::ffi::CStr::from_ptr(value)
                        .to_string_lossy()
                        .trim()
                        .to_string(),
                )
            } else {
                None
            };
            if !value.is_null() {
                let mut free_status = 0;
                fitsio::sys::fffree(value as *mut std::os::raw::c_void, &mut free_status);
            }
            text
        }
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
        use fitsio::tables::ColumnDataType as T;
        let (hdu, d) = self.table(index, column)?;
        let i = d.column_index(column).unwrap_or(0);
        let name = d.columns[i].clone();
        if row >= d.rows {
            return Err(Error::bad(
                self.loc(index).field(column).row(row as u64),
                format!("row out of range (table has {} rows)", d.rows),
            ));
        }
        let typ = match &hdu.info {
            HduInfo::TableInfo {
                column_descriptions,
                ..
            } => column_descriptions.get(i).map(|c| c.data_type.typ),
            _ => None,
        };
        let fail = |e: fitsio::errors::Error| format!("cannot read identifier: {}", msg(&e));
        match typ {
            Some(T::String | T::Text) => self
                .read_text_cells(i, row..row + 1)
                .map_err(|status| {
                    Error::bad(
                        self.loc(index).field(column).row(row as u64),
                        format!("cannot read identifier: {}", status_text(status)),
                    )
                })?
                .into_iter()
                .next()
                .map(|s| s.trim().to_string())
                .ok_or_else(|| {
                    Error::bad(
                        self.loc(index).field(column).row(row as u64),
                        "no value read",
                    )
                }),
            Some(
                T::Byte
                | T::SignedByte
                | T::Short
                | T::UnsignedShort
                | T::Int
                | T::Long
                | T::UnsignedLong
                | T::LongLong
                | T::UnsignedLongLong,
            ) => {
                let first = match hdu.read_col_range::<i64>(&mut self.file, &name, &(row..row + 1))
                {
                    Ok(v) => v.first().map(|x| x.to_string()),
                    Err(_) => hdu
                        .read_col_range::<u64>(&mut self.file, &name, &(row..row + 1))
                        .map_err(|e| {
                            Error::bad(self.loc(index).field(column).row(row as u64), fail(e))
                        })?
                        .first()
                        .map(|x| x.to_string()),
                };
                first.ok_or_else(|| {
                    Error::bad(
                        self.loc(index).field(column).row(row as u64),
                        "no value read",
                    )
                })
            }
            _ => Err(Error::bad(
                self.loc(index).field(column),
                "not a text or integer column",
            )),
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
    /// Describes HDU `index` with cfitsio directly when it is a binary table
    /// with variable-length array columns (`TFORMn = 'PD(55)'`, as in Gaia XP
    /// coefficient tables), which `fitsio` cannot describe (it panics);
    /// `None` for every other HDU. Moves to the HDU.
    fn var_column_table(&mut self, index: usize) -> Result<Option<HduDesc>> {
        if let Some(d) = self.cache.var_tables.get(&index) {
            let d = d.clone();
            self.move_to(index)?;
            return Ok(d);
        }
        let d = self.var_column_table_uncached(index)?;
        self.cache.var_tables.insert(index, d.clone());
        Ok(d)
    }

    fn var_column_table_uncached(&mut self, index: usize) -> Result<Option<HduDesc>> {
        use fitsio::sys;
        use std::os::raw::{c_char, c_int};
        let hdunum = c_int::try_from(index + 1)
            .map_err(|_| Error::bad(self.loc(index), "HDU number out of range"))?;
        // SAFETY: the handle is open; every out-pointer is a live local and
        // every text buffer holds 81 characters (cfitsio writes at most 71
        // plus a NUL).
        let (kind, var, repeats, rows, status) = unsafe {
            let fptr = self.file.as_raw();
            let (mut status, mut kind, mut ncols) = (0, 0, 0);
            sys::ffmahd(fptr, hdunum, &mut kind, &mut status);
            let mut var = false;
            let mut repeats = Vec::new();
            let mut rows: sys::LONGLONG = 0;
            if status == 0 && kind == 2 {
                sys::ffgncl(fptr, &mut ncols, &mut status);
                for c in 1..=ncols.max(0) {
                    let (mut code, mut repeat, mut width) = (0, 0, 0);
                    sys::ffgtclll(fptr, c, &mut code, &mut repeat, &mut width, &mut status);
                    var |= code < 0;
                    repeats.push(usize::try_from(repeat).unwrap_or(0));
                }
                sys::ffgnrwll(fptr, &mut rows, &mut status);
            }
            (kind, var, repeats, rows, status)
        };
        if status != 0 {
            return Err(Error::bad(
                self.loc(index),
                format!("cannot move to HDU: {}", status_text(status)),
            ));
        }
        if kind != 2 || !var {
            return Ok(None);
        }
        let mut key = |name: &str| -> Option<String> {
            let cname = std::ffi::CString::new(name).ok()?;
            let mut value = vec![0 as c_char; 81];
            let mut comment = vec![0 as c_char; 81];
            let mut status = 0;
            // SAFETY: as above; the HDU is current.
            unsafe {
                sys::ffgkys(
                    self.file.as_raw(),
                    cname.as_ptr(),
                    value.as_mut_ptr(),
                    comment.as_mut_ptr(),
                    &mut status,
                );
                (status == 0).then(|| {
                    std::ffi::CStr::from_ptr(value.as_ptr())
                        .to_string_lossy()
                        .trim()
                        .to_string()
                })
            }
        };
        let name = key("EXTNAME").unwrap_or_default();
        let columns = (1..=repeats.len())
            .map(|c| key(&format!("TTYPE{c}")).unwrap_or_default())
            .collect();
        Ok(Some(HduDesc {
            name,
            columns,
            repeats,
            rows: usize::try_from(rows).unwrap_or(0),
            table: true,
            ..HduDesc::default()
        }))
    }

    /// An error for an HDU `fitsio` cannot open (variable-length array
    /// columns), before `fitsio` is asked to.
    fn refuse_var_columns(&mut self, index: usize) -> Result<()> {
        if let Some(d) = self.var_column_table(index)? {
            return Err(Error::bad(
                self.loc(index),
                format!(
                    "{}: variable-length array columns are not read",
                    d.summary(index)
                ),
            ));
        }
        Ok(())
    }
}

impl Fits {
    /// Checks that the file is not cut short: every HDU header can be
    /// read and the last HDU's data reaches into its final 2880-byte
    /// block. A file truncated inside an HDU that a reader does not read
    /// (e.g. SDSS per-exposure tables) is an error too, naming the HDU.
    pub fn check_complete(&mut self) -> Result<()> {
        let n = self.num_hdus()?;
        let last = n
            .checked_sub(1)
            .ok_or_else(|| Error::bad(Location::file(&self.path), "no HDU"))?;
        let hdunum = std::os::raw::c_int::try_from(n)
            .map_err(|_| Error::bad(Location::file(&self.path), format!("{n} HDUs")))?;
        // SAFETY: the handle is open and the out-pointers are live locals.
        let (status, dataend, next) = unsafe {
            let fptr = self.file.as_raw();
            let (mut status, mut kind) = (0, 0);
            let (mut head, mut data, mut end): (
                fitsio::sys::LONGLONG,
                fitsio::sys::LONGLONG,
                fitsio::sys::LONGLONG,
            ) = (0, 0, 0);
            fitsio::sys::ffmahd(fptr, hdunum, &mut kind, &mut status);
            fitsio::sys::ffghadll(fptr, &mut head, &mut data, &mut end, &mut status);
            if status == 0 && end > data {
                // REPORT_EOF: moving past the end of the file is an error.
                fitsio::sys::ffmbyt(fptr, (end - 2880).max(data), 0, &mut status);
            }
            let mut next = [0u8; 8];
            if status == 0 {
                // What follows the last complete HDU: cfitsio stops counting
                // HDUs at a header cut short, so look for its first card.
                // Only read there if the file has bytes there (REPORT_EOF):
                // reading past the end would leave cfitsio a dirty buffer.
                let mut probe = 0;
                fitsio::sys::ffmbyt(fptr, end, 0, &mut probe);
                if probe == 0 {
                    fitsio::sys::ffgextn(
                        fptr,
                        end - data,
                        8,
                        next.as_mut_ptr() as *mut std::os::raw::c_void,
                        &mut probe,
                    );
                    if probe != 0 {
                        // Bytes follow but cannot be read: a block cut short.
                        next = *b"XTENSION";
                    }
                }
            }
            (status, end, next)
        };
        if status != 0 {
            return Err(Error::bad(
                self.loc(last),
                format!(
                    "file is truncated: its data should end at byte {dataend} ({})",
                    status_text(status)
                ),
            ));
        }
        if &next == b"XTENSION" {
            return Err(Error::bad(
                self.loc(n),
                format!("file is truncated: the header starting at byte {dataend} is incomplete"),
            ));
        }
        Ok(())
    }
}

impl Fits {
    /// Reads rows `rows` of text column `col` (0-based) of the current HDU
    /// (callers move there first, e.g. through [`Fits::table`]) with cfitsio
    /// directly. Each row gets a buffer as wide as cfitsio may write: the
    /// column's string width or display width, whichever is larger, plus
    /// the terminating NUL (`fitsio`'s own string-column reader leaves no
    /// room for the NUL and writes one byte past its buffers). Errors are
    /// cfitsio status codes.
    fn read_text_cells(&mut self, col: usize, rows: Range<usize>) -> Result<Vec<String>, i32> {
        use fitsio::sys;
        use std::os::raw::{c_char, c_int};
        const BAD_COL_NUM: i32 = 302;
        let colnum = c_int::try_from(col + 1).map_err(|_| BAD_COL_NUM)?;
        let nrows = rows.len();
        if nrows == 0 {
            return Ok(Vec::new());
        }
        // SAFETY: the handle is open; the pointer is used only below while
        // `self.file` is borrowed by nothing else.
        let fptr = unsafe { self.file.as_raw() };
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
            sys::ffgcdw(fptr, colnum, &mut display, &mut status);
        }
        if status != 0 {
            return Err(status);
        }
        let chars = [repeat, width, sys::LONGLONG::from(display)]
            .into_iter()
            .max()
            .unwrap_or(0)
            .max(0);
        let chars = usize::try_from(chars).map_err(|_| BAD_COL_NUM)?;
        // The table's own size was checked against MAX_ELEMENTS by the
        // caller; guard the buffer total all the same.
        if nrows.saturating_mul(chars + 1) > MAX_ELEMENTS {
            return Err(BAD_COL_NUM);
        }
        let mut bufs: Vec<Vec<c_char>> = vec![vec![0; chars + 1]; nrows];
        let mut ptrs: Vec<*mut c_char> = bufs.iter_mut().map(|b| b.as_mut_ptr()).collect();
        let mut nulval = [0 as c_char; 1];
        let mut anynul: c_int = 0;
        let first = sys::LONGLONG::try_from(rows.start + 1).map_err(|_| BAD_COL_NUM)?;
        let nelem = sys::LONGLONG::try_from(nrows).map_err(|_| BAD_COL_NUM)?;
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
            return Err(status);
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
fn check_compression(path: &Path) -> Result<()> {
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
        _ => {
            file.seek(SeekFrom::Start(0)).map_err(os)?;
            return scan_cards(std::io::BufReader::new(file), path)
                .map(|_| ())
                .map_err(|e| match e {
                    CardScan::Io(e) => os(e),
                    CardScan::Bad(e) => e,
                });
        }
    }
    file.seek(SeekFrom::Start(0)).map_err(os)?;
    let mut decoder =
        flate2::read::GzDecoder::new(std::io::BufReader::new(&mut file)).take(MAX_GZIP_BYTES + 1);
    let size = scan_cards(&mut decoder, path).map_err(|e| match e {
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
    Ok(())
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
fn scan_cards(mut reader: impl std::io::Read, path: &Path) -> std::result::Result<u64, CardScan> {
    let mut buf = vec![0u8; 2880 * 16];
    let (mut total, mut filled) = (0u64, 0usize);
    loop {
        let n = reader.read(&mut buf[filled..]).map_err(CardScan::Io)?;
        filled += n;
        let whole = filled - filled % 80;
        for (i, card) in buf[..whole].chunks_exact(80).enumerate() {
            if let Some(key) = unquoted_string_key(card) {
                let offset = total + (i * 80) as u64;
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
        let msg = Fits::open(&path).err().expect("refused").to_string();
        assert!(msg.contains("TTYPE1") && msg.contains("byte 3520"), "{msg}");
        assert!(!msg.contains('\n'));
    }
}
