//! A thin wrapper over `fitsio` that turns every failure into an
//! [`Error`] naming the file, HDU and field, and checks shapes before
//! trusting them.
//!
//! Readers use only this module to touch FITS files, so a cfitsio status
//! never escapes without a location.

use std::ops::Range;
use std::path::{Path, PathBuf};

use fitsio::hdu::{FitsHdu, HduInfo};
use fitsio::images::ImageType;
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
            let mut cols = self.columns.iter().take(6).cloned().collect::<Vec<_>>().join(",");
            if self.columns.len() > 6 {
                cols.push_str(",…");
            }
            format!("{name}: table {} rows [{cols}]", self.rows)
        } else if self.shape.is_empty() {
            format!("{name}: no data")
        } else {
            let dims = self.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("×");
            format!("{name}: image {dims}")
        }
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.eq_ignore_ascii_case(name))
    }
}

/// An open FITS file (plain or gzip-compressed) with its path.
pub struct Fits {
    file: FitsFile,
    path: PathBuf,
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
        let file = FitsFile::open(path).map_err(|e| {
            Error::bad(Location::file(path), format!("cannot open as FITS: {}", msg(&e)))
        })?;
        Ok(Fits {
            file,
            path: path.to_path_buf(),
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
        self.file
            .num_hdus()
            .map_err(|e| Error::bad(Location::file(&self.path), format!("cannot count HDUs: {}", msg(&e))))
    }

    fn hdu(&mut self, index: usize) -> Result<FitsHdu> {
        self.file
            .hdu(index)
            .map_err(|e| Error::bad(self.loc(index), format!("cannot move to HDU: {}", msg(&e))))
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
        let hdu = self.hdu(index)?;
        let name = hdu
            .read_key::<String>(&mut self.file, "EXTNAME")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| if index == 0 { "PRIMARY".into() } else { String::new() });
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
                d.repeats = column_descriptions.iter().map(|c| c.data_type.repeat).collect();
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
        let hdu = self.file.hdu(index).ok()?;
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
        let hdu = self.file.hdu(index).ok()?;
        hdu.read_key::<i64>(&mut self.file, key).ok()
    }

    /// Header keyword as text (numbers are formatted), trimmed; `None` if
    /// absent.
    pub fn key_text(&mut self, index: usize, key: &str) -> Option<String> {
        let hdu = self.file.hdu(index).ok()?;
        hdu.read_key::<String>(&mut self.file, key)
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// A numeric keyword that must be present.
    pub fn require_key_f64(&mut self, index: usize, key: &str) -> Result<f64> {
        let v = self
            .key_f64(index, key)
            .ok_or_else(|| Error::bad(self.loc(index).field(key), "keyword missing or not a number"))?;
        if !v.is_finite() {
            return Err(Error::bad(self.loc(index).field(key), format!("keyword is {v}")));
        }
        Ok(v)
    }

    /// Shape of image HDU `index`, checked to be an image with `ndim`
    /// axes (1 or 2) and a sane size.
    pub fn image_shape(&mut self, index: usize, field: &str) -> Result<Vec<usize>> {
        let d = self.describe(index)?;
        if d.table {
            return Err(Error::bad(self.loc(index).field(field), "expected an image, found a table"));
        }
        if d.shape.is_empty() || d.shape.contains(&0) {
            return Err(Error::bad(self.loc(index).field(field), "image is empty"));
        }
        let n: usize = d.shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b)).unwrap_or(usize::MAX);
        if n > MAX_ELEMENTS {
            return Err(Error::bad(
                self.loc(index).field(field),
                format!("image claims {n} elements (limit {MAX_ELEMENTS})"),
            ));
        }
        Ok(d.shape)
    }

    /// Reads a whole image as f64 (any BITPIX; BSCALE/BZERO applied by
    /// cfitsio). Returns the values and the shape (C order).
    pub fn read_image_f64(&mut self, index: usize, field: &str) -> Result<(Vec<f64>, Vec<usize>)> {
        let shape = self.image_shape(index, field)?;
        let hdu = self.hdu(index)?;
        let v: Vec<f64> = hdu
            .read_image(&mut self.file)
            .map_err(|e| Error::bad(self.loc(index).field(field), format!("cannot read image: {}", msg(&e))))?;
        check_len(&v, &shape, || self.loc(index).field(field))?;
        Ok((v, shape))
    }

    /// Reads a whole image as f32.
    pub fn read_image_f32(&mut self, index: usize, field: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let shape = self.image_shape(index, field)?;
        let hdu = self.hdu(index)?;
        let v: Vec<f32> = hdu
            .read_image(&mut self.file)
            .map_err(|e| Error::bad(self.loc(index).field(field), format!("cannot read image: {}", msg(&e))))?;
        check_len(&v, &shape, || self.loc(index).field(field))?;
        Ok((v, shape))
    }

    /// Reads a whole integer image as i64 (for bitmasks).
    pub fn read_image_i64(&mut self, index: usize, field: &str) -> Result<(Vec<i64>, Vec<usize>)> {
        let shape = self.image_shape(index, field)?;
        let hdu = self.hdu(index)?;
        let v: Vec<i64> = hdu
            .read_image(&mut self.file)
            .map_err(|e| Error::bad(self.loc(index).field(field), format!("cannot read image: {}", msg(&e))))?;
        check_len(&v, &shape, || self.loc(index).field(field))?;
        Ok((v, shape))
    }

    /// Reads row `row` of a 2-D image (or the whole of a 1-D image when
    /// `row == 0`), so multi-spectrum images stream one spectrum at a time.
    pub fn read_image_row_f64(&mut self, index: usize, row: usize, field: &str) -> Result<Vec<f64>> {
        let shape = self.image_shape(index, field)?;
        let (nrow, ncol) = rows_cols(&shape, || self.loc(index).field(field))?;
        if row >= nrow {
            return Err(Error::bad(
                self.loc(index).field(field).row(row as u64),
                format!("row out of range (image has {nrow} rows)"),
            ));
        }
        let hdu = self.hdu(index)?;
        let v: Vec<f64> = hdu
            .read_section(&mut self.file, row * ncol, (row + 1) * ncol)
            .map_err(|e| Error::bad(self.loc(index).field(field).row(row as u64), format!("cannot read row: {}", msg(&e))))?;
        if v.len() != ncol {
            return Err(Error::bad(self.loc(index).field(field).row(row as u64), format!("read {} of {ncol} values", v.len())));
        }
        Ok(v)
    }

    /// Like [`Fits::read_image_row_f64`] for f32 data.
    pub fn read_image_row_f32(&mut self, index: usize, row: usize, field: &str) -> Result<Vec<f32>> {
        let shape = self.image_shape(index, field)?;
        let (nrow, ncol) = rows_cols(&shape, || self.loc(index).field(field))?;
        if row >= nrow {
            return Err(Error::bad(
                self.loc(index).field(field).row(row as u64),
                format!("row out of range (image has {nrow} rows)"),
            ));
        }
        let hdu = self.hdu(index)?;
        let v: Vec<f32> = hdu
            .read_section(&mut self.file, row * ncol, (row + 1) * ncol)
            .map_err(|e| Error::bad(self.loc(index).field(field).row(row as u64), format!("cannot read row: {}", msg(&e))))?;
        if v.len() != ncol {
            return Err(Error::bad(self.loc(index).field(field).row(row as u64), format!("read {} of {ncol} values", v.len())));
        }
        Ok(v)
    }

    /// Like [`Fits::read_image_row_f64`] for integer data (bitmasks).
    pub fn read_image_row_i64(&mut self, index: usize, row: usize, field: &str) -> Result<Vec<i64>> {
        let shape = self.image_shape(index, field)?;
        let (nrow, ncol) = rows_cols(&shape, || self.loc(index).field(field))?;
        if row >= nrow {
            return Err(Error::bad(
                self.loc(index).field(field).row(row as u64),
                format!("row out of range (image has {nrow} rows)"),
            ));
        }
        let hdu = self.hdu(index)?;
        let v: Vec<i64> = hdu
            .read_section(&mut self.file, row * ncol, (row + 1) * ncol)
            .map_err(|e| Error::bad(self.loc(index).field(field).row(row as u64), format!("cannot read row: {}", msg(&e))))?;
        if v.len() != ncol {
            return Err(Error::bad(self.loc(index).field(field).row(row as u64), format!("read {} of {ncol} values", v.len())));
        }
        Ok(v)
    }

    fn table(&mut self, index: usize, column: &str) -> Result<(FitsHdu, HduDesc)> {
        let d = self.describe(index)?;
        if !d.table {
            return Err(Error::bad(self.loc(index).field(column), "expected a table, found an image"));
        }
        if d.column_index(column).is_none() {
            return Err(Error::bad(self.loc(index).field(column), "column missing"));
        }
        let i = d.column_index(column).unwrap_or(0);
        let n = d.rows.saturating_mul(d.repeats[i].max(1));
        if n > MAX_ELEMENTS {
            return Err(Error::bad(self.loc(index).field(column), format!("column claims {n} values")));
        }
        Ok((self.hdu(index)?, d))
    }

    /// Whether table HDU `index` has `column`.
    pub fn has_column(&mut self, index: usize, column: &str) -> bool {
        self.describe(index).is_ok_and(|d| d.column_index(column).is_some())
    }

    /// Reads a numeric column (all rows; array cells flattened row-major).
    pub fn read_col_f64(&mut self, index: usize, column: &str) -> Result<Vec<f64>> {
        let (hdu, d) = self.table(index, column)?;
        let name = d.columns[d.column_index(column).unwrap_or(0)].clone();
        hdu.read_col::<f64>(&mut self.file, &name)
            .map_err(|e| Error::bad(self.loc(index).field(column), format!("cannot read column: {}", msg(&e))))
    }

    /// Reads a numeric column as f32.
    pub fn read_col_f32(&mut self, index: usize, column: &str) -> Result<Vec<f32>> {
        let (hdu, d) = self.table(index, column)?;
        let name = d.columns[d.column_index(column).unwrap_or(0)].clone();
        hdu.read_col::<f32>(&mut self.file, &name)
            .map_err(|e| Error::bad(self.loc(index).field(column), format!("cannot read column: {}", msg(&e))))
    }

    /// Reads an integer column as i64.
    pub fn read_col_i64(&mut self, index: usize, column: &str) -> Result<Vec<i64>> {
        let (hdu, d) = self.table(index, column)?;
        let name = d.columns[d.column_index(column).unwrap_or(0)].clone();
        hdu.read_col::<i64>(&mut self.file, &name)
            .map_err(|e| Error::bad(self.loc(index).field(column), format!("cannot read column: {}", msg(&e))))
    }

    /// Reads a numeric column for rows `rows` only (streaming large tables).
    pub fn read_col_range_f64(&mut self, index: usize, column: &str, rows: Range<usize>) -> Result<Vec<f64>> {
        let (hdu, d) = self.table(index, column)?;
        if rows.end > d.rows {
            return Err(Error::bad(self.loc(index).field(column), format!("rows {rows:?} out of {} rows", d.rows)));
        }
        let name = d.columns[d.column_index(column).unwrap_or(0)].clone();
        hdu.read_col_range::<f64>(&mut self.file, &name, &rows)
            .map_err(|e| Error::bad(self.loc(index).field(column), format!("cannot read column: {}", msg(&e))))
    }

    /// Reads a text column (one string per row, trimmed).
    pub fn read_col_text(&mut self, index: usize, column: &str) -> Result<Vec<String>> {
        let (hdu, d) = self.table(index, column)?;
        let name = d.columns[d.column_index(column).unwrap_or(0)].clone();
        hdu.read_col::<String>(&mut self.file, &name)
            .map(|v| v.into_iter().map(|s| s.trim().to_string()).collect())
            .map_err(|e| Error::bad(self.loc(index).field(column), format!("cannot read column: {}", msg(&e))))
    }
}

fn rows_cols(shape: &[usize], loc: impl Fn() -> Location) -> Result<(usize, usize)> {
    match shape {
        [n] => Ok((1, *n)),
        [r, c] => Ok((*r, *c)),
        _ => Err(Error::bad(loc(), format!("expected a 1-D or 2-D image, found {} axes", shape.len()))),
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
