//! Transformer architectures over candle's quantized tensors, batched over a paged KV cache.
//!
//! A model is loaded from a GGUF file with [`load`], which picks the [`Architecture`] from
//! `general.architecture`. Every model implements [`CausalLm`]: given a [`Batch`] (the new tokens of several
//! sequences, each at its own position, each with its own block table) and the [`KvCache`] the engine owns, it
//! writes the new keys and values into the cache and returns logits for the sequences that asked for them.
//!
//! One shared decoder ([`decoder`]: embedding, pre-norm blocks, output) and one small file per architecture
//! ([`llama`], [`qwen2`], [`qwen3`]) saying how its files differ (biases, q/k norms, RoPE pairing); the
//! building blocks live in [`nn`] (linear layers, norms, rotary embedding, MLP) and [`attention`] (the paged
//! kernel).
//! [`attention_ops`] attends over a tensor cache with candle ops instead: the path on CUDA (feature `cuda`),
//! also runnable on the CPU so tests cover it.
//!
//! This crate knows nothing of HTTP, tokenizers, scheduling or async runtimes. It is the only crate whose
//! public API uses candle types.

pub mod attention;
pub mod attention_ops;
mod batch;
pub mod decoder;
mod error;
mod gguf;
mod gguf_header;
pub mod kernels;
mod kv_cache;
pub mod llama;
pub mod nn;
pub mod qwen2;
pub mod qwen3;
mod threads;

use std::path::Path;

pub use batch::{Batch, SeqInput};
pub use candle_core::{Device, Tensor};
pub use error::ModelError;
pub use gguf::{Gguf, SUPPORTED_TENSOR_TYPES};
pub use kv_cache::{KvCache, KvLayout, TensorLayerKv};
pub use threads::{run_pinned, PIN_VAR};

/// The architectures hearth runs, chosen from the GGUF's `general.architecture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3, Mistral, SmolLM: interleaved RoPE, optional tied embeddings.
    Llama,
    /// Qwen2/2.5 and DeepSeek-R1-Distill-Qwen: q/k/v biases, NEOX RoPE.
    Qwen2,
    /// Qwen3: per-head q/k RMS norms, NEOX RoPE, no biases.
    Qwen3,
}

impl Architecture {
    /// The `general.architecture` values we accept, for error messages.
    pub const SUPPORTED: &'static [&'static str] = &["llama", "mistral", "qwen2", "qwen3"];

    /// Map a `general.architecture` value to an architecture.
    pub fn from_gguf_name(name: &str) -> Result<Self, ModelError> {
        match name {
            "llama" | "mistral" => Ok(Self::Llama),
            "qwen2" => Ok(Self::Qwen2),
            "qwen3" => Ok(Self::Qwen3),
            other => Err(ModelError::UnsupportedArchitecture {
                architecture: other.to_string(),
                supported: Self::SUPPORTED.join(", "),
            }),
        }
    }
}

/// Shape facts about a loaded model that the engine needs to size its cache and validate requests.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Which architecture file runs it.
    pub architecture: Architecture,
    /// The raw `general.architecture` string.
    pub architecture_name: String,
    /// `general.name`, when present.
    pub name: Option<String>,
    /// Number of transformer blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (fewer than query heads with grouped-query attention).
    pub num_kv_heads: usize,
    /// Per-head dimension.
    pub head_dim: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// Output vocabulary size (rows of the output projection).
    pub vocab_size: usize,
    /// Trained context length from the GGUF.
    pub context_length: usize,
    /// The file's type from `general.file_type`, e.g. "Q4_K_M" (else the most common tensor type, "Q4_K").
    pub quantization: String,
}

impl ModelSpec {
    /// The key/value geometry the KV cache must have for this model.
    pub fn kv_layout(&self) -> KvLayout {
        KvLayout {
            num_layers: self.num_layers,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
        }
    }
}

/// A causal language model that runs batches of sequences at different positions over a paged KV cache.
pub trait CausalLm: Send {
    /// Shape facts about the model.
    fn spec(&self) -> &ModelSpec;

    /// Run one step: embed `batch.tokens`, write their keys/values into `cache` at the slots given by each
    /// sequence's block table, attend over everything cached so far, and return logits of shape
    /// `[n, vocab_size]` for the last new token of each sequence with `want_logits` (every new token of a
    /// sequence with `all_logits`), in batch order.
    fn forward(&self, batch: &Batch<'_>, cache: &mut KvCache) -> Result<Tensor, ModelError>;
}

/// Load a GGUF model file onto `device`, choosing the architecture from its metadata. Rotary tables cover
/// `max_positions` positions at most (fewer when the model's context is shorter), so a file claiming a huge
/// context costs nothing more: pass the context the caller will serve.
pub fn load(path: &Path, device: &Device, max_positions: usize) -> Result<Box<dyn CausalLm>, ModelError> {
    load_gguf(Gguf::open(path, device)?, max_positions)
}

/// [`load`] from a file already opened, so a caller that read its metadata first (the engine builds its
/// tokenizer from [`Gguf::metadata_map`]) parses the header once.
pub fn load_gguf(mut gguf: Gguf, max_positions: usize) -> Result<Box<dyn CausalLm>, ModelError> {
    gguf.set_max_positions(max_positions);
    let arch_name = gguf.metadata_str("general.architecture")?.to_string();
    let model: Box<dyn CausalLm> = match Architecture::from_gguf_name(&arch_name)? {
        Architecture::Llama => Box::new(llama::load(&mut gguf)?),
        Architecture::Qwen2 => Box::new(qwen2::load(&mut gguf)?),
        Architecture::Qwen3 => Box::new(qwen3::load(&mut gguf)?),
    };
    tracing::info!(
        path = %gguf.path().display(),
        architecture = %arch_name,
        layers = model.spec().num_layers,
        file_type = %model.spec().quantization,
        "model loaded"
    );
    Ok(model)
}
