//! Cached frozen-encoder outputs, labels and the train/val/test split.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};
use spectok_io::embeddings::{EmbeddingRecord, EmbeddingsFile};
use spectok_io::Labels;

use super::Task;
use crate::error::{Error, Result};

/// One spectrum as the heads see it: the frozen encoder's outputs and the
/// labels carried from the input.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Object identifier (the split key).
    pub object_id: String,
    /// Survey name.
    pub survey: String,
    /// Where the spectrum was read (`file[hdu] row r`).
    pub source: String,
    /// The pooled embedding (D values).
    pub pooled: Vec<f32>,
    /// The scale token followed by the valid-patch tokens, `n × D` values
    /// (empty when the cache holds no tokens).
    pub tokens: Vec<f32>,
    /// Labels from the input (or from a labels file).
    pub labels: Labels,
}

impl Sample {
    /// Number of tokens (scale token included).
    pub fn n_tokens(&self, dim: usize) -> usize {
        self.tokens.len() / dim.max(1)
    }

    fn from_record(r: EmbeddingRecord, max_tokens: usize) -> Sample {
        let dim = r.embedding.len();
        let tokens = match r.tokens {
            Some(t) => {
                let mut v = t.scale_token;
                v.extend(pool_tokens(&t.values, dim, max_tokens.saturating_sub(1)));
                v
            }
            None => Vec::new(),
        };
        Sample {
            object_id: r.object_id,
            survey: r.survey.name().to_string(),
            source: r.source.to_string(),
            pooled: r.embedding,
            tokens,
            labels: r.labels,
        }
    }
}

/// Averages consecutive tokens in groups so that at most `max` remain
/// (the sequence order is kept); `max == 0` keeps everything.
pub fn pool_tokens(values: &[f32], dim: usize, max: usize) -> Vec<f32> {
    let n = values.len() / dim.max(1);
    if max == 0 || n <= max {
        return values.to_vec();
    }
    let group = n.div_ceil(max);
    let mut out = Vec::with_capacity(n.div_ceil(group) * dim);
    for chunk in values.chunks(group * dim) {
        let k = chunk.len() / dim;
        for j in 0..dim {
            let s: f32 = (0..k).map(|i| chunk[i * dim + j]).sum();
            out.push(s / k as f32);
        }
    }
    out
}

/// Reads every record of an embeddings file (see
/// [`spectok_io::embeddings`]) into samples, with at most `max_tokens`
/// tokens each (longer sequences are average-pooled in groups).
pub fn load_samples(path: &Path, max_tokens: usize) -> Result<(Vec<Sample>, usize, String)> {
    let f = EmbeddingsFile::open(path).map_err(io_err)?;
    let dim = f.meta().dim;
    let sha = f.meta().run.checkpoint_sha256.clone();
    let mut out = Vec::with_capacity(f.len());
    let step = 1024;
    let mut start = 0;
    while start < f.len() {
        for r in f.read(start..start + step).map_err(io_err)? {
            out.push(Sample::from_record(r, max_tokens));
        }
        start += step;
    }
    Ok((out, dim, sha))
}

pub(crate) fn io_err(e: spectok_io::Error) -> Error {
    Error::Data(spectok_data::Error::Io(e))
}

/// Which part of the data an object belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    /// Fits the head.
    Train,
    /// Early stopping and baseline tuning.
    Val,
    /// Scored once at the end.
    Test,
}

/// The part of object `id`: test with probability `test_fraction`,
/// validation with probability `val_fraction`, else train. Decided by a
/// stable hash of the id and `seed` alone ([`spectok_data::split::id_unit`]),
/// so every spectrum of one object lands in the same part.
pub fn part_of(id: &str, val_fraction: f64, test_fraction: f64, seed: u64) -> Part {
    let u = spectok_data::split::id_unit(id, seed);
    if u < test_fraction {
        Part::Test
    } else if u < test_fraction + val_fraction {
        Part::Val
    } else {
        Part::Train
    }
}

/// Stellar parameter names, in output order.
pub const STELLAR_PARAMS: [&str; 4] = ["teff", "logg", "fe_h", "alpha_m"];

/// The targets of one task for a set of samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Targets {
    /// Indices (into the samples) of the labelled samples.
    pub rows: Vec<usize>,
    /// Per labelled sample: the target values (redshift: `[z]`;
    /// stellar: one per parameter, NaN when unknown; class: `[index]`).
    pub values: Vec<Vec<f64>>,
    /// Class names (class task) or parameter names (stellar, redshift).
    pub names: Vec<String>,
    /// Samples left out and why.
    pub excluded: BTreeMap<String, usize>,
}

/// Reads `--labels FILE.csv`: a header row naming an `object_id` (or
/// `id`) column and any of `z`/`redshift`, `class`, `teff`, `logg`,
/// `fe_h`/`feh`, `alpha_m`; empty cells are missing values.
pub fn read_labels_csv(path: &Path) -> Result<HashMap<String, Labels>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()
        .ok_or_else(|| Error::file(path, "empty labels file"))?
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let id_col = header
        .iter()
        .position(|h| h == "object_id" || h == "id")
        .ok_or_else(|| Error::file(path, "header has no object_id column"))?;
    let mut out = HashMap::new();
    for (n, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let row = n + 2;
        let id = cells
            .get(id_col)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::file(path, format!("line {row}: no object_id")))?;
        let mut l = Labels::default();
        for (h, c) in header.iter().zip(&cells) {
            if c.is_empty() || h == "object_id" || h == "id" {
                continue;
            }
            let num = || {
                c.parse::<f64>().map_err(|_| {
                    Error::file(
                        path,
                        format!("line {row} column {h}: {c:?} is not a number"),
                    )
                })
            };
            match h.as_str() {
                "z" | "redshift" => l.redshift = Some(num()?),
                "class" => l.class = Some(Labels::normalise_class(c)),
                "teff" => l.teff = Some(num()?),
                "logg" => l.logg = Some(num()?),
                "fe_h" | "feh" => l.fe_h = Some(num()?),
                "alpha_m" => l.alpha_m = Some(num()?),
                _ => {}
            }
        }
        out.insert(id.to_string(), l);
    }
    Ok(out)
}

fn finite(v: Option<f64>) -> Option<f64> {
    v.filter(|x| x.is_finite())
}

/// Collects the targets of `task`. `classes` fixes the class label set
/// (empty: every class seen, sorted). Missing, flagged (redshift warning
/// ≠ 0) and out-of-range labels are excluded and counted by reason.
pub fn targets(task: Task, samples: &[Sample], classes: &[String]) -> Targets {
    let mut t = Targets {
        rows: Vec::new(),
        values: Vec::new(),
        names: Vec::new(),
        excluded: BTreeMap::new(),
    };
    let skip = |t: &mut Targets, why: &str| *t.excluded.entry(why.to_string()).or_insert(0) += 1;
    match task {
        Task::Redshift => {
            t.names = vec!["z".into()];
            for (i, s) in samples.iter().enumerate() {
                match finite(s.labels.redshift) {
                    None => skip(&mut t, "no redshift"),
                    Some(_) if s.labels.redshift_warning.unwrap_or(0) != 0 => {
                        skip(&mut t, "redshift warning set")
                    }
                    Some(z) if z <= -0.01 => skip(&mut t, "redshift out of range"),
                    Some(z) => {
                        t.rows.push(i);
                        t.values.push(vec![z]);
                    }
                }
            }
        }
        Task::Class => {
            let names: Vec<String> = if classes.is_empty() {
                let mut seen: Vec<String> = samples
                    .iter()
                    .filter_map(|s| s.labels.class.as_deref())
                    .filter(|c| !c.is_empty())
                    .map(Labels::normalise_class)
                    .collect();
                seen.sort();
                seen.dedup();
                seen
            } else {
                classes.iter().map(|c| Labels::normalise_class(c)).collect()
            };
            for (i, s) in samples.iter().enumerate() {
                match s.labels.class.as_deref().filter(|c| !c.is_empty()) {
                    None => skip(&mut t, "no class"),
                    Some(c) => match names.iter().position(|n| *n == Labels::normalise_class(c)) {
                        Some(k) => {
                            t.rows.push(i);
                            t.values.push(vec![k as f64]);
                        }
                        None => skip(&mut t, "class not in the label set"),
                    },
                }
            }
            t.names = names;
        }
        Task::Stellar => {
            let with_alpha = samples
                .iter()
                .filter(|s| finite(s.labels.alpha_m).is_some())
                .count();
            let with_core = samples
                .iter()
                .filter(|s| finite(s.labels.teff).is_some())
                .count();
            let n_params = if with_alpha * 2 >= with_core.max(1) {
                4
            } else {
                3
            };
            t.names = STELLAR_PARAMS[..n_params]
                .iter()
                .map(|s| s.to_string())
                .collect();
            for (i, s) in samples.iter().enumerate() {
                let l = &s.labels;
                let v = [
                    finite(l.teff),
                    finite(l.logg),
                    finite(l.fe_h),
                    finite(l.alpha_m),
                ];
                if v[..3].iter().any(Option::is_none) {
                    skip(&mut t, "no teff/logg/fe_h");
                    continue;
                }
                t.rows.push(i);
                t.values.push(
                    v[..n_params]
                        .iter()
                        .map(|x| x.unwrap_or(f64::NAN))
                        .collect(),
                );
            }
        }
    }
    t
}
