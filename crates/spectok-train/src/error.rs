//! The train crate's error type. Every message is one line naming what it
//! is about: the config field (as a path such as `optim.lr`), the file, or
//! the training step and spectra.

use std::path::PathBuf;

/// Everything that can stop a training run or a checkpoint operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config value does not parse or is out of range; `field` is its
    /// path in the config file (`optim.betas[1]`, `data.sources[0].weight`).
    #[error("{}field `{field}`: {message}", file_prefix(.file))]
    Config {
        /// The config file, when the config came from one.
        file: Option<PathBuf>,
        field: String,
        message: String,
    },
    /// Reading or writing a run file (checkpoint, metrics, config) failed.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// A checkpoint exists but cannot be used for this run.
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    /// The loss or the gradient became NaN or infinite. The run stops
    /// before the optimiser applies the step, so the last checkpoint
    /// written is the last good state.
    #[error(
        "non-finite {what} ({value}) at step {step}; batch spectra: {}; last good checkpoint: {}",
        .ids.join(", "),
        .last_checkpoint.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "none".into())
    )]
    NonFinite {
        /// `loss` or `gradient norm`.
        what: &'static str,
        value: f64,
        /// The 1-based step whose batch produced it.
        step: u64,
        /// Ids of the spectra in that batch.
        ids: Vec<String>,
        last_checkpoint: Option<PathBuf>,
    },
    /// The data pipeline failed (sources, loader state, preparation).
    #[error(transparent)]
    Data(#[from] spectok_data::Error),
    /// Building, running, saving or loading the model failed.
    #[error(transparent)]
    Model(#[from] spectok_model::Error),
    /// A tensor operation failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

fn file_prefix(file: &Option<PathBuf>) -> String {
    match file {
        Some(f) => format!("config {}: ", f.display()),
        None => "config: ".to_string(),
    }
}

impl Error {
    /// A config error for `field`.
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            file: None,
            field: field.into(),
            message: message.into(),
        }
    }

    /// A file error for `path`.
    pub fn file(path: impl Into<PathBuf>, message: impl ToString) -> Self {
        Error::File {
            path: path.into(),
            message: message.to_string(),
        }
    }

    /// A checkpoint error for `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, message: impl ToString) -> Self {
        Error::Checkpoint {
            path: path.into(),
            message: message.to_string(),
        }
    }

    /// For a config error, its field path.
    pub fn config_field(&self) -> Option<&str> {
        match self {
            Error::Config { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Result with the train crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Writes `bytes` to `path` through `path` + `.tmp` and a rename, so `path`
/// holds either its old content or all of the new; on failure the
/// temporary file is removed and the error names the file.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    let tmp = std::path::PathBuf::from(name);
    let result = std::fs::write(&tmp, bytes)
        .map_err(|e| Error::file(&tmp, e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
