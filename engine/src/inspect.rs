//! [`inspect_model`]: what a GGUF file is and what running it costs, without loading its weights; and
//! [`check_model`], which also makes every check a load makes. For `hearth doctor` and install-time checks.

use std::path::Path;

use crate::error::EngineError;
use crate::tokenizer::Tokenizer;

/// Facts about a model file, read from its header only.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    /// `general.architecture`, e.g. `qwen2`.
    pub architecture: String,
    /// The file's type (`general.file_type`), e.g. `Q4_K_M`.
    pub quantization: String,
    /// The file's size in bytes.
    pub file_bytes: u64,
    /// Trained context length.
    pub context_length: usize,
    /// KV-cache bytes per token of context (keys and values, every layer).
    pub kv_bytes_per_token: usize,
    /// Tokens in the vocabulary the tokenizer reads from the file.
    pub vocab_size: usize,
}

/// Check that `path` is a whole GGUF file (every tensor's data inside the file, every type supported) of
/// a supported architecture with a usable tokenizer, and summarize it. Reads the header, not the weights.
pub fn inspect_model(path: &Path) -> Result<ModelSummary, EngineError> {
    let load_err = |reason: String| EngineError::Load {
        path: path.display().to_string(),
        reason,
    };
    let gguf = models::Gguf::open(path, &candle_core::Device::Cpu).map_err(|e| load_err(e.to_string()))?;
    let architecture = gguf
        .metadata_str("general.architecture")
        .map_err(|e| load_err(e.to_string()))?
        .to_owned();
    models::Architecture::from_gguf_name(&architecture).map_err(|e| load_err(e.to_string()))?;
    // The models crate's own reading and checks of the hyperparameters (all three architectures share it).
    let cfg = models::decoder::Config::from_gguf(&gguf, &architecture).map_err(|e| load_err(e.to_string()))?;
    let layout = models::KvLayout {
        num_layers: cfg.block_count,
        num_kv_heads: cfg.head_count_kv,
        head_dim: cfg.head_dim,
    };
    let tokenizer = Tokenizer::from_gguf_metadata(gguf.metadata_map())?;
    let file_bytes = std::fs::metadata(path).map_err(|e| load_err(e.to_string()))?.len();
    Ok(ModelSummary {
        quantization: gguf.file_type(),
        context_length: cfg.context_length,
        kv_bytes_per_token: layout.bytes_per_token(),
        vocab_size: tokenizer.vocab_size(),
        architecture,
        file_bytes,
    })
}

/// Rotary positions [`check_model`] builds tables for: the engine's default context cap. The check does not
/// depend on it; it only sizes the tables built on the way.
const CHECK_POSITIONS: usize = 8192;

/// [`inspect_model`], then every check `Engine::load` makes (the same function runs them): hyperparameters,
/// every tensor's shape, every value of F32/F16 tensors and every block scale of quantized ones finite, the
/// tokenizer's ids inside the model's vocabulary. This loads the weights on the CPU, one model's worth of
/// memory and a load's time, and drops them; a file it passes, the engine loads.
pub fn check_model(path: &Path) -> Result<ModelSummary, EngineError> {
    let summary = inspect_model(path)?;
    crate::handle::load_checked(path, &candle_core::Device::Cpu, CHECK_POSITIONS)?;
    Ok(summary)
}
