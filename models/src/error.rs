//! The models crate's error type: every variant names the file, key or tensor it is about.

use std::path::PathBuf;

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The file is not a valid GGUF (bad magic, unsupported version, corrupt header).
    #[error("{path} is not a valid GGUF file: {reason}")]
    InvalidGguf { path: PathBuf, reason: String },
    /// The file is shorter than its header says: it was cut off while downloading or copying.
    #[error("{path} is truncated: tensor `{tensor}` ends at byte {needed}, but the file has {actual} bytes")]
    Truncated {
        path: PathBuf,
        tensor: String,
        needed: u64,
        actual: u64,
    },
    /// A required metadata key is missing.
    #[error("GGUF metadata key `{key}` is missing")]
    MissingKey { key: String },
    /// A metadata key has the wrong type or an impossible value.
    #[error("GGUF metadata key `{key}` is invalid: {reason}")]
    InvalidKey { key: String, reason: String },
    /// A required tensor is missing.
    #[error("tensor `{name}` is missing from the GGUF file")]
    MissingTensor { name: String },
    /// A tensor has a quantization type hearth cannot run.
    #[error("tensor `{name}` has type {dtype}, which is not supported (supported: {supported})")]
    UnsupportedTensorType {
        name: String,
        dtype: String,
        supported: String,
    },
    /// A tensor's header entry or data is unusable: an unknown type id, dimensions whose size overflows,
    /// a misaligned offset, NaN or infinite weights.
    #[error("tensor `{name}` is invalid: {reason}")]
    InvalidTensor { name: String, reason: String },
    /// A tensor's shape disagrees with the hyperparameters.
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    /// `general.architecture` names a model family hearth does not run.
    #[error("unsupported architecture `{architecture}` (supported: {supported})")]
    UnsupportedArchitecture { architecture: String, supported: String },
    /// The batch does not fit the cache (a block table too short, a position past the rope table, ...).
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
