//! spectok-train: self-supervised pretraining of the tokenizer.
//!
//! Owns the training loop, the AdamW optimiser and its schedule,
//! checkpoints (model, optimiser moments, RNG and loader position, written
//! atomically) and training metrics. It reads data only through
//! `spectok-data` and builds the model only through `spectok-model`; it
//! knows nothing of the command line or terminal output.
//!
//! - [`TrainConfig`] ([`config`]): the JSON run config, with defaults and
//!   errors naming the field path.
//! - [`Trainer`] ([`trainer`]): the loop; reports through an
//!   [`Observer`], stops cleanly on a flag, stops with
//!   [`Error::NonFinite`] on a NaN/inf loss.
//! - [`AdamW`] ([`optim`]) and [`Schedule`] ([`schedule`]): decoupled
//!   weight decay, global-norm clipping, warmup + cosine.
//! - [`Checkpoints`] ([`checkpoint`]): atomic checkpoint directories,
//!   keep-last-K plus `best`, exact resume.
//! - [`finetune`]: light heads on the frozen tokenizer (redshift,
//!   class, stellar parameters), their scores, baselines and predictions.
//! - [`metrics`] (`metrics.jsonl`) and [`eval`] (per-survey validation,
//!   `reconstructions.json` for the plots).
//!
//! A run directory is laid out as described in [`checkpoint`].

pub mod checkpoint;
pub mod config;
pub mod embed;
pub mod error;
pub mod eval;
pub mod finetune;
pub mod metrics;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use checkpoint::{resolve_resume, Checkpoints, LossScale, TrainState};
pub use config::{DataConfig, SourceConfig, TrainConfig};
pub use error::{Error, Result};
pub use eval::{EvalReport, Example, Reconstructions, SurveyLoss, RECONSTRUCTIONS_FILE};
pub use metrics::{read_metrics, MetricsLog, Record, METRICS_FILE};
pub use optim::{AdamW, OptimConfig, StepStats};
pub use schedule::{Schedule, ScheduleConfig};
pub use trainer::{
    file_sources, named_vars, Observer, Outcome, StartEvent, StepEvent, Summary, Trainer,
    RUN_CONFIG_FILE,
};
