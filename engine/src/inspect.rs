//! [`inspect_model`]: what a GGUF file is and what running it costs, without loading its weights. For
//! `hearth doctor` and install-time checks.

use std::path::Path;

use crate::error::EngineError;
use crate::tokenizer::Tokenizer;

/// Facts about a model file, read from its header only.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    /// `general.architecture`, e.g. `qwen2`.
    pub architecture: String,
    /// The most common weight type, e.g. `Q4_K`.
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
    let key = |name: &str| format!("{architecture}.{name}");
    let usize_key = |name: &str| gguf.metadata_usize(&key(name)).map_err(|e| load_err(e.to_string()));
    let layers = usize_key("block_count")?;
    let heads = usize_key("attention.head_count")?;
    let hidden = usize_key("embedding_length")?;
    let kv_heads = gguf
        .metadata_usize_or(&key("attention.head_count_kv"), heads)
        .map_err(|e| load_err(e.to_string()))?;
    let head_dim = gguf
        .metadata_usize_or(&key("attention.key_length"), hidden / heads.max(1))
        .map_err(|e| load_err(e.to_string()))?;
    let layout = models::KvLayout {
        num_layers: layers,
        num_kv_heads: kv_heads,
        head_dim,
    };
    let tokenizer = Tokenizer::from_gguf_metadata(gguf.metadata_map())?;
    let file_bytes = std::fs::metadata(path).map_err(|e| load_err(e.to_string()))?.len();
    Ok(ModelSummary {
        quantization: gguf.dominant_quantization(),
        context_length: usize_key("context_length")?,
        kv_bytes_per_token: layout.bytes_per_token(),
        vocab_size: tokenizer.vocab_size(),
        architecture,
        file_bytes,
    })
}
