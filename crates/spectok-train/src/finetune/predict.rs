//! Applying a trained head: `spectok predict`.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarMap;
use spectok_io::predictions::{Classes, Column, Predictions};

use super::data::{io_err, Sample};
use super::head::{outputs, Head};
use super::tail::TunedTail;
use super::train::LoadedHeadRef;
use super::{HeadMeta, Task, HEAD_META, HEAD_WEIGHTS};
use crate::error::{Error, Result};

/// A head loaded from its directory.
pub struct LoadedHead {
    /// `head.json`.
    pub meta: HeadMeta,
    /// The weights.
    pub head: Head,
    /// The fine-tuned last encoder blocks, when the head was trained with
    /// `unfreeze_last > 0`: they re-encode the cached hidden states after
    /// block N−K before the head.
    pub tail: Option<TunedTail>,
    /// Where it runs.
    pub device: Device,
}

/// One prediction, in the task's units.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// redshift: `[z]`; class: `[index]`; stellar: one value per parameter.
    pub values: Vec<f64>,
    /// redshift: `[z_err]` (1σ, from the predicted variance); empty otherwise.
    pub errors: Vec<f64>,
    /// class: the probability of each class; empty otherwise.
    pub probabilities: Vec<f64>,
}

/// Loads `HEAD_DIR/head.json` and `HEAD_DIR/head.safetensors` onto
/// `device`, with the fine-tuned encoder blocks when `head.json` records
/// `unfreeze_last > 0` (heads without that field have none).
pub fn load_head(dir: &Path, device: &Device) -> Result<LoadedHead> {
    let mp = dir.join(HEAD_META);
    let text = std::fs::read_to_string(&mp).map_err(|e| Error::file(&mp, e))?;
    let meta: HeadMeta = serde_json::from_str(&text).map_err(|e| Error::file(&mp, e))?;
    let mut varmap = VarMap::new();
    let vb = spectok_model::seeded_var_builder(&varmap, 0, DType::F32, device);
    let head = Head::new(
        &meta.head,
        meta.dim,
        outputs(meta.task, meta.names.len()),
        vb.clone(),
    )?;
    let tail = match (meta.unfreeze_last, &meta.encoder) {
        (0, _) => None,
        (k, Some(model)) => {
            if model.d_model != meta.dim {
                return Err(Error::file(
                    &mp,
                    format!(
                        "encoder.d_model {} differs from dim {}",
                        model.d_model, meta.dim
                    ),
                ));
            }
            Some(TunedTail::new(model, k, vb).map_err(|e| Error::file(&mp, e))?)
        }
        (k, None) => {
            return Err(Error::file(
                &mp,
                format!("unfreeze_last is {k} but there is no encoder config"),
            ))
        }
    };
    let wp = dir.join(HEAD_WEIGHTS);
    varmap.load(&wp).map_err(|e| Error::file(&wp, e))?;
    Ok(LoadedHead {
        meta,
        head,
        tail,
        device: device.clone(),
    })
}

/// Predictions for `samples`, in batches of `batch` spectra.
pub fn predict_with(h: &LoadedHead, samples: &[&Sample], batch: usize) -> Result<Vec<Prediction>> {
    let view = LoadedHeadRef {
        meta: &h.meta,
        tail: h.tail.as_ref(),
        device: &h.device,
    };
    let m = &h.meta;
    let mut out = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(batch.max(1)) {
        let y = h.head.forward(&view.input(chunk, false)?, false)?;
        let y = match m.task {
            Task::Class => candle_nn::ops::softmax_last_dim(&y)?,
            _ => y,
        };
        let rows: Vec<Vec<f32>> = y.to_dtype(DType::F32)?.to_vec2()?;
        for r in rows {
            let r: Vec<f64> = r.into_iter().map(f64::from).collect();
            out.push(match m.task {
                Task::Redshift => {
                    let (mu, s) = (m.target_mean[0], m.target_std[0]);
                    let l = r[0] * s + mu;
                    let sd = (0.5 * r[1].clamp(-12.0, 8.0)).exp() * s;
                    let z = l.exp_m1();
                    Prediction {
                        values: vec![z],
                        errors: vec![(1.0 + z) * sd],
                        probabilities: Vec::new(),
                    }
                }
                Task::Class => {
                    let best = r
                        .iter()
                        .enumerate()
                        .fold(
                            (0, f64::NEG_INFINITY),
                            |b, (i, x)| if *x > b.1 { (i, *x) } else { b },
                        )
                        .0;
                    Prediction {
                        values: vec![best as f64],
                        errors: Vec::new(),
                        probabilities: r,
                    }
                }
                Task::Stellar => Prediction {
                    values: r
                        .iter()
                        .enumerate()
                        .map(|(k, v)| v * m.target_std[k] + m.target_mean[k])
                        .collect(),
                    errors: Vec::new(),
                    probabilities: Vec::new(),
                },
            });
        }
    }
    Ok(out)
}

/// Predictions for all `samples`.
pub fn predict_samples(h: &LoadedHead, samples: &[Sample]) -> Result<Vec<Prediction>> {
    let refs: Vec<&Sample> = samples.iter().collect();
    predict_with(h, &refs, 256)
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The column names of a prediction row after `object_id,survey,source`.
fn value_columns(meta: &HeadMeta) -> Vec<String> {
    match meta.task {
        Task::Redshift => vec!["z".into(), "z_err".into()],
        Task::Class => std::iter::once("class".to_string())
            .chain(
                meta.names
                    .iter()
                    .map(|n| format!("p_{}", n.to_ascii_lowercase())),
            )
            .collect(),
        Task::Stellar => meta.names.clone(),
    }
}

fn value_cells(meta: &HeadMeta, p: &Prediction) -> Vec<String> {
    match meta.task {
        Task::Redshift => vec![
            format!("{}", p.values.first().copied().unwrap_or(f64::NAN)),
            format!("{}", p.errors.first().copied().unwrap_or(f64::NAN)),
        ],
        Task::Class => {
            let k = p.values.first().map_or(0, |v| *v as usize);
            std::iter::once(meta.names.get(k).cloned().unwrap_or_default())
                .chain(p.probabilities.iter().map(|x| format!("{x}")))
                .collect()
        }
        Task::Stellar => p.values.iter().map(|x| format!("{x}")).collect(),
    }
}

/// Writes predictions as CSV (`.csv`), JSON (`.json`, an array of
/// objects) or HDF5 (`.h5`/`.hdf5`, [`spectok_io::predictions`]):
/// object_id, survey, source and the task's columns (redshift: z, z_err;
/// class: class and `p_<name>` per class, in HDF5 a `probabilities` matrix
/// with the names in `classes`; stellar: one column per parameter). An
/// HDF5 file written here records the checkpoint of `head.json` and no
/// head directory; [`write_predictions_from`] records both.
pub fn write_predictions(
    path: &Path,
    meta: &HeadMeta,
    samples: &[Sample],
    preds: &[Prediction],
) -> Result<()> {
    write_to(path, "", &meta.checkpoint, meta, samples, preds)
}

/// [`write_predictions`] recording, in an HDF5 file, the head directory
/// and the checkpoint the inputs were embedded with.
pub fn write_predictions_from(
    path: &Path,
    head_dir: &Path,
    checkpoint: &Path,
    meta: &HeadMeta,
    samples: &[Sample],
    preds: &[Prediction],
) -> Result<()> {
    write_to(
        path,
        &head_dir.display().to_string(),
        &checkpoint.display().to_string(),
        meta,
        samples,
        preds,
    )
}

fn write_to(
    path: &Path,
    head_dir: &str,
    checkpoint: &str,
    meta: &HeadMeta,
    samples: &[Sample],
    preds: &[Prediction],
) -> Result<()> {
    let cols = value_columns(meta);
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let text = match ext.as_str() {
        "csv" => {
            let mut s = String::from("object_id,survey,source");
            for c in &cols {
                s.push(',');
                s.push_str(c);
            }
            s.push('\n');
            for (x, p) in samples.iter().zip(preds) {
                let cells = [
                    csv_cell(&x.object_id),
                    csv_cell(&x.survey),
                    csv_cell(&x.source),
                ];
                s.push_str(&cells.join(","));
                for c in value_cells(meta, p) {
                    s.push(',');
                    s.push_str(&c);
                }
                s.push('\n');
            }
            s
        }
        "json" => {
            let rows: Vec<serde_json::Value> = samples
                .iter()
                .zip(preds)
                .map(|(x, p)| {
                    let mut o = serde_json::Map::new();
                    o.insert("object_id".into(), x.object_id.clone().into());
                    o.insert("survey".into(), x.survey.clone().into());
                    o.insert("source".into(), x.source.clone().into());
                    for (c, v) in cols.iter().zip(value_cells(meta, p)) {
                        let val = v
                            .parse::<f64>()
                            .ok()
                            .and_then(serde_json::Number::from_f64)
                            .map(serde_json::Value::Number)
                            .unwrap_or(serde_json::Value::String(v));
                        o.insert(c.clone(), val);
                    }
                    serde_json::Value::Object(o)
                })
                .collect();
            serde_json::to_string_pretty(&rows).map_err(|e| Error::file(path, e))? + "\n"
        }
        "h5" | "hdf5" => {
            let table = hdf5_table(head_dir, checkpoint, meta, samples, preds);
            return spectok_io::predictions::write_predictions(path, &table).map_err(io_err);
        }
        _ => {
            return Err(Error::file(
                path,
                "unsupported predictions format; use a .csv, .json or .h5 file name",
            ))
        }
    };
    crate::error::write_atomic(path, text.as_bytes())
}

/// The predictions as the HDF5 file's table: the CSV columns, numbers as
/// f64, and for the class task the probability matrix.
fn hdf5_table(
    head_dir: &str,
    checkpoint: &str,
    meta: &HeadMeta,
    samples: &[Sample],
    preds: &[Prediction],
) -> Predictions {
    let n = samples.len().min(preds.len());
    let preds = &preds[..n];
    let column = |name: &str, of: Option<&str>, get: &dyn Fn(&Prediction) -> f64| Column {
        name: name.to_string(),
        values: preds.iter().map(get).collect(),
        uncertainty_of: of.map(str::to_string),
    };
    let (columns, classes) = match meta.task {
        Task::Redshift => (
            vec![
                column("z", None, &|p| {
                    p.values.first().copied().unwrap_or(f64::NAN)
                }),
                column("z_err", Some("z"), &|p| {
                    p.errors.first().copied().unwrap_or(f64::NAN)
                }),
            ],
            None,
        ),
        Task::Stellar => (
            meta.names
                .iter()
                .enumerate()
                .map(|(k, name)| {
                    column(name, None, &|p| {
                        p.values.get(k).copied().unwrap_or(f64::NAN)
                    })
                })
                .collect(),
            None,
        ),
        Task::Class => {
            let c = meta.names.len();
            let classes = Classes {
                names: meta.names.clone(),
                predicted: preds
                    .iter()
                    .map(|p| {
                        let k = p.values.first().map_or(0, |v| *v as usize);
                        meta.names.get(k).cloned().unwrap_or_default()
                    })
                    .collect(),
                probabilities: preds
                    .iter()
                    .flat_map(|p| {
                        (0..c).map(|k| p.probabilities.get(k).copied().unwrap_or(f64::NAN))
                    })
                    .collect(),
            };
            (Vec::new(), Some(classes))
        }
    };
    let samples = &samples[..n];
    Predictions {
        task: meta.task.name().to_string(),
        head: head_dir.to_string(),
        checkpoint: checkpoint.to_string(),
        checkpoint_sha256: meta.checkpoint_sha256.clone(),
        spectok_version: env!("CARGO_PKG_VERSION").to_string(),
        object_id: samples.iter().map(|x| x.object_id.clone()).collect(),
        survey: samples.iter().map(|x| x.survey.clone()).collect(),
        source: samples.iter().map(|x| x.source.clone()).collect(),
        columns,
        classes,
    }
}

/// Writes the test part's truths and predictions (`test_predictions.csv`).
pub fn write_test_predictions(
    path: &Path,
    meta: &HeadMeta,
    samples: &[&Sample],
    rows: &[(Vec<f64>, Prediction)],
) -> Result<()> {
    let mut s = String::from("object_id,survey");
    let truth_cols: Vec<String> = match meta.task {
        Task::Class => vec!["true_class".into()],
        _ => meta.names.iter().map(|n| format!("true_{n}")).collect(),
    };
    for c in truth_cols.iter().chain(value_columns(meta).iter()) {
        s.push(',');
        s.push_str(c);
    }
    s.push('\n');
    for (x, (truth, p)) in samples.iter().zip(rows) {
        s.push_str(&format!(
            "{},{}",
            csv_cell(&x.object_id),
            csv_cell(&x.survey)
        ));
        match meta.task {
            Task::Class => {
                let k = truth.first().map_or(0, |v| *v as usize);
                s.push(',');
                s.push_str(&meta.names.get(k).cloned().unwrap_or_default());
            }
            _ => {
                for v in truth {
                    s.push_str(&format!(",{v}"));
                }
            }
        }
        for c in value_cells(meta, p) {
            s.push(',');
            s.push_str(&c);
        }
        s.push('\n');
    }
    std::fs::write(path, s).map_err(|e| Error::file(path, e))
}
