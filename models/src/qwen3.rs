//! Qwen3 dense models (GGUF `general.architecture` = `qwen3`).
//!
//! The shared pre-norm decoder ([`crate::decoder`]) with these differences from Llama, as llama.cpp runs
//! these files:
//! - no biases; instead each head's query and key are RMS-normalised (`attn_q_norm`, `attn_k_norm`, weights of
//!   length `head_dim`) before RoPE;
//! - the head dimension is `qwen3.attention.key_length` (128), not `embedding_length / head_count`;
//! - RoPE is the NEOX kind.

use crate::decoder::{Decoder, Variant};
use crate::nn::RopeStyle;
use crate::{Architecture, Gguf, ModelError};

/// Load a Qwen3 model from `gguf`.
pub fn load(gguf: &mut Gguf) -> Result<Decoder, ModelError> {
    let variant = Variant {
        architecture: Architecture::Qwen3,
        name: "qwen3".into(),
        rope: RopeStyle::Neox,
        qkv_bias: false,
        qk_norm: true,
        rope_freq_factors: false,
    };
    Decoder::load(gguf, variant)
}
