//! Downstream tasks on the frozen tokenizer: `spectok finetune` and
//! `spectok predict`.
//!
//! # Tasks ([`Task`])
//!
//! - **redshift**: the head predicts the standardised `log(1+z)` and its
//!   log-variance (Gaussian negative log-likelihood), so every prediction
//!   comes with an uncertainty `z_err`. Scored by σ_NMAD, bias and the
//!   outlier fractions |Δz|/(1+z) > 0.05 and > 0.15 ([`metrics`]).
//! - **class**: a label set (GALAXY / QSO / STAR by default, or every
//!   class in the data when the config's `classes` is empty), softmax
//!   cross-entropy; scored by accuracy per class, mean and the confusion
//!   matrix.
//! - **stellar**: Teff, log g, [Fe/H] (and [α/M] when at least half the
//!   labelled spectra carry it), each standardised on the training part,
//!   one multi-output head with a masked squared error; scored by the
//!   median absolute deviation and bias per parameter.
//!
//! Labels come from the inputs (whatever the readers carry: SDSS/LAMOST
//! `Z`/`CLASS`, DESI redrock, APOGEE `FPARAM`, GALAH headers, MMU
//! columns, mock labels) or from a CSV keyed by object id
//! ([`data::read_labels_csv`], which then replaces the inputs' labels).
//! Missing labels, a set redshift warning and classes outside the label
//! set exclude a spectrum; the exclusions are counted by reason.
//!
//! # Data flow
//!
//! 1. The frozen encoder embeds the inputs once, with tokens, through the
//!    embedding pipeline ([`crate::embed::embed`]); the file is cached
//!    under a key of the checkpoint's SHA-256, the preparation config and
//!    the input files ([`cache_path`]), so the three tasks and reruns
//!    share it. With `unfreeze_last = K > 0` the frozen encoder runs only
//!    up to block N−K and its hidden states are cached instead
//!    ([`hidden`], a file of its own, [`hidden_cache_path`]).
//! 2. Objects are split by a hash of their id into train / val / test
//!    ([`data::part_of`]; defaults 70 / 10 / 20 %).
//! 3. The head ([`head`]) is trained with AdamW on the train part; the
//!    validation loss is computed after every epoch and training stops
//!    after `patience` epochs without improvement; the best weights are
//!    kept. With `unfreeze_last = K > 0`, trainable copies of the last K
//!    encoder blocks and the final LayerNorm ([`tail`], initialised from
//!    the checkpoint) re-encode the cached hidden states on every batch
//!    and are optimised with the head, at `lr × unfreeze_lr_ratio`.
//! 4. The test part is scored, and so are the baselines on the same split
//!    ([`baselines`]): ridge regression and k-NN on the pooled embedding,
//!    and (when the inputs hold spectra of one survey on a common grid)
//!    ridge and k-NN on a PCA of the median-normalised flux of the most
//!    common survey, next to the head's score on the same survey subset.
//!
//! # The head directory
//!
//! `head.safetensors` (weights; with `unfreeze_last = K > 0` also the
//! fine-tuned blocks and final norm, and the quantiser when the model has
//! one, under `encoder_tail.`), `head.json` ([`HeadMeta`]: task, label
//! set, standardisation, head config, K and the encoder config, the
//! tokenizer checkpoint and its SHA-256), `metrics.json` ([`Report`]) and
//! `test_predictions.csv`; the command line adds the plots.

pub mod baselines;
pub mod data;
pub mod head;
pub mod hidden;
pub mod metrics;
pub mod predict;
pub mod tail;
pub mod train;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use data::{load_samples, part_of, read_labels_csv, targets, Part, Sample, Targets};
pub use head::{Head, HeadConfig, HeadKind};
pub use hidden::{cached_hidden_states, embed_hidden};
pub use metrics::{ClassMetrics, ParamMetrics, RedshiftMetrics};
pub use predict::{load_head, predict_samples, write_predictions, LoadedHead, Prediction};
pub use tail::{load_checkpoint_tail, TunedTail, TAIL_PREFIX};
pub use train::{finetune, FinetuneOutcome};

use crate::embed::{embed, sha256_file, EmbedModel, EmbedObserver, EmbedOptions};
use crate::error::{Error, Result};

/// Weights file of a head directory.
pub const HEAD_WEIGHTS: &str = "head.safetensors";
/// Description file of a head directory.
pub const HEAD_META: &str = "head.json";
/// Test-split scores of a head directory.
pub const METRICS_JSON: &str = "metrics.json";
/// Per-object test predictions of a head directory.
pub const TEST_PREDICTIONS: &str = "test_predictions.csv";

/// A downstream task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Regress the redshift.
    Redshift,
    /// Classify the object.
    Class,
    /// Regress stellar parameters.
    Stellar,
}

impl Task {
    /// The task's name.
    pub fn name(self) -> &'static str {
        match self {
            Task::Redshift => "redshift",
            Task::Class => "class",
            Task::Stellar => "stellar",
        }
    }

    /// The task called `s`.
    pub fn from_name(s: &str) -> Option<Task> {
        match s {
            "redshift" => Some(Task::Redshift),
            "class" => Some(Task::Class),
            "stellar" => Some(Task::Stellar),
            _ => None,
        }
    }
}

/// Everything about a finetuning run (`configs/finetune-*.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    /// The task.
    pub task: Task,
    /// The head.
    pub head: HeadConfig,
    /// Class label set (class task); empty: every class in the data.
    pub classes: Vec<String>,
    /// Largest number of epochs.
    pub epochs: usize,
    /// Spectra per optimiser step.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Epochs without a better validation loss before stopping.
    pub patience: usize,
    /// Fraction of objects in the validation part.
    pub val_fraction: f64,
    /// Fraction of objects in the test part.
    pub test_fraction: f64,
    /// Seed of the id hash deciding the split.
    pub split_seed: u64,
    /// Seed of the head's initial weights and of the batch order.
    pub seed: u64,
    /// Tokens kept per spectrum (longer sequences are average-pooled in
    /// groups; 0: all).
    pub max_tokens: usize,
    /// Neighbours of the k-NN baselines.
    pub knn_k: usize,
    /// Principal components of the flux baseline.
    pub pca_components: usize,
    /// Run the baselines.
    pub baselines: bool,
    /// Encoder blocks fine-tuned with the head (the last K of N, with the
    /// final LayerNorm); 0 keeps the whole encoder frozen.
    pub unfreeze_last: usize,
    /// Learning rate of the fine-tuned blocks relative to `lr`.
    pub unfreeze_lr_ratio: f64,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            task: Task::Redshift,
            head: HeadConfig::default(),
            classes: vec!["GALAXY".into(), "QSO".into(), "STAR".into()],
            epochs: 100,
            batch_size: 128,
            lr: 1e-3,
            weight_decay: 1e-4,
            patience: 10,
            val_fraction: 0.1,
            test_fraction: 0.2,
            split_seed: 0,
            seed: 0,
            max_tokens: 256,
            knn_k: 10,
            pca_components: 32,
            baselines: true,
            unfreeze_last: 0,
            unfreeze_lr_ratio: 0.1,
        }
    }
}

impl FinetuneConfig {
    /// Reads a JSON config; unknown fields are errors naming the field.
    pub fn from_file(path: &Path) -> Result<FinetuneConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
        let de = &mut serde_json::Deserializer::from_str(&text);
        let cfg: FinetuneConfig =
            serde_path_to_error::deserialize(de).map_err(|e| Error::Config {
                file: Some(path.to_path_buf()),
                field: crate::config::one_line(&e.path().to_string()),
                message: crate::config::one_line(&e.inner().to_string()),
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges; errors name the field.
    pub fn validate(&self) -> Result<()> {
        for (f, v) in [("epochs", self.epochs), ("batch_size", self.batch_size)] {
            if v == 0 {
                return Err(Error::config(f, "must be at least 1"));
            }
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::config("lr", "must be positive"));
        }
        if !(0.0..1.0).contains(&self.val_fraction)
            || !(0.0..1.0).contains(&self.test_fraction)
            || self.val_fraction + self.test_fraction >= 1.0
        {
            return Err(Error::config(
                "val_fraction",
                "val_fraction and test_fraction must be in [0, 1) and leave a training part",
            ));
        }
        if self.head.kind == HeadKind::Attentive && (self.head.heads == 0 || self.head.queries == 0)
        {
            return Err(Error::config(
                "head.heads",
                "heads and queries must be at least 1",
            ));
        }
        if !(self.unfreeze_lr_ratio > 0.0 && self.unfreeze_lr_ratio.is_finite()) {
            return Err(Error::config(
                "unfreeze_lr_ratio",
                format!(
                    "{} is not a positive number (the fine-tuned blocks learn at lr × unfreeze_lr_ratio)",
                    self.unfreeze_lr_ratio
                ),
            ));
        }
        Ok(())
    }
}

/// Checks `unfreeze_last = k` against a tokenizer of `encoder_layers`
/// blocks; the error names the field.
pub fn check_unfreeze(k: usize, encoder_layers: usize) -> Result<()> {
    if k > encoder_layers {
        return Err(Error::config(
            "unfreeze_last",
            format!("{k} exceeds the tokenizer's {encoder_layers} encoder blocks"),
        ));
    }
    Ok(())
}

/// What `head.json` holds: all a later `predict` needs besides the weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadMeta {
    /// The task.
    pub task: Task,
    /// Class names (class) or target names (redshift: `z`; stellar:
    /// parameters), in output order.
    pub names: Vec<String>,
    /// The head architecture.
    pub head: HeadConfig,
    /// Embedding width D of the tokenizer.
    pub dim: usize,
    /// Tokens kept per spectrum.
    pub max_tokens: usize,
    /// Target standardisation: mean per target (redshift: of log(1+z)).
    pub target_mean: Vec<f64>,
    /// Target standardisation: standard deviation per target.
    pub target_std: Vec<f64>,
    /// Pooled-embedding standardisation: mean per dimension.
    pub feature_mean: Vec<f64>,
    /// Pooled-embedding standardisation: std per dimension.
    pub feature_std: Vec<f64>,
    /// Token standardisation (attentive head): mean per dimension over
    /// the training tokens.
    #[serde(default)]
    pub token_mean: Vec<f64>,
    /// Token standardisation (attentive head): std per dimension.
    #[serde(default)]
    pub token_std: Vec<f64>,
    /// Encoder blocks fine-tuned with the head (their weights are in
    /// `head.safetensors`); 0 (and absent, in heads written before this
    /// field existed) for a head on the frozen encoder.
    #[serde(default)]
    pub unfreeze_last: usize,
    /// The tokenizer's model config, for rebuilding the fine-tuned blocks
    /// (present when `unfreeze_last > 0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<spectok_model::Config>,
    /// The tokenizer checkpoint directory the head was trained on.
    pub checkpoint: String,
    /// SHA-256 of that checkpoint's `model.safetensors`.
    pub checkpoint_sha256: String,
    /// The full finetuning config.
    pub config: FinetuneConfig,
    /// Version of the writing program.
    pub spectok_version: String,
}

/// Scores of one model (head or baseline) on the test part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskMetrics {
    /// Redshift scores.
    Redshift(RedshiftMetrics),
    /// Classification scores.
    Class(ClassMetrics),
    /// Stellar scores per parameter.
    Stellar(BTreeMap<String, ParamMetrics>),
}

/// One row of the results table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// What was scored (`head`, `ridge(pooled)`, …).
    pub model: String,
    /// Which test objects (`all` or a survey name).
    pub subset: String,
    /// The scores.
    pub metrics: TaskMetrics,
}

/// `metrics.json`: the run's counts and the results table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The task.
    pub task: Task,
    /// Labelled spectra per part.
    pub counts: BTreeMap<String, usize>,
    /// Spectra excluded, by reason.
    pub excluded: BTreeMap<String, usize>,
    /// Epochs run.
    pub epochs_run: usize,
    /// The epoch whose weights were kept (1-based).
    pub best_epoch: usize,
    /// Validation loss per epoch.
    pub val_loss: Vec<f64>,
    /// Training loss per epoch.
    pub train_loss: Vec<f64>,
    /// The head and the baselines on the test part.
    pub results: Vec<Scored>,
}

/// Where the cached embeddings of `inputs` under model `m` live in
/// `cache_dir`: `embeddings-KEY.h5`, KEY = the first 16 hex digits of the
/// SHA-256 of the checkpoint's SHA-256, the preparation config, the
/// inputs as given and the files they expand to (path, size, modification
/// time).
pub fn cache_path(m: &EmbedModel, inputs: &[String], cache_dir: &Path) -> PathBuf {
    cache_dir.join(format!("embeddings-{}.h5", cache_key(m, inputs, None)))
}

/// Where the cached hidden states after block `upto` of `inputs` under
/// `m` live in `cache_dir` ([`hidden::cached_hidden_states`]):
/// `hidden-b{upto}-KEY.h5`, KEY as in [`cache_path`] with the block
/// number hashed in too, so final tokens and hidden states of different
/// blocks never share a file.
pub fn hidden_cache_path(
    m: &EmbedModel,
    inputs: &[String],
    cache_dir: &Path,
    upto: usize,
) -> PathBuf {
    let salt = format!("hidden states after encoder block {upto}");
    cache_dir.join(format!(
        "hidden-b{upto}-{}.h5",
        cache_key(m, inputs, Some(&salt))
    ))
}

/// The first 16 hex digits of the SHA-256 of the checkpoint's SHA-256,
/// the preparation config, the inputs, the files they expand to and
/// `salt` (when given).
fn cache_key(m: &EmbedModel, inputs: &[String], salt: Option<&str>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(m.sha256.as_bytes());
    h.update(
        serde_json::to_string(&m.prepare)
            .unwrap_or_default()
            .as_bytes(),
    );
    for i in inputs {
        h.update(i.as_bytes());
        h.update([0u8]);
    }
    // The files the inputs expand to, with their sizes and modification
    // times, so a changed input is embedded again.
    let (files, _) = spectok_io::expand_inputs(inputs);
    for f in files {
        h.update(f.display().to_string().as_bytes());
        if let Ok(md) = std::fs::metadata(&f) {
            h.update(md.len().to_le_bytes());
            if let Ok(t) = md.modified() {
                if let Ok(d) = t.duration_since(std::time::UNIX_EPOCH) {
                    h.update(d.as_nanos().to_le_bytes());
                }
            }
        }
    }
    if let Some(salt) = salt {
        h.update([0xffu8]);
        h.update(salt.as_bytes());
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The embeddings (with tokens) of `inputs` under `m`: read from the cache
/// when present and made by the same checkpoint, else computed once with
/// the embedding pipeline and stored. Returns the file and whether it was
/// reused.
pub fn cached_embeddings(
    m: &EmbedModel,
    inputs: &[String],
    cache_dir: &Path,
    opts: &EmbedOptions,
    observer: &mut dyn EmbedObserver,
) -> Result<(PathBuf, bool)> {
    let path = cache_path(m, inputs, cache_dir);
    if path.is_file() {
        if let Ok(f) = spectok_io::embeddings::EmbeddingsFile::open(&path) {
            if f.meta().run.checkpoint_sha256 == m.sha256 && f.meta().tokens {
                return Ok((path, true));
            }
        }
    }
    std::fs::create_dir_all(cache_dir).map_err(|e| Error::file(cache_dir, e))?;
    let opts = EmbedOptions {
        tokens: true,
        overwrite: true,
        ..opts.clone()
    };
    embed(m, inputs, &path, &opts, observer)?;
    Ok((path, false))
}

/// SHA-256 of a checkpoint's weights, for checking a head against the
/// tokenizer it is used with.
pub fn checkpoint_sha256(checkpoint_dir: &Path) -> Result<String> {
    sha256_file(&checkpoint_dir.join(spectok_model::WEIGHTS_FILE))
}
