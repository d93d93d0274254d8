//! [`Hyperparams`]: the shape of a transformer as both sides see it — Hugging Face `config.json` and GGUF
//! metadata — plus the GGUF tensor list it implies, with llama.cpp's names and shapes.

use candle_core::quantized::gguf_file::Value;
use models::Architecture;

/// Everything that fixes a model's tensor shapes and its GGUF architecture keys.
#[derive(Debug, Clone, PartialEq)]
pub struct Hyperparams {
    /// Which architecture file of `models` runs it.
    pub architecture: Architecture,
    /// Transformer blocks.
    pub block_count: usize,
    /// Hidden size.
    pub embedding_length: usize,
    /// MLP inner size.
    pub feed_forward_length: usize,
    /// Query heads.
    pub head_count: usize,
    /// Key/value heads.
    pub head_count_kv: usize,
    /// Per-head dimension.
    pub head_dim: usize,
    /// Trained context length.
    pub context_length: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base frequency (`rope_theta`).
    pub rope_theta: f32,
    /// Rows of the embedding table (and of the output projection).
    pub vocab_size: usize,
    /// Whether the output projection reuses the embedding table (no `output.weight`).
    pub tied_embeddings: bool,
}

impl Hyperparams {
    /// The GGUF `general.architecture` value, which is also the key prefix.
    pub fn gguf_arch(&self) -> &'static str {
        match self.architecture {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
        }
    }

    /// The architecture keys, as llama.cpp's `convert_hf_to_gguf.py` writes them.
    pub fn gguf_metadata(&self) -> Vec<(String, Value)> {
        let a = self.gguf_arch();
        let k = |s: &str| format!("{a}.{s}");
        let u = |n: usize| Value::U32(n as u32);
        let mut md = vec![
            (k("block_count"), u(self.block_count)),
            (k("context_length"), u(self.context_length)),
            (k("embedding_length"), u(self.embedding_length)),
            (k("feed_forward_length"), u(self.feed_forward_length)),
            (k("attention.head_count"), u(self.head_count)),
            (k("attention.head_count_kv"), u(self.head_count_kv)),
            (k("rope.freq_base"), Value::F32(self.rope_theta)),
            (k("attention.layer_norm_rms_epsilon"), Value::F32(self.rms_norm_eps)),
        ];
        if self.architecture == Architecture::Llama {
            md.push((k("vocab_size"), u(self.vocab_size)));
            md.push((k("rope.dimension_count"), u(self.head_dim)));
        }
        if self.head_dim * self.head_count != self.embedding_length || self.architecture == Architecture::Qwen3 {
            md.push((k("attention.key_length"), u(self.head_dim)));
            md.push((k("attention.value_length"), u(self.head_dim)));
        }
        md
    }

    /// Every GGUF tensor of the model with its row-major shape, in llama.cpp's file order.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, ff) = (self.embedding_length, self.feed_forward_length);
        let (q, kv) = (self.head_count * self.head_dim, self.head_count_kv * self.head_dim);
        let mut t = vec![("token_embd.weight".to_string(), vec![self.vocab_size, h])];
        for i in 0..self.block_count {
            let p = |s: &str| format!("blk.{i}.{s}");
            t.push((p("attn_norm.weight"), vec![h]));
            t.push((p("ffn_down.weight"), vec![h, ff]));
            t.push((p("ffn_gate.weight"), vec![ff, h]));
            t.push((p("ffn_up.weight"), vec![ff, h]));
            t.push((p("ffn_norm.weight"), vec![h]));
            if self.architecture == Architecture::Qwen3 {
                t.push((p("attn_k_norm.weight"), vec![self.head_dim]));
            }
            if self.architecture == Architecture::Qwen2 {
                t.push((p("attn_k.bias"), vec![kv]));
            }
            t.push((p("attn_k.weight"), vec![kv, h]));
            t.push((p("attn_output.weight"), vec![h, q]));
            if self.architecture == Architecture::Qwen3 {
                t.push((p("attn_q_norm.weight"), vec![self.head_dim]));
            }
            if self.architecture == Architecture::Qwen2 {
                t.push((p("attn_q.bias"), vec![q]));
            }
            t.push((p("attn_q.weight"), vec![q, h]));
            if self.architecture == Architecture::Qwen2 {
                t.push((p("attn_v.bias"), vec![kv]));
            }
            t.push((p("attn_v.weight"), vec![kv, h]));
        }
        t.push(("output_norm.weight".to_string(), vec![h]));
        if !self.tied_embeddings {
            t.push(("output.weight".to_string(), vec![self.vocab_size, h]));
        }
        t
    }

    /// The llama Q/K row permutation that applies to GGUF tensor `name`: `Some(heads)` for the llama
    /// architecture's `attn_q` (query heads) and `attn_k` (KV heads) weights, `None` otherwise.
    pub fn permutation(&self, name: &str) -> Option<usize> {
        if self.architecture != Architecture::Llama {
            return None;
        }
        if name.ends_with(".attn_q.weight") {
            Some(self.head_count)
        } else if name.ends_with(".attn_k.weight") {
            Some(self.head_count_kv)
        } else {
            None
        }
    }
}

/// The Hugging Face name of GGUF tensor `name` (the inverse of llama.cpp's tensor map for these families).
pub fn hf_name(name: &str) -> Option<String> {
    match name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (part, kind) = rest.rsplit_once('.')?;
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// llama.cpp's `permute`: within each head, rows `[half 0 | half 1]` become interleaved pairs
/// `(0, half), (1, half + 1), …`, turning NEOX-ordered q/k rows into the interleaved RoPE order.
/// `rows` holds whole heads of `cols` values each.
pub fn permute_rows(rows: &[f32], heads_in_rows: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0.0; rows.len()];
    for h in 0..heads_in_rows {
        for j in 0..half {
            for t in 0..2 {
                let src = h * head_dim + t * half + j;
                let dst = h * head_dim + 2 * j + t;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&rows[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// The inverse of [`permute_rows`].
pub fn unpermute_rows(rows: &[f32], heads_in_rows: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0.0; rows.len()];
    for h in 0..heads_in_rows {
        for j in 0..half {
            for t in 0..2 {
                let src = h * head_dim + 2 * j + t;
                let dst = h * head_dim + t * half + j;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&rows[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_matches_llama_cpp_and_inverts() {
        // One head of dim 4, one column: rows [a0 a1 b0 b1] → [a0 b0 a1 b1] (numpy reshape(1, 2, 2).swapaxes(1, 2)).
        let rows = [0.0, 1.0, 2.0, 3.0];
        assert_eq!(permute_rows(&rows, 1, 4, 1), [0.0, 2.0, 1.0, 3.0]);
        let wide: Vec<f32> = (0..2 * 8 * 3).map(|x| x as f32).collect();
        assert_eq!(unpermute_rows(&permute_rows(&wide, 2, 8, 3), 2, 8, 3), wide);
    }

    #[test]
    fn gguf_names_map_to_hf_names() {
        assert_eq!(
            hf_name("blk.3.attn_q.bias").as_deref(),
            Some("model.layers.3.self_attn.q_proj.bias")
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }
}
