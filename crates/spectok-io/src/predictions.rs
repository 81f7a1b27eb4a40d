//! The HDF5 predictions file of `spectok predict` (`-o predictions.h5`).
//!
//! One row per spectrum, one dataset per column of the CSV output, all at
//! the root; strings are variable-length UTF-8, numbers are f64, datasets
//! are compressed with shuffle + deflate when the HDF5 library has deflate
//! (as in the [`crate::embeddings`] files). The file is written under
//! `PATH.tmp` and renamed to `PATH` only when complete, so a failure never
//! leaves a partial file under the final name (an existing `PATH` then
//! keeps its old content) and removes the temporary file.
//!
//! Root attributes:
//!
//! | attribute | type | content |
//! |---|---|---|
//! | `spectok_predictions_version` | u32 | [`PREDICTIONS_VERSION`] (marks the file) |
//! | `task` | string | `redshift`, `class` or `stellar` |
//! | `head` | string | the head directory; empty when unknown |
//! | `checkpoint` | string | the tokenizer checkpoint the inputs were embedded with |
//! | `checkpoint_sha256` | string | SHA-256 (hex) of its `model.safetensors` |
//! | `spectok_version` | string | version of the writing program |
//! | `columns` | string | the numeric columns in CSV order, a JSON array of names |
//!
//! With N spectra and C classes:
//!
//! | dataset | type | shape | content |
//! |---|---|---|---|
//! | `object_id` | string | N | object identifier |
//! | `survey` | string | N | survey name |
//! | `source` | string | N | where the spectrum was read (`file[hdu] row r`) |
//! | one per name in `columns` | f64 | N | redshift: `z`, `z_err`; stellar: one per parameter |
//! | `class` | string | N | predicted class (class task) |
//! | `classes` | string | C | the class names, in probability order (class task) |
//! | `probabilities` | f64 | N × C | probability of each class (class task) |
//!
//! A numeric column that is the 1σ uncertainty of another carries the
//! dataset attribute `uncertainty_of` naming it (`z_err`: `z`).
//!
//! Reading it from Python:
//!
//! ```text
//! import h5py
//! with h5py.File("predictions.h5") as f:
//!     ids = f["object_id"].asstr()[:]
//!     z, z_err = f["z"][:], f["z_err"][:]                        # redshift
//!     names = f["classes"].asstr()[:]; P = f["probabilities"][:]  # class
//! ```

use std::path::{Path, PathBuf};
use std::str::FromStr;

use hdf5::types::VarLenUnicode;
use hdf5::{Dataset, H5Type};

use crate::error::{Error, Location, Result};
use crate::hdf5util::{self, one_line};
use crate::shard::tmp_path;

/// Root attribute marking a predictions file (value: format version).
pub const PREDICTIONS_MARKER: &str = "spectok_predictions_version";
/// Version of the predictions layout this crate writes and reads.
pub const PREDICTIONS_VERSION: u32 = 1;

/// Rows per chunk of 1-D datasets; values per chunk of 2-D datasets.
const ROW_CHUNK: usize = 1 << 12;
const VALUE_CHUNK: usize = 1 << 16;

/// Dataset names that numeric columns cannot take.
const RESERVED: &[&str] = &[
    "object_id",
    "survey",
    "source",
    "class",
    "classes",
    "probabilities",
];

type S = VarLenUnicode;

/// One numeric column (a CSV column such as `z`, `z_err` or `teff`).
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    /// The dataset name: not empty, no `/`, not `.`, not a name used by
    /// the other datasets.
    pub name: String,
    /// One value per row; NaN where there is none.
    pub values: Vec<f64>,
    /// The column this one is the 1σ uncertainty of (`z_err`: `z`).
    pub uncertainty_of: Option<String>,
}

/// The classification columns.
#[derive(Clone, Debug, PartialEq)]
pub struct Classes {
    /// Class names, in probability order (at least one).
    pub names: Vec<String>,
    /// Predicted class of each row.
    pub predicted: Vec<String>,
    /// Row-major N × C probabilities.
    pub probabilities: Vec<f64>,
}

impl Classes {
    /// The probabilities of row `i`, one per class.
    pub fn row(&self, i: usize) -> Option<&[f64]> {
        let c = self.names.len();
        self.probabilities.get(i * c..(i + 1) * c)
    }
}

/// A predictions table: what one `spectok predict` run wrote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Predictions {
    /// `redshift`, `class` or `stellar`.
    pub task: String,
    /// The head directory; empty when unknown.
    pub head: String,
    /// The tokenizer checkpoint the inputs were embedded with.
    pub checkpoint: String,
    /// SHA-256 (hex) of the checkpoint's weights.
    pub checkpoint_sha256: String,
    /// Version of the writing program.
    pub spectok_version: String,
    /// Object identifier of each row.
    pub object_id: Vec<String>,
    /// Survey of each row.
    pub survey: Vec<String>,
    /// Where each row's spectrum was read.
    pub source: Vec<String>,
    /// Numeric columns, in CSV order.
    pub columns: Vec<Column>,
    /// Predicted class and probabilities (class task).
    pub classes: Option<Classes>,
}

impl Predictions {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.object_id.len()
    }

    /// Whether there is no row.
    pub fn is_empty(&self) -> bool {
        self.object_id.is_empty()
    }

    /// The numeric column called `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Checks names and lengths before anything is written.
    fn check(&self, path: &Path) -> Result<()> {
        let n = self.len();
        let bad = |name: &str, why: String| Err(Error::bad(Location::file(path).hdu(name), why));
        for (name, len) in [("survey", self.survey.len()), ("source", self.source.len())] {
            if len != n {
                return bad(name, format!("{len} values for {n} rows"));
            }
        }
        let mut seen: Vec<&str> = Vec::new();
        for c in &self.columns {
            let name = c.name.as_str();
            let shown = name.escape_debug().to_string();
            if name.is_empty()
                || name == "."
                || name.contains(['/', '\0'])
                || RESERVED.contains(&name)
                || seen.contains(&name)
            {
                return bad(
                    &shown,
                    "column name is empty, contains `/` or NUL, is `.`, or is taken".into(),
                );
            }
            seen.push(name);
            if c.values.len() != n {
                return bad(&shown, format!("{} values for {n} rows", c.values.len()));
            }
            if let Some(of) = &c.uncertainty_of {
                if !self.columns.iter().any(|o| &o.name == of) {
                    return bad(&shown, format!("uncertainty of {of:?}, which is no column"));
                }
            }
        }
        if let Some(k) = &self.classes {
            if k.names.is_empty() {
                return bad("classes", "no class name".into());
            }
            if k.predicted.len() != n {
                return bad(
                    "class",
                    format!("{} values for {n} rows", k.predicted.len()),
                );
            }
            let want = n.checked_mul(k.names.len());
            if want != Some(k.probabilities.len()) {
                return bad(
                    "probabilities",
                    format!(
                        "{} values for {n} rows of {} classes",
                        k.probabilities.len(),
                        k.names.len()
                    ),
                );
            }
        }
        Ok(())
    }
}

/// A string as HDF5 text, or an error naming the dataset and row.
fn text(path: &Path, name: &str, row: usize, t: &str) -> Result<S> {
    S::from_str(t).map_err(|_| {
        Error::bad(
            Location::file(path).hdu(name).row(row as u64),
            format!("{t:?} contains a NUL character, which HDF5 strings cannot hold"),
        )
    })
}

fn texts(path: &Path, name: &str, v: &[String]) -> Result<Vec<S>> {
    v.iter()
        .enumerate()
        .map(|(i, t)| text(path, name, i, t))
        .collect()
}

/// Creates a 1-D dataset holding `data`.
fn write_1d<T: H5Type>(file: &hdf5::File, name: &str, data: &[T]) -> hdf5::Result<Dataset> {
    let mut b = file.new_dataset::<T>();
    // Fixed-size datasets need chunks no longer than the data.
    if !data.is_empty() {
        b = b.chunk(data.len().min(ROW_CHUNK));
        if hdf5::filters::deflate_available() {
            b = b.shuffle().deflate(4);
        }
    }
    let ds = b.shape(data.len()).create(name)?;
    if !data.is_empty() {
        ds.write_raw(data)?;
    }
    Ok(ds)
}

/// Creates a 2-D dataset of `rows × width` values (row-major `data`).
fn write_2d(file: &hdf5::File, name: &str, data: &[f64], width: usize) -> hdf5::Result<()> {
    let rows = data.len() / width.max(1);
    let mut b = file.new_dataset::<f64>();
    if rows > 0 && width > 0 {
        b = b.chunk(((VALUE_CHUNK / width).clamp(1, ROW_CHUNK).min(rows), width));
        if hdf5::filters::deflate_available() {
            b = b.shuffle().deflate(4);
        }
    }
    let ds = b.shape((rows, width)).create(name)?;
    if rows > 0 && width > 0 {
        let view = ndarray::ArrayView2::from_shape((rows, width), &data[..rows * width])?;
        ds.write(view)?;
    }
    Ok(())
}

fn write_attr_str(loc: &hdf5::Location, name: &str, value: &S) -> hdf5::Result<()> {
    loc.new_attr::<S>().create(name)?.write_scalar(value)
}

/// Writes `p` to `path` (replacing an existing file only when complete).
///
/// Every string must be free of NUL characters; the error names the
/// dataset (or attribute) and row of the first that is not, and of any
/// length that differs from the number of rows.
pub fn write_predictions(path: &Path, p: &Predictions) -> Result<()> {
    p.check(path)?;
    let tmp = tmp_path(path);
    let result = write_file(&tmp, path, p);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        Error::Os {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Fills the temporary file `tmp`; strings are checked against `path`,
/// the name the user knows, HDF5 failures name `tmp`.
fn write_file(tmp: &Path, path: &Path, p: &Predictions) -> Result<()> {
    let attr = |name: &str, v: &str| {
        S::from_str(v).map_err(|_| {
            Error::bad(
                Location::file(path).field(format!("@{name}")),
                format!("{v:?} contains a NUL character, which HDF5 strings cannot hold"),
            )
        })
    };
    let names: Vec<&str> = p.columns.iter().map(|c| c.name.as_str()).collect();
    let columns = serde_json::to_string(&names).unwrap_or_else(|_| "[]".into());
    let attrs = [
        ("task", attr("task", &p.task)?),
        ("head", attr("head", &p.head)?),
        ("checkpoint", attr("checkpoint", &p.checkpoint)?),
        (
            "checkpoint_sha256",
            attr("checkpoint_sha256", &p.checkpoint_sha256)?,
        ),
        (
            "spectok_version",
            attr("spectok_version", &p.spectok_version)?,
        ),
        ("columns", attr("columns", &columns)?),
    ];
    let strings = [
        ("object_id", texts(path, "object_id", &p.object_id)?),
        ("survey", texts(path, "survey", &p.survey)?),
        ("source", texts(path, "source", &p.source)?),
    ];
    let uncertainty = p
        .columns
        .iter()
        .map(|c| match &c.uncertainty_of {
            Some(of) => text(path, &c.name, 0, of).map(Some),
            None => Ok(None),
        })
        .collect::<Result<Vec<_>>>()?;
    let classes = match &p.classes {
        Some(k) => Some((
            texts(path, "class", &k.predicted)?,
            texts(path, "classes", &k.names)?,
            k,
        )),
        None => None,
    };
    let bad = |what: &str, e: hdf5::Error| {
        Error::bad(
            Location::file(tmp),
            format!("cannot {what}: {}", one_line(&e)),
        )
    };
    let file = hdf5::File::create(tmp).map_err(|e| bad("create HDF5 file", e))?;
    let written = (|| -> std::result::Result<(), (String, hdf5::Error)> {
        let at = |name: &str| {
            let name = name.to_string();
            move |e: hdf5::Error| (name, e)
        };
        file.new_attr::<u32>()
            .create(PREDICTIONS_MARKER)
            .and_then(|a| a.write_scalar(&PREDICTIONS_VERSION))
            .map_err(at(&format!("@{PREDICTIONS_MARKER}")))?;
        for (name, v) in &attrs {
            write_attr_str(&file, name, v).map_err(at(&format!("@{name}")))?;
        }
        for (name, v) in &strings {
            write_1d(&file, name, v).map_err(at(name))?;
        }
        for (c, of) in p.columns.iter().zip(&uncertainty) {
            let ds = write_1d(&file, &c.name, &c.values).map_err(at(&c.name))?;
            if let Some(of) = of {
                write_attr_str(&ds, "uncertainty_of", of).map_err(at(&c.name))?;
            }
        }
        if let Some((predicted, names, k)) = &classes {
            write_1d(&file, "class", predicted).map_err(at("class"))?;
            write_1d(&file, "classes", names).map_err(at("classes"))?;
            write_2d(&file, "probabilities", &k.probabilities, k.names.len())
                .map_err(at("probabilities"))?;
        }
        file.flush().map_err(at("(flush)"))
    })();
    drop(file);
    written.map_err(|(name, e)| {
        Error::bad(
            Location::file(tmp).hdu(name),
            format!("cannot write: {}", one_line(&e)),
        )
    })
}

/// An open predictions file and the checks its reading shares.
struct In {
    path: PathBuf,
    file: hdf5::File,
}

impl In {
    fn err(&self, name: &str, why: impl Into<String>) -> Error {
        Error::bad(Location::file(&self.path).hdu(name), why)
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
        String::from_utf8(v.as_bytes().to_vec())
            .map_err(|_| Error::bad(loc(), "string is not valid UTF-8"))
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

    /// Opens `name` and checks its shape against `want`.
    fn shaped(&self, name: &str, want: &[usize]) -> Result<Dataset> {
        let ds = self.dataset(name)?;
        let shape = ds.shape();
        if shape != want {
            return Err(self.err(name, format!("shape {shape:?}, expected {want:?}")));
        }
        Ok(ds)
    }

    fn values<T: H5Type>(&self, name: &str, want: &[usize]) -> Result<Vec<T>> {
        let ds = self.shaped(name, want)?;
        let n: usize = want.iter().product();
        if n == 0 {
            return Ok(Vec::new());
        }
        let v = ds
            .read_raw::<T>()
            .map_err(|e| self.err(name, format!("cannot read: {}", one_line(&e))))?;
        if v.len() != n {
            return Err(self.err(name, format!("read {} of {n} values", v.len())));
        }
        Ok(v)
    }

    fn strings(&self, name: &str, n: usize) -> Result<Vec<String>> {
        self.values::<S>(name, &[n])?
            .iter()
            .enumerate()
            .map(|(k, v)| {
                String::from_utf8(v.as_bytes().to_vec()).map_err(|_| {
                    Error::bad(
                        Location::file(&self.path).hdu(name).row(k as u64),
                        "string is not valid UTF-8",
                    )
                })
            })
            .collect()
    }

    /// The `uncertainty_of` attribute of dataset `name`, if any.
    fn uncertainty_of(&self, name: &str) -> Result<Option<String>> {
        let ds = self.dataset(name)?;
        let has = ds
            .attr_names()
            .map_err(|e| self.err(name, format!("cannot list attributes: {}", one_line(&e))))?
            .iter()
            .any(|a| a == "uncertainty_of");
        if !has {
            return Ok(None);
        }
        let loc = || {
            Location::file(&self.path)
                .hdu(name)
                .field("@uncertainty_of")
        };
        let v = ds
            .attr("uncertainty_of")
            .and_then(|a| a.read_scalar::<S>())
            .map_err(|e| Error::bad(loc(), format!("cannot read as a string: {}", one_line(&e))))?;
        String::from_utf8(v.as_bytes().to_vec())
            .map(Some)
            .map_err(|_| Error::bad(loc(), "string is not valid UTF-8"))
    }
}

/// Reads a predictions file written by [`write_predictions`], checking its
/// marker, attributes and that every dataset has one value per row.
pub fn read_predictions(path: &Path) -> Result<Predictions> {
    let file = hdf5util::open(path)?;
    let loc = || Location::file(path).field(format!("@{PREDICTIONS_MARKER}"));
    let version = file
        .attr(PREDICTIONS_MARKER)
        .map_err(|_| {
            Error::bad(
                loc(),
                "not a spectok predictions file (root attribute missing)",
            )
        })?
        .read_scalar::<i64>()
        .map_err(|e| Error::bad(loc(), format!("cannot read: {}", one_line(&e))))?;
    if version != i64::from(PREDICTIONS_VERSION) {
        return Err(Error::bad(
            loc(),
            format!(
                "predictions file version {version}; this spectok reads version {PREDICTIONS_VERSION}"
            ),
        ));
    }
    let inp = In {
        path: path.to_path_buf(),
        file,
    };
    let names: Vec<String> = serde_json::from_str(&inp.attr_str("columns")?).map_err(|e| {
        Error::bad(
            Location::file(path).field("@columns"),
            format!("not a JSON array of strings: {e}"),
        )
    })?;
    let ids = inp.dataset("object_id")?.shape();
    let [n] = ids[..] else {
        return Err(inp.err("object_id", format!("shape {ids:?}, expected 1-D")));
    };
    let mut columns = Vec::with_capacity(names.len());
    for name in names {
        columns.push(Column {
            values: inp.values::<f64>(&name, &[n])?,
            uncertainty_of: inp.uncertainty_of(&name)?,
            name,
        });
    }
    let classes = if inp.file.link_exists("classes") {
        let class_names = inp.strings("classes", inp.dataset("classes")?.size())?;
        Some(Classes {
            predicted: inp.strings("class", n)?,
            probabilities: inp.values::<f64>("probabilities", &[n, class_names.len()])?,
            names: class_names,
        })
    } else {
        None
    };
    Ok(Predictions {
        task: inp.attr_str("task")?,
        head: inp.attr_str("head")?,
        checkpoint: inp.attr_str("checkpoint")?,
        checkpoint_sha256: inp.attr_str("checkpoint_sha256")?,
        spectok_version: inp.attr_str("spectok_version")?,
        object_id: inp.strings("object_id", n)?,
        survey: inp.strings("survey", n)?,
        source: inp.strings("source", n)?,
        columns,
        classes,
    })
}
