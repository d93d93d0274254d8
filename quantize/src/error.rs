//! The quantize crate's error type: every variant names the file and the tensor or key it is about.

use std::path::PathBuf;

/// Errors from reading checkpoints, planning tensor types and writing GGUF or safetensors files.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    /// A file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A JSON file (config.json, tokenizer.json, ...) is not valid JSON.
    #[error("{path}: invalid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    /// A required key is missing from a JSON file or from GGUF metadata.
    #[error("{path}: missing key `{key}`")]
    MissingKey { path: PathBuf, key: String },
    /// A key is present but its value is unusable.
    #[error("{path}: key `{key}` is invalid: {reason}")]
    InvalidKey { path: PathBuf, key: String, reason: String },
    /// A safetensors file is malformed or cut off.
    #[error("{path}: not a valid safetensors file: {reason}")]
    InvalidSafetensors { path: PathBuf, reason: String },
    /// A tensor the architecture needs is in none of the checkpoint's files.
    #[error("{path}: tensor `{tensor}` is missing")]
    MissingTensor { path: PathBuf, tensor: String },
    /// A tensor's shape disagrees with the hyperparameters.
    #[error("{path}: tensor `{tensor}` has shape {actual:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    /// A tensor is stored in a dtype we cannot read.
    #[error("{path}: tensor `{tensor}` has dtype {dtype}, expected F16, BF16 or F32")]
    UnsupportedDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    /// A checkpoint tensor we do not know how to place in the GGUF file.
    #[error("{path}: tensor `{tensor}` is not part of the {architecture} architecture")]
    UnexpectedTensor {
        path: PathBuf,
        tensor: String,
        architecture: String,
    },
    /// The model family is not one we can convert.
    #[error("{path}: unsupported architecture `{architecture}` (supported: {supported})")]
    UnsupportedArchitecture {
        path: PathBuf,
        architecture: String,
        supported: String,
    },
    /// The tokenizer cannot be represented in the target format.
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    /// Reading or writing a GGUF file failed.
    #[error("{path}: {reason}")]
    Gguf { path: PathBuf, reason: String },
    /// A tensor operation (quantization, dequantization) failed.
    #[error("tensor `{tensor}`: {source}")]
    Candle { tensor: String, source: candle_core::Error },
    /// An argument is out of range (unknown preset, quantization type, ...).
    #[error("{0}")]
    InvalidArgument(String),
}

impl QuantizeError {
    /// An IO error on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
