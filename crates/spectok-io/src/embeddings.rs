//! The HDF5 files spectok's model writes: embeddings (`spectok embed`,
//! `spectok merge`) and reconstructions (`spectok reconstruct`).
//!
//! Both are plain HDF5 (readable with h5py or astropy + h5py), written in
//! the style of the [`crate::shard`] format: every dataset at the root (or
//! in the `failed` group) is chunked and compressed with shuffle + deflate
//! when the HDF5 library has deflate, strings are variable-length UTF-8,
//! ragged data is concatenated with an `*_offsets` dataset of N+1 values
//! (row i owns `data[offsets[i]:offsets[i+1]]`), and the file is filled
//! under `PATH.tmp` and renamed to `PATH` only when complete, so a crash
//! never leaves a partial file under the final name. An existing `PATH` is
//! replaced only when the writer was created with `overwrite`.
//!
//! # Embeddings file
//!
//! Root attributes:
//!
//! | attribute | type | content |
//! |---|---|---|
//! | `spectok_embeddings_version` | u32 | [`EMBEDDINGS_VERSION`] (marks the file) |
//! | `embedding_dim` | u64 | D, the model width |
//! | `has_tokens` | u8 | 1 when the token datasets are present |
//! | `has_token_ids` | u8 | 1 when `token_ids` is present (quantised model) |
//! | `shard_index`, `shard_count` | u64 | part i of n of a `--shard i/n` run (0 and 1 otherwise) |
//! | `checkpoint` | string | the checkpoint directory the model was loaded from |
//! | `checkpoint_sha256` | string | SHA-256 (hex) of its `model.safetensors` |
//! | `model_config` | string | the model config, JSON |
//! | `prepare_config` | string | the data preparation config, JSON |
//! | `inputs` | string | the inputs as given, a JSON array of strings |
//! | `spectok_version` | string | version of the writing program |
//!
//! With N embedded spectra, M tokens in all, E `extra` and T `text` labels
//! in all and K failures:
//!
//! | dataset | type | shape | content |
//! |---|---|---|---|
//! | `object_id` | string | N | object identifier |
//! | `survey` | string | N | [`Survey::name`] |
//! | `source_file`, `source_hdu` | string | N | where the spectrum was read |
//! | `source_row` | i64 | N | row in the source; −1 = none |
//! | `embedding` | f32 | N × D | pooled embedding (mean of the valid tokens) |
//! | `scale` | f64 | N | flux scale the spectrum was divided by (file units) |
//! | `patches`, `valid_patches` | u32 | N | patches of the spectrum, and those the encoder attended to |
//! | `label_present` | u16 | N | bit mask of the optional labels present (bits as in the shard format) |
//! | `redshift`, `redshift_err`, `teff`, `logg`, `fe_h`, `alpha_m` | f64 | N | NaN when absent |
//! | `redshift_warning` | i64 | N | 0 when absent |
//! | `class`, `subclass` | string | N | empty when absent |
//! | `extra_offsets` / `extra_names`, `extra_values` | u64 / string, f64 | N+1 / E | further numeric labels |
//! | `text_offsets` / `text_names`, `text_values` | u64 / string | N+1 / T | further text labels |
//! | `scale_token` | f32 | N × D | the scale token (with tokens) |
//! | `token_offsets` | u64 | N+1 | spectrum i owns tokens `token_offsets[i]:token_offsets[i+1]` (with tokens) |
//! | `tokens` | f32 | M × D | one token per valid patch, in wavelength order within each arm (with tokens) |
//! | `token_center` | f64 | M | centre wavelength of each token's patch, Å (with tokens) |
//! | `token_ids` | u32 | M | quantiser code of each token (with tokens, quantised models only) |
//! | `failed/object_id` | string | K | id of a spectrum not embedded; empty when unknown (a whole file failed) |
//! | `failed/source_file`, `failed/source_hdu` | string | K | where; hdu empty when unknown |
//! | `failed/source_row` | i64 | K | row; −1 = none |
//! | `failed/stage` | string | K | [`FailureStage::name`]: `input`, `open`, `read`, `prepare`, `encode` |
//! | `failed/reason` | string | K | one line saying why |
//!
//! `label_present` bits, from bit 0: redshift, redshift_err,
//! redshift_warning, class, subclass, teff, logg, fe_h, alpha_m.
//!
//! Reading it from Python:
//!
//! ```text
//! import h5py
//! with h5py.File("embeddings.h5") as f:
//!     X = f["embedding"][:]                       # (N, D)
//!     ids = f["object_id"].asstr()[:]
//!     z = f["redshift"][:]                        # NaN when absent
//!     off = f["token_offsets"][:]                 # with --tokens
//!     toks_0 = f["tokens"][off[0]:off[1]]         # tokens of spectrum 0
//!     lam_0 = f["token_center"][off[0]:off[1]]
//!     failed = list(zip(f["failed/source_file"].asstr()[:], f["failed/reason"].asstr()[:]))
//! ```
//!
//! Parts written by `--shard i/n` runs are joined by [`merge`], which
//! checks that they come from the same checkpoint, config and inputs and
//! that each part 0..n appears once.
//!
//! # Reconstruction file
//!
//! Root attributes: `spectok_reconstruction_version` ([`RECONSTRUCTION_VERSION`]),
//! `target` (`own`, a survey name or the file whose grid was used), and
//! the run attributes above (`checkpoint`, `checkpoint_sha256`,
//! `model_config`, `prepare_config`, `inputs`, `spectok_version`). With N
//! spectra, P input pixels, Q output pixels and S output segments in all:
//!
//! | dataset | type | shape | content |
//! |---|---|---|---|
//! | `object_id`, `survey`, `source_file`, `source_hdu`, `source_row`, `scale` | | N | as in the embeddings file |
//! | `input_offsets` | u64 | N+1 | spectrum i owns input pixels `input_offsets[i]:input_offsets[i+1]` |
//! | `input_wavelength` | f64 | P | Å, as read |
//! | `input_flux`, `input_ivar` | f32 | P | as read |
//! | `input_valid` | u8 | P | 1 where the pixel passes the run's invalid-pixel rules |
//! | `output_offsets` | u64 | N+1 | spectrum i owns output pixels `output_offsets[i]:output_offsets[i+1]` |
//! | `output_wavelength` | f64 | Q | the target grid, Å |
//! | `output_flux` | f32 | Q | the model's reconstruction, in the input's flux units |
//! | `segment_offsets` | u64 | N+1 | spectrum i owns segments `segment_offsets[i]:segment_offsets[i+1]` |
//! | `segment_names` | string | S | arm/chip/CCD of the target grid |
//! | `segment_starts`, `segment_ends` | u64 | S | output pixel range, relative to the spectrum |
//! | `failed/*` | | K | as in the embeddings file |
//!
//! Reading validates lengths and offsets: a malformed file gives an
//! [`Error`] naming the dataset and row, never a panic.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use hdf5::types::VarLenUnicode;
use hdf5::{Dataset, Group, H5Type};

use crate::error::{Error, Location, Result};
use crate::hdf5util::{self, one_line};
use crate::shard::tmp_path;
use crate::spectrum::{Labels, Segment, Source, Survey};

/// Root attribute marking an embeddings file (value: format version).
pub const EMBEDDINGS_MARKER: &str = "spectok_embeddings_version";
/// Version written to (and the only one read from) [`EMBEDDINGS_MARKER`].
pub const EMBEDDINGS_VERSION: u32 = 1;
/// Root attribute marking a reconstruction file (value: format version).
pub const RECONSTRUCTION_MARKER: &str = "spectok_reconstruction_version";
/// Version written to (and the only one read from) [`RECONSTRUCTION_MARKER`].
pub const RECONSTRUCTION_VERSION: u32 = 1;
/// Group holding the spectra that could not be processed.
pub const FAILED_GROUP: &str = "failed";

/// Records buffered by a writer before they are appended to the file.
pub const FLUSH_RECORDS: usize = 1024;

/// Largest embedding width a file may declare.
pub const MAX_DIM: usize = 1 << 16;

/// Rows per chunk of 1-D datasets; values per chunk of 2-D datasets.
const ROW_CHUNK: usize = 1 << 12;
const VALUE_CHUNK: usize = 1 << 16;
/// Records read per block when streaming a file.
const READ_BLOCK: usize = 256;

const BIT_REDSHIFT: u16 = 1 << 0;
const BIT_REDSHIFT_ERR: u16 = 1 << 1;
const BIT_REDSHIFT_WARNING: u16 = 1 << 2;
const BIT_CLASS: u16 = 1 << 3;
const BIT_SUBCLASS: u16 = 1 << 4;
const BIT_TEFF: u16 = 1 << 5;
const BIT_LOGG: u16 = 1 << 6;
const BIT_FE_H: u16 = 1 << 7;
const BIT_ALPHA_M: u16 = 1 << 8;

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// One of `count` disjoint parts of a run's inputs (`--shard index/count`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShardPart {
    /// 0-based part number, below `count`.
    pub index: usize,
    /// Number of parts, at least 1.
    pub count: usize,
}

impl ShardPart {
    /// The whole input (part 0 of 1).
    pub const WHOLE: ShardPart = ShardPart { index: 0, count: 1 };

    /// Part `index` of `count`, or why not.
    pub fn new(index: usize, count: usize) -> std::result::Result<ShardPart, String> {
        if count == 0 {
            return Err("the number of parts must be at least 1".into());
        }
        if index >= count {
            return Err(format!(
                "part {index} does not exist among {count} (parts are numbered 0 to {})",
                count - 1
            ));
        }
        Ok(ShardPart { index, count })
    }

    /// Whether this is the whole input.
    pub fn is_whole(&self) -> bool {
        self.count == 1
    }
}

impl FromStr for ShardPart {
    type Err = String;

    /// Parses `i/n`, e.g. `3/16`.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected i/n, e.g. 0/4"))?;
        let i: usize = i
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: {i:?} is not a part number"))?;
        let n: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: {n:?} is not a number of parts"))?;
        ShardPart::new(i, n).map_err(|e| format!("{s:?}: {e}"))
    }
}

impl std::fmt::Display for ShardPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What produced a file: the model and the run's inputs (root attributes
/// shared by embeddings and reconstruction files).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunInfo {
    /// The checkpoint directory the model was loaded from.
    pub checkpoint: String,
    /// SHA-256 (lower-case hex) of the checkpoint's `model.safetensors`.
    pub checkpoint_sha256: String,
    /// The model config, JSON.
    pub model_config: String,
    /// The data preparation config, JSON.
    pub prepare_config: String,
    /// The inputs as given on the command line.
    pub inputs: Vec<String>,
    /// Version of the program that wrote the file.
    pub spectok_version: String,
}

/// File-level description of an embeddings file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddingsMeta {
    /// Model and inputs.
    pub run: RunInfo,
    /// Width D of every embedding and token.
    pub dim: usize,
    /// Whether token sequences are stored.
    pub tokens: bool,
    /// Whether quantiser codes are stored with the tokens.
    pub token_ids: bool,
    /// Which part of a sharded run the file holds.
    pub part: ShardPart,
}

/// The token sequence of one spectrum.
#[derive(Clone, Debug, PartialEq)]
pub struct Tokens {
    /// The scale token, D values.
    pub scale_token: Vec<f32>,
    /// `n × D` values: one token per valid patch.
    pub values: Vec<f32>,
    /// Centre wavelength of each token's patch, Å (n values).
    pub center: Vec<f64>,
    /// Quantiser code of each token (n values), for quantised models.
    pub ids: Option<Vec<u32>>,
}

impl Tokens {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.center.len()
    }

    /// Whether there is no token.
    pub fn is_empty(&self) -> bool {
        self.center.is_empty()
    }
}

/// One embedded spectrum.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingRecord {
    /// Object identifier.
    pub object_id: String,
    /// Survey of the spectrum.
    pub survey: Survey,
    /// Where it was read.
    pub source: Source,
    /// Labels carried from the input.
    pub labels: Labels,
    /// The flux scale the spectrum was divided by, in the file's units.
    pub scale: f64,
    /// Patches of the spectrum.
    pub patches: u32,
    /// Patches the encoder attended to (the tokens).
    pub valid_patches: u32,
    /// The pooled embedding, D values.
    pub embedding: Vec<f32>,
    /// The token sequence, when the file stores tokens.
    pub tokens: Option<Tokens>,
}

/// Where in a run a spectrum or input was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureStage {
    /// The input could not be planned: no such file, unrecognised or
    /// refused format.
    Input,
    /// The file (or CCD group) could not be opened as its format.
    Open,
    /// One spectrum of a file could not be read.
    Read,
    /// The spectrum was read but rejected by data preparation.
    Prepare,
    /// The model gave a non-finite result for the spectrum.
    Encode,
}

impl FailureStage {
    /// All stages, in pipeline order.
    pub const ALL: [FailureStage; 5] = [
        FailureStage::Input,
        FailureStage::Open,
        FailureStage::Read,
        FailureStage::Prepare,
        FailureStage::Encode,
    ];

    /// Lower-case name, as stored in `failed/stage`.
    pub fn name(self) -> &'static str {
        match self {
            FailureStage::Input => "input",
            FailureStage::Open => "open",
            FailureStage::Read => "read",
            FailureStage::Prepare => "prepare",
            FailureStage::Encode => "encode",
        }
    }

    /// Parses [`FailureStage::name`] back.
    pub fn from_name(s: &str) -> Option<FailureStage> {
        FailureStage::ALL.into_iter().find(|f| f.name() == s)
    }
}

/// A spectrum or input that could not be processed, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Object id; empty when unknown (a whole file or input failed).
    pub object_id: String,
    /// The file (or the input as given, for inputs that match no file).
    pub source_file: String,
    /// HDU or dataset; empty when unknown.
    pub source_hdu: String,
    /// Row inside the HDU, when known.
    pub source_row: Option<u64>,
    /// Where it was lost.
    pub stage: FailureStage,
    /// Why, on one line.
    pub reason: String,
}

impl Failure {
    /// A failure from an io error: file, HDU and row are taken from the
    /// error's location; the reason is the rest of its message.
    pub fn from_error(stage: FailureStage, err: &Error) -> Failure {
        let file = |p: &Path| p.display().to_string();
        let (source_file, source_hdu, source_row, reason) = match err {
            Error::Bad { loc, reason } => (
                file(&loc.file),
                loc.hdu.clone().unwrap_or_default(),
                loc.row,
                match &loc.field {
                    Some(f) => format!("field {f}: {reason}"),
                    None => reason.clone(),
                },
            ),
            Error::Unrecognised { path, found } => (
                file(path),
                String::new(),
                None,
                format!("not a spectrum format spectok reads ({found})"),
            ),
            Error::Refused {
                path,
                format,
                reason,
            } => (
                file(path),
                String::new(),
                None,
                format!("{format} refused: {reason}"),
            ),
            Error::Input { input, reason } => (input.clone(), String::new(), None, reason.clone()),
            Error::Os { path, source } => (file(path), String::new(), None, source.to_string()),
        };
        Failure {
            object_id: String::new(),
            source_file,
            source_hdu,
            source_row,
            stage,
            reason: reason.replace('\n', " "),
        }
    }

    /// A failure of a spectrum read from `source`.
    pub fn of_spectrum(
        stage: FailureStage,
        object_id: &str,
        source: &Source,
        reason: impl Into<String>,
    ) -> Failure {
        Failure {
            object_id: object_id.to_string(),
            source_file: source.file.display().to_string(),
            source_hdu: source.hdu.clone(),
            source_row: source.row,
            stage,
            reason: reason.into().replace('\n', " "),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.source_file)?;
        if !self.source_hdu.is_empty() {
            write!(f, "[{}]", self.source_hdu)?;
        }
        if let Some(r) = self.source_row {
            write!(f, " row {r}")?;
        }
        if !self.object_id.is_empty() {
            write!(f, " ({})", self.object_id)?;
        }
        write!(f, ": {}: {}", self.stage.name(), self.reason)
    }
}

/// One reconstructed spectrum: its input and the model's output on the
/// target grid.
#[derive(Clone, Debug, PartialEq)]
pub struct ReconstructionRecord {
    /// Object identifier.
    pub object_id: String,
    /// Survey of the input spectrum.
    pub survey: Survey,
    /// Where the input was read.
    pub source: Source,
    /// The flux scale of the input, in its file's units.
    pub scale: f64,
    /// Input wavelengths, Å.
    pub input_wavelength: Vec<f64>,
    /// Input flux, as read.
    pub input_flux: Vec<f32>,
    /// Input inverse variance, as read.
    pub input_ivar: Vec<f32>,
    /// Whether each input pixel passes the run's invalid-pixel rules.
    pub input_valid: Vec<bool>,
    /// The target grid, Å.
    pub output_wavelength: Vec<f64>,
    /// The reconstruction on the target grid, in the input's flux units.
    pub output_flux: Vec<f32>,
    /// Arms/chips/CCDs of the target grid (pixel ranges of the output).
    pub output_segments: Vec<Segment>,
}

// ---------------------------------------------------------------------------
// Columns being written
// ---------------------------------------------------------------------------

/// A growing dataset: 1-D, or 2-D with `width` columns, and the values
/// buffered for it.
struct Col<T> {
    ds: Dataset,
    name: &'static str,
    width: Option<usize>,
    rows: usize,
    buf: Vec<T>,
}

impl<T: H5Type + Clone> Col<T> {
    fn create(g: &Group, name: &'static str, width: Option<usize>) -> hdf5::Result<Col<T>> {
        let b = g.new_dataset::<T>();
        let mut b = match width {
            None => b.chunk(ROW_CHUNK),
            Some(w) => {
                let w = w.max(1);
                b.chunk(((VALUE_CHUNK / w).clamp(1, ROW_CHUNK), w))
            }
        };
        if hdf5::filters::deflate_available() {
            b = b.shuffle().deflate(4);
        }
        let ds = match width {
            None => b.shape(0..).create(name)?,
            Some(w) => b.shape((0.., w.max(1))).create(name)?,
        };
        Ok(Col {
            ds,
            name,
            width,
            rows: 0,
            buf: Vec::new(),
        })
    }

    fn push(&mut self, v: T) {
        self.buf.push(v);
    }

    fn extend(&mut self, v: &[T]) {
        self.buf.extend_from_slice(v);
    }
}

/// A column whose buffer can be appended to its dataset.
trait Flush {
    fn flush(&mut self) -> std::result::Result<(), (&'static str, hdf5::Error)>;
}

impl<T: H5Type + Clone> Flush for Col<T> {
    fn flush(&mut self) -> std::result::Result<(), (&'static str, hdf5::Error)> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let name = self.name;
        let r = (|| -> hdf5::Result<()> {
            match self.width {
                None => {
                    let new = self.rows + self.buf.len();
                    self.ds.resize(new)?;
                    self.ds.write_slice(&self.buf[..], self.rows..new)?;
                    self.rows = new;
                }
                Some(w) => {
                    let n = self.buf.len() / w.max(1);
                    let new = self.rows + n;
                    let view = ndarray::ArrayView2::from_shape((n, w), &self.buf[..n * w])?;
                    self.ds.resize((new, w))?;
                    self.ds.write_slice(view, (self.rows..new, ..))?;
                    self.rows = new;
                }
            }
            Ok(())
        })();
        self.buf.clear();
        r.map_err(|e| (name, e))
    }
}

/// A set of columns written together.
trait ColSet {
    fn cols(&mut self) -> Vec<&mut dyn Flush>;
}

type S = VarLenUnicode;

/// Identity columns of each record.
struct RowCols {
    object_id: Col<S>,
    survey: Col<S>,
    source_file: Col<S>,
    source_hdu: Col<S>,
    source_row: Col<i64>,
    scale: Col<f64>,
}

impl RowCols {
    fn create(g: &Group) -> hdf5::Result<RowCols> {
        Ok(RowCols {
            object_id: Col::create(g, "object_id", None)?,
            survey: Col::create(g, "survey", None)?,
            source_file: Col::create(g, "source_file", None)?,
            source_hdu: Col::create(g, "source_hdu", None)?,
            source_row: Col::create(g, "source_row", None)?,
            scale: Col::create(g, "scale", None)?,
        })
    }

    fn push(&mut self, id: &Checked) {
        self.object_id.push(id.object_id.clone());
        self.survey.push(id.survey.clone());
        self.source_file.push(id.source_file.clone());
        self.source_hdu.push(id.source_hdu.clone());
        self.source_row.push(id.source_row);
        self.scale.push(id.scale);
    }

    fn cols(&mut self) -> Vec<&mut dyn Flush> {
        vec![
            &mut self.object_id,
            &mut self.survey,
            &mut self.source_file,
            &mut self.source_hdu,
            &mut self.source_row,
            &mut self.scale,
        ]
    }
}

/// Identity fields of a record, checked and converted.
struct Checked {
    object_id: S,
    survey: S,
    source_file: S,
    source_hdu: S,
    source_row: i64,
    scale: f64,
}

/// A string as HDF5 text, or why not.
fn text(t: &str, field: &str) -> std::result::Result<S, String> {
    S::from_str(t).map_err(|_| {
        format!("{field} {t:?} contains a NUL character, which HDF5 strings cannot hold")
    })
}

fn row_i64(row: Option<u64>) -> std::result::Result<i64, String> {
    match row {
        None => Ok(-1),
        Some(r) => i64::try_from(r).map_err(|_| format!("source row {r} exceeds i64::MAX")),
    }
}

fn check_identity(
    object_id: &str,
    survey: Survey,
    source: &Source,
    scale: f64,
) -> std::result::Result<Checked, String> {
    let file = source
        .file
        .to_str()
        .ok_or_else(|| "the source path is not valid UTF-8".to_string())?;
    Ok(Checked {
        object_id: text(object_id, "object id")?,
        survey: text(survey.name(), "survey")?,
        source_file: text(file, "source file")?,
        source_hdu: text(&source.hdu, "source hdu")?,
        source_row: row_i64(source.row)?,
        scale,
    })
}

/// Label columns (as in the shard format).
struct LabelCols {
    label_present: Col<u16>,
    redshift: Col<f64>,
    redshift_err: Col<f64>,
    redshift_warning: Col<i64>,
    class: Col<S>,
    subclass: Col<S>,
    teff: Col<f64>,
    logg: Col<f64>,
    fe_h: Col<f64>,
    alpha_m: Col<f64>,
    extra_offsets: Col<u64>,
    extra_names: Col<S>,
    extra_values: Col<f64>,
    text_offsets: Col<u64>,
    text_names: Col<S>,
    text_values: Col<S>,
    extra_total: u64,
    text_total: u64,
}

/// Labels checked and converted for writing.
struct CheckedLabels {
    present: u16,
    class: S,
    subclass: S,
    extra_names: Vec<S>,
    text_names: Vec<S>,
    text_values: Vec<S>,
}

fn check_labels(l: &Labels) -> std::result::Result<CheckedLabels, String> {
    let mut present = 0u16;
    for (v, bit) in [
        (l.redshift.is_some(), BIT_REDSHIFT),
        (l.redshift_err.is_some(), BIT_REDSHIFT_ERR),
        (l.redshift_warning.is_some(), BIT_REDSHIFT_WARNING),
        (l.class.is_some(), BIT_CLASS),
        (l.subclass.is_some(), BIT_SUBCLASS),
        (l.teff.is_some(), BIT_TEFF),
        (l.logg.is_some(), BIT_LOGG),
        (l.fe_h.is_some(), BIT_FE_H),
        (l.alpha_m.is_some(), BIT_ALPHA_M),
    ] {
        if v {
            present |= bit;
        }
    }
    let mut text_names = Vec::with_capacity(l.text.len());
    let mut text_values = Vec::with_capacity(l.text.len());
    for (k, v) in &l.text {
        text_names.push(text(k, "label name")?);
        text_values.push(text(v, "label value")?);
    }
    Ok(CheckedLabels {
        present,
        class: text(l.class.as_deref().unwrap_or(""), "class")?,
        subclass: text(l.subclass.as_deref().unwrap_or(""), "subclass")?,
        extra_names: l
            .extra
            .keys()
            .map(|k| text(k, "label name"))
            .collect::<std::result::Result<_, _>>()?,
        text_names,
        text_values,
    })
}

impl LabelCols {
    fn create(g: &Group) -> hdf5::Result<LabelCols> {
        let mut c = LabelCols {
            label_present: Col::create(g, "label_present", None)?,
            redshift: Col::create(g, "redshift", None)?,
            redshift_err: Col::create(g, "redshift_err", None)?,
            redshift_warning: Col::create(g, "redshift_warning", None)?,
            class: Col::create(g, "class", None)?,
            subclass: Col::create(g, "subclass", None)?,
            teff: Col::create(g, "teff", None)?,
            logg: Col::create(g, "logg", None)?,
            fe_h: Col::create(g, "fe_h", None)?,
            alpha_m: Col::create(g, "alpha_m", None)?,
            extra_offsets: Col::create(g, "extra_offsets", None)?,
            extra_names: Col::create(g, "extra_names", None)?,
            extra_values: Col::create(g, "extra_values", None)?,
            text_offsets: Col::create(g, "text_offsets", None)?,
            text_names: Col::create(g, "text_names", None)?,
            text_values: Col::create(g, "text_values", None)?,
            extra_total: 0,
            text_total: 0,
        };
        c.extra_offsets.push(0);
        c.text_offsets.push(0);
        Ok(c)
    }

    fn push(&mut self, l: &Labels, c: CheckedLabels) {
        let nan = f64::NAN;
        self.label_present.push(c.present);
        self.redshift.push(l.redshift.unwrap_or(nan));
        self.redshift_err.push(l.redshift_err.unwrap_or(nan));
        self.redshift_warning.push(l.redshift_warning.unwrap_or(0));
        self.class.push(c.class);
        self.subclass.push(c.subclass);
        self.teff.push(l.teff.unwrap_or(nan));
        self.logg.push(l.logg.unwrap_or(nan));
        self.fe_h.push(l.fe_h.unwrap_or(nan));
        self.alpha_m.push(l.alpha_m.unwrap_or(nan));
        self.extra_total += l.extra.len() as u64;
        self.extra_offsets.push(self.extra_total);
        self.extra_names.extend(&c.extra_names);
        self.extra_values.buf.extend(l.extra.values().copied());
        self.text_total += l.text.len() as u64;
        self.text_offsets.push(self.text_total);
        self.text_names.extend(&c.text_names);
        self.text_values.extend(&c.text_values);
    }

    fn cols(&mut self) -> Vec<&mut dyn Flush> {
        vec![
            &mut self.label_present,
            &mut self.redshift,
            &mut self.redshift_err,
            &mut self.redshift_warning,
            &mut self.class,
            &mut self.subclass,
            &mut self.teff,
            &mut self.logg,
            &mut self.fe_h,
            &mut self.alpha_m,
            &mut self.extra_offsets,
            &mut self.extra_names,
            &mut self.extra_values,
            &mut self.text_offsets,
            &mut self.text_names,
            &mut self.text_values,
        ]
    }
}

/// The `failed/` group.
struct FailCols {
    object_id: Col<S>,
    source_file: Col<S>,
    source_hdu: Col<S>,
    source_row: Col<i64>,
    stage: Col<S>,
    reason: Col<S>,
}

impl FailCols {
    fn create(file: &hdf5::File) -> hdf5::Result<FailCols> {
        let g = file.create_group(FAILED_GROUP)?;
        Ok(FailCols {
            object_id: Col::create(&g, "object_id", None)?,
            source_file: Col::create(&g, "source_file", None)?,
            source_hdu: Col::create(&g, "source_hdu", None)?,
            source_row: Col::create(&g, "source_row", None)?,
            stage: Col::create(&g, "stage", None)?,
            reason: Col::create(&g, "reason", None)?,
        })
    }
}

impl ColSet for FailCols {
    fn cols(&mut self) -> Vec<&mut dyn Flush> {
        vec![
            &mut self.object_id,
            &mut self.source_file,
            &mut self.source_hdu,
            &mut self.source_row,
            &mut self.stage,
            &mut self.reason,
        ]
    }
}

/// Replaces NUL characters, so that any failure can be recorded.
fn lossless_text(t: &str) -> S {
    S::from_str(&t.replace('\0', "\u{FFFD}")).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// The writer core: temp file, buffering, flush, atomic finish
// ---------------------------------------------------------------------------

/// A file being written under its temporary name.
struct Output<C> {
    path: PathBuf,
    tmp: PathBuf,
    overwrite: bool,
    /// `None` once finished or after a failed append.
    open: Option<(C, FailCols, hdf5::File)>,
    pending: usize,
    records: usize,
    failures: usize,
}

fn exists_error(path: &Path) -> Error {
    Error::Os {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "already exists (not overwritten)",
        ),
    }
}

fn closed(tmp: &Path) -> Error {
    Error::bad(
        Location::file(tmp),
        "writer is closed after an earlier write failure",
    )
}

fn write_attr_str(file: &hdf5::File, name: &str, value: &str) -> hdf5::Result<()> {
    let v = S::from_str(value)
        .map_err(|_| hdf5::Error::from(format!("attribute {name} contains a NUL character")))?;
    file.new_attr::<S>().create(name)?.write_scalar(&v)
}

fn write_attr_u64(file: &hdf5::File, name: &str, value: u64) -> hdf5::Result<()> {
    file.new_attr::<u64>().create(name)?.write_scalar(&value)
}

fn write_run_info(file: &hdf5::File, run: &RunInfo) -> hdf5::Result<()> {
    let inputs = serde_json::to_string(&run.inputs).unwrap_or_else(|_| "[]".into());
    write_attr_str(file, "checkpoint", &run.checkpoint)?;
    write_attr_str(file, "checkpoint_sha256", &run.checkpoint_sha256)?;
    write_attr_str(file, "model_config", &run.model_config)?;
    write_attr_str(file, "prepare_config", &run.prepare_config)?;
    write_attr_str(file, "inputs", &inputs)?;
    write_attr_str(file, "spectok_version", &run.spectok_version)
}

impl<C: ColSet> Output<C> {
    fn create(
        path: &Path,
        overwrite: bool,
        setup: impl FnOnce(&hdf5::File) -> hdf5::Result<C>,
    ) -> Result<Output<C>> {
        if !overwrite && path.exists() {
            return Err(exists_error(path));
        }
        let tmp = tmp_path(path);
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
        let made = setup(&file).and_then(|c| Ok((c, FailCols::create(&file)?)));
        match made {
            Ok((cols, fails)) => Ok(Output {
                path: path.to_path_buf(),
                tmp,
                overwrite,
                open: Some((cols, fails, file)),
                pending: 0,
                records: 0,
                failures: 0,
            }),
            Err(e) => {
                drop(file);
                let _ = std::fs::remove_file(&tmp);
                Err(bad("set up datasets", e))
            }
        }
    }

    fn cols(&mut self) -> Result<&mut C> {
        match self.open.as_mut() {
            Some((c, _, _)) => Ok(c),
            None => Err(closed(&self.tmp)),
        }
    }

    /// Counts a record just buffered and appends when enough are.
    fn pushed(&mut self) -> Result<()> {
        self.records += 1;
        self.pending += 1;
        if self.pending >= FLUSH_RECORDS {
            self.flush()?;
        }
        Ok(())
    }

    fn fail(&mut self, f: &Failure) -> Result<()> {
        let Some((_, fc, _)) = self.open.as_mut() else {
            return Err(closed(&self.tmp));
        };
        fc.object_id.push(lossless_text(&f.object_id));
        fc.source_file.push(lossless_text(&f.source_file));
        fc.source_hdu.push(lossless_text(&f.source_hdu));
        fc.source_row.push(row_i64(f.source_row).unwrap_or(-1));
        fc.stage.push(lossless_text(f.stage.name()));
        fc.reason.push(lossless_text(&f.reason));
        self.failures += 1;
        self.pending += 1;
        if self.pending >= FLUSH_RECORDS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let Some((cols, fails, _)) = self.open.as_mut() else {
            return Err(closed(&self.tmp));
        };
        self.pending = 0;
        let mut failed = None;
        for c in cols.cols().into_iter().chain(fails.cols()) {
            if let Err(e) = c.flush() {
                failed.get_or_insert(e);
            }
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

    fn abandon(&mut self) {
        if let Some(open) = self.open.take() {
            drop(open);
            let _ = std::fs::remove_file(&self.tmp);
        }
    }

    fn finish(&mut self) -> Result<()> {
        self.flush()?;
        let Some((cols, fails, file)) = self.open.take() else {
            return Err(closed(&self.tmp));
        };
        drop(cols);
        drop(fails);
        let flushed = file.flush();
        drop(file);
        if let Err(e) = flushed {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(Error::bad(
                Location::file(&self.tmp),
                format!("cannot flush: {}", one_line(&e)),
            ));
        }
        if !self.overwrite && self.path.exists() {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(exists_error(&self.path));
        }
        std::fs::rename(&self.tmp, &self.path).map_err(|source| {
            let _ = std::fs::remove_file(&self.tmp);
            Error::Os {
                path: self.path.clone(),
                source,
            }
        })
    }
}

impl<C> Drop for Output<C> {
    fn drop(&mut self) {
        if let Some(open) = self.open.take() {
            drop(open);
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

// ---------------------------------------------------------------------------
// Embeddings writer
// ---------------------------------------------------------------------------

struct TokenCols {
    scale_token: Col<f32>,
    token_offsets: Col<u64>,
    tokens: Col<f32>,
    token_center: Col<f64>,
    token_ids: Option<Col<u32>>,
    total: u64,
}

struct EmbCols {
    rows: RowCols,
    labels: LabelCols,
    embedding: Col<f32>,
    patches: Col<u32>,
    valid_patches: Col<u32>,
    tokens: Option<TokenCols>,
}

impl ColSet for EmbCols {
    fn cols(&mut self) -> Vec<&mut dyn Flush> {
        let mut v = self.rows.cols();
        v.extend(self.labels.cols());
        v.push(&mut self.embedding);
        v.push(&mut self.patches);
        v.push(&mut self.valid_patches);
        if let Some(t) = self.tokens.as_mut() {
            v.push(&mut t.scale_token);
            v.push(&mut t.token_offsets);
            v.push(&mut t.tokens);
            v.push(&mut t.token_center);
            if let Some(ids) = t.token_ids.as_mut() {
                v.push(ids);
            }
        }
        v
    }
}

/// Writes an embeddings file (see the module docs for the layout).
///
/// The file is filled under `PATH.tmp` and renamed to `PATH` by
/// [`EmbeddingsWriter::finish`]; dropping an unfinished writer removes the
/// temporary file. Records and failures are buffered and appended every
/// [`FLUSH_RECORDS`], so memory stays bounded.
///
/// ```no_run
/// # fn demo(meta: spectok_io::embeddings::EmbeddingsMeta,
/// #         recs: Vec<spectok_io::embeddings::EmbeddingRecord>) -> spectok_io::Result<()> {
/// use spectok_io::embeddings::EmbeddingsWriter;
/// let mut w = EmbeddingsWriter::create("embeddings.h5".as_ref(), &meta, false)?;
/// for r in &recs {
///     w.write(r)?;
/// }
/// w.finish()?;
/// # Ok(()) }
/// ```
pub struct EmbeddingsWriter {
    out: Output<EmbCols>,
    meta: EmbeddingsMeta,
}

impl EmbeddingsWriter {
    /// Starts the file that [`EmbeddingsWriter::finish`] puts at `path`.
    /// Without `overwrite`, an existing `path` is an error (of kind
    /// `AlreadyExists`) here and again at `finish`.
    pub fn create(path: &Path, meta: &EmbeddingsMeta, overwrite: bool) -> Result<EmbeddingsWriter> {
        if meta.dim == 0 || meta.dim > MAX_DIM {
            return Err(Error::bad(
                Location::file(path).field("embedding_dim"),
                format!("{} is not in 1..={MAX_DIM}", meta.dim),
            ));
        }
        if meta.part.count == 0 || meta.part.index >= meta.part.count {
            return Err(Error::bad(
                Location::file(path).field("shard_index"),
                format!(
                    "part {} of {} does not exist",
                    meta.part.index, meta.part.count
                ),
            ));
        }
        let d = meta.dim;
        let out = Output::create(path, overwrite, |f| {
            f.new_attr::<u32>()
                .create(EMBEDDINGS_MARKER)?
                .write_scalar(&EMBEDDINGS_VERSION)?;
            write_attr_u64(f, "embedding_dim", d as u64)?;
            f.new_attr::<u8>()
                .create("has_tokens")?
                .write_scalar(&(meta.tokens as u8))?;
            f.new_attr::<u8>()
                .create("has_token_ids")?
                .write_scalar(&((meta.tokens && meta.token_ids) as u8))?;
            write_attr_u64(f, "shard_index", meta.part.index as u64)?;
            write_attr_u64(f, "shard_count", meta.part.count as u64)?;
            write_run_info(f, &meta.run)?;
            let tokens = if meta.tokens {
                let mut t = TokenCols {
                    scale_token: Col::create(f, "scale_token", Some(d))?,
                    token_offsets: Col::create(f, "token_offsets", None)?,
                    tokens: Col::create(f, "tokens", Some(d))?,
                    token_center: Col::create(f, "token_center", None)?,
                    token_ids: if meta.token_ids {
                        Some(Col::create(f, "token_ids", None)?)
                    } else {
                        None
                    },
                    total: 0,
                };
                t.token_offsets.push(0);
                Some(t)
            } else {
                None
            };
            Ok(EmbCols {
                rows: RowCols::create(f)?,
                labels: LabelCols::create(f)?,
                embedding: Col::create(f, "embedding", Some(d))?,
                patches: Col::create(f, "patches", None)?,
                valid_patches: Col::create(f, "valid_patches", None)?,
                tokens,
            })
        })?;
        Ok(EmbeddingsWriter {
            out,
            meta: meta.clone(),
        })
    }

    /// The path the file will have once finished.
    pub fn path(&self) -> &Path {
        &self.out.path
    }

    /// The file's metadata.
    pub fn meta(&self) -> &EmbeddingsMeta {
        &self.meta
    }

    /// Records written so far.
    pub fn len(&self) -> usize {
        self.out.records
    }

    /// Whether no record was written yet.
    pub fn is_empty(&self) -> bool {
        self.out.records == 0
    }

    /// Failures written so far.
    pub fn failures(&self) -> usize {
        self.out.failures
    }

    /// Adds one embedded spectrum. A record that does not fit the file
    /// (wrong width, tokens missing or unexpected, a NUL in a string) is
    /// refused with an error naming its source; the file is unchanged and
    /// writing can go on.
    pub fn write(&mut self, r: &EmbeddingRecord) -> Result<()> {
        let d = self.meta.dim;
        let refuse = |why: String| {
            let mut loc = Location::file(&r.source.file).hdu(&r.source.hdu);
            if let Some(row) = r.source.row {
                loc = loc.row(row);
            }
            Error::bad(
                loc,
                format!("embedding of {} not written: {why}", r.object_id),
            )
        };
        if r.embedding.len() != d {
            return Err(refuse(format!(
                "{} values, the file's width is {d}",
                r.embedding.len()
            )));
        }
        let id = check_identity(&r.object_id, r.survey, &r.source, r.scale).map_err(refuse)?;
        let labels = check_labels(&r.labels).map_err(refuse)?;
        match (&r.tokens, self.meta.tokens) {
            (None, true) => {
                return Err(refuse(
                    "the file stores tokens and the record has none".into(),
                ))
            }
            (Some(_), false) => return Err(refuse("the file stores no tokens".into())),
            (Some(t), true) => {
                if t.scale_token.len() != d {
                    return Err(refuse(format!(
                        "scale token has {} values, the file's width is {d}",
                        t.scale_token.len()
                    )));
                }
                if t.values.len() != t.center.len() * d {
                    return Err(refuse(format!(
                        "{} token values for {} tokens of width {d}",
                        t.values.len(),
                        t.center.len()
                    )));
                }
                match (&t.ids, self.meta.token_ids) {
                    (Some(ids), true) if ids.len() != t.center.len() => {
                        return Err(refuse(format!(
                            "{} token ids for {} tokens",
                            ids.len(),
                            t.center.len()
                        )))
                    }
                    (None, true) => return Err(refuse("the file stores token ids".into())),
                    (Some(_), false) => return Err(refuse("the file stores no token ids".into())),
                    _ => {}
                }
            }
            (None, false) => {}
        }
        let cols = self.out.cols()?;
        cols.rows.push(&id);
        cols.labels.push(&r.labels, labels);
        cols.embedding.extend(&r.embedding);
        cols.patches.push(r.patches);
        cols.valid_patches.push(r.valid_patches);
        if let (Some(tc), Some(t)) = (cols.tokens.as_mut(), &r.tokens) {
            tc.scale_token.extend(&t.scale_token);
            tc.tokens.extend(&t.values);
            tc.token_center.extend(&t.center);
            tc.total += t.center.len() as u64;
            tc.token_offsets.push(tc.total);
            if let (Some(c), Some(ids)) = (tc.token_ids.as_mut(), &t.ids) {
                c.extend(ids);
            }
        }
        self.out.pushed()
    }

    /// Records a spectrum or input that could not be embedded (NUL
    /// characters in its strings are replaced, so any failure fits).
    pub fn fail(&mut self, f: &Failure) -> Result<()> {
        self.out.fail(f)
    }

    /// Writes what is buffered, closes the file and renames it to its
    /// final path. Returns the number of records.
    pub fn finish(mut self) -> Result<usize> {
        self.out.finish()?;
        Ok(self.out.records)
    }
}

// ---------------------------------------------------------------------------
// Reconstruction writer
// ---------------------------------------------------------------------------

struct RecCols {
    rows: RowCols,
    input_offsets: Col<u64>,
    input_wavelength: Col<f64>,
    input_flux: Col<f32>,
    input_ivar: Col<f32>,
    input_valid: Col<u8>,
    output_offsets: Col<u64>,
    output_wavelength: Col<f64>,
    output_flux: Col<f32>,
    segment_offsets: Col<u64>,
    segment_names: Col<S>,
    segment_starts: Col<u64>,
    segment_ends: Col<u64>,
    totals: [u64; 3],
}

impl ColSet for RecCols {
    fn cols(&mut self) -> Vec<&mut dyn Flush> {
        let mut v = self.rows.cols();
        v.push(&mut self.input_offsets);
        v.push(&mut self.input_wavelength);
        v.push(&mut self.input_flux);
        v.push(&mut self.input_ivar);
        v.push(&mut self.input_valid);
        v.push(&mut self.output_offsets);
        v.push(&mut self.output_wavelength);
        v.push(&mut self.output_flux);
        v.push(&mut self.segment_offsets);
        v.push(&mut self.segment_names);
        v.push(&mut self.segment_starts);
        v.push(&mut self.segment_ends);
        v
    }
}

/// Writes a reconstruction file (see the module docs), atomically like
/// [`EmbeddingsWriter`].
pub struct ReconstructionWriter {
    out: Output<RecCols>,
}

impl ReconstructionWriter {
    /// Starts the file that [`ReconstructionWriter::finish`] puts at
    /// `path`; `target` names the output grid (`own`, a survey, a file).
    pub fn create(
        path: &Path,
        run: &RunInfo,
        target: &str,
        overwrite: bool,
    ) -> Result<ReconstructionWriter> {
        let out = Output::create(path, overwrite, |f| {
            f.new_attr::<u32>()
                .create(RECONSTRUCTION_MARKER)?
                .write_scalar(&RECONSTRUCTION_VERSION)?;
            write_attr_str(f, "target", target)?;
            write_run_info(f, run)?;
            let mut c = RecCols {
                rows: RowCols::create(f)?,
                input_offsets: Col::create(f, "input_offsets", None)?,
                input_wavelength: Col::create(f, "input_wavelength", None)?,
                input_flux: Col::create(f, "input_flux", None)?,
                input_ivar: Col::create(f, "input_ivar", None)?,
                input_valid: Col::create(f, "input_valid", None)?,
                output_offsets: Col::create(f, "output_offsets", None)?,
                output_wavelength: Col::create(f, "output_wavelength", None)?,
                output_flux: Col::create(f, "output_flux", None)?,
                segment_offsets: Col::create(f, "segment_offsets", None)?,
                segment_names: Col::create(f, "segment_names", None)?,
                segment_starts: Col::create(f, "segment_starts", None)?,
                segment_ends: Col::create(f, "segment_ends", None)?,
                totals: [0; 3],
            };
            c.input_offsets.push(0);
            c.output_offsets.push(0);
            c.segment_offsets.push(0);
            Ok(c)
        })?;
        Ok(ReconstructionWriter { out })
    }

    /// Records written so far.
    pub fn len(&self) -> usize {
        self.out.records
    }

    /// Whether no record was written yet.
    pub fn is_empty(&self) -> bool {
        self.out.records == 0
    }

    /// Adds one reconstruction; inconsistent lengths or segments that do
    /// not tile the output are refused with an error naming the source.
    pub fn write(&mut self, r: &ReconstructionRecord) -> Result<()> {
        let refuse = |why: String| {
            let mut loc = Location::file(&r.source.file).hdu(&r.source.hdu);
            if let Some(row) = r.source.row {
                loc = loc.row(row);
            }
            Error::bad(
                loc,
                format!("reconstruction of {} not written: {why}", r.object_id),
            )
        };
        let n = r.input_wavelength.len();
        if r.input_flux.len() != n || r.input_ivar.len() != n || r.input_valid.len() != n {
            return Err(refuse(format!(
                "input arrays of {n}, {}, {} and {} values",
                r.input_flux.len(),
                r.input_ivar.len(),
                r.input_valid.len()
            )));
        }
        let q = r.output_wavelength.len();
        if r.output_flux.len() != q {
            return Err(refuse(format!(
                "{} output values for {q} wavelengths",
                r.output_flux.len()
            )));
        }
        let mut next = 0;
        for s in &r.output_segments {
            if s.start != next || s.end < s.start || s.end > q {
                return Err(refuse(format!(
                    "segment {:?} {}..{} does not continue at output pixel {next} of {q}",
                    s.name, s.start, s.end
                )));
            }
            next = s.end;
        }
        if next != q {
            return Err(refuse(format!(
                "segments cover {next} of {q} output pixels"
            )));
        }
        let id = check_identity(&r.object_id, r.survey, &r.source, r.scale).map_err(refuse)?;
        let names = r
            .output_segments
            .iter()
            .map(|s| text(&s.name, "segment name"))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(refuse)?;
        let c = self.out.cols()?;
        c.rows.push(&id);
        c.totals[0] += n as u64;
        c.totals[1] += q as u64;
        c.totals[2] += names.len() as u64;
        c.input_offsets.push(c.totals[0]);
        c.input_wavelength.extend(&r.input_wavelength);
        c.input_flux.extend(&r.input_flux);
        c.input_ivar.extend(&r.input_ivar);
        c.input_valid
            .buf
            .extend(r.input_valid.iter().map(|&v| v as u8));
        c.output_offsets.push(c.totals[1]);
        c.output_wavelength.extend(&r.output_wavelength);
        c.output_flux.extend(&r.output_flux);
        c.segment_offsets.push(c.totals[2]);
        c.segment_names.extend(&names);
        c.segment_starts
            .buf
            .extend(r.output_segments.iter().map(|s| s.start as u64));
        c.segment_ends
            .buf
            .extend(r.output_segments.iter().map(|s| s.end as u64));
        self.out.pushed()
    }

    /// Records a spectrum or input that could not be reconstructed.
    pub fn fail(&mut self, f: &Failure) -> Result<()> {
        self.out.fail(f)
    }

    /// Writes what is buffered, closes the file and renames it into place.
    /// Returns the number of records.
    pub fn finish(mut self) -> Result<usize> {
        self.out.finish()?;
        Ok(self.out.records)
    }
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// An open HDF5 file with the checks shared by both readers.
struct In {
    path: PathBuf,
    file: hdf5::File,
}

impl In {
    fn open(path: &Path, marker: &str, version: u32, what: &str) -> Result<In> {
        let file = hdf5util::open(path)?;
        let loc = || Location::file(path).field(format!("@{marker}"));
        let attr = file.attr(marker).map_err(|_| {
            Error::bad(
                loc(),
                format!("not a spectok {what} file (root attribute missing)"),
            )
        })?;
        let v = attr
            .read_scalar::<i64>()
            .map_err(|e| Error::bad(loc(), format!("cannot read: {}", one_line(&e))))?;
        if v != i64::from(version) {
            return Err(Error::bad(
                loc(),
                format!("{what} file version {v}; this spectok reads version {version}"),
            ));
        }
        Ok(In {
            path: path.to_path_buf(),
            file,
        })
    }

    fn err(&self, name: &str, why: impl Into<String>) -> Error {
        Error::bad(Location::file(&self.path).hdu(name), why)
    }

    fn row_err(&self, name: &str, row: usize, why: impl Into<String>) -> Error {
        Error::bad(Location::file(&self.path).hdu(name).row(row as u64), why)
    }

    fn attr_str(&self, name: &str) -> Result<String> {
        let loc = || Location::file(&self.path).field(format!("@{name}"));
        let a = self
            .file
            .attr(name)
            .map_err(|_| Error::bad(loc(), "attribute missing"))?;
        let v = a
            .read_scalar::<S>()
            .map_err(|e| Error::bad(loc(), format!("cannot read as a string: {}", one_line(&e))))?;
        Ok(v.as_str().to_string())
    }

    fn attr_u64(&self, name: &str) -> Result<u64> {
        let loc = || Location::file(&self.path).field(format!("@{name}"));
        let a = self
            .file
            .attr(name)
            .map_err(|_| Error::bad(loc(), "attribute missing"))?;
        let v = a.read_scalar::<i64>().map_err(|e| {
            Error::bad(
                loc(),
                format!("cannot read as an integer: {}", one_line(&e)),
            )
        })?;
        u64::try_from(v).map_err(|_| Error::bad(loc(), format!("{v} is negative")))
    }

    fn run_info(&self) -> Result<RunInfo> {
        let inputs_text = self.attr_str("inputs")?;
        let inputs: Vec<String> = serde_json::from_str(&inputs_text).map_err(|e| {
            Error::bad(
                Location::file(&self.path).field("@inputs"),
                format!("not a JSON array of strings: {e}"),
            )
        })?;
        Ok(RunInfo {
            checkpoint: self.attr_str("checkpoint")?,
            checkpoint_sha256: self.attr_str("checkpoint_sha256")?,
            model_config: self.attr_str("model_config")?,
            prepare_config: self.attr_str("prepare_config")?,
            inputs,
            spectok_version: self.attr_str("spectok_version")?,
        })
    }

    fn dataset(&self, name: &str) -> Result<Dataset> {
        self.file.dataset(name).map_err(|e| {
            let why = if self.file.link_exists(name) {
                format!("cannot open dataset: {}", one_line(&e))
            } else {
                "dataset missing".to_string()
            };
            self.err(name, why)
        })
    }

    /// The shape of a dataset, checked against `want` (`None` = any).
    fn shape(&self, name: &str, want: &[Option<usize>]) -> Result<Vec<usize>> {
        let ds = self.dataset(name)?;
        let shape = ds.shape();
        let ok = shape.len() == want.len()
            && shape
                .iter()
                .zip(want)
                .all(|(s, w)| w.is_none_or(|w| *s == w));
        if !ok {
            let want: Vec<String> = want
                .iter()
                .map(|w| w.map_or("any".to_string(), |v| v.to_string()))
                .collect();
            return Err(self.err(
                name,
                format!("shape {shape:?}, expected ({})", want.join(", ")),
            ));
        }
        Ok(shape)
    }

    fn read<T: H5Type + Clone>(&self, name: &str, r: Range<usize>) -> Result<Vec<T>> {
        if r.is_empty() {
            return Ok(Vec::new());
        }
        let want = r.len();
        let ds = self.dataset(name)?;
        let v = ds
            .read_slice_1d::<T, _>(r.clone())
            .map_err(|e| self.row_err(name, r.start, format!("cannot read: {}", one_line(&e))))?
            .to_vec();
        if v.len() != want {
            return Err(self.row_err(name, r.start, format!("read {} of {want} values", v.len())));
        }
        Ok(v)
    }

    fn read_2d(&self, name: &str, r: Range<usize>, width: usize) -> Result<Vec<f32>> {
        if r.is_empty() {
            return Ok(Vec::new());
        }
        let want = r.len() * width;
        let ds = self.dataset(name)?;
        let a = ds
            .read_slice_2d::<f32, _>((r.clone(), ..))
            .map_err(|e| self.row_err(name, r.start, format!("cannot read: {}", one_line(&e))))?;
        let v: Vec<f32> = a.iter().copied().collect();
        if v.len() != want {
            return Err(self.row_err(name, r.start, format!("read {} of {want} values", v.len())));
        }
        Ok(v)
    }

    fn strings(&self, name: &str, r: Range<usize>) -> Result<Vec<String>> {
        let start = r.start;
        self.read::<S>(name, r)?
            .iter()
            .enumerate()
            .map(|(k, v)| {
                String::from_utf8(v.as_bytes().to_vec())
                    .map_err(|_| self.row_err(name, start + k, "string is not valid UTF-8"))
            })
            .collect()
    }

    /// Checks that a 1-D offsets dataset has `n + 1` values, starts at 0
    /// and ends at the length of its data; returns that length.
    fn check_offsets(&self, name: &str, n: usize, data: &[(&str, Option<usize>)]) -> Result<usize> {
        self.shape(name, &[Some(n + 1)])?;
        let first = self.read::<u64>(name, 0..1)?;
        let last = self.read::<u64>(name, n..n + 1)?;
        if first.first() != Some(&0) {
            return Err(self.err(name, format!("first offset is {first:?}, not 0")));
        }
        let mut total = None;
        for &(d, width) in data {
            let shape = match width {
                None => self.shape(d, &[None])?,
                Some(w) => self.shape(d, &[None, Some(w)])?,
            };
            let len = shape.first().copied().unwrap_or(0);
            match total {
                None => total = Some((d, len)),
                Some((other, l)) if l != len => {
                    return Err(self.err(d, format!("{len} values but {other} holds {l}")))
                }
                Some(_) => {}
            }
        }
        let total = total.map_or(0, |(_, l)| l);
        if last.first() != Some(&(total as u64)) {
            return Err(self.err(
                name,
                format!("last offset is {last:?} but the data holds {total} values"),
            ));
        }
        Ok(total)
    }

    /// Offsets of rows `r` (r.len() + 1 values), checked to increase and
    /// stay within `total`; as usize.
    fn offsets(&self, name: &str, r: Range<usize>, total: usize) -> Result<Vec<usize>> {
        let v = self.read::<u64>(name, r.start..r.end + 1)?;
        let mut out = Vec::with_capacity(v.len());
        for (k, &o) in v.iter().enumerate() {
            if o > total as u64 {
                return Err(self.row_err(
                    name,
                    r.start + k,
                    format!("offset {o} beyond the {total} values of the data"),
                ));
            }
            if let Some(&prev) = out.last() {
                if (o as usize) < prev {
                    return Err(self.row_err(
                        name,
                        r.start + k,
                        format!("offsets decrease ({prev} then {o})"),
                    ));
                }
            }
            out.push(o as usize);
        }
        Ok(out)
    }

    /// Identity columns of rows `r`.
    fn identity(&self, r: Range<usize>) -> Result<Vec<(String, Survey, Source, f64)>> {
        let ids = self.strings("object_id", r.clone())?;
        let surveys = self.strings("survey", r.clone())?;
        let files = self.strings("source_file", r.clone())?;
        let hdus = self.strings("source_hdu", r.clone())?;
        let rows = self.read::<i64>("source_row", r.clone())?;
        let scales = self.read::<f64>("scale", r.clone())?;
        let mut out = Vec::with_capacity(r.len());
        for k in 0..r.len() {
            let i = r.start + k;
            let get = |v: Option<&String>, name: &str| {
                v.cloned()
                    .ok_or_else(|| self.row_err(name, i, "row outside the block read"))
            };
            let survey_name = get(surveys.get(k), "survey")?;
            let survey = Survey::from_name(&survey_name).ok_or_else(|| {
                self.row_err("survey", i, format!("unknown survey {survey_name:?}"))
            })?;
            let row = match rows.get(k) {
                None => return Err(self.row_err("source_row", i, "row outside the block read")),
                Some(-1) => None,
                Some(&v) => {
                    Some(u64::try_from(v).map_err(|_| {
                        self.row_err("source_row", i, format!("row {v} (−1 = none)"))
                    })?)
                }
            };
            let scale = *scales
                .get(k)
                .ok_or_else(|| self.row_err("scale", i, "row outside the block read"))?;
            out.push((
                get(ids.get(k), "object_id")?,
                survey,
                Source {
                    file: PathBuf::from(get(files.get(k), "source_file")?),
                    hdu: get(hdus.get(k), "source_hdu")?,
                    row,
                },
                scale,
            ));
        }
        Ok(out)
    }

    fn failures(&self) -> Result<Vec<Failure>> {
        let g = |n: &str| format!("{FAILED_GROUP}/{n}");
        let k = self.shape(&g("reason"), &[None])?[0];
        for n in [
            "object_id",
            "source_file",
            "source_hdu",
            "source_row",
            "stage",
        ] {
            self.shape(&g(n), &[Some(k)])?;
        }
        let ids = self.strings(&g("object_id"), 0..k)?;
        let files = self.strings(&g("source_file"), 0..k)?;
        let hdus = self.strings(&g("source_hdu"), 0..k)?;
        let rows = self.read::<i64>(&g("source_row"), 0..k)?;
        let stages = self.strings(&g("stage"), 0..k)?;
        let reasons = self.strings(&g("reason"), 0..k)?;
        let mut out = Vec::with_capacity(k);
        for i in 0..k {
            let (Some(id), Some(file), Some(hdu), Some(&row), Some(stage), Some(reason)) = (
                ids.get(i),
                files.get(i),
                hdus.get(i),
                rows.get(i),
                stages.get(i),
                reasons.get(i),
            ) else {
                return Err(self.row_err(&g("reason"), i, "row outside the data read"));
            };
            let stage = FailureStage::from_name(stage)
                .ok_or_else(|| self.row_err(&g("stage"), i, format!("unknown stage {stage:?}")))?;
            out.push(Failure {
                object_id: id.clone(),
                source_file: file.clone(),
                source_hdu: hdu.clone(),
                source_row: u64::try_from(row).ok(),
                stage,
                reason: reason.clone(),
            });
        }
        Ok(out)
    }
}

/// Per-row datasets of an embeddings file besides the identity ones.
const EMB_ROW_DATASETS: [&str; 19] = [
    "object_id",
    "survey",
    "source_file",
    "source_hdu",
    "source_row",
    "scale",
    "patches",
    "valid_patches",
    "label_present",
    "redshift",
    "redshift_err",
    "redshift_warning",
    "class",
    "subclass",
    "teff",
    "logg",
    "fe_h",
    "alpha_m",
    "embedding",
];

/// An embeddings file opened for reading.
pub struct EmbeddingsFile {
    inp: In,
    meta: EmbeddingsMeta,
    len: usize,
    extra_total: usize,
    text_total: usize,
    token_total: usize,
}

impl EmbeddingsFile {
    /// Opens an embeddings file and checks its attributes and the lengths
    /// of all its datasets.
    pub fn open(path: &Path) -> Result<EmbeddingsFile> {
        let inp = In::open(path, EMBEDDINGS_MARKER, EMBEDDINGS_VERSION, "embeddings")?;
        let dim = inp.attr_u64("embedding_dim")?;
        let dim = usize::try_from(dim)
            .ok()
            .filter(|d| (1..=MAX_DIM).contains(d))
            .ok_or_else(|| {
                Error::bad(
                    Location::file(path).field("@embedding_dim"),
                    format!("{dim} is not in 1..={MAX_DIM}"),
                )
            })?;
        let flag = |name: &str| -> Result<bool> { Ok(inp.attr_u64(name)? != 0) };
        let tokens = flag("has_tokens")?;
        let token_ids = tokens && flag("has_token_ids")?;
        let index = inp.attr_u64("shard_index")? as usize;
        let count = inp.attr_u64("shard_count")? as usize;
        let part = ShardPart::new(index, count)
            .map_err(|e| Error::bad(Location::file(path).field("@shard_index"), e))?;
        let meta = EmbeddingsMeta {
            run: inp.run_info()?,
            dim,
            tokens,
            token_ids,
            part,
        };
        let len = inp.shape("object_id", &[None])?[0];
        for name in EMB_ROW_DATASETS {
            if name == "embedding" {
                inp.shape(name, &[Some(len), Some(dim)])?;
            } else {
                inp.shape(name, &[Some(len)])?;
            }
        }
        let extra_total = inp.check_offsets(
            "extra_offsets",
            len,
            &[("extra_names", None), ("extra_values", None)],
        )?;
        let text_total = inp.check_offsets(
            "text_offsets",
            len,
            &[("text_names", None), ("text_values", None)],
        )?;
        let token_total = if tokens {
            inp.shape("scale_token", &[Some(len), Some(dim)])?;
            let mut data = vec![("tokens", Some(dim)), ("token_center", None)];
            if token_ids {
                data.push(("token_ids", None));
            }
            inp.check_offsets("token_offsets", len, &data)?
        } else {
            0
        };
        Ok(EmbeddingsFile {
            inp,
            meta,
            len,
            extra_total,
            text_total,
            token_total,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.inp.path
    }

    /// The file's metadata.
    pub fn meta(&self) -> &EmbeddingsMeta {
        &self.meta
    }

    /// Number of embedded spectra.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the file holds no embedding.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Total number of tokens stored (0 without tokens).
    pub fn token_count(&self) -> usize {
        self.token_total
    }

    /// Records `rows` (clamped to the file), read in one go per dataset.
    pub fn read(&self, rows: Range<usize>) -> Result<Vec<EmbeddingRecord>> {
        let r = rows.start.min(self.len)..rows.end.min(self.len);
        if r.is_empty() {
            return Ok(Vec::new());
        }
        let inp = &self.inp;
        let d = self.meta.dim;
        let ident = inp.identity(r.clone())?;
        let emb = inp.read_2d("embedding", r.clone(), d)?;
        let patches = inp.read::<u32>("patches", r.clone())?;
        let valid = inp.read::<u32>("valid_patches", r.clone())?;
        let present = inp.read::<u16>("label_present", r.clone())?;
        let num = |n: &str| inp.read::<f64>(n, r.clone());
        let (z, ze, teff, logg, feh, am) = (
            num("redshift")?,
            num("redshift_err")?,
            num("teff")?,
            num("logg")?,
            num("fe_h")?,
            num("alpha_m")?,
        );
        let zw = inp.read::<i64>("redshift_warning", r.clone())?;
        let class = inp.strings("class", r.clone())?;
        let subclass = inp.strings("subclass", r.clone())?;
        let eo = inp.offsets("extra_offsets", r.clone(), self.extra_total)?;
        let to = inp.offsets("text_offsets", r.clone(), self.text_total)?;
        let er = eo[0]..eo[r.len()];
        let tr = to[0]..to[r.len()];
        let en = inp.strings("extra_names", er.clone())?;
        let ev = inp.read::<f64>("extra_values", er.clone())?;
        let tn = inp.strings("text_names", tr.clone())?;
        let tv = inp.strings("text_values", tr.clone())?;
        let tok = if self.meta.tokens {
            let off = inp.offsets("token_offsets", r.clone(), self.token_total)?;
            let kr = off[0]..off[r.len()];
            let st = inp.read_2d("scale_token", r.clone(), d)?;
            let vals = inp.read_2d("tokens", kr.clone(), d)?;
            let centers = inp.read::<f64>("token_center", kr.clone())?;
            let ids = if self.meta.token_ids {
                Some(inp.read::<u32>("token_ids", kr)?)
            } else {
                None
            };
            Some((off, st, vals, centers, ids))
        } else {
            None
        };

        let mut out = Vec::with_capacity(r.len());
        for (k, (object_id, survey, source, scale)) in ident.into_iter().enumerate() {
            let i = r.start + k;
            let missing = |n: &str| inp.row_err(n, i, "row outside the block read");
            let p = *present.get(k).ok_or_else(|| missing("label_present"))?;
            let pick = |bit: u16, v: &[f64], n: &str| -> Result<Option<f64>> {
                let x = *v.get(k).ok_or_else(|| missing(n))?;
                Ok((p & bit != 0).then_some(x))
            };
            let mut labels = Labels {
                redshift: pick(BIT_REDSHIFT, &z, "redshift")?,
                redshift_err: pick(BIT_REDSHIFT_ERR, &ze, "redshift_err")?,
                teff: pick(BIT_TEFF, &teff, "teff")?,
                logg: pick(BIT_LOGG, &logg, "logg")?,
                fe_h: pick(BIT_FE_H, &feh, "fe_h")?,
                alpha_m: pick(BIT_ALPHA_M, &am, "alpha_m")?,
                ..Labels::default()
            };
            if p & BIT_REDSHIFT_WARNING != 0 {
                labels.redshift_warning =
                    Some(*zw.get(k).ok_or_else(|| missing("redshift_warning"))?);
            }
            if p & BIT_CLASS != 0 {
                labels.class = Some(class.get(k).ok_or_else(|| missing("class"))?.clone());
            }
            if p & BIT_SUBCLASS != 0 {
                labels.subclass = Some(subclass.get(k).ok_or_else(|| missing("subclass"))?.clone());
            }
            let (a, b) = (eo[k] - eo[0], eo[k + 1] - eo[0]);
            for (name, v) in en
                .get(a..b)
                .unwrap_or(&[])
                .iter()
                .zip(ev.get(a..b).unwrap_or(&[]))
            {
                if labels.extra.insert(name.clone(), *v).is_some() {
                    return Err(inp.row_err("extra_names", i, format!("name {name:?} repeated")));
                }
            }
            let (a, b) = (to[k] - to[0], to[k + 1] - to[0]);
            for (name, v) in tn
                .get(a..b)
                .unwrap_or(&[])
                .iter()
                .zip(tv.get(a..b).unwrap_or(&[]))
            {
                if labels.text.insert(name.clone(), v.clone()).is_some() {
                    return Err(inp.row_err("text_names", i, format!("name {name:?} repeated")));
                }
            }
            let embedding = emb
                .get(k * d..(k + 1) * d)
                .ok_or_else(|| missing("embedding"))?
                .to_vec();
            let tokens = match &tok {
                None => None,
                Some((off, st, vals, centers, ids)) => {
                    let (a, b) = (off[k] - off[0], off[k + 1] - off[0]);
                    Some(Tokens {
                        scale_token: st
                            .get(k * d..(k + 1) * d)
                            .ok_or_else(|| missing("scale_token"))?
                            .to_vec(),
                        values: vals
                            .get(a * d..b * d)
                            .ok_or_else(|| missing("tokens"))?
                            .to_vec(),
                        center: centers
                            .get(a..b)
                            .ok_or_else(|| missing("token_center"))?
                            .to_vec(),
                        ids: match ids {
                            Some(ids) => {
                                Some(ids.get(a..b).ok_or_else(|| missing("token_ids"))?.to_vec())
                            }
                            None => None,
                        },
                    })
                }
            };
            out.push(EmbeddingRecord {
                object_id,
                survey,
                source,
                labels,
                scale,
                patches: *patches.get(k).ok_or_else(|| missing("patches"))?,
                valid_patches: *valid.get(k).ok_or_else(|| missing("valid_patches"))?,
                embedding,
                tokens,
            });
        }
        Ok(out)
    }

    /// All records, streamed in blocks (memory bounded by the block).
    pub fn records(&self) -> impl Iterator<Item = Result<EmbeddingRecord>> + '_ {
        let mut start = 0;
        let mut block: std::vec::IntoIter<EmbeddingRecord> = Vec::new().into_iter();
        let mut failed = false;
        std::iter::from_fn(move || {
            if failed {
                return None;
            }
            if let Some(r) = block.next() {
                return Some(Ok(r));
            }
            if start >= self.len {
                return None;
            }
            let end = (start + READ_BLOCK).min(self.len);
            match self.read(start..end) {
                Ok(v) => {
                    start = end;
                    block = v.into_iter();
                    block.next().map(Ok)
                }
                Err(e) => {
                    failed = true;
                    Some(Err(e))
                }
            }
        })
    }

    /// The spectra and inputs that could not be embedded.
    pub fn failures(&self) -> Result<Vec<Failure>> {
        self.inp.failures()
    }
}

/// A reconstruction file opened for reading.
pub struct ReconstructionFile {
    inp: In,
    run: RunInfo,
    target: String,
    len: usize,
    totals: [usize; 3],
}

impl ReconstructionFile {
    /// Opens a reconstruction file and checks its datasets' lengths.
    pub fn open(path: &Path) -> Result<ReconstructionFile> {
        let inp = In::open(
            path,
            RECONSTRUCTION_MARKER,
            RECONSTRUCTION_VERSION,
            "reconstruction",
        )?;
        let run = inp.run_info()?;
        let target = inp.attr_str("target")?;
        let len = inp.shape("object_id", &[None])?[0];
        for name in ["survey", "source_file", "source_hdu", "source_row", "scale"] {
            inp.shape(name, &[Some(len)])?;
        }
        let totals = [
            inp.check_offsets(
                "input_offsets",
                len,
                &[
                    ("input_wavelength", None),
                    ("input_flux", None),
                    ("input_ivar", None),
                    ("input_valid", None),
                ],
            )?,
            inp.check_offsets(
                "output_offsets",
                len,
                &[("output_wavelength", None), ("output_flux", None)],
            )?,
            inp.check_offsets(
                "segment_offsets",
                len,
                &[
                    ("segment_names", None),
                    ("segment_starts", None),
                    ("segment_ends", None),
                ],
            )?,
        ];
        Ok(ReconstructionFile {
            inp,
            run,
            target,
            len,
            totals,
        })
    }

    /// Model and inputs that produced the file.
    pub fn run(&self) -> &RunInfo {
        &self.run
    }

    /// The output grid: `own`, a survey name or a file.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Number of reconstructed spectra.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the file holds no reconstruction.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Record `i` (< [`ReconstructionFile::len`]).
    pub fn read(&self, i: usize) -> Result<ReconstructionRecord> {
        let inp = &self.inp;
        if i >= self.len {
            return Err(inp.row_err("object_id", i, format!("no row {i} of {}", self.len)));
        }
        let (object_id, survey, source, scale) = inp
            .identity(i..i + 1)?
            .pop()
            .ok_or_else(|| inp.row_err("object_id", i, "row outside the data read"))?;
        let io = inp.offsets("input_offsets", i..i + 1, self.totals[0])?;
        let oo = inp.offsets("output_offsets", i..i + 1, self.totals[1])?;
        let so = inp.offsets("segment_offsets", i..i + 1, self.totals[2])?;
        let ir = io[0]..io[1];
        let or = oo[0]..oo[1];
        let sr = so[0]..so[1];
        let names = inp.strings("segment_names", sr.clone())?;
        let starts = inp.read::<u64>("segment_starts", sr.clone())?;
        let ends = inp.read::<u64>("segment_ends", sr)?;
        let q = or.len();
        let mut segments = Vec::with_capacity(names.len());
        let mut next = 0usize;
        for ((name, &a), &b) in names.iter().zip(&starts).zip(&ends) {
            let (a, b) = (a as usize, b as usize);
            if a != next || b < a || b > q {
                return Err(inp.row_err(
                    "segment_starts",
                    i,
                    format!(
                        "segment {name:?} {a}..{b} does not continue at output pixel {next} of {q}"
                    ),
                ));
            }
            next = b;
            segments.push(Segment {
                name: name.clone(),
                start: a,
                end: b,
            });
        }
        if next != q {
            return Err(inp.row_err(
                "segment_ends",
                i,
                format!("segments cover {next} of {q} output pixels"),
            ));
        }
        Ok(ReconstructionRecord {
            object_id,
            survey,
            source,
            scale,
            input_wavelength: inp.read("input_wavelength", ir.clone())?,
            input_flux: inp.read("input_flux", ir.clone())?,
            input_ivar: inp.read("input_ivar", ir.clone())?,
            input_valid: inp
                .read::<u8>("input_valid", ir)?
                .into_iter()
                .map(|v| v != 0)
                .collect(),
            output_wavelength: inp.read("output_wavelength", or.clone())?,
            output_flux: inp.read("output_flux", or)?,
            output_segments: segments,
        })
    }

    /// The spectra and inputs that could not be reconstructed.
    pub fn failures(&self) -> Result<Vec<Failure>> {
        self.inp.failures()
    }
}

// ---------------------------------------------------------------------------
// Merging the parts of a sharded run
// ---------------------------------------------------------------------------

/// What [`merge`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeSummary {
    /// Parts joined.
    pub parts: usize,
    /// Embeddings written.
    pub records: usize,
    /// Failures carried over.
    pub failures: usize,
}

/// Joins the outputs of the `--shard i/n` parts of one run into `output`,
/// in part order (which is the order a single run writes). Every part
/// 0..n must be given exactly once, and all must share the checkpoint,
/// the configs, the inputs, the width and the token settings; otherwise
/// the error names the file and the attribute that differs. Memory is
/// bounded: records are copied in blocks.
pub fn merge(parts: &[PathBuf], output: &Path, overwrite: bool) -> Result<MergeSummary> {
    let Some(first_path) = parts.first() else {
        return Err(Error::Input {
            input: output.display().to_string(),
            reason: "no part to merge".into(),
        });
    };
    if !overwrite && output.exists() {
        return Err(exists_error(output));
    }
    let mut files = Vec::with_capacity(parts.len());
    for p in parts {
        files.push(EmbeddingsFile::open(p)?);
    }
    let first = files[0].meta.clone();
    let n = first.part.count;
    for f in &files {
        let m = &f.meta;
        let checks: [(&str, bool); 8] = [
            (
                "checkpoint_sha256",
                m.run.checkpoint_sha256 == first.run.checkpoint_sha256,
            ),
            ("model_config", m.run.model_config == first.run.model_config),
            (
                "prepare_config",
                m.run.prepare_config == first.run.prepare_config,
            ),
            ("inputs", m.run.inputs == first.run.inputs),
            ("embedding_dim", m.dim == first.dim),
            ("has_tokens", m.tokens == first.tokens),
            ("has_token_ids", m.token_ids == first.token_ids),
            ("shard_count", m.part.count == n),
        ];
        if let Some((attr, _)) = checks.iter().find(|(_, ok)| !ok) {
            return Err(Error::bad(
                Location::file(f.path()).field(format!("@{attr}")),
                format!(
                    "differs from {}'s: not a part of the same run",
                    first_path.display()
                ),
            ));
        }
    }
    files.sort_by_key(|f| f.meta.part.index);
    let mut missing = Vec::new();
    let mut expect = 0;
    for f in &files {
        let i = f.meta.part.index;
        if i < expect {
            return Err(Error::bad(
                Location::file(f.path()).field("@shard_index"),
                format!("part {i}/{n} is given twice"),
            ));
        }
        missing.extend((expect..i).map(|j| format!("{j}/{n}")));
        expect = i + 1;
    }
    missing.extend((expect..n).map(|j| format!("{j}/{n}")));
    if !missing.is_empty() {
        return Err(Error::Input {
            input: output.display().to_string(),
            reason: format!(
                "part(s) {} missing among the files to merge",
                missing.join(", ")
            ),
        });
    }
    let meta = EmbeddingsMeta {
        part: ShardPart::WHOLE,
        ..first
    };
    let mut w = EmbeddingsWriter::create(output, &meta, overwrite)?;
    let mut failures = 0;
    for f in &files {
        let mut start = 0;
        while start < f.len() {
            let end = (start + READ_BLOCK).min(f.len());
            for r in f.read(start..end)? {
                w.write(&r)?;
            }
            start = end;
        }
        for fl in f.failures()? {
            w.fail(&fl)?;
            failures += 1;
        }
    }
    let records = w.finish()?;
    Ok(MergeSummary {
        parts: files.len(),
        records,
        failures,
    })
}
