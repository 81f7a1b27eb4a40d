//! spectok's own HDF5 shard format: many spectra of any surveys in one
//! chunked, compressed file, read back bit for bit.
//!
//! A shard is written by [`ShardWriter`] (used by `spectok convert`) and
//! read by [`ShardReader`] / [`open`]. The root carries the attribute
//! [`SHARD_MARKER`] `= 1` ([`SHARD_VERSION`]), by which
//! [`crate::detect`] recognises it. All datasets are 1-D at the root,
//! chunked, and compressed with shuffle + deflate when the HDF5 library
//! has deflate. With N spectra, P pixels in all, S segments in all, E
//! `extra` and T `text` labels in all:
//!
//! | dataset | type | length | content |
//! |---|---|---|---|
//! | `offsets` | u64 | N+1 | spectrum i owns pixels `offsets[i]..offsets[i+1]` |
//! | `wavelength` | f64 | P | Å |
//! | `flux`, `ivar` | f32 | P | as read |
//! | `mask` | u32 | P | survey bitmask |
//! | `lsf_sigma` | f32 | P | σ in Å; NaN where the spectrum has none |
//! | `has_lsf` | u8 | N | 1 when `lsf_sigma` is the spectrum's own |
//! | `segment_offsets` | u64 | N+1 | spectrum i owns segments `segment_offsets[i]..[i+1]` |
//! | `segment_names` | UTF-8 string | S | arm/chip/CCD name |
//! | `segment_starts`, `segment_ends` | u64 | S | pixel range, relative to the spectrum |
//! | `id` | UTF-8 string | N | object identifier |
//! | `survey`, `medium` | UTF-8 string | N | [`Survey::name`], [`Medium::name`] |
//! | `source_file`, `source_hdu` | UTF-8 string | N | where the spectrum was read |
//! | `source_row` | i64 | N | row in the source; −1 = none |
//! | `label_present` | u16 | N | bit mask of the optional labels that are present |
//! | `redshift`, `redshift_err`, `teff`, `logg`, `fe_h`, `alpha_m` | f64 | N | NaN when absent |
//! | `redshift_warning` | i64 | N | 0 when absent |
//! | `class`, `subclass` | UTF-8 string | N | empty when absent |
//! | `extra_offsets` | u64 | N+1 | spectrum i owns `extra_*[extra_offsets[i]..[i+1]]` |
//! | `extra_names` / `extra_values` | UTF-8 string / f64 | E | `Labels::extra` |
//! | `text_offsets` | u64 | N+1 | spectrum i owns `text_*[text_offsets[i]..[i+1]]` |
//! | `text_names` / `text_values` | UTF-8 string | T | `Labels::text` |
//!
//! `label_present` bits, from bit 0: redshift, redshift_err,
//! redshift_warning, class, subclass, teff, logg, fe_h, alpha_m. The bits
//! (not the NaN) decide presence, so a present NaN label survives. `extra`
//! and `text` are ragged columns rather than JSON so that every f64 (NaN
//! payloads included) round-trips exactly.
//!
//! HDF5 strings cannot hold a NUL character: a spectrum with one in a
//! string field is refused by [`ShardWriter::write`].
//!
//! Reading streams spectra one at a time; it reads the per-spectrum
//! columns in blocks of a few dozen spectra and a block's pixels in one
//! slice when they are few, so memory stays bounded. Offsets are checked
//! before any slice is read; a bad spectrum (decreasing or out-of-range
//! offsets, no pixels, invalid wavelengths) is an `Err` item naming the
//! dataset, field and spectrum index, and the stream goes on.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use hdf5::types::VarLenUnicode;
use hdf5::{Dataset, H5Type};

use crate::error::{Error, Location, Result};
use crate::format::Format;
use crate::hdf5util::{self, one_line, SHARD_MARKER};
use crate::reader::{InputUnit, Reader, SpectrumIter};
use crate::spectrum::{Labels, Medium, Segment, Source, Spectrum, Survey};

/// Version written to (and the only one read from) [`SHARD_MARKER`].
pub const SHARD_VERSION: u32 = 1;

/// The writer appends its buffers to the file once it holds this many
/// spectra…
pub const FLUSH_SPECTRA: usize = 1024;

/// …or this many pixels, whichever comes first.
pub const FLUSH_PIXELS: usize = 1 << 20;

/// Largest spectrum (pixels) a shard may hold; larger offsets ranges are
/// errors, never allocations.
pub const MAX_PIXELS: usize = 1 << 24;

/// Largest number of segments, `extra` or `text` entries of one spectrum.
pub const MAX_ENTRIES: usize = 1 << 20;

/// Spectra whose per-spectrum columns are read in one go.
const READ_BLOCK: usize = 64;

/// Largest pixel (or entry) range read ahead for a block.
const READ_AHEAD: usize = 1 << 20;

/// Chunk length of pixel datasets and of the other datasets.
const PIXEL_CHUNK: usize = 1 << 15;
const ROW_CHUNK: usize = 1 << 12;

const BIT_REDSHIFT: u16 = 1 << 0;
const BIT_REDSHIFT_ERR: u16 = 1 << 1;
const BIT_REDSHIFT_WARNING: u16 = 1 << 2;
const BIT_CLASS: u16 = 1 << 3;
const BIT_SUBCLASS: u16 = 1 << 4;
const BIT_TEFF: u16 = 1 << 5;
const BIT_LOGG: u16 = 1 << 6;
const BIT_FE_H: u16 = 1 << 7;
const BIT_ALPHA_M: u16 = 1 << 8;

/// Path the writer fills before renaming it to `path`: `path` + `.tmp`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".tmp");
    PathBuf::from(s)
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/// A growing 1-D dataset.
struct Col {
    ds: Dataset,
    name: &'static str,
    len: usize,
}

impl Col {
    fn create<T: H5Type>(file: &hdf5::File, name: &'static str, chunk: usize) -> hdf5::Result<Col> {
        let mut b = file.new_dataset::<T>().chunk(chunk);
        if hdf5::filters::deflate_available() {
            b = b.shuffle().deflate(4);
        }
        let ds = b.shape(0..).create(name)?;
        Ok(Col { ds, name, len: 0 })
    }

    fn append<T: H5Type>(&mut self, data: &[T]) -> hdf5::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let new = self.len + data.len();
        self.ds.resize(new)?;
        self.ds.write_slice(data, self.len..new)?;
        self.len = new;
        Ok(())
    }
}

/// The datasets of a shard being written.
struct WriteCols {
    offsets: Col,
    wavelength: Col,
    flux: Col,
    ivar: Col,
    mask: Col,
    lsf_sigma: Col,
    has_lsf: Col,
    segment_offsets: Col,
    segment_names: Col,
    segment_starts: Col,
    segment_ends: Col,
    id: Col,
    survey: Col,
    medium: Col,
    source_file: Col,
    source_hdu: Col,
    source_row: Col,
    label_present: Col,
    redshift: Col,
    redshift_err: Col,
    redshift_warning: Col,
    class: Col,
    subclass: Col,
    teff: Col,
    logg: Col,
    fe_h: Col,
    alpha_m: Col,
    extra_offsets: Col,
    extra_names: Col,
    extra_values: Col,
    text_offsets: Col,
    text_names: Col,
    text_values: Col,
}

impl WriteCols {
    fn create(f: &hdf5::File) -> hdf5::Result<WriteCols> {
        type S = VarLenUnicode;
        Ok(WriteCols {
            offsets: Col::create::<u64>(f, "offsets", ROW_CHUNK)?,
            wavelength: Col::create::<f64>(f, "wavelength", PIXEL_CHUNK)?,
            flux: Col::create::<f32>(f, "flux", PIXEL_CHUNK)?,
            ivar: Col::create::<f32>(f, "ivar", PIXEL_CHUNK)?,
            mask: Col::create::<u32>(f, "mask", PIXEL_CHUNK)?,
            lsf_sigma: Col::create::<f32>(f, "lsf_sigma", PIXEL_CHUNK)?,
            has_lsf: Col::create::<u8>(f, "has_lsf", ROW_CHUNK)?,
            segment_offsets: Col::create::<u64>(f, "segment_offsets", ROW_CHUNK)?,
            segment_names: Col::create::<S>(f, "segment_names", ROW_CHUNK)?,
            segment_starts: Col::create::<u64>(f, "segment_starts", ROW_CHUNK)?,
            segment_ends: Col::create::<u64>(f, "segment_ends", ROW_CHUNK)?,
            id: Col::create::<S>(f, "id", ROW_CHUNK)?,
            survey: Col::create::<S>(f, "survey", ROW_CHUNK)?,
            medium: Col::create::<S>(f, "medium", ROW_CHUNK)?,
            source_file: Col::create::<S>(f, "source_file", ROW_CHUNK)?,
            source_hdu: Col::create::<S>(f, "source_hdu", ROW_CHUNK)?,
            source_row: Col::create::<i64>(f, "source_row", ROW_CHUNK)?,
            label_present: Col::create::<u16>(f, "label_present", ROW_CHUNK)?,
            redshift: Col::create::<f64>(f, "redshift", ROW_CHUNK)?,
            redshift_err: Col::create::<f64>(f, "redshift_err", ROW_CHUNK)?,
            redshift_warning: Col::create::<i64>(f, "redshift_warning", ROW_CHUNK)?,
            class: Col::create::<S>(f, "class", ROW_CHUNK)?,
            subclass: Col::create::<S>(f, "subclass", ROW_CHUNK)?,
            teff: Col::create::<f64>(f, "teff", ROW_CHUNK)?,
            logg: Col::create::<f64>(f, "logg", ROW_CHUNK)?,
            fe_h: Col::create::<f64>(f, "fe_h", ROW_CHUNK)?,
            alpha_m: Col::create::<f64>(f, "alpha_m", ROW_CHUNK)?,
            extra_offsets: Col::create::<u64>(f, "extra_offsets", ROW_CHUNK)?,
            extra_names: Col::create::<S>(f, "extra_names", ROW_CHUNK)?,
            extra_values: Col::create::<f64>(f, "extra_values", ROW_CHUNK)?,
            text_offsets: Col::create::<u64>(f, "text_offsets", ROW_CHUNK)?,
            text_names: Col::create::<S>(f, "text_names", ROW_CHUNK)?,
            text_values: Col::create::<S>(f, "text_values", ROW_CHUNK)?,
        })
    }
}

/// Spectra accepted by [`ShardWriter::write`] and not yet in the file.
#[derive(Default)]
struct WriteBuf {
    spectra: usize,
    offsets: Vec<u64>,
    wavelength: Vec<f64>,
    flux: Vec<f32>,
    ivar: Vec<f32>,
    mask: Vec<u32>,
    lsf_sigma: Vec<f32>,
    has_lsf: Vec<u8>,
    segment_offsets: Vec<u64>,
    segment_names: Vec<VarLenUnicode>,
    segment_starts: Vec<u64>,
    segment_ends: Vec<u64>,
    id: Vec<VarLenUnicode>,
    survey: Vec<VarLenUnicode>,
    medium: Vec<VarLenUnicode>,
    source_file: Vec<VarLenUnicode>,
    source_hdu: Vec<VarLenUnicode>,
    source_row: Vec<i64>,
    label_present: Vec<u16>,
    redshift: Vec<f64>,
    redshift_err: Vec<f64>,
    redshift_warning: Vec<i64>,
    class: Vec<VarLenUnicode>,
    subclass: Vec<VarLenUnicode>,
    teff: Vec<f64>,
    logg: Vec<f64>,
    fe_h: Vec<f64>,
    alpha_m: Vec<f64>,
    extra_offsets: Vec<u64>,
    extra_names: Vec<VarLenUnicode>,
    extra_values: Vec<f64>,
    text_offsets: Vec<u64>,
    text_names: Vec<VarLenUnicode>,
    text_values: Vec<VarLenUnicode>,
}

/// Running totals of what the shard holds (written and buffered).
#[derive(Clone, Copy, Default)]
struct Totals {
    spectra: u64,
    pixels: u64,
    segments: u64,
    extra: u64,
    text: u64,
}

/// Writes spectra into a new shard.
///
/// The shard is filled under [`tmp_path`]`(path)` and renamed to `path`
/// by [`ShardWriter::finish`], so an interrupted writer never leaves a
/// partial shard under the final name; dropping an unfinished writer
/// removes the temporary file. Memory is bounded: buffers are appended to
/// the file every [`FLUSH_SPECTRA`] spectra or [`FLUSH_PIXELS`] pixels.
///
/// ```no_run
/// # fn demo(spectra: &[spectok_io::Spectrum]) -> spectok_io::Result<()> {
/// let mut w = spectok_io::shard::ShardWriter::create("train-000.h5")?;
/// for s in spectra {
///     w.write(s)?;
/// }
/// let written = w.finish()?;
/// # let _ = written; Ok(()) }
/// ```
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    /// `None` once finished or after a failed append.
    open: Option<(WriteCols, hdf5::File)>,
    buf: WriteBuf,
    totals: Totals,
}

impl ShardWriter {
    /// Starts a shard that [`ShardWriter::finish`] will put at `path`
    /// (an existing file there is replaced only then).
    pub fn create(path: impl AsRef<Path>) -> Result<ShardWriter> {
        let path = path.as_ref().to_path_buf();
        let tmp = tmp_path(&path);
        let bad = |what: &str, e: hdf5::Error| {
            Error::bad(
                Location::file(&tmp),
                format!("cannot {what}: {}", one_line(&e)),
            )
        };
        // A create that fails part-way (e.g. a full disk) can leave the file.
        let file = hdf5::File::create(&tmp).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            bad("create HDF5 file", e)
        })?;
        let setup = || -> hdf5::Result<WriteCols> {
            file.new_attr::<u32>()
                .create(SHARD_MARKER)?
                .write_scalar(&SHARD_VERSION)?;
            let mut cols = WriteCols::create(&file)?;
            cols.offsets.append(&[0u64])?;
            cols.segment_offsets.append(&[0u64])?;
            cols.extra_offsets.append(&[0u64])?;
            cols.text_offsets.append(&[0u64])?;
            Ok(cols)
        };
        let cols = match setup() {
            Ok(c) => c,
            Err(e) => {
                drop(file);
                let _ = std::fs::remove_file(&tmp);
                return Err(bad("set up shard datasets", e));
            }
        };
        Ok(ShardWriter {
            path,
            tmp,
            open: Some((cols, file)),
            buf: WriteBuf::default(),
            totals: Totals::default(),
        })
    }

    /// The path the shard will have once finished.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of spectra written so far.
    pub fn len(&self) -> usize {
        self.totals.spectra as usize
    }

    /// Whether no spectrum has been written yet.
    pub fn is_empty(&self) -> bool {
        self.totals.spectra == 0
    }

    /// Whether the writer can still take spectra: false once appending to
    /// the file has failed (the temporary file is then removed and every
    /// later call fails). A refused spectrum does not close the writer.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Adds one spectrum. A spectrum that breaks the [`Spectrum`]
    /// invariants, exceeds [`MAX_PIXELS`] or [`MAX_ENTRIES`], or has a NUL
    /// character in a string, a non-UTF-8 source path or a source row
    /// above `i64::MAX`, is refused with an error
    /// naming its source and field; the shard is unchanged and writing can
    /// go on.
    pub fn write(&mut self, s: &Spectrum) -> Result<()> {
        if self.open.is_none() {
            return Err(Error::bad(
                Location::file(&self.tmp),
                "shard writer is closed after an earlier write failure",
            ));
        }
        let loc = |field: &str| {
            let l = Location::file(&s.source.file)
                .hdu(&s.source.hdu)
                .field(field);
            match s.source.row {
                Some(r) => l.row(r),
                None => l,
            }
        };
        let refuse = |field: &str, why: String| {
            Error::bad(
                loc(field),
                format!("not written to shard {}: {why}", self.path.display()),
            )
        };
        if let Err((field, why)) = s.validate() {
            return Err(refuse(field, why));
        }
        // Limits the reader enforces.
        for (field, len, max) in [
            ("wavelength", s.len(), MAX_PIXELS),
            ("segments", s.segments.len(), MAX_ENTRIES),
            ("labels.extra", s.labels.extra.len(), MAX_ENTRIES),
            ("labels.text", s.labels.text.len(), MAX_ENTRIES),
        ] {
            if len > max {
                return Err(refuse(
                    field,
                    format!("{len} entries exceed the limit of {max}"),
                ));
            }
        }
        let text = |t: &str, field: &str| {
            VarLenUnicode::from_str(t).map_err(|_| {
                refuse(
                    field,
                    format!("{t:?} contains a NUL character, which HDF5 strings cannot hold"),
                )
            })
        };
        let source_file =
            s.source.file.to_str().ok_or_else(|| {
                refuse("source.file", "the source path is not valid UTF-8".into())
            })?;
        let source_row = match s.source.row {
            None => -1,
            Some(r) => i64::try_from(r)
                .map_err(|_| refuse("source.row", format!("row {r} exceeds i64::MAX")))?,
        };
        let id = text(&s.id, "id")?;
        let source_file = text(source_file, "source.file")?;
        let source_hdu = text(&s.source.hdu, "source.hdu")?;
        let l = &s.labels;
        let class = text(l.class.as_deref().unwrap_or(""), "labels.class")?;
        let subclass = text(l.subclass.as_deref().unwrap_or(""), "labels.subclass")?;
        let seg_names = s
            .segments
            .iter()
            .map(|g| text(&g.name, "segments"))
            .collect::<Result<Vec<_>>>()?;
        let extra_names = l
            .extra
            .keys()
            .map(|k| text(k, "labels.extra"))
            .collect::<Result<Vec<_>>>()?;
        let mut text_names = Vec::with_capacity(l.text.len());
        let mut text_values = Vec::with_capacity(l.text.len());
        for (k, v) in &l.text {
            text_names.push(text(k, "labels.text")?);
            text_values.push(text(v, "labels.text")?);
        }
        // Names are fixed ASCII without NUL.
        let survey = text(s.survey.name(), "survey")?;
        let medium = text(s.medium.name(), "medium")?;

        // Everything is checked: buffer it.
        let n = s.len();
        let t = &mut self.totals;
        let b = &mut self.buf;
        t.spectra += 1;
        t.pixels += n as u64;
        t.segments += s.segments.len() as u64;
        t.extra += l.extra.len() as u64;
        t.text += l.text.len() as u64;
        b.spectra += 1;
        b.offsets.push(t.pixels);
        b.wavelength.extend_from_slice(&s.wavelength);
        b.flux.extend_from_slice(&s.flux);
        b.ivar.extend_from_slice(&s.ivar);
        b.mask.extend_from_slice(&s.mask);
        match &s.lsf_sigma {
            Some(v) => {
                b.lsf_sigma.extend_from_slice(v);
                b.has_lsf.push(1);
            }
            None => {
                b.lsf_sigma.resize(b.lsf_sigma.len() + n, f32::NAN);
                b.has_lsf.push(0);
            }
        }
        b.segment_offsets.push(t.segments);
        b.segment_names.extend(seg_names);
        b.segment_starts
            .extend(s.segments.iter().map(|g| g.start as u64));
        b.segment_ends
            .extend(s.segments.iter().map(|g| g.end as u64));
        b.id.push(id);
        b.survey.push(survey);
        b.medium.push(medium);
        b.source_file.push(source_file);
        b.source_hdu.push(source_hdu);
        b.source_row.push(source_row);
        let mut present = 0u16;
        let mut num = |v: Option<f64>, bit: u16, col: &mut Vec<f64>| {
            if v.is_some() {
                present |= bit;
            }
            col.push(v.unwrap_or(f64::NAN));
        };
        num(l.redshift, BIT_REDSHIFT, &mut b.redshift);
        num(l.redshift_err, BIT_REDSHIFT_ERR, &mut b.redshift_err);
        num(l.teff, BIT_TEFF, &mut b.teff);
        num(l.logg, BIT_LOGG, &mut b.logg);
        num(l.fe_h, BIT_FE_H, &mut b.fe_h);
        num(l.alpha_m, BIT_ALPHA_M, &mut b.alpha_m);
        if l.redshift_warning.is_some() {
            present |= BIT_REDSHIFT_WARNING;
        }
        if l.class.is_some() {
            present |= BIT_CLASS;
        }
        if l.subclass.is_some() {
            present |= BIT_SUBCLASS;
        }
        b.redshift_warning.push(l.redshift_warning.unwrap_or(0));
        b.class.push(class);
        b.subclass.push(subclass);
        b.label_present.push(present);
        b.extra_offsets.push(t.extra);
        b.extra_names.extend(extra_names);
        b.extra_values.extend(l.extra.values().copied());
        b.text_offsets.push(t.text);
        b.text_names.extend(text_names);
        b.text_values.extend(text_values);

        if b.spectra >= FLUSH_SPECTRA || b.wavelength.len() >= FLUSH_PIXELS {
            self.flush()?;
        }
        Ok(())
    }

    /// Appends the buffers to the file. On failure the writer is closed
    /// and its temporary file removed.
    fn flush(&mut self) -> Result<()> {
        let Some((cols, _)) = self.open.as_mut() else {
            return Err(Error::bad(
                Location::file(&self.tmp),
                "shard writer is closed after an earlier write failure",
            ));
        };
        let b = std::mem::take(&mut self.buf);
        let mut failed: Option<(&'static str, hdf5::Error)> = None;
        {
            let mut put = |col: &mut Col, r: hdf5::Result<()>| {
                if failed.is_none() {
                    if let Err(e) = r {
                        failed = Some((col.name, e));
                    }
                }
            };
            let c = cols;
            macro_rules! app {
                ($($f:ident),*) => {$(
                    let r = c.$f.append(&b.$f);
                    put(&mut c.$f, r);
                )*};
            }
            app!(
                offsets,
                wavelength,
                flux,
                ivar,
                mask,
                lsf_sigma,
                has_lsf,
                segment_offsets,
                segment_names,
                segment_starts,
                segment_ends,
                id,
                survey,
                medium,
                source_file,
                source_hdu,
                source_row,
                label_present,
                redshift,
                redshift_err,
                redshift_warning,
                class,
                subclass,
                teff,
                logg,
                fe_h,
                alpha_m,
                extra_offsets,
                extra_names,
                extra_values,
                text_offsets,
                text_names,
                text_values
            );
        }
        if let Some((name, e)) = failed {
            self.abandon();
            return Err(Error::bad(
                Location::file(&self.tmp).hdu(name),
                format!("cannot append to dataset: {}", one_line(&e)),
            ));
        }
        Ok(())
    }

    /// Closes and removes the temporary file.
    fn abandon(&mut self) {
        if let Some((cols, file)) = self.open.take() {
            drop(cols);
            drop(file);
            let _ = std::fs::remove_file(&self.tmp);
        }
    }

    /// Writes what is buffered, closes the file and renames it to its final
    /// path. Returns the number of spectra in the shard.
    pub fn finish(mut self) -> Result<usize> {
        self.flush()?;
        let Some((cols, file)) = self.open.take() else {
            return Err(Error::bad(
                Location::file(&self.tmp),
                "shard writer is closed after an earlier write failure",
            ));
        };
        drop(cols);
        let flushed = file.flush();
        drop(file);
        if let Err(e) = flushed {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(Error::bad(
                Location::file(&self.tmp),
                format!("cannot flush: {}", one_line(&e)),
            ));
        }
        std::fs::rename(&self.tmp, &self.path).map_err(|source| {
            let _ = std::fs::remove_file(&self.tmp);
            Error::Os {
                path: self.path.clone(),
                source,
            }
        })?;
        Ok(self.totals.spectra as usize)
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        self.abandon();
    }
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// Reader of spectok shards ([`Format::SpectokShard`]).
pub struct ShardReader;

impl Reader for ShardReader {
    fn format(&self) -> Format {
        Format::SpectokShard
    }

    fn count(&self, unit: &InputUnit) -> Result<usize> {
        count(unit.main_file())
    }

    fn read(&self, unit: &InputUnit) -> Result<SpectrumIter> {
        Ok(Box::new(open(unit.main_file())?))
    }
}

/// Number of spectra in the shard at `path` (from the length of
/// `offsets`; no data is read).
pub fn count(path: &Path) -> Result<usize> {
    let file = hdf5util::open(path)?;
    check_version(&file, path)?;
    let ds = dataset(&file, path, "offsets", "wavelength")?;
    len_1d(&ds, path, "offsets", "wavelength")?
        .checked_sub(1)
        .ok_or_else(|| {
            Error::bad(
                Location::file(path).hdu("offsets").field("wavelength"),
                "empty; a shard's offsets start with 0",
            )
        })
}

/// Opens the shard at `path` for streaming. File-level problems (not a
/// shard, other version, missing datasets, lengths that disagree) are an
/// `Err` here.
pub fn open(path: &Path) -> Result<ShardStream> {
    let shard = Shard::open(path)?;
    Ok(ShardStream {
        shard,
        next: 0,
        block: None,
    })
}

fn check_version(file: &hdf5::File, path: &Path) -> Result<()> {
    let loc = || Location::file(path).field(format!("@{SHARD_MARKER}"));
    let attr = file
        .attr(SHARD_MARKER)
        .map_err(|_| Error::bad(loc(), "not a spectok shard (root attribute missing)"))?;
    let v = attr
        .read_scalar::<i64>()
        .map_err(|e| Error::bad(loc(), format!("cannot read: {}", one_line(&e))))?;
    if v != i64::from(SHARD_VERSION) {
        return Err(Error::bad(
            loc(),
            format!("shard version {v}; this spectok reads version {SHARD_VERSION}"),
        ));
    }
    Ok(())
}

fn dataset(file: &hdf5::File, path: &Path, name: &str, field: &str) -> Result<Dataset> {
    file.dataset(name).map_err(|e| {
        let why = if file.link_exists(name) {
            format!("cannot open dataset: {}", one_line(&e))
        } else {
            "dataset missing".to_string()
        };
        Error::bad(Location::file(path).hdu(name).field(field), why)
    })
}

fn len_1d(ds: &Dataset, path: &Path, name: &str, field: &str) -> Result<usize> {
    match ds.shape()[..] {
        [n] => Ok(n),
        ref s => Err(Error::bad(
            Location::file(path).hdu(name).field(field),
            format!("expected a 1-D dataset, found shape {s:?}"),
        )),
    }
}

/// Reads `r` of a 1-D dataset, checking the length read.
fn read_range<T: H5Type + Clone>(
    ds: &Dataset,
    r: Range<usize>,
) -> std::result::Result<Vec<T>, String> {
    let want = r.len();
    if want == 0 {
        return Ok(Vec::new());
    }
    let v = ds
        .read_slice_1d::<T, _>(r)
        .map_err(|e| one_line(&e))?
        .to_vec();
    if v.len() != want {
        return Err(format!("read {} of {want} values", v.len()));
    }
    Ok(v)
}

fn utf8(v: &VarLenUnicode) -> std::result::Result<String, String> {
    String::from_utf8(v.as_bytes().to_vec()).map_err(|_| "string is not valid UTF-8".to_string())
}

/// A 1-D dataset with its name and the [`Spectrum`] field it feeds.
struct RCol {
    ds: Dataset,
    name: &'static str,
    field: &'static str,
}

/// A ragged family: offsets into data datasets of a common length.
struct Family {
    offsets: RCol,
    /// Length of the data datasets.
    len: usize,
    /// Per-spectrum limit of the range length.
    max: usize,
}

/// The datasets of an open shard, lengths checked.
struct Shard {
    path: PathBuf,
    n: usize,
    pixels: Family,
    segments: Family,
    extra: Family,
    text: Family,
    wavelength: RCol,
    flux: RCol,
    ivar: RCol,
    mask: RCol,
    lsf_sigma: RCol,
    has_lsf: RCol,
    segment_names: RCol,
    segment_starts: RCol,
    segment_ends: RCol,
    id: RCol,
    survey: RCol,
    medium: RCol,
    source_file: RCol,
    source_hdu: RCol,
    source_row: RCol,
    label_present: RCol,
    redshift: RCol,
    redshift_err: RCol,
    redshift_warning: RCol,
    class: RCol,
    subclass: RCol,
    teff: RCol,
    logg: RCol,
    fe_h: RCol,
    alpha_m: RCol,
    extra_names: RCol,
    extra_values: RCol,
    text_names: RCol,
    text_values: RCol,
}

impl Shard {
    fn open(path: &Path) -> Result<Shard> {
        let file = hdf5util::open(path)?;
        check_version(&file, path)?;
        let col = |name: &'static str, field: &'static str| -> Result<(RCol, usize)> {
            let ds = dataset(&file, path, name, field)?;
            let n = len_1d(&ds, path, name, field)?;
            Ok((RCol { ds, name, field }, n))
        };
        let bad = |name: &str, field: &str, why: String| {
            Error::bad(Location::file(path).hdu(name).field(field), why)
        };

        let (offsets, n1) = col("offsets", "wavelength")?;
        if n1 == 0 {
            return Err(bad(
                "offsets",
                "wavelength",
                "empty; a shard's offsets start with 0".into(),
            ));
        }
        let n = n1 - 1;
        // Per-spectrum columns: N values each.
        let per = |name: &'static str, field: &'static str| -> Result<RCol> {
            let (c, len) = col(name, field)?;
            if len != n {
                return Err(bad(
                    name,
                    field,
                    format!("{len} values for {n} spectra (offsets holds {n1})"),
                ));
            }
            Ok(c)
        };
        // Ragged families: offsets of N+1, data of a common length that the
        // last offset must equal.
        let family = |off_name: &'static str,
                      data: &[(&'static str, &'static str)],
                      max: usize|
         -> Result<(Family, Vec<RCol>)> {
            let (off, len) = col(off_name, data[0].1)?;
            if len != n1 {
                return Err(bad(
                    off_name,
                    data[0].1,
                    format!("{len} values; expected {n1} (one more than the spectra)"),
                ));
            }
            let mut cols = Vec::with_capacity(data.len());
            let mut common = None;
            for &(name, field) in data {
                let (c, l) = col(name, field)?;
                match common {
                    None => common = Some((name, l)),
                    Some((first, fl)) if fl != l => {
                        return Err(bad(
                            name,
                            field,
                            format!("{l} values but {first} holds {fl}"),
                        ))
                    }
                    Some(_) => {}
                }
                cols.push(c);
            }
            let total = common.map_or(0, |(_, l)| l);
            let ends = read_range::<u64>(&off.ds, 0..1)
                .and_then(|a| Ok((a, read_range::<u64>(&off.ds, n..n1)?)))
                .map_err(|e| bad(off_name, data[0].1, format!("cannot read: {e}")))?;
            let (first, last) = (ends.0.first().copied(), ends.1.first().copied());
            if first != Some(0) {
                return Err(bad(
                    off_name,
                    data[0].1,
                    format!("first offset is {first:?}, not 0"),
                ));
            }
            if last != Some(total as u64) {
                return Err(bad(
                    off_name,
                    data[0].1,
                    format!(
                        "last offset is {last:?} but {} holds {total} values",
                        data[0].0
                    ),
                ));
            }
            Ok((
                Family {
                    offsets: off,
                    len: total,
                    max,
                },
                cols,
            ))
        };
        drop(offsets);

        let (pixels, mut pc) = family(
            "offsets",
            &[
                ("wavelength", "wavelength"),
                ("flux", "flux"),
                ("ivar", "ivar"),
                ("mask", "mask"),
                ("lsf_sigma", "lsf_sigma"),
            ],
            MAX_PIXELS,
        )?;
        let (segments, mut sc) = family(
            "segment_offsets",
            &[
                ("segment_names", "segments"),
                ("segment_starts", "segments"),
                ("segment_ends", "segments"),
            ],
            MAX_ENTRIES,
        )?;
        let (extra, mut ec) = family(
            "extra_offsets",
            &[
                ("extra_names", "labels.extra"),
                ("extra_values", "labels.extra"),
            ],
            MAX_ENTRIES,
        )?;
        let (text, mut tc) = family(
            "text_offsets",
            &[
                ("text_names", "labels.text"),
                ("text_values", "labels.text"),
            ],
            MAX_ENTRIES,
        )?;
        // The vectors were built in the order given above.
        let take = |v: &mut Vec<RCol>| v.remove(0);
        Ok(Shard {
            path: path.to_path_buf(),
            n,
            wavelength: take(&mut pc),
            flux: take(&mut pc),
            ivar: take(&mut pc),
            mask: take(&mut pc),
            lsf_sigma: take(&mut pc),
            segment_names: take(&mut sc),
            segment_starts: take(&mut sc),
            segment_ends: take(&mut sc),
            extra_names: take(&mut ec),
            extra_values: take(&mut ec),
            text_names: take(&mut tc),
            text_values: take(&mut tc),
            pixels,
            segments,
            extra,
            text,
            has_lsf: per("has_lsf", "lsf_sigma")?,
            id: per("id", "id")?,
            survey: per("survey", "survey")?,
            medium: per("medium", "medium")?,
            source_file: per("source_file", "source.file")?,
            source_hdu: per("source_hdu", "source.hdu")?,
            source_row: per("source_row", "source.row")?,
            label_present: per("label_present", "labels")?,
            redshift: per("redshift", "labels.redshift")?,
            redshift_err: per("redshift_err", "labels.redshift_err")?,
            redshift_warning: per("redshift_warning", "labels.redshift_warning")?,
            class: per("class", "labels.class")?,
            subclass: per("subclass", "labels.subclass")?,
            teff: per("teff", "labels.teff")?,
            logg: per("logg", "labels.logg")?,
            fe_h: per("fe_h", "labels.fe_h")?,
            alpha_m: per("alpha_m", "labels.alpha_m")?,
        })
    }

    /// Turns a read failure of spectrum `i` in `c` into an error.
    fn read_err<'a>(&'a self, c: &'a RCol, i: usize) -> impl FnOnce(String) -> Error + 'a {
        move |e| self.err(c, i, format!("cannot read: {e}"))
    }

    fn err(&self, c: &RCol, i: usize, why: impl Into<String>) -> Error {
        Error::bad(
            Location::file(&self.path)
                .hdu(c.name)
                .field(c.field)
                .row(i as u64),
            why,
        )
    }
}

/// Values of a ragged dataset read ahead for a block: elements
/// `lo..lo + data.len()`.
struct Ahead<T> {
    lo: usize,
    data: Vec<T>,
}

impl<T: H5Type + Clone> Ahead<T> {
    fn none() -> Self {
        Ahead {
            lo: 0,
            data: Vec::new(),
        }
    }

    /// Reads `r` of `c` ahead; nothing on failure (the per-spectrum read
    /// then reports it).
    fn load(c: &RCol, r: Option<Range<usize>>) -> Self {
        match r {
            Some(r) => match read_range::<T>(&c.ds, r.clone()) {
                Ok(data) => Ahead { lo: r.start, data },
                Err(_) => Self::none(),
            },
            None => Self::none(),
        }
    }

    /// Elements `r`, from the read-ahead values when they cover `r`, else
    /// from the file.
    fn get(&self, c: &RCol, r: Range<usize>) -> std::result::Result<Vec<T>, String> {
        if r.is_empty() {
            return Ok(Vec::new());
        }
        if r.start >= self.lo {
            if let Some(v) = self.data.get(r.start - self.lo..r.end - self.lo) {
                return Ok(v.to_vec());
            }
        }
        read_range::<T>(&c.ds, r)
    }
}

/// The per-spectrum columns of spectra `start..start + len`, and their
/// ragged data read ahead where the block's range is sane and small.
struct Block {
    start: usize,
    len: usize,
    offsets: Vec<u64>,
    segment_offsets: Vec<u64>,
    extra_offsets: Vec<u64>,
    text_offsets: Vec<u64>,
    has_lsf: Vec<u8>,
    id: Vec<VarLenUnicode>,
    survey: Vec<VarLenUnicode>,
    medium: Vec<VarLenUnicode>,
    source_file: Vec<VarLenUnicode>,
    source_hdu: Vec<VarLenUnicode>,
    source_row: Vec<i64>,
    label_present: Vec<u16>,
    redshift: Vec<f64>,
    redshift_err: Vec<f64>,
    redshift_warning: Vec<i64>,
    class: Vec<VarLenUnicode>,
    subclass: Vec<VarLenUnicode>,
    teff: Vec<f64>,
    logg: Vec<f64>,
    fe_h: Vec<f64>,
    alpha_m: Vec<f64>,
    wavelength: Ahead<f64>,
    flux: Ahead<f32>,
    ivar: Ahead<f32>,
    mask: Ahead<u32>,
    lsf_sigma: Ahead<f32>,
    segment_names: Ahead<VarLenUnicode>,
    segment_starts: Ahead<u64>,
    segment_ends: Ahead<u64>,
    extra_names: Ahead<VarLenUnicode>,
    extra_values: Ahead<f64>,
    text_names: Ahead<VarLenUnicode>,
    text_values: Ahead<VarLenUnicode>,
}

/// The block's range of a family when its offsets are sane and the range
/// is small enough to read ahead.
fn ahead_range(offsets: &[u64], fam: &Family) -> Option<Range<usize>> {
    let lo = usize::try_from(*offsets.first()?).ok()?;
    let hi = usize::try_from(*offsets.last()?).ok()?;
    (lo <= hi && hi <= fam.len && hi - lo <= READ_AHEAD).then_some(lo..hi)
}

impl Block {
    fn load(sh: &Shard, start: usize, len: usize) -> Result<Block> {
        let r = start..start + len;
        let ro = start..start + len + 1;
        macro_rules! rd {
            ($c:expr, $r:expr) => {
                read_range(&$c.ds, $r.clone())
                    .map_err(|e| sh.err(&$c, start, format!("cannot read: {e}")))?
            };
        }
        let offsets: Vec<u64> = rd!(sh.pixels.offsets, ro);
        let segment_offsets: Vec<u64> = rd!(sh.segments.offsets, ro);
        let extra_offsets: Vec<u64> = rd!(sh.extra.offsets, ro);
        let text_offsets: Vec<u64> = rd!(sh.text.offsets, ro);
        let pr = ahead_range(&offsets, &sh.pixels);
        let sr = ahead_range(&segment_offsets, &sh.segments);
        let er = ahead_range(&extra_offsets, &sh.extra);
        let tr = ahead_range(&text_offsets, &sh.text);
        Ok(Block {
            start,
            len,
            has_lsf: rd!(sh.has_lsf, r),
            id: rd!(sh.id, r),
            survey: rd!(sh.survey, r),
            medium: rd!(sh.medium, r),
            source_file: rd!(sh.source_file, r),
            source_hdu: rd!(sh.source_hdu, r),
            source_row: rd!(sh.source_row, r),
            label_present: rd!(sh.label_present, r),
            redshift: rd!(sh.redshift, r),
            redshift_err: rd!(sh.redshift_err, r),
            redshift_warning: rd!(sh.redshift_warning, r),
            class: rd!(sh.class, r),
            subclass: rd!(sh.subclass, r),
            teff: rd!(sh.teff, r),
            logg: rd!(sh.logg, r),
            fe_h: rd!(sh.fe_h, r),
            alpha_m: rd!(sh.alpha_m, r),
            wavelength: Ahead::load(&sh.wavelength, pr.clone()),
            flux: Ahead::load(&sh.flux, pr.clone()),
            ivar: Ahead::load(&sh.ivar, pr.clone()),
            mask: Ahead::load(&sh.mask, pr.clone()),
            lsf_sigma: Ahead::load(&sh.lsf_sigma, pr),
            segment_names: Ahead::load(&sh.segment_names, sr.clone()),
            segment_starts: Ahead::load(&sh.segment_starts, sr.clone()),
            segment_ends: Ahead::load(&sh.segment_ends, sr),
            extra_names: Ahead::load(&sh.extra_names, er.clone()),
            extra_values: Ahead::load(&sh.extra_values, er),
            text_names: Ahead::load(&sh.text_names, tr.clone()),
            text_values: Ahead::load(&sh.text_values, tr),
            offsets,
            segment_offsets,
            extra_offsets,
            text_offsets,
        })
    }

    /// The checked range of spectrum `i` in a family.
    fn range(&self, sh: &Shard, fam: &Family, offsets: &[u64], i: usize) -> Result<Range<usize>> {
        let k = i - self.start;
        let c = &fam.offsets;
        let (Some(&lo), Some(&hi)) = (offsets.get(k), offsets.get(k + 1)) else {
            return Err(sh.err(c, i, "spectrum outside the block read"));
        };
        if hi < lo {
            return Err(sh.err(c, i, format!("offsets decrease ({lo} then {hi})")));
        }
        if hi > fam.len as u64 {
            return Err(sh.err(
                c,
                i,
                format!(
                    "offsets {lo}..{hi} run beyond the {} values of the data",
                    fam.len
                ),
            ));
        }
        if hi - lo > fam.max as u64 {
            return Err(sh.err(
                c,
                i,
                format!("{} values exceed the limit of {}", hi - lo, fam.max),
            ));
        }
        // Both fit in usize: hi <= fam.len.
        Ok(lo as usize..hi as usize)
    }

    fn spectrum(&self, sh: &Shard, i: usize) -> Result<Spectrum> {
        let k = i - self.start;
        let one = |c: &RCol, v: Option<&VarLenUnicode>| -> Result<String> {
            let v = v.ok_or_else(|| sh.err(c, i, "spectrum outside the block read"))?;
            utf8(v).map_err(|e| sh.err(c, i, e))
        };
        let num = |c: &RCol, v: Option<f64>| -> Result<f64> {
            v.ok_or_else(|| sh.err(c, i, "spectrum outside the block read"))
        };

        let pr = self.range(sh, &sh.pixels, &self.offsets, i)?;
        if pr.is_empty() {
            return Err(sh.err(&sh.pixels.offsets, i, "spectrum has no pixels"));
        }
        let wavelength = self
            .wavelength
            .get(&sh.wavelength, pr.clone())
            .map_err(sh.read_err(&sh.wavelength, i))?;
        let flux = self
            .flux
            .get(&sh.flux, pr.clone())
            .map_err(sh.read_err(&sh.flux, i))?;
        let ivar = self
            .ivar
            .get(&sh.ivar, pr.clone())
            .map_err(sh.read_err(&sh.ivar, i))?;
        let mask = self
            .mask
            .get(&sh.mask, pr.clone())
            .map_err(sh.read_err(&sh.mask, i))?;
        let has_lsf = *self
            .has_lsf
            .get(k)
            .ok_or_else(|| sh.err(&sh.has_lsf, i, "spectrum outside the block read"))?;
        let lsf_sigma = match has_lsf {
            0 => None,
            1 => Some(
                self.lsf_sigma
                    .get(&sh.lsf_sigma, pr)
                    .map_err(sh.read_err(&sh.lsf_sigma, i))?,
            ),
            v => return Err(sh.err(&sh.has_lsf, i, format!("flag is {v}, not 0 or 1"))),
        };

        let sr = self.range(sh, &sh.segments, &self.segment_offsets, i)?;
        let names = self
            .segment_names
            .get(&sh.segment_names, sr.clone())
            .map_err(sh.read_err(&sh.segment_names, i))?;
        let starts = self
            .segment_starts
            .get(&sh.segment_starts, sr.clone())
            .map_err(sh.read_err(&sh.segment_starts, i))?;
        let ends = self
            .segment_ends
            .get(&sh.segment_ends, sr)
            .map_err(sh.read_err(&sh.segment_ends, i))?;
        let mut segments = Vec::with_capacity(names.len());
        for ((name, &start), &end) in names.iter().zip(&starts).zip(&ends) {
            let (Ok(start), Ok(end)) = (usize::try_from(start), usize::try_from(end)) else {
                return Err(sh.err(&sh.segment_starts, i, "segment bound exceeds usize"));
            };
            segments.push(Segment {
                name: utf8(name).map_err(|e| sh.err(&sh.segment_names, i, e))?,
                start,
                end,
            });
        }

        let present = *self
            .label_present
            .get(k)
            .ok_or_else(|| sh.err(&sh.label_present, i, "spectrum outside the block read"))?;
        let opt = |bit: u16, c: &RCol, v: &[f64]| -> Result<Option<f64>> {
            let x = num(c, v.get(k).copied())?;
            Ok((present & bit != 0).then_some(x))
        };
        let mut labels = Labels {
            redshift: opt(BIT_REDSHIFT, &sh.redshift, &self.redshift)?,
            redshift_err: opt(BIT_REDSHIFT_ERR, &sh.redshift_err, &self.redshift_err)?,
            redshift_warning: None,
            class: None,
            subclass: None,
            teff: opt(BIT_TEFF, &sh.teff, &self.teff)?,
            logg: opt(BIT_LOGG, &sh.logg, &self.logg)?,
            fe_h: opt(BIT_FE_H, &sh.fe_h, &self.fe_h)?,
            alpha_m: opt(BIT_ALPHA_M, &sh.alpha_m, &self.alpha_m)?,
            ..Labels::default()
        };
        if present & BIT_REDSHIFT_WARNING != 0 {
            labels.redshift_warning = Some(*self.redshift_warning.get(k).ok_or_else(|| {
                sh.err(&sh.redshift_warning, i, "spectrum outside the block read")
            })?);
        }
        if present & BIT_CLASS != 0 {
            labels.class = Some(one(&sh.class, self.class.get(k))?);
        }
        if present & BIT_SUBCLASS != 0 {
            labels.subclass = Some(one(&sh.subclass, self.subclass.get(k))?);
        }
        let er = self.range(sh, &sh.extra, &self.extra_offsets, i)?;
        let en = self
            .extra_names
            .get(&sh.extra_names, er.clone())
            .map_err(sh.read_err(&sh.extra_names, i))?;
        let ev = self
            .extra_values
            .get(&sh.extra_values, er)
            .map_err(sh.read_err(&sh.extra_values, i))?;
        for (name, v) in en.iter().zip(ev) {
            let name = utf8(name).map_err(|e| sh.err(&sh.extra_names, i, e))?;
            if labels.extra.insert(name.clone(), v).is_some() {
                return Err(sh.err(&sh.extra_names, i, format!("name {name:?} repeated")));
            }
        }
        let tr = self.range(sh, &sh.text, &self.text_offsets, i)?;
        let tn = self
            .text_names
            .get(&sh.text_names, tr.clone())
            .map_err(sh.read_err(&sh.text_names, i))?;
        let tv = self
            .text_values
            .get(&sh.text_values, tr)
            .map_err(sh.read_err(&sh.text_values, i))?;
        for (name, v) in tn.iter().zip(&tv) {
            let name = utf8(name).map_err(|e| sh.err(&sh.text_names, i, e))?;
            let v = utf8(v).map_err(|e| sh.err(&sh.text_values, i, e))?;
            if labels.text.insert(name.clone(), v).is_some() {
                return Err(sh.err(&sh.text_names, i, format!("name {name:?} repeated")));
            }
        }

        let survey_name = one(&sh.survey, self.survey.get(k))?;
        let survey = Survey::from_name(&survey_name)
            .ok_or_else(|| sh.err(&sh.survey, i, format!("unknown survey {survey_name:?}")))?;
        let medium_name = one(&sh.medium, self.medium.get(k))?;
        let medium = Medium::from_name(&medium_name)
            .ok_or_else(|| sh.err(&sh.medium, i, format!("unknown medium {medium_name:?}")))?;
        let row = match self.source_row.get(k) {
            None => return Err(sh.err(&sh.source_row, i, "spectrum outside the block read")),
            Some(-1) => None,
            Some(&r) => Some(
                u64::try_from(r)
                    .map_err(|_| sh.err(&sh.source_row, i, format!("row {r} (−1 = none)")))?,
            ),
        };
        let s = Spectrum {
            id: one(&sh.id, self.id.get(k))?,
            survey,
            source: Source {
                file: PathBuf::from(one(&sh.source_file, self.source_file.get(k))?),
                hdu: one(&sh.source_hdu, self.source_hdu.get(k))?,
                row,
            },
            wavelength,
            flux,
            ivar,
            mask,
            segments,
            medium,
            lsf_sigma,
            labels,
        };
        if let Err((field, why)) = s.validate() {
            let c = match field {
                "flux" => &sh.flux,
                "ivar" => &sh.ivar,
                "mask" => &sh.mask,
                "lsf_sigma" => &sh.lsf_sigma,
                "segments" => &sh.segment_starts,
                _ => &sh.wavelength,
            };
            return Err(sh.err(c, i, why));
        }
        Ok(s)
    }

    fn end(&self) -> usize {
        self.start + self.len
    }
}

/// The spectra of a shard, one at a time, in the order written.
pub struct ShardStream {
    shard: Shard,
    next: usize,
    block: Option<Block>,
}

impl ShardStream {
    /// Number of spectra in the shard.
    pub fn len(&self) -> usize {
        self.shard.n
    }

    /// Whether the shard holds no spectrum.
    pub fn is_empty(&self) -> bool {
        self.shard.n == 0
    }
}

impl Iterator for ShardStream {
    type Item = Result<Spectrum>;

    fn next(&mut self) -> Option<Self::Item> {
        let i = self.next;
        if i >= self.shard.n {
            return None;
        }
        self.next += 1;
        let in_block = matches!(&self.block, Some(b) if i < b.end());
        if !in_block {
            let len = READ_BLOCK.min(self.shard.n - i);
            // A block that cannot be read is retried spectrum by spectrum,
            // so that only the broken spectra fail.
            let block = Block::load(&self.shard, i, len).or_else(|e| {
                if len > 1 {
                    Block::load(&self.shard, i, 1)
                } else {
                    Err(e)
                }
            });
            match block {
                Ok(b) => self.block = Some(b),
                Err(e) => {
                    self.block = None;
                    return Some(Err(e));
                }
            }
        }
        let b = self.block.as_ref()?;
        Some(b.spectrum(&self.shard, i))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.shard.n.saturating_sub(self.next);
        (left, Some(left))
    }
}
