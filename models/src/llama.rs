//! The Llama family: Llama 2 and 3, Mistral, SmolLM (GGUF `general.architecture` = `llama` or `mistral`).
//!
//! The shared pre-norm decoder ([`crate::decoder`]) as llama.cpp runs these files:
//! - RoPE is the interleaved (NORM) kind: GGUF conversion permutes q/k rows so pairs are `(2i, 2i+1)`.
//! - `rope.freq_base` defaults to 10 000 (Llama 2) when absent; Llama 3's `rope_freqs.weight`, when present,
//!   divides the frequencies.
//! - With no `output.weight` the embedding table is reused as the output projection (tied, as in SmolLM2).
//! - No biases anywhere.

use crate::decoder::{Decoder, Variant};
use crate::nn::RopeStyle;
use crate::{Architecture, Gguf, ModelError};

/// Load a Llama-family model from `gguf`.
pub fn load(gguf: &mut Gguf) -> Result<Decoder, ModelError> {
    let name = gguf.metadata_str("general.architecture")?.to_string();
    let variant = Variant {
        architecture: Architecture::Llama,
        name,
        rope: RopeStyle::Interleaved,
        qkv_bias: false,
        qk_norm: false,
        rope_freq_factors: true,
    };
    Decoder::load(gguf, variant)
}
