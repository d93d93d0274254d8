//! [`Recipe`]: which GGUF type each tensor gets, following llama.cpp's `llama-quant.cpp`.
//!
//! - 1-D tensors (norms, biases) and `*_norm.weight` stay F32.
//! - `output.weight` (or `token_embd.weight` when the embeddings are tied and there is no output tensor)
//!   gets Q6_K, unless the target is Q8_0 or F16 (kept as is).
//! - Q4_K_M: Q4_K everywhere else, except Q6_K for `attn_v` and `ffn_down` on the layers `use_more_bits` picks.
//! - A type whose block does not divide the row length falls back like `tensor_type_fallback`:
//!   Q4_K → Q5_0, Q6_K → Q8_0, and F16 when even that block does not fit.

use std::fmt;
use std::str::FromStr;

use candle_core::quantized::GgmlDType;

/// A whole-file quantization target, as `llama-quantize` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantType {
    /// Q4_K with Q6_K for the sensitive tensors (llama.cpp's `Q4_K_M`).
    Q4KM,
    /// Q4_0 everywhere (Q6_K output), llama.cpp's `Q4_0`.
    Q4_0,
    /// Q8_0 everywhere.
    Q8_0,
    /// F16 everywhere: an unquantized reference.
    F16,
}

impl QuantType {
    /// Names accepted on the command line.
    pub const NAMES: &'static str = "q4_k_m, q4_0, q8_0, f16";

    /// The type most weight matrices get.
    pub fn base(self) -> GgmlDType {
        match self {
            Self::Q4KM => GgmlDType::Q4K,
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::F16 => GgmlDType::F16,
        }
    }

    /// `general.file_type` (llama.cpp's `enum llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q8_0 => 7,
            Self::Q4KM => 15,
        }
    }
}

impl FromStr for QuantType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "q4_k_m" => Ok(Self::Q4KM),
            "q4_0" => Ok(Self::Q4_0),
            "q8_0" => Ok(Self::Q8_0),
            "f16" => Ok(Self::F16),
            other => Err(format!(
                "unknown quantization type `{other}` (supported: {})",
                Self::NAMES
            )),
        }
    }
}

impl fmt::Display for QuantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Q4KM => "Q4_K_M",
            Self::Q4_0 => "Q4_0",
            Self::Q8_0 => "Q8_0",
            Self::F16 => "F16",
        })
    }
}

/// The per-tensor type choice for one model.
#[derive(Debug, Clone, Copy)]
pub struct Recipe {
    /// The whole-file target.
    pub quant: QuantType,
    /// Transformer blocks (the `n_layer` of `use_more_bits`).
    pub n_layers: usize,
    /// Whether the file has no `output.weight` and reuses the embeddings as the output projection.
    pub tied_embeddings: bool,
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third one between.
pub fn use_more_bits(i_layer: usize, n_layers: usize) -> bool {
    let (i, n) = (i_layer as i64, n_layers as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

impl Recipe {
    /// The type of tensor `name` with row-major `shape`.
    pub fn tensor_type(&self, name: &str, shape: &[usize]) -> GgmlDType {
        if shape.len() < 2 || !name.ends_with("weight") || name.contains("_norm.weight") {
            return GgmlDType::F32;
        }
        let base = self.quant.base();
        let is_output = name == "output.weight" || (self.tied_embeddings && name == "token_embd.weight");
        let layer = name
            .strip_prefix("blk.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|i| i.parse::<usize>().ok());
        let wanted = if is_output {
            match self.quant {
                QuantType::F16 | QuantType::Q8_0 => base,
                // llama.cpp: a row length that is no multiple of the base block gets Q8_0 for the output.
                _ if !shape[shape.len() - 1].is_multiple_of(base.block_size()) => GgmlDType::Q8_0,
                _ => GgmlDType::Q6K,
            }
        } else if self.quant == QuantType::Q4KM
            && (name.ends_with(".attn_v.weight") || name.ends_with(".ffn_down.weight"))
            && layer.is_some_and(|i| use_more_bits(i, self.n_layers))
        {
            GgmlDType::Q6K
        } else {
            base
        };
        fallback(wanted, shape[shape.len() - 1])
    }
}

/// llama.cpp's `tensor_type_fallback` for rows of `cols` values.
fn fallback(wanted: GgmlDType, cols: usize) -> GgmlDType {
    if cols.is_multiple_of(wanted.block_size()) {
        return wanted;
    }
    let smaller = match wanted {
        GgmlDType::Q4K => GgmlDType::Q5_0,
        GgmlDType::Q5K => GgmlDType::Q5_1,
        GgmlDType::Q6K => GgmlDType::Q8_0,
        GgmlDType::Q2K | GgmlDType::Q3K => GgmlDType::Q4_0,
        other => other,
    };
    if cols.is_multiple_of(smaller.block_size()) {
        smaller
    } else {
        GgmlDType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layers `use_more_bits` of llama.cpp b11434 picks for a 28-layer model (Qwen2.5-Coder-1.5B), worked out by hand.
    #[test]
    fn q4_k_m_matches_llama_cpp_layer_choice() {
        let r = Recipe {
            quant: QuantType::Q4KM,
            n_layers: 28,
            tied_embeddings: true,
        };
        let v: Vec<usize> = (0..28)
            .filter(|&i| r.tensor_type(&format!("blk.{i}.attn_v.weight"), &[256, 1536]) == GgmlDType::Q6K)
            .collect();
        assert_eq!(v, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]);
        assert_eq!(r.tensor_type("blk.3.attn_q.weight", &[1536, 1536]), GgmlDType::Q4K);
        assert_eq!(r.tensor_type("token_embd.weight", &[151936, 1536]), GgmlDType::Q6K);
        assert_eq!(r.tensor_type("blk.3.attn_q.bias", &[1536]), GgmlDType::F32);
        assert_eq!(r.tensor_type("blk.3.attn_norm.weight", &[1536]), GgmlDType::F32);
    }

    #[test]
    fn rows_that_are_no_multiple_of_256_fall_back() {
        let r = Recipe {
            quant: QuantType::Q4KM,
            n_layers: 30,
            tied_embeddings: true,
        };
        // SmolLM2: hidden 576 = 2.25 blocks of 256.
        assert_eq!(r.tensor_type("blk.4.attn_q.weight", &[576, 576]), GgmlDType::Q5_0);
        assert_eq!(r.tensor_type("blk.0.attn_v.weight", &[192, 576]), GgmlDType::Q8_0);
        assert_eq!(r.tensor_type("token_embd.weight", &[49152, 576]), GgmlDType::Q8_0);
        assert_eq!(r.tensor_type("blk.0.ffn_down.weight", &[576, 1536]), GgmlDType::Q6K);
        assert_eq!(r.tensor_type("blk.4.attn_q.weight", &[576, 40]), GgmlDType::F16);
    }
}
