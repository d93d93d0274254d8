//! Qwen2 and Qwen2.5, and DeepSeek-R1-Distill-Qwen (GGUF `general.architecture` = `qwen2`).
//!
//! The shared pre-norm decoder ([`crate::decoder`]) with two differences from Llama, as llama.cpp runs these
//! files:
//! - q, k and v projections carry biases (`attn_q.bias`, `attn_k.bias`, `attn_v.bias`);
//! - RoPE is the NEOX kind: pairs `(i, i + d/2)`.
//!
//! `rope.freq_base` is always present in Qwen2 files (1 000 000 for 2.5); absent, llama.cpp's default 10 000
//! applies. Small Qwen models tie the output projection to the embedding table (no `output.weight`).

use crate::decoder::{Decoder, Variant};
use crate::nn::RopeStyle;
use crate::{Architecture, Gguf, ModelError};

/// Load a Qwen2 model from `gguf`.
pub fn load(gguf: &mut Gguf) -> Result<Decoder, ModelError> {
    let variant = Variant {
        architecture: Architecture::Qwen2,
        name: "qwen2".into(),
        rope: RopeStyle::Neox,
        qkv_bias: true,
        qk_norm: false,
        rope_freq_factors: false,
    };
    Decoder::load(gguf, variant)
}
