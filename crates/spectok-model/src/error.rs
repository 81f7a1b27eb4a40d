//! The model crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong building, running, saving or loading a
/// model. Messages are one line and name the field, file or tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config field is out of range or the config JSON does not parse.
    #[error("config field `{field}`: {message}")]
    Config {
        /// The field at fault (`json` when the text does not parse).
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A batch (or target grid) is inconsistent with itself or the model.
    #[error("batch field `{field}`: {message}")]
    Batch {
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A tensor operation failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// Reading or writing a checkpoint file failed.
    #[error("{path}: {message}")]
    Checkpoint {
        /// The file at fault.
        path: PathBuf,
        /// What went wrong (names the tensor for weight problems).
        message: String,
    },
    /// A device or dtype name cannot be used.
    #[error("device `{name}`: {message}")]
    Device {
        /// The name given.
        name: String,
        /// Why it cannot be used.
        message: String,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn batch(field: &'static str, message: impl Into<String>) -> Error {
        Error::Batch {
            field,
            message: message.into(),
        }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, message: impl ToString) -> Error {
        Error::Checkpoint {
            path: path.into(),
            message: message.to_string(),
        }
    }
}
