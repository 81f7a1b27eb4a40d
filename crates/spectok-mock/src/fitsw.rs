//! A small FITS writer over `fitsio`: header cards with comments and
//! logical values, named or unnamed image HDUs, binary tables with scalar,
//! array and string columns, and an optional gzip step.
//!
//! Files are written to `<dest>.tmp` and renamed (or gzip-compressed) into
//! place when complete. cfitsio writes no `DATE` or checksum cards unless
//! asked, and flate2's gzip header carries no time stamp or name, so the
//! same content gives the same bytes.

use std::ffi::CString;
use std::io::Write;
use std::path::{Path, PathBuf};

use fitsio::hdu::FitsHdu;
use fitsio::images::{ImageDescription, ImageType};
use fitsio::tables::{ColumnDataType, ColumnDescription};
use fitsio::FitsFile;

use crate::{Error, Result};

/// A header value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Val {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

/// A header card: keyword, value, comment.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Card {
    pub key: String,
    pub val: Val,
    pub comment: String,
}

/// Builds a [`Card`].
pub(crate) fn card(key: &str, val: impl Into<Val>, comment: &str) -> Card {
    Card {
        key: key.to_string(),
        val: val.into(),
        comment: comment.to_string(),
    }
}

impl From<bool> for Val {
    fn from(v: bool) -> Val {
        Val::Bool(v)
    }
}
impl From<i64> for Val {
    fn from(v: i64) -> Val {
        Val::Int(v)
    }
}
impl From<i32> for Val {
    fn from(v: i32) -> Val {
        Val::Int(v as i64)
    }
}
impl From<u32> for Val {
    fn from(v: u32) -> Val {
        Val::Int(v as i64)
    }
}
impl From<u64> for Val {
    fn from(v: u64) -> Val {
        Val::Int(v as i64)
    }
}
impl From<usize> for Val {
    fn from(v: usize) -> Val {
        Val::Int(v as i64)
    }
}
impl From<f64> for Val {
    fn from(v: f64) -> Val {
        Val::Float(v)
    }
}
impl From<&str> for Val {
    fn from(v: &str) -> Val {
        Val::Str(v.to_string())
    }
}
impl From<String> for Val {
    fn from(v: String) -> Val {
        Val::Str(v)
    }
}

/// A table column: data (all rows, row-major for array columns) and the
/// repeat count (string width for text).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Col {
    U8(Vec<u8>, usize),
    I16(Vec<i16>, usize),
    I32(Vec<i32>, usize),
    I64(Vec<i64>, usize),
    F32(Vec<f32>, usize),
    F64(Vec<f64>, usize),
    Str(Vec<String>, usize),
}

/// Image pixel data.
pub(crate) enum Pixels<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    I16(&'a [i16]),
    U32(&'a [u32]),
}

impl Pixels<'_> {
    fn image_type(&self) -> ImageType {
        match self {
            Pixels::F32(_) => ImageType::Float,
            Pixels::F64(_) => ImageType::Double,
            Pixels::I16(_) => ImageType::Short,
            Pixels::U32(_) => ImageType::UnsignedLong,
        }
    }

    fn len(&self) -> usize {
        match self {
            Pixels::F32(v) => v.len(),
            Pixels::F64(v) => v.len(),
            Pixels::I16(v) => v.len(),
            Pixels::U32(v) => v.len(),
        }
    }
}

/// A FITS file being written.
pub(crate) struct FitsOut {
    file: Option<FitsFile>,
    tmp: PathBuf,
    dest: PathBuf,
    gzip: bool,
}

fn err(path: &Path, what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::Fits {
        path: path.to_path_buf(),
        reason: format!("{what}: {}", e.to_string().replace('\n', " ")),
    }
}

impl FitsOut {
    /// Starts `dest` (gzip-compressed when `gzip`; `dest` should then end in
    /// `.gz`) with an empty primary HDU, or with a primary image.
    pub fn create(dest: &Path, gzip: bool, primary: Option<(&[usize], Pixels)>) -> Result<FitsOut> {
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let mut tmp = dest.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut out = match &primary {
            None => {
                let file = FitsFile::create(&tmp)
                    .overwrite()
                    .open()
                    .map_err(|e| err(&tmp, "cannot create", e))?;
                FitsOut {
                    file: Some(file),
                    tmp,
                    dest: dest.to_path_buf(),
                    gzip,
                }
            }
            Some((shape, px)) => {
                let desc = ImageDescription {
                    data_type: px.image_type(),
                    dimensions: shape,
                };
                let file = FitsFile::create(&tmp)
                    .with_custom_primary(&desc)
                    .overwrite()
                    .open()
                    .map_err(|e| err(&tmp, "cannot create", e))?;
                let mut out = FitsOut {
                    file: Some(file),
                    tmp,
                    dest: dest.to_path_buf(),
                    gzip,
                };
                out.delete_key("EXTNAME")?;
                out
            }
        };
        if let Some((shape, px)) = primary {
            out.check_len(shape, &px)?;
            let hdu = out.current(0)?;
            out.write_pixels(&hdu, px)?;
        }
        Ok(out)
    }

    fn f(&mut self) -> Result<&mut FitsFile> {
        let tmp = self.tmp.clone();
        self.file
            .as_mut()
            .ok_or_else(|| err(&tmp, "file", "already closed"))
    }

    fn current(&mut self, index: usize) -> Result<FitsHdu> {
        let tmp = self.tmp.clone();
        self.f()?
            .hdu(index)
            .map_err(|e| err(&tmp, format!("HDU {index}"), e))
    }

    fn check_len(&self, shape: &[usize], px: &Pixels) -> Result<()> {
        let n: usize = shape.iter().product();
        if n != px.len() {
            return Err(err(
                &self.tmp,
                "image",
                format!("{} values for shape {shape:?}", px.len()),
            ));
        }
        Ok(())
    }

    fn write_pixels(&mut self, hdu: &FitsHdu, px: Pixels) -> Result<()> {
        let tmp = self.tmp.clone();
        let f = self.f()?;
        let r = match px {
            Pixels::F32(v) => hdu.write_image(f, v),
            Pixels::F64(v) => hdu.write_image(f, v),
            Pixels::I16(v) => hdu.write_image(f, v),
            Pixels::U32(v) => hdu.write_image(f, v),
        };
        r.map_err(|e| err(&tmp, "cannot write image", e))
    }

    /// Deletes keyword `key` from the current HDU.
    fn delete_key(&mut self, key: &str) -> Result<()> {
        let tmp = self.tmp.clone();
        let name = CString::new(key).map_err(|e| err(&tmp, key, e))?;
        let f = self.f()?;
        let mut status = 0;
        // SAFETY: `f` is an open FITS file owned by `self`; cfitsio only
        // reads the NUL-terminated `name`, which outlives the call.
        unsafe {
            fitsio::sys::ffdkey(f.as_raw(), name.as_ptr(), &mut status);
        }
        if status != 0 {
            return Err(err(
                &tmp,
                format!("cannot delete {key}"),
                format!("cfitsio status {status}"),
            ));
        }
        Ok(())
    }

    /// Writes `cards` into HDU `index`.
    pub fn cards(&mut self, index: usize, cards: &[Card]) -> Result<()> {
        let hdu = self.current(index)?;
        let tmp = self.tmp.clone();
        for c in cards {
            let f = self.f()?;
            let key = c.key.as_str();
            let comment = c.comment.as_str();
            let r = match &c.val {
                Val::Int(v) => hdu.write_key(f, key, (*v, comment)),
                Val::Float(v) => hdu.write_key(f, key, (*v, comment)),
                Val::Str(v) => hdu.write_key(f, key, (v.as_str(), comment)),
                Val::Bool(v) => {
                    let name = CString::new(key).map_err(|e| err(&tmp, key, e))?;
                    let com = CString::new(comment).map_err(|e| err(&tmp, key, e))?;
                    let mut status = 0;
                    // SAFETY: `f` is open and current at `hdu`; cfitsio only
                    // reads the NUL-terminated strings during the call.
                    unsafe {
                        fitsio::sys::ffpkyl(
                            f.as_raw(),
                            name.as_ptr(),
                            *v as i32,
                            com.as_ptr(),
                            &mut status,
                        );
                    }
                    if status != 0 {
                        return Err(err(
                            &tmp,
                            format!("cannot write {key}"),
                            format!("cfitsio status {status}"),
                        ));
                    }
                    Ok(())
                }
            };
            r.map_err(|e| err(&tmp, format!("cannot write {key}"), e))?;
        }
        Ok(())
    }

    /// Appends an image HDU (unnamed when `extname` is `None`) with `cards`.
    pub fn image(
        &mut self,
        extname: Option<&str>,
        shape: &[usize],
        px: Pixels,
        cards: &[Card],
    ) -> Result<()> {
        self.check_len(shape, &px)?;
        let desc = ImageDescription {
            data_type: px.image_type(),
            dimensions: shape,
        };
        let tmp = self.tmp.clone();
        let hdu = self
            .f()?
            .create_image(extname.unwrap_or(""), &desc)
            .map_err(|e| err(&tmp, "cannot create image HDU", e))?;
        if extname.is_none() {
            self.delete_key("EXTNAME")?;
        }
        self.write_pixels(&hdu, px)?;
        let index = self.f()?.num_hdus().map_err(|e| err(&tmp, "HDUs", e))? - 1;
        self.cards(index, cards)
    }

    /// Appends a binary table `extname` with `cols` (each holding all
    /// rows) and `cards`.
    pub fn table(&mut self, extname: &str, cols: &[(&str, Col)], cards: &[Card]) -> Result<()> {
        let tmp = self.tmp.clone();
        let mut descs = Vec::with_capacity(cols.len());
        for (name, col) in cols {
            let (ty, repeat) = match col {
                Col::U8(_, r) => (ColumnDataType::Byte, *r),
                Col::I16(_, r) => (ColumnDataType::Short, *r),
                Col::I32(_, r) => (ColumnDataType::Int, *r),
                Col::I64(_, r) => (ColumnDataType::LongLong, *r),
                Col::F32(_, r) => (ColumnDataType::Float, *r),
                Col::F64(_, r) => (ColumnDataType::Double, *r),
                Col::Str(_, w) => (ColumnDataType::String, *w),
            };
            let d = ColumnDescription::new(*name)
                .with_type(ty)
                .that_repeats(repeat.max(1))
                .create()
                .map_err(|e| err(&tmp, format!("column {name}"), e))?;
            descs.push(d);
        }
        let hdu = self
            .f()?
            .create_table(extname, &descs)
            .map_err(|e| err(&tmp, format!("cannot create table {extname}"), e))?;
        for (name, col) in cols {
            let f = self.f()?;
            let r = match col {
                Col::U8(v, _) => hdu.write_col(f, *name, v),
                Col::I16(v, _) => hdu.write_col(f, *name, v),
                Col::I32(v, _) => hdu.write_col(f, *name, v),
                Col::I64(v, _) => hdu.write_col(f, *name, v),
                Col::F32(v, _) => hdu.write_col(f, *name, v),
                Col::F64(v, _) => hdu.write_col(f, *name, v),
                Col::Str(v, _) => hdu.write_col(f, *name, v),
            };
            r.map_err(|e| err(&tmp, format!("cannot write column {name}"), e))?;
        }
        let index = self.f()?.num_hdus().map_err(|e| err(&tmp, "HDUs", e))? - 1;
        self.cards(index, cards)
    }

    /// Closes the file and moves it into place (gzip-compressed when
    /// asked). Returns the final path.
    pub fn finish(mut self) -> Result<PathBuf> {
        drop(self.file.take());
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        if self.gzip {
            let bytes = std::fs::read(&self.tmp).map_err(io(&self.tmp))?;
            let out = std::fs::File::create(&self.dest).map_err(io(&self.dest))?;
            let mut gz = flate2::GzBuilder::new()
                .mtime(0)
                .write(std::io::BufWriter::new(out), flate2::Compression::new(6));
            gz.write_all(&bytes).map_err(io(&self.dest))?;
            let mut w = gz.finish().map_err(io(&self.dest))?;
            w.flush().map_err(io(&self.dest))?;
            std::fs::remove_file(&self.tmp).map_err(io(&self.tmp))?;
        } else {
            std::fs::rename(&self.tmp, &self.dest).map_err(io(&self.dest))?;
        }
        Ok(self.dest.clone())
    }
}

impl Drop for FitsOut {
    fn drop(&mut self) {
        // An unfinished file leaves no temporary behind.
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
