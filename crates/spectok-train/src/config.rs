//! The training config: one JSON file with every setting of a run.
//!
//! Every field has a default, so a file gives only what it changes;
//! unknown fields are errors (a typo must not silently fall back to a
//! default). Errors name the field by its path in the file
//! (`optim.betas[1]`, `data.sources[0].weight`), whether the value has the
//! wrong type ([`TrainConfig::from_json`]) or is out of range
//! ([`TrainConfig::validate`]).
//!
//! ```json
//! {
//!   "data": {
//!     "sources": [
//!       {"name": "sdss", "paths": ["data/sdss"], "weight": 1.0},
//!       {"name": "apogee", "paths": ["data/apogee/*.fits"], "weight": 0.5}
//!     ],
//!     "val_fraction": 0.05
//!   },
//!   "model": {"d_model": 512, "encoder_layers": 6, "decoder_layers": 6},
//!   "optim": {"lr": 1e-4, "betas": [0.9, 0.999], "weight_decay": 0.01, "grad_clip": 1.0},
//!   "schedule": {"warmup_steps": 2000, "min_lr_ratio": 0.1},
//!   "batch": {"mode": "fixed", "spectra": 64},
//!   "steps": 600000,
//!   "seed": 0,
//!   "device": "cuda",
//!   "out_dir": "runs/paper"
//! }
//! ```
//!
//! Relative paths (sources, `out_dir`) are relative to the working
//! directory of the process, as on the command line.
//!
//! `model` is [`spectok_model::Config`]; `data.prepare` is
//! [`spectok_data::PrepareConfig`] except `patch_size`, which always comes
//! from `model.patch_size` (giving a different one is an error);
//! `batch` is [`spectok_data::BatchSize`] (`{"mode": "fixed", "spectra":
//! N}` or `{"mode": "tokens", "max_tokens": N, "max_spectra": M}`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use spectok_data::{BatchSize, LoaderConfig, PrepareConfig, Split, SplitFilter};

use crate::error::{Error, Result};
use crate::optim::OptimConfig;
use crate::schedule::ScheduleConfig;

/// One data source of the mix: survey files read with the io crate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Name in messages and statistics (unique).
    pub name: String,
    /// Files, directories (walked recursively) or glob patterns.
    pub paths: Vec<String>,
    /// Relative rate at which the source is drawn (default 1).
    #[serde(default = "one")]
    pub weight: f64,
    /// Read every file as this format (a [`spectok_io::Format`] name)
    /// instead of detecting it.
    #[serde(default)]
    pub format: Option<String>,
}

fn one() -> f64 {
    1.0
}

/// Where the spectra come from and how they become batches (the `data`
/// section).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// The weighted sources.
    pub sources: Vec<SourceConfig>,
    /// Fraction of objects (by a stable hash of the object id) held out
    /// for validation (default 0.05).
    pub val_fraction: f64,
    /// Seed of the id hash; change it to draw another split (default 0).
    pub split_seed: u64,
    /// Validation spectra read from each source at most (default 256); a
    /// source's files are read in order until this many validation spectra
    /// are found, so a huge source costs no more than that to evaluate
    /// (and about `val_max_spectra / val_fraction` spectra read once when
    /// the run starts).
    pub val_max_spectra: usize,
    /// Spectra per validation batch (default 32).
    pub eval_batch_size: usize,
    /// Example reconstructions per survey written at each evaluation for
    /// the plots (default 2).
    pub examples_per_survey: usize,
    /// Per-spectrum preparation (mask rules, transform, weight clip, …).
    pub prepare: PrepareConfig,
    /// Group spectra of similar length into batches (default true).
    pub bucketing: bool,
    /// Spectra pooled before batches are cut (default 1024).
    pub pool_size: usize,
    /// Reader threads per source (default 2).
    pub readers_per_source: usize,
    /// Batches prepared ahead of the training step (default 4).
    pub prefetch: usize,
    /// Round each batch's patch count up to a multiple of this (default 1).
    pub pad_to_multiple: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        let loader = LoaderConfig::default();
        DataConfig {
            sources: Vec::new(),
            val_fraction: 0.05,
            split_seed: 0,
            val_max_spectra: 256,
            eval_batch_size: 32,
            examples_per_survey: 2,
            prepare: loader.prepare,
            bucketing: loader.bucketing,
            pool_size: loader.pool_size,
            readers_per_source: loader.readers_per_source,
            prefetch: loader.prefetch,
            pad_to_multiple: loader.pad_to_multiple,
        }
    }
}

/// Every setting of a pretraining run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Data sources, split and batching.
    pub data: DataConfig,
    /// The tokenizer's hyper-parameters.
    pub model: spectok_model::Config,
    /// AdamW.
    pub optim: OptimConfig,
    /// Warmup + cosine learning-rate schedule.
    pub schedule: ScheduleConfig,
    /// Spectra per training batch: fixed count or token budget (default
    /// 64 spectra, the paper's batch).
    pub batch: BatchSize,
    /// Optimiser steps of the run (default 600 000, the paper's).
    pub steps: u64,
    /// Validate every this many steps, and at the end (default 5000).
    pub eval_interval: u64,
    /// Write a checkpoint every this many steps, and at the end (default
    /// 5000).
    pub checkpoint_interval: u64,
    /// Append a train record to `metrics.jsonl` every this many steps
    /// (default 50).
    pub log_interval: u64,
    /// Step checkpoints kept besides `best` (default 3).
    pub keep_last: usize,
    /// Seed of initialisation, data order and masking (default 0).
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N` (default `cpu`).
    pub device: String,
    /// Compute dtype: `f32` (default), or `bf16` / `f16` for mixed
    /// precision — weights, gradients and AdamW state stay f32 (master
    /// weights, saved as f32) while matmuls run in the lower precision;
    /// `f16` adds dynamic loss scaling (its state is checkpointed).
    pub dtype: String,
    /// Run directory: config, metrics, checkpoints, plots (default
    /// `runs/pretrain`).
    pub out_dir: PathBuf,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: DataConfig::default(),
            model: spectok_model::Config::paper(),
            optim: OptimConfig::default(),
            schedule: ScheduleConfig::default(),
            batch: BatchSize::Fixed { spectra: 64 },
            steps: 600_000,
            eval_interval: 5000,
            checkpoint_interval: 5000,
            log_interval: 50,
            keep_last: 3,
            seed: 0,
            device: "cpu".into(),
            dtype: "f32".into(),
            out_dir: PathBuf::from("runs/pretrain"),
        }
    }
}

/// Turns a serde error into a config error naming the field's path (for
/// an unknown field, the path ends with the unknown name).
fn serde_error(err: serde_path_to_error::Error<serde_json::Error>) -> Error {
    let path = one_line(&err.path().to_string());
    let message = one_line(&err.into_inner().to_string());
    let field = if path == "." {
        "(top level)".to_string()
    } else {
        path
    };
    Error::config(field, message)
}

impl TrainConfig {
    /// Parses a JSON config and validates it. Missing fields take their
    /// defaults; a syntax error names line and column, a wrong type or an
    /// unknown field names the field's path.
    pub fn from_json(text: &str) -> Result<TrainConfig> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::config("(syntax)", one_line(&e.to_string())))?;
        let prepare_patch = value
            .pointer("/data/prepare/patch_size")
            .map(|v| v.to_string());
        let mut cfg: TrainConfig = serde_path_to_error::deserialize(value).map_err(serde_error)?;
        match prepare_patch {
            None => cfg.data.prepare.patch_size = cfg.model.patch_size,
            Some(_) if cfg.data.prepare.patch_size == cfg.model.patch_size => {}
            Some(v) => {
                return Err(Error::config(
                    "data.prepare.patch_size",
                    format!(
                        "{v} differs from model.patch_size {} (leave it out: the model's is used)",
                        cfg.model.patch_size
                    ),
                ))
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses a config file; errors carry the file name.
    pub fn from_file(path: &Path) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
        TrainConfig::from_json(&text).map_err(|e| match e {
            Error::Config { field, message, .. } => Error::Config {
                file: Some(path.to_path_buf()),
                field,
                message,
            },
            other => other,
        })
    }

    /// Pretty JSON of every field (the resolved config a run records).
    pub fn to_json(&self) -> String {
        // Plain numbers, strings, vectors and maps always serialise.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks every value; the error names the first bad field.
    pub fn validate(&self) -> Result<()> {
        if self.data.sources.is_empty() {
            return Err(Error::config("data.sources", "no source given"));
        }
        self.validate_settings()
    }

    /// Checks every value except that `data.sources` is non-empty (for
    /// runs given their sources in code).
    pub fn validate_settings(&self) -> Result<()> {
        let bad = |field: &str, message: String| Err(Error::config(field, message));
        let d = &self.data;
        let mut names = BTreeSet::new();
        for (i, s) in d.sources.iter().enumerate() {
            let at = |f: &str| format!("data.sources[{i}].{f}");
            if s.name.trim().is_empty() {
                return bad(&at("name"), "is empty".into());
            }
            if !names.insert(s.name.as_str()) {
                return bad(
                    &at("name"),
                    format!("{} is used by another source", quoted(&s.name)),
                );
            }
            if s.paths.is_empty() {
                return bad(&at("paths"), "no path given".into());
            }
            if !(s.weight.is_finite() && s.weight > 0.0) {
                return bad(
                    &at("weight"),
                    format!("{} is not a positive number", s.weight),
                );
            }
            if let Some(f) = &s.format {
                if spectok_io::Format::from_name(f).is_none() {
                    let known: Vec<&str> =
                        spectok_io::Format::ALL.iter().map(|f| f.name()).collect();
                    return bad(
                        &at("format"),
                        format!("unknown format {}; one of: {}", quoted(f), known.join(", ")),
                    );
                }
            }
        }
        if !(d.val_fraction > 0.0 && d.val_fraction < 1.0) {
            return bad(
                "data.val_fraction",
                format!("{} is not in (0, 1)", d.val_fraction),
            );
        }
        for (field, v) in [
            ("data.val_max_spectra", d.val_max_spectra),
            ("data.eval_batch_size", d.eval_batch_size),
        ] {
            if v == 0 {
                return bad(field, "must be at least 1".into());
            }
        }
        if d.prepare.patch_size != self.model.patch_size {
            return bad(
                "data.prepare.patch_size",
                format!(
                    "{} differs from model.patch_size {}",
                    d.prepare.patch_size, self.model.patch_size
                ),
            );
        }
        self.loader_config(Split::Train)
            .validate()
            .map_err(|e| match e {
                spectok_data::Error::Config { field, reason } => {
                    let field = if field.starts_with("batch.") || field == "split.val_fraction" {
                        field.to_string()
                    } else if PREPARE_FIELDS.contains(&field) {
                        format!("data.prepare.{field}")
                    } else {
                        format!("data.{field}")
                    };
                    Error::config(field, one_line(&reason))
                }
                other => Error::Data(other),
            })?;
        self.model.validate().map_err(|e| match e {
            spectok_model::Error::Config { field, message } => {
                Error::config(format!("model.{field}"), one_line(&message))
            }
            other => Error::Model(other),
        })?;
        let o = &self.optim;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return bad("optim.lr", format!("{} is not a positive number", o.lr));
        }
        for (i, b) in o.betas.iter().enumerate() {
            if !(0.0..1.0).contains(b) {
                return bad(
                    &format!("optim.betas[{i}]"),
                    format!("{b} is not in [0, 1)"),
                );
            }
        }
        if !(o.eps.is_finite() && o.eps > 0.0) {
            return bad("optim.eps", format!("{} is not a positive number", o.eps));
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return bad(
                "optim.weight_decay",
                format!("{} is negative or not finite", o.weight_decay),
            );
        }
        if !(o.grad_clip.is_finite() && o.grad_clip >= 0.0) {
            return bad(
                "optim.grad_clip",
                format!(
                    "{} is negative or not finite (0 disables clipping)",
                    o.grad_clip
                ),
            );
        }
        if !(0.0..=1.0).contains(&self.schedule.min_lr_ratio) {
            return bad(
                "schedule.min_lr_ratio",
                format!("{} is not in [0, 1]", self.schedule.min_lr_ratio),
            );
        }
        for (field, v) in [
            ("steps", self.steps),
            ("eval_interval", self.eval_interval),
            ("checkpoint_interval", self.checkpoint_interval),
            ("log_interval", self.log_interval),
            ("keep_last", self.keep_last as u64),
        ] {
            if v == 0 {
                return bad(field, "must be at least 1".into());
            }
        }
        check_device_name(&self.device).map_err(|m| Error::config("device", m))?;
        spectok_model::dtype(&self.dtype).map_err(|_| {
            Error::config(
                "dtype",
                format!("{}: expected f32, bf16 or f16", quoted(&self.dtype)),
            )
        })?;
        if self.out_dir.as_os_str().is_empty() {
            return bad("out_dir", "is empty".into());
        }
        Ok(())
    }

    /// The loader settings for one side of the split (training reads
    /// shuffled and endlessly, validation is read separately).
    pub fn loader_config(&self, side: Split) -> LoaderConfig {
        let d = &self.data;
        LoaderConfig {
            prepare: d.prepare.clone(),
            batch: self.batch,
            bucketing: d.bucketing,
            pool_size: d.pool_size,
            shuffle: true,
            seed: self.seed,
            epochs: None,
            readers_per_source: d.readers_per_source,
            prefetch: d.prefetch,
            split: Some(SplitFilter {
                keep: side,
                val_fraction: d.val_fraction,
                seed: d.split_seed,
            }),
            pad_to_multiple: d.pad_to_multiple,
            ..LoaderConfig::default()
        }
    }
}

/// Field names of [`PrepareConfig`] as its `validate` reports them.
const PREPARE_FIELDS: &[&str] = &[
    "patch_size",
    "gap_factor",
    "gap_window",
    "mask",
    "transform",
    "max_weight",
    "min_median_fraction",
    "min_valid_patches",
];

/// Checks a device name's form (`cpu`, `cuda`, `cuda:N`) without opening
/// the device.
fn check_device_name(name: &str) -> std::result::Result<(), String> {
    let lower = name.trim().to_ascii_lowercase();
    if lower == "cpu" || lower == "cuda" {
        return Ok(());
    }
    match lower.strip_prefix("cuda:") {
        Some(n) if n.parse::<usize>().is_ok() => Ok(()),
        _ => Err(format!(
            "{}: expected `cpu`, `cuda` or `cuda:N`",
            quoted(name)
        )),
    }
}

pub(crate) use spectok_model::config::one_line;

/// A value from the config in backquotes, escaped as in a Rust string
/// literal.
fn quoted(s: &str) -> String {
    format!("`{}`", s.escape_debug())
}
