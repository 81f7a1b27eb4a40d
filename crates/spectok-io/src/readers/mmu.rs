//! Multimodal Universe (MMU) HDF5 files.
//!
//! An MMU file holds one row per object, all datasets at the root:
//!
//! - 2-D `spectrum_*` datasets, `(objects × pixels)`, padded at the end of
//!   each row to the longest spectrum of the file: `spectrum_lambda` (Å,
//!   padded with −1), `spectrum_flux` (padded with its edge value),
//!   `spectrum_ivar` or `spectrum_flux_ivar` (padded with 0),
//!   `spectrum_mask` (bool, `true` = bad pixel, padded with `true`) and
//!   `spectrum_lsf_sigma`. Other 2-D `spectrum_*` datasets (e.g. APOGEE's
//!   `spectrum_pseudo_continuum_flux`, GALAH's `spectrum_norm_flux`) have no
//!   place in a [`Spectrum`] and are not read.
//! - 1-D per-object catalogue columns: `object_id` (the spectrum id) and any
//!   others (`ra`, `dec`, `Z`, `Z_ERR`, `ZWARNING`, `CLASS`, …).
//!
//! # Padding
//! A row's length is the number of pixels before its trailing run of
//! padding, a padding pixel being one whose wavelength is not a finite
//! positive number (MMU pads with −1; real wavelengths are > 0). The other
//! channels are cut to the same length; their own pad values are never
//! looked at. A row of padding only is an error item.
//!
//! # Channels
//! Flux, ivar and mask are passed on as the file holds them; a boolean mask
//! becomes 1 (bad) / 0 (good). Without a mask dataset every pixel gets 0.
//! One segment `"all"` covers the row, unless the file carries per-object
//! `spectrum_<name>_ind_start` / `spectrum_<name>_ind_end` columns (GALAH's
//! CCD ranges, inclusive ends), which become one segment per `<name>`
//! (lower-cased).
//!
//! MMU `spectrum_lsf_sigma` is a Gaussian σ whose unit depends on the survey
//! the file was built from: SDSS files carry the spPlate/spec `WDISP` (σ in
//! pixels; checked on the real file, where it equals the COADD `wdisp`),
//! DESI and GALAH files a σ fitted over pixel indices (pixels), APOGEE files
//! a σ in Å. [`Spectrum::lsf_sigma`] is in Å, so pixel values are converted
//! with the local pixel width, σ_Å = σ_pix · |dλ/di| (measured over ±4
//! pixels inside a segment); for surveys whose MMU LSF unit
//! is not known the LSF is left out. A 1-D `spectrum_lsf_sigma` (one σ per
//! object, as in DESI files) applies to every pixel of the row.
//!
//! # Labels
//! Every other 1-D per-object column becomes a label, matched
//! case-insensitively: `Z`/`REDSHIFT` → redshift, `Z_ERR`/`ZERR` →
//! redshift_err, `ZWARNING`/`ZWARN` → redshift_warning, `CLASS`/`SPECTYPE`
//! → class (normalised), `SUBCLASS` → subclass, `TEFF`, `LOGG`, `FE_H`,
//! `ALPHA_M` → the stellar fields. Any other numeric or boolean column goes
//! to `extra` under its lower-case name (integers too large to be exact in
//! an f64 go to `text` as decimal), any other text column to `text`.
//! Non-finite numbers and empty strings are treated as absent. Datasets of
//! other shapes or types (compound, multi-dimensional catalogue entries)
//! are not read.
//!
//! # Survey and medium
//! [`Spectrum::survey`] must be known; the reader never guesses it from
//! the wavelength range. For each row it takes, in this order:
//! 1. the root attribute `survey` (a spectok survey name, or `boss`,
//!    `eboss`, `segue`, `segue1`, `segue2` for SDSS);
//! 2. the row's value of a per-object `SURVEY` column, when it is such a
//!    name (MMU SDSS files copy specObj's `SURVEY`);
//! 3. a survey name among the `_`/`-`/`.`/`=`-separated words of the file
//!    name or of its three parent folders, nearest first (MMU files live at
//!    `<survey>/<subset>/healpix=N/001-of-001.hdf5`; the real sample is
//!    `sdss_healpix_sample.hdf5`). Two different names in the same path
//!    component are an error.
//!
//! When none applies, opening the file fails with an error saying how to
//! set the attribute. The medium is the root attribute `medium` (`vacuum` or
//! `air`) when present, else the survey's: air for GALAH, unknown for Gaia
//! XP, vacuum for the others (SDSS, DESI, APOGEE, LAMOST, MaNGA).
//!
//! Rows are streamed: each spectrum is read with one-row hyperslab
//! selections, never the whole 2-D dataset.

use std::path::{Path, PathBuf};

use hdf5::types::{FixedAscii, FixedUnicode, TypeDescriptor, VarLenAscii, VarLenUnicode};
use hdf5::{Dataset, H5Type, Hyperslab, Selection, SliceOrIndex};

use crate::error::{Error, Location, Result};
use crate::format::Format;
use crate::hdf5util::{self, one_line};
use crate::reader::{InputUnit, Reader, SpectrumIter};
use crate::spectrum::{Labels, Medium, Segment, Source, Spectrum, Survey};

/// Largest row length (pixels) the reader accepts; guards against corrupt
/// shapes before anything is allocated.
pub const MAX_PIXELS: usize = 1 << 24;

/// Longest fixed-length string (bytes) read from a catalogue column.
const MAX_FIXED_STR: usize = 1024;

/// Reader of Multimodal Universe HDF5 files ([`Format::MmuHdf5`]).
pub struct MmuReader;

impl Reader for MmuReader {
    fn format(&self) -> Format {
        Format::MmuHdf5
    }

    fn count(&self, unit: &InputUnit) -> Result<usize> {
        Ok(MmuFile::open(unit.main_file())?.rows)
    }

    fn read(&self, unit: &InputUnit) -> Result<SpectrumIter> {
        let file = MmuFile::open(unit.main_file())?;
        Ok(Box::new(MmuStream { file, next: 0 }))
    }
}

/// The survey name of a word, including SDSS sub-survey names.
fn survey_alias(word: &str) -> Option<Survey> {
    let w = word.trim().to_ascii_lowercase();
    if let Some(s) = Survey::from_name(&w) {
        return Some(s);
    }
    match w.as_str() {
        "boss" | "eboss" | "segue" | "segue1" | "segue2" => Some(Survey::Sdss),
        "apogee2" => Some(Survey::Apogee),
        _ => None,
    }
}

/// The survey named in the file name or its three parent folders (see the
/// module docs), nearest first.
fn survey_from_path(path: &Path) -> Result<Option<Survey>> {
    let mut components: Vec<String> = Vec::new();
    if let Some(stem) = path.file_stem() {
        components.push(stem.to_string_lossy().into_owned());
    }
    let mut dir = path.parent();
    for _ in 0..3 {
        let Some(d) = dir else { break };
        if let Some(name) = d.file_name() {
            components.push(name.to_string_lossy().into_owned());
        }
        dir = d.parent();
    }
    for comp in components {
        let mut found: Vec<Survey> = comp
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter_map(survey_alias)
            .collect();
        found.sort();
        found.dedup();
        match found.as_slice() {
            [] => continue,
            [one] => return Ok(Some(*one)),
            many => {
                let names: Vec<&str> = many.iter().map(|s| s.name()).collect();
                return Err(Error::bad(
                    Location::file(path).field("survey"),
                    format!(
                        "path component {comp:?} names several surveys ({}); set the root \
                         attribute `survey`",
                        names.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(None)
}

/// The medium a survey's wavelengths are given in.
fn survey_medium(s: Survey) -> Medium {
    match s {
        Survey::Galah => Medium::Air,
        Survey::GaiaXp => Medium::Unknown,
        Survey::Sdss
        | Survey::Desi
        | Survey::Apogee
        | Survey::LamostLrs
        | Survey::LamostMrs
        | Survey::Manga => Medium::Vacuum,
    }
}

/// Unit of MMU `spectrum_lsf_sigma` per survey (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LsfUnit {
    Pixel,
    Angstrom,
}

fn lsf_unit(s: Survey) -> Option<LsfUnit> {
    match s {
        Survey::Sdss | Survey::Desi | Survey::Galah => Some(LsfUnit::Pixel),
        Survey::Apogee => Some(LsfUnit::Angstrom),
        _ => None,
    }
}

/// Element type of a dataset, as far as the reader cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Float,
    Int,
    Uint,
    Bool,
    FixedAscii,
    FixedUnicode,
    VarAscii,
    VarUnicode,
}

impl Kind {
    fn of(ds: &Dataset) -> Option<Kind> {
        let d = ds.dtype().ok()?.to_descriptor().ok()?;
        Some(match d {
            TypeDescriptor::Float(_) => Kind::Float,
            TypeDescriptor::Integer(_) => Kind::Int,
            TypeDescriptor::Unsigned(_) => Kind::Uint,
            TypeDescriptor::Boolean => Kind::Bool,
            TypeDescriptor::FixedAscii(n) if n <= MAX_FIXED_STR => Kind::FixedAscii,
            TypeDescriptor::FixedUnicode(n) if n <= MAX_FIXED_STR => Kind::FixedUnicode,
            TypeDescriptor::VarLenAscii => Kind::VarAscii,
            TypeDescriptor::VarLenUnicode => Kind::VarUnicode,
            _ => return None,
        })
    }

    fn is_numeric(self) -> bool {
        matches!(self, Kind::Float | Kind::Int | Kind::Uint | Kind::Bool)
    }
}

/// One value of a catalogue column.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Float(f64),
    Int(i64),
    Uint(u64),
    Bool(bool),
    Text(String),
}

impl Value {
    /// The value as a number, if it is one and exactly representable.
    fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Float(v) => Some(v),
            Value::Int(v) => exact_f64_i(v),
            Value::Uint(v) => exact_f64_u(v),
            Value::Bool(b) => Some(if b { 1.0 } else { 0.0 }),
            Value::Text(_) => None,
        }
    }

    /// The value as an integer, if it is an integral number.
    fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(v) => Some(v),
            Value::Uint(v) => i64::try_from(v).ok(),
            Value::Float(v) if v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e15 => {
                Some(v as i64)
            }
            Value::Bool(b) => Some(i64::from(b)),
            _ => None,
        }
    }

    /// The value as text: strings trimmed, numbers in decimal.
    fn to_text(&self) -> String {
        match self {
            Value::Float(v) => v.to_string(),
            Value::Int(v) => v.to_string(),
            Value::Uint(v) => v.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Text(s) => s.trim().to_string(),
        }
    }
}

const F64_EXACT: u64 = 1 << 53;

fn exact_f64_i(v: i64) -> Option<f64> {
    (v.unsigned_abs() <= F64_EXACT).then_some(v as f64)
}

fn exact_f64_u(v: u64) -> Option<f64> {
    (v <= F64_EXACT).then_some(v as f64)
}

/// Reads element `row` of a 1-D dataset.
fn read_one<T: H5Type + Clone>(ds: &Dataset, row: usize) -> std::result::Result<T, String> {
    let v = ds
        .read_slice_1d::<T, _>(row..row + 1)
        .map_err(|e| one_line(&e))?;
    v.first()
        .cloned()
        .ok_or_else(|| "no value read".to_string())
}

/// Reads row `row` of a 2-D dataset of `ncol` columns.
fn read_row<T: H5Type + Clone>(
    ds: &Dataset,
    row: usize,
    ncol: usize,
) -> std::result::Result<Vec<T>, String> {
    let sel = Selection::from(Hyperslab::from(vec![
        SliceOrIndex::Index(row),
        SliceOrIndex::from(..),
    ]));
    let v = ds
        .read_slice_1d::<T, _>(sel)
        .map_err(|e| one_line(&e))?
        .to_vec();
    if v.len() != ncol {
        return Err(format!("read {} of {ncol} values", v.len()));
    }
    Ok(v)
}

fn bytes_to_string(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A 1-D per-object dataset.
struct Column {
    name: String,
    ds: Dataset,
    kind: Kind,
}

impl Column {
    fn read(&self, row: usize) -> std::result::Result<Value, String> {
        Ok(match self.kind {
            Kind::Float => Value::Float(read_one::<f64>(&self.ds, row)?),
            Kind::Int => Value::Int(read_one::<i64>(&self.ds, row)?),
            Kind::Uint => Value::Uint(read_one::<u64>(&self.ds, row)?),
            Kind::Bool => Value::Bool(read_one::<bool>(&self.ds, row)?),
            Kind::FixedAscii => Value::Text(bytes_to_string(
                read_one::<FixedAscii<MAX_FIXED_STR>>(&self.ds, row)?.as_bytes(),
            )),
            Kind::FixedUnicode => Value::Text(bytes_to_string(
                read_one::<FixedUnicode<MAX_FIXED_STR>>(&self.ds, row)?.as_bytes(),
            )),
            Kind::VarAscii => Value::Text(bytes_to_string(
                read_one::<VarLenAscii>(&self.ds, row)?.as_bytes(),
            )),
            Kind::VarUnicode => Value::Text(bytes_to_string(
                read_one::<VarLenUnicode>(&self.ds, row)?.as_bytes(),
            )),
        })
    }
}

/// How a row's survey is found (see the module docs).
struct SurveyRule {
    attribute: Option<Survey>,
    column: Option<Column>,
    path: Option<Survey>,
}

/// `spectrum_lsf_sigma`, per pixel (2-D) or per object (1-D).
struct Lsf {
    ds: Dataset,
    per_pixel: bool,
}

/// A segment given by `spectrum_<name>_ind_start` / `_ind_end` columns.
struct SegmentColumns {
    name: String,
    start: Column,
    end: Column,
}

/// An MMU file opened and checked: shapes agree, the survey is known.
struct MmuFile {
    path: PathBuf,
    rows: usize,
    npix: usize,
    lambda: Dataset,
    flux: Dataset,
    ivar: Dataset,
    ivar_name: &'static str,
    mask: Option<(Dataset, Kind)>,
    lsf: Option<Lsf>,
    id: Column,
    labels: Vec<Column>,
    segments: Vec<SegmentColumns>,
    survey: SurveyRule,
    medium: Option<Medium>,
}

/// Reads a string attribute of the file root, if present.
fn root_attr_text(file: &hdf5::File, path: &Path, name: &str) -> Result<Option<String>> {
    let Ok(attr) = file.attr(name) else {
        return Ok(None);
    };
    let bad = |why: String| Error::bad(Location::file(path).field(format!("@{name}")), why);
    let d = attr
        .dtype()
        .and_then(|t| t.to_descriptor())
        .map_err(|e| bad(format!("cannot read attribute type: {}", one_line(&e))))?;
    let text = match d {
        TypeDescriptor::VarLenUnicode => attr
            .read_scalar::<VarLenUnicode>()
            .map(|s| bytes_to_string(s.as_bytes())),
        TypeDescriptor::VarLenAscii => attr
            .read_scalar::<VarLenAscii>()
            .map(|s| bytes_to_string(s.as_bytes())),
        TypeDescriptor::FixedAscii(n) if n <= MAX_FIXED_STR => attr
            .read_scalar::<FixedAscii<MAX_FIXED_STR>>()
            .map(|s| bytes_to_string(s.as_bytes())),
        TypeDescriptor::FixedUnicode(n) if n <= MAX_FIXED_STR => attr
            .read_scalar::<FixedUnicode<MAX_FIXED_STR>>()
            .map(|s| bytes_to_string(s.as_bytes())),
        other => return Err(bad(format!("expected a text attribute, found {other}"))),
    }
    .map_err(|e| bad(format!("cannot read attribute: {}", one_line(&e))))?;
    Ok(Some(text.trim().to_string()))
}

impl MmuFile {
    fn open(path: &Path) -> Result<MmuFile> {
        let file = hdf5util::open(path)?;
        let loc = |ds: &str| Location::file(path).hdu(ds);
        let names = file.member_names().map_err(|e| {
            Error::bad(
                Location::file(path),
                format!("cannot list datasets: {}", one_line(&e)),
            )
        })?;
        let has = |n: &str| names.iter().any(|x| x == n);
        let dataset = |n: &str, field: &str| -> Result<Dataset> {
            file.dataset(n).map_err(|e| {
                let why = if has(n) {
                    format!("cannot open dataset: {}", one_line(&e))
                } else {
                    "dataset missing".to_string()
                };
                Error::bad(loc(n).field(field), why)
            })
        };

        let lambda = dataset("spectrum_lambda", "wavelength")?;
        let shape = lambda.shape();
        let [rows, npix] = shape[..] else {
            return Err(Error::bad(
                loc("spectrum_lambda").field("wavelength"),
                format!("expected a 2-D (objects × pixels) dataset, found shape {shape:?}"),
            ));
        };
        if npix > MAX_PIXELS {
            return Err(Error::bad(
                loc("spectrum_lambda").field("wavelength"),
                format!("rows of {npix} pixels exceed the limit of {MAX_PIXELS}"),
            ));
        }
        let check_2d = |ds: &Dataset, n: &str, field: &str| -> Result<Kind> {
            let s = ds.shape();
            if s != [rows, npix] {
                return Err(Error::bad(
                    loc(n).field(field),
                    format!(
                        "shape {s:?} disagrees with spectrum_lambda {:?}",
                        [rows, npix]
                    ),
                ));
            }
            match Kind::of(ds) {
                Some(k) if k.is_numeric() => Ok(k),
                _ => Err(Error::bad(
                    loc(n).field(field),
                    "expected numbers (or booleans)".to_string(),
                )),
            }
        };
        check_2d(&lambda, "spectrum_lambda", "wavelength")?;
        let flux = dataset("spectrum_flux", "flux")?;
        check_2d(&flux, "spectrum_flux", "flux")?;
        let ivar_name = if has("spectrum_ivar") || !has("spectrum_flux_ivar") {
            "spectrum_ivar"
        } else {
            "spectrum_flux_ivar"
        };
        let ivar = dataset(ivar_name, "ivar")?;
        check_2d(&ivar, ivar_name, "ivar")?;
        let mask = if has("spectrum_mask") {
            let ds = dataset("spectrum_mask", "mask")?;
            let k = check_2d(&ds, "spectrum_mask", "mask")?;
            if k == Kind::Float {
                return Err(Error::bad(
                    loc("spectrum_mask").field("mask"),
                    "expected booleans or integer bits, found floating point",
                ));
            }
            Some((ds, k))
        } else {
            None
        };

        let id_ds = dataset("object_id", "id")?;
        let id = Self::column("object_id", id_ds, rows).ok_or_else(|| {
            Error::bad(
                loc("object_id").field("id"),
                "expected a 1-D per-object dataset of numbers or text",
            )
        })?;

        // Survey and medium.
        let attribute = match root_attr_text(&file, path, "survey")? {
            Some(s) => Some(survey_alias(&s).ok_or_else(|| {
                Error::bad(
                    Location::file(path).field("@survey"),
                    format!("unknown survey name {s:?}"),
                )
            })?),
            None => None,
        };
        let medium = match root_attr_text(&file, path, "medium")? {
            Some(m) => Some(Medium::from_name(&m.to_ascii_lowercase()).ok_or_else(|| {
                Error::bad(
                    Location::file(path).field("@medium"),
                    format!("unknown medium {m:?} (expected vacuum or air)"),
                )
            })?),
            None => None,
        };
        let survey_col_name = names
            .iter()
            .find(|n| n.eq_ignore_ascii_case("survey"))
            .cloned();
        let survey_column = match &survey_col_name {
            Some(n) => file
                .dataset(n)
                .ok()
                .and_then(|ds| Self::column(n, ds, rows)),
            None => None,
        };
        let path_survey = if attribute.is_none() {
            survey_from_path(path)?
        } else {
            None
        };
        if attribute.is_none() && survey_column.is_none() && path_survey.is_none() {
            return Err(Error::bad(
                Location::file(path).field("survey"),
                "cannot determine the survey: the file has no `survey` attribute and no SURVEY \
                 column, and neither its name nor its folders name a survey (sdss, boss, desi, \
                 apogee, galah, …); set the root attribute, e.g. h5py: f.attrs['survey'] = 'sdss'",
            ));
        }

        // LSF.
        let lsf = if has("spectrum_lsf_sigma") {
            let ds = dataset("spectrum_lsf_sigma", "lsf_sigma")?;
            let per_pixel = ds.ndim() == 2;
            if per_pixel {
                check_2d(&ds, "spectrum_lsf_sigma", "lsf_sigma")?;
            } else if ds.shape() != [rows] || !Kind::of(&ds).is_some_and(Kind::is_numeric) {
                return Err(Error::bad(
                    loc("spectrum_lsf_sigma").field("lsf_sigma"),
                    format!(
                        "expected numbers of shape {:?} or {:?}, found {:?}",
                        [rows, npix],
                        [rows],
                        ds.shape()
                    ),
                ));
            }
            Some(Lsf { ds, per_pixel })
        } else {
            None
        };

        // Segment index columns and labels.
        let mut segments = Vec::new();
        let mut labels = Vec::new();
        let mut sorted = names.clone();
        sorted.sort();
        for n in &sorted {
            if let Some(seg) = n
                .strip_prefix("spectrum_")
                .and_then(|r| r.strip_suffix("_ind_start"))
            {
                let end_name = format!("spectrum_{seg}_ind_end");
                let start = file
                    .dataset(n)
                    .ok()
                    .and_then(|ds| Self::column(n, ds, rows));
                let end = file
                    .dataset(&end_name)
                    .ok()
                    .and_then(|ds| Self::column(&end_name, ds, rows));
                match (start, end) {
                    (Some(start), Some(end))
                        if start.kind.is_numeric() && end.kind.is_numeric() =>
                    {
                        segments.push(SegmentColumns {
                            name: seg.to_ascii_lowercase(),
                            start,
                            end,
                        });
                    }
                    _ => {
                        return Err(Error::bad(
                            loc(n).field("segments"),
                            format!("needs a numeric per-object partner {end_name}"),
                        ))
                    }
                }
                continue;
            }
            if n.starts_with("spectrum_") || n == "object_id" || Some(n) == survey_col_name.as_ref()
            {
                continue;
            }
            let Ok(ds) = file.dataset(n) else { continue };
            if let Some(c) = Self::column(n, ds, rows) {
                labels.push(c);
            }
        }
        let survey = SurveyRule {
            attribute,
            column: survey_column,
            path: path_survey,
        };
        // The SURVEY column is also a text label.
        if let Some(c) = survey_col_name
            .as_ref()
            .and_then(|n| Self::column(n, file.dataset(n).ok()?, rows))
        {
            labels.push(c);
        }

        Ok(MmuFile {
            path: path.to_path_buf(),
            rows,
            npix,
            lambda,
            flux,
            ivar,
            ivar_name,
            mask,
            lsf,
            id,
            labels,
            segments,
            survey,
            medium,
        })
    }

    /// A per-object column, or `None` when the dataset is not 1-D of
    /// `rows` values of a supported type.
    fn column(name: &str, ds: Dataset, rows: usize) -> Option<Column> {
        if ds.shape() != [rows] {
            return None;
        }
        Kind::of(&ds).map(|kind| Column {
            name: name.to_string(),
            ds,
            kind,
        })
    }

    fn loc(&self, ds: &str, field: &str, row: usize) -> Location {
        Location::file(&self.path)
            .hdu(ds)
            .field(field)
            .row(row as u64)
    }

    fn survey_of(&self, row: usize) -> Result<Survey> {
        if let Some(s) = self.survey.attribute {
            return Ok(s);
        }
        if let Some(c) = &self.survey.column {
            let v = c
                .read(row)
                .map_err(|e| Error::bad(self.loc(&c.name, "survey", row), e))?;
            if let Some(s) = survey_alias(&v.to_text()) {
                return Ok(s);
            }
            if let Some(s) = self.survey.path {
                return Ok(s);
            }
            return Err(Error::bad(
                self.loc(&c.name, "survey", row),
                format!(
                    "{:?} is no survey spectok knows, and the file name names none; set the \
                     root attribute `survey`",
                    v.to_text()
                ),
            ));
        }
        self.survey.path.ok_or_else(|| {
            Error::bad(
                Location::file(&self.path).field("survey"),
                "cannot determine the survey",
            )
        })
    }

    fn read_spectrum(&self, row: usize) -> Result<Spectrum> {
        let npix = self.npix;
        let rd = |e: String, ds: &str, field: &str| {
            Error::bad(self.loc(ds, field, row), format!("cannot read row: {e}"))
        };
        let mut wavelength = read_row::<f64>(&self.lambda, row, npix)
            .map_err(|e| rd(e, "spectrum_lambda", "wavelength"))?;
        let n = wavelength
            .iter()
            .rposition(|w| w.is_finite() && *w > 0.0)
            .map_or(0, |i| i + 1);
        if n == 0 {
            return Err(Error::bad(
                self.loc("spectrum_lambda", "wavelength", row),
                "no pixels: the row holds padding only (no wavelength > 0)",
            ));
        }
        wavelength.truncate(n);
        let mut flux =
            read_row::<f32>(&self.flux, row, npix).map_err(|e| rd(e, "spectrum_flux", "flux"))?;
        flux.truncate(n);
        let mut ivar =
            read_row::<f32>(&self.ivar, row, npix).map_err(|e| rd(e, self.ivar_name, "ivar"))?;
        ivar.truncate(n);
        let mask = match &self.mask {
            None => vec![0u32; n],
            Some((ds, kind)) => {
                let rdm = |e| rd(e, "spectrum_mask", "mask");
                let mut m: Vec<u32> = match kind {
                    Kind::Bool => read_row::<bool>(ds, row, npix)
                        .map_err(rdm)?
                        .into_iter()
                        .map(u32::from)
                        .collect(),
                    // Bitmasks keep their low 32 bits (survey masks are 32-bit).
                    Kind::Uint => read_row::<u64>(ds, row, npix)
                        .map_err(rdm)?
                        .into_iter()
                        .map(|v| v as u32)
                        .collect(),
                    _ => read_row::<i64>(ds, row, npix)
                        .map_err(rdm)?
                        .into_iter()
                        .map(|v| v as u32)
                        .collect(),
                };
                m.truncate(n);
                m
            }
        };

        let survey = self.survey_of(row)?;
        let medium = self.medium.unwrap_or_else(|| survey_medium(survey));

        let lsf_pix = match (&self.lsf, lsf_unit(survey)) {
            (Some(l), Some(unit)) => {
                let mut v = if l.per_pixel {
                    read_row::<f32>(&l.ds, row, npix)
                        .map_err(|e| rd(e, "spectrum_lsf_sigma", "lsf_sigma"))?
                } else {
                    let s = read_one::<f32>(&l.ds, row)
                        .map_err(|e| rd(e, "spectrum_lsf_sigma", "lsf_sigma"))?;
                    vec![s; n]
                };
                v.truncate(n);
                Some((v, unit))
            }
            _ => None,
        };

        let id = self
            .id
            .read(row)
            .map_err(|e| rd(e, "object_id", "id"))?
            .to_text();

        let segments = self.segments_of(row, n)?;
        let labels = self.labels_of(row)?;

        let mut s = Spectrum {
            id,
            survey,
            source: Source {
                file: self.path.clone(),
                hdu: "spectrum_flux".into(),
                row: Some(row as u64),
            },
            wavelength,
            flux,
            ivar,
            mask,
            segments,
            medium,
            lsf_sigma: lsf_pix.as_ref().map(|(v, _)| v.clone()),
            labels,
        };
        if let Err((field, why)) = s.validate() {
            let ds = match field {
                "flux" => "spectrum_flux",
                "ivar" => self.ivar_name,
                "mask" => "spectrum_mask",
                "lsf_sigma" => "spectrum_lsf_sigma",
                _ => "spectrum_lambda",
            };
            return Err(Error::bad(self.loc(ds, field, row), why));
        }
        if let Some((pix, LsfUnit::Pixel)) = lsf_pix {
            s.lsf_sigma = Some(lsf_pixels_to_angstrom(&pix, &s.wavelength, &s.segments));
        }
        Ok(s)
    }

    fn segments_of(&self, row: usize, n: usize) -> Result<Vec<Segment>> {
        if self.segments.is_empty() {
            return Ok(vec![Segment {
                name: "all".into(),
                start: 0,
                end: n,
            }]);
        }
        let mut out = Vec::with_capacity(self.segments.len());
        for sc in &self.segments {
            let get = |c: &Column| -> Result<usize> {
                let v = c
                    .read(row)
                    .map_err(|e| Error::bad(self.loc(&c.name, "segments", row), e))?;
                v.as_i64()
                    .and_then(|i| usize::try_from(i).ok())
                    .ok_or_else(|| {
                        Error::bad(
                            self.loc(&c.name, "segments", row),
                            format!("{} is not a pixel index", v.to_text()),
                        )
                    })
            };
            let start = get(&sc.start)?;
            let last = get(&sc.end)?;
            out.push(Segment {
                name: sc.name.clone(),
                start,
                end: last.saturating_add(1),
            });
        }
        out.sort_by_key(|s| s.start);
        Ok(out)
    }

    fn labels_of(&self, row: usize) -> Result<Labels> {
        let mut l = Labels::default();
        for c in &self.labels {
            let v = c
                .read(row)
                .map_err(|e| Error::bad(self.loc(&c.name, &c.name, row), e))?;
            let key = c.name.to_ascii_lowercase();
            let num = v.as_f64().filter(|x| x.is_finite());
            let text = match &v {
                Value::Text(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
                _ => None,
            };
            let known_f64 = match key.as_str() {
                "z" | "redshift" => Some(&mut l.redshift),
                "z_err" | "zerr" | "redshift_err" => Some(&mut l.redshift_err),
                "teff" => Some(&mut l.teff),
                "logg" => Some(&mut l.logg),
                "fe_h" => Some(&mut l.fe_h),
                "alpha_m" => Some(&mut l.alpha_m),
                _ => None,
            };
            if let Some(slot) = known_f64 {
                if matches!(v, Value::Float(_) | Value::Int(_) | Value::Uint(_)) {
                    *slot = num;
                    continue;
                }
            }
            match key.as_str() {
                "zwarning" | "zwarn" if !matches!(v, Value::Text(_)) => {
                    if let Some(w) = v.as_i64() {
                        l.redshift_warning = Some(w);
                        continue;
                    }
                }
                "class" | "spectype" if matches!(v, Value::Text(_)) => {
                    l.class = text.as_deref().map(Labels::normalise_class);
                    continue;
                }
                "subclass" if matches!(v, Value::Text(_)) => {
                    l.subclass = text;
                    continue;
                }
                _ => {}
            }
            match v {
                Value::Text(_) => {
                    if let Some(t) = text {
                        l.text.insert(key, t);
                    }
                }
                other => match other.as_f64() {
                    Some(x) if x.is_finite() => {
                        l.extra.insert(key, x);
                    }
                    Some(_) => {}
                    // Integers beyond 2^53 would lose digits as f64.
                    None => {
                        l.text.insert(key, other.to_text());
                    }
                },
            }
        }
        Ok(l)
    }
}

/// Half-width (pixels) of the window over which the local pixel width is
/// measured: stored wavelengths are rounded (f32 in MMU files, from f32
/// `loglam` in SDSS), so neighbouring differences scatter by ~0.3 %; over
/// ±4 pixels the width agrees with the nominal dispersion to 0.1 %.
const WIDTH_HALF_WINDOW: usize = 4;

/// Converts a σ in pixels to Å with the local pixel width |dλ/di| of each
/// segment: (λ[b] − λ[a]) / (b − a) over the window a..=b of ±
/// [`WIDTH_HALF_WINDOW`] pixels around i, cut at the segment's ends (NaN
/// for a one-pixel segment). Expects a validated spectrum.
fn lsf_pixels_to_angstrom(sigma_pix: &[f32], wl: &[f64], segments: &[Segment]) -> Vec<f32> {
    let mut out = vec![f32::NAN; wl.len()];
    for seg in segments {
        let (Some(w), Some(sig), Some(dst)) = (
            wl.get(seg.start..seg.end),
            sigma_pix.get(seg.start..seg.end),
            out.get_mut(seg.start..seg.end),
        ) else {
            continue;
        };
        let m = w.len();
        if m < 2 {
            continue;
        }
        for (i, (d, s)) in dst.iter_mut().zip(sig).enumerate() {
            let a = i.saturating_sub(WIDTH_HALF_WINDOW);
            let b = (i + WIDTH_HALF_WINDOW).min(m - 1);
            let width = (w[b] - w[a]) / (b - a) as f64;
            *d = (f64::from(*s) * width.abs()) as f32;
        }
    }
    out
}

/// The stream of spectra of one MMU file, one row at a time.
struct MmuStream {
    file: MmuFile,
    next: usize,
}

impl Iterator for MmuStream {
    type Item = Result<Spectrum>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.file.rows {
            return None;
        }
        let row = self.next;
        self.next += 1;
        Some(self.file.read_spectrum(row))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.file.rows.saturating_sub(self.next);
        (left, Some(left))
    }
}
