//! `metrics.jsonl`: one JSON object per line, appended as training goes.
//!
//! Two kinds of record, told apart by `"kind"`:
//!
//! ```text
//! {"kind":"train","step":100,"loss":3.1,"last_loss":2.9,"steps":10,"lr":1e-4,
//!  "grad_norm":0.8,"spectra_per_s":41.0,"tokens_per_s":5100.0,"elapsed_s":12.3}
//! {"kind":"val","step":100,"mean":2.7,"loss":{"sdss":2.5,"apogee":2.9},
//!  "spectra":{"sdss":12,"apogee":9},"best":true}
//! ```
//!
//! `loss` of a train record is the mean over the `steps` steps since the
//! previous train record; `mean` of a val record is the mean of the
//! per-survey losses (each survey counts equally, whatever its size).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// File name of the metrics log in a run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    /// Training progress over the last `steps` steps.
    Train {
        step: u64,
        loss: f64,
        last_loss: f64,
        steps: u64,
        lr: f64,
        grad_norm: f64,
        /// Steps skipped for a gradient overflow (f16 loss scaling); the
        /// gradient norm averages the others.
        #[serde(default, skip_serializing_if = "is_zero")]
        skipped: u64,
        spectra_per_s: f64,
        tokens_per_s: f64,
        elapsed_s: f64,
    },
    /// Validation losses per survey (survey name → loss).
    Val {
        step: u64,
        mean: f64,
        loss: BTreeMap<String, f64>,
        spectra: BTreeMap<String, usize>,
        best: bool,
    },
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Record {
    /// The step the record was written at.
    pub fn step(&self) -> u64 {
        match self {
            Record::Train { step, .. } | Record::Val { step, .. } => *step,
        }
    }
}

/// An append-only `metrics.jsonl`.
pub struct MetricsLog {
    path: PathBuf,
    file: fs::File,
}

impl MetricsLog {
    /// Opens `path` for appending. With `keep_up_to = Some(step)` (a
    /// resumed run), records after `step` — written by the interrupted run
    /// after its last checkpoint — are dropped first, so the log reads as
    /// one continuous run.
    pub fn open(path: &Path, keep_up_to: Option<u64>) -> Result<Self> {
        if let Some(step) = keep_up_to {
            if path.exists() {
                let kept: Vec<Record> = read_metrics(path)?
                    .into_iter()
                    .filter(|r| r.step() <= step)
                    .collect();
                let mut text = String::new();
                for r in &kept {
                    text.push_str(&serde_json::to_string(r).map_err(|e| Error::file(path, e))?);
                    text.push('\n');
                }
                crate::error::write_atomic(path, text.as_bytes())?;
            }
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::file(path, e))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one record as a line and flushes it.
    pub fn append(&mut self, record: &Record) -> Result<()> {
        let mut line = serde_json::to_string(record).map_err(|e| Error::file(&self.path, e))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::file(&self.path, e))
    }
}

/// Reads every record of a metrics log. A last line without its newline
/// (a write cut short) is ignored; any other unreadable line is an error
/// naming its line number.
pub fn read_metrics(path: &Path) -> Result<Vec<Record>> {
    let text = fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(line) {
            Ok(r) => out.push(r),
            Err(_) if !complete && i + 1 == lines.len() => {}
            Err(e) => return Err(Error::file(path, format!("line {}: {e}", i + 1))),
        }
    }
    Ok(out)
}
