//! Reading unscaled big-endian data straight from a plain FITS file at the
//! offsets of the header index ([`super::header::Direct`]), without
//! cfitsio: most survey spectra are stored this way (`E`/`D`/`J` table
//! columns, `BITPIX = -32` images), and cfitsio's open, header parsing and
//! column-by-column reads were most of the time to read a small file.
//!
//! Every read here either returns exactly what cfitsio returns for it (the
//! test `direct_reads_equal_cfitsio` compares every column and image of the
//! real survey files) or `None`, and the caller asks cfitsio.

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::header::{Column, Direct, Form};
use super::{Fits, Value};

/// How a stored value is laid out.
#[derive(Clone, Copy, Debug)]
pub(super) enum Stored {
    U8,
    I16,
    I32,
    I64,
    F32,
    F64,
    /// Unsigned integers stored with the standard offset (`TZEROn` 2¹⁵,
    /// 2³¹, 2⁶³): the sign bit flipped.
    U16,
    U32,
    U64,
}

impl Stored {
    fn of_code(code: u8, unsigned: bool) -> Option<Stored> {
        Some(match (code, unsigned) {
            (b'B', false) => Stored::U8,
            (b'I', false) => Stored::I16,
            (b'J', false) => Stored::I32,
            (b'K', false) => Stored::I64,
            (b'E', false) => Stored::F32,
            (b'D', false) => Stored::F64,
            (b'I', true) => Stored::U16,
            (b'J', true) => Stored::U32,
            (b'K', true) => Stored::U64,
            _ => return None,
        })
    }

    fn of_bitpix(bitpix: i64) -> Option<Stored> {
        Some(match bitpix {
            8 => Stored::U8,
            16 => Stored::I16,
            32 => Stored::I32,
            64 => Stored::I64,
            -32 => Stored::F32,
            -64 => Stored::F64,
            _ => return None,
        })
    }

    pub(super) fn size(self) -> usize {
        match self {
            Stored::U8 => 1,
            Stored::I16 | Stored::U16 => 2,
            Stored::I32 | Stored::F32 | Stored::U32 => 4,
            Stored::I64 | Stored::F64 | Stored::U64 => 8,
        }
    }

    /// The value at the start of `b` as an i64 (integer types only; an
    /// unsigned 64-bit value above `i64::MAX` is `None`, where cfitsio
    /// reports an overflow).
    pub(super) fn int(self, b: &[u8]) -> Option<i64> {
        Some(match self {
            Stored::U8 => i64::from(b[0]),
            Stored::I16 => i64::from(i16::from_be_bytes([b[0], b[1]])),
            Stored::I32 => i64::from(i32::from_be_bytes(b[..4].try_into().ok()?)),
            Stored::I64 => i64::from_be_bytes(b[..8].try_into().ok()?),
            Stored::U16 => i64::from(u16::from_be_bytes([b[0], b[1]]) ^ 0x8000),
            Stored::U32 => i64::from(u32::from_be_bytes(b[..4].try_into().ok()?) ^ 0x8000_0000),
            Stored::U64 => i64::try_from(self.unsigned(b)?).ok()?,
            Stored::F32 | Stored::F64 => return None,
        })
    }

    /// The value at the start of `b` as a u64 (non-negative integers).
    pub(super) fn unsigned(self, b: &[u8]) -> Option<u64> {
        match self {
            Stored::U64 => Some(u64::from_be_bytes(b[..8].try_into().ok()?) ^ (1 << 63)),
            Stored::F32 | Stored::F64 => None,
            s => u64::try_from(s.int(b)?).ok(),
        }
    }

    /// The value at the start of `b` as a double, as cfitsio computes it
    /// (an unsigned 64-bit value as `raw + 2⁶³` in double precision).
    pub(super) fn float(self, b: &[u8]) -> f64 {
        match self {
            Stored::F32 => f64::from(f32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            Stored::F64 => f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            Stored::U64 => {
                let raw = i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                raw as f64 + 9223372036854775808.0
            }
            s => s.int(b).unwrap_or(0) as f64,
        }
    }
}

/// Reads `len` bytes at `offset` of `file`; `None` on any I/O error or a
/// short read.
fn read_exact_at(file: &std::fs::File, offset: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).ok()?;
    Some(buf)
}

impl Fits {
    /// Bytes of rows `rows` of table HDU `index` (cached: readers take
    /// several columns of the same rows in turn).
    fn table_rows(&mut self, index: usize, rows: Range<usize>) -> Option<Arc<Vec<u8>>> {
        if let Some((i, r, bytes)) = &self.rows_cache {
            if *i == index && *r == rows {
                return Some(bytes.clone());
            }
        }
        let hdu = &self.hdus[index];
        let Direct::Table { row_bytes, .. } = &hdu.described().ok()?.direct else {
            return None;
        };
        let start = (rows.start as u64).checked_mul(*row_bytes)?;
        let len = (rows.len() as u64).checked_mul(*row_bytes)?;
        if start.checked_add(len)? > hdu.data_len || len > super::MAX_DIRECT_BYTES {
            return None;
        }
        let bytes = Arc::new(read_exact_at(
            self.plain.as_ref()?,
            hdu.data_start + start,
            len as usize,
        )?);
        self.rows_cache = Some((index, rows, bytes.clone()));
        Some(bytes)
    }

    /// Bytes a row, layout and form of column `col` of table HDU `index`
    /// when it is read directly; `None` when cfitsio reads it.
    fn direct_column(&self, index: usize, col: usize) -> Option<(usize, Column, Form)> {
        if self.cfitsio_only {
            return None;
        }
        let hdu = self.hdus.get(index)?.described().ok()?;
        let Direct::Table { row_bytes, columns } = &hdu.direct else {
            return None;
        };
        let column = *columns.get(col)?;
        let form = *hdu.forms.get(col)?;
        column
            .direct
            .then_some((usize::try_from(*row_bytes).ok()?, column, form))
    }

    /// Column `col` of rows `rows` of table HDU `index` decoded directly,
    /// or `None` (cfitsio reads it).
    pub(super) fn direct_cells<T: Value>(
        &mut self,
        index: usize,
        col: usize,
        rows: Range<usize>,
    ) -> Option<Vec<T>> {
        let (row_bytes, column, form) = self.direct_column(index, col)?;
        let stored = Stored::of_code(form.code, column.unsigned)?;
        let (offset, size) = (column.offset as usize, stored.size());
        let bytes = self.table_rows(index, rows.clone())?;
        // The column's cells gathered into one run of stored values, then
        // decoded by the type's whole-run loop (see `Value::decode_all`).
        let width = form.repeat.checked_mul(size)?;
        let cell = offset..offset.checked_add(width)?;
        let mut packed = Vec::with_capacity(rows.len().checked_mul(width)?);
        for row in bytes.chunks_exact(row_bytes.max(1)).take(rows.len()) {
            packed.extend_from_slice(row.get(cell.clone())?);
        }
        let out = T::decode_all(stored, &packed)?;
        (out.len() == rows.len() * form.repeat).then_some(out)
    }

    /// Text column `col` of rows `rows` of table HDU `index` (each cell up
    /// to its first NUL, trailing blanks after the first character removed,
    /// as cfitsio gives it), or
    /// `None` (cfitsio reads it).
    pub(super) fn direct_text(
        &mut self,
        index: usize,
        col: usize,
        rows: Range<usize>,
    ) -> Option<Vec<String>> {
        let (row_bytes, column, form) = self.direct_column(index, col)?;
        if form.code != b'A' {
            return None;
        }
        let offset = column.offset as usize;
        let bytes = self.table_rows(index, rows.clone())?;
        let mut out = Vec::with_capacity(rows.len());
        for row in bytes.chunks_exact(row_bytes.max(1)).take(rows.len()) {
            let cell = row.get(offset..offset + form.repeat)?;
            let mut end = cell.iter().position(|&b| b == 0).unwrap_or(cell.len());
            // cfitsio drops trailing blanks but never the first character.
            while end > 1 && cell[end - 1] == b' ' {
                end -= 1;
            }
            out.push(String::from_utf8_lossy(&cell[..end]).into_owned());
        }
        (out.len() == rows.len()).then_some(out)
    }

    /// `n` pixels of image HDU `index` from pixel `first` decoded
    /// directly, or `None` (cfitsio reads them).
    pub(super) fn direct_pixels<T: Value>(
        &mut self,
        index: usize,
        first: usize,
        n: usize,
    ) -> Option<Vec<T>> {
        if self.cfitsio_only {
            return None;
        }
        let hdu = self.hdus.get(index)?;
        let Direct::Image { bitpix } = hdu.described().ok()?.direct else {
            return None;
        };
        let stored = Stored::of_bitpix(bitpix)?;
        let size = stored.size() as u64;
        let start = (first as u64).checked_mul(size)?;
        let len = (n as u64).checked_mul(size)?;
        if start.checked_add(len)? > hdu.data_len || len > super::MAX_DIRECT_BYTES {
            return None;
        }
        let bytes = read_exact_at(self.plain.as_ref()?, hdu.data_start + start, len as usize)?;
        T::decode_all(stored, &bytes)
    }
}
