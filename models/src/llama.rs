//! The Llama family: Llama 2 and 3, Mistral, SmolLM (GGUF `general.architecture` = `llama` or `mistral`).
//!
//! Pre-norm decoder blocks: RMSNorm → grouped-query attention with RoPE → residual → RMSNorm → SwiGLU MLP →
//! residual. Conventions, as llama.cpp reads these files:
//! - RoPE is the interleaved (NORM) kind: GGUF conversion permutes q/k rows so pairs are `(2i, 2i+1)`.
//! - `rope.freq_base` defaults to 10 000 (Llama 2) when absent; Llama 3's `rope_freqs.weight`, when present,
//!   divides the frequencies.
//! - With no `output.weight` the embedding table is reused as the output projection (tied, as in SmolLM2).
//! - No biases anywhere.

use candle_core::{Device, Tensor};

use crate::attention::attend_rope;
use crate::nn::{
    embedding_shape, logits, output_projection, Embedding, Linear, Mlp, RmsNorm, RopeStyle, Rotary, StepInputs,
};
use crate::{Architecture, Batch, CausalLm, Gguf, KvCache, ModelError, ModelSpec};

/// Hyperparameters from the GGUF metadata, under the architecture's key prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub block_count: usize,
    pub embedding_length: usize,
    pub feed_forward_length: usize,
    pub head_count: usize,
    pub head_count_kv: usize,
    pub head_dim: usize,
    pub context_length: usize,
    pub rms_norm_eps: f32,
    pub rope_freq_base: f32,
}

impl Config {
    /// Read the hyperparameters; a missing required key, or a value no model has (zero or absurd counts,
    /// sizes that do not divide, a NaN, infinite or non-positive epsilon or RoPE base), is an error naming it.
    pub fn from_gguf(gguf: &Gguf, prefix: &str) -> Result<Self, ModelError> {
        let key = |k: &str| format!("{prefix}.{k}");
        let bounded = |k: &str, n: usize, max: usize| {
            if (1..=max).contains(&n) {
                Ok(n)
            } else {
                Err(ModelError::InvalidKey {
                    key: key(k),
                    reason: format!("{n} is outside 1..={max}"),
                })
            }
        };
        let head_count = bounded(
            "attention.head_count",
            gguf.metadata_usize(&key("attention.head_count"))?,
            MAX_HEADS,
        )?;
        let embedding_length = bounded(
            "embedding_length",
            gguf.metadata_usize(&key("embedding_length"))?,
            MAX_WIDTH,
        )?;
        if embedding_length % head_count != 0 {
            return Err(ModelError::InvalidKey {
                key: key("attention.head_count"),
                reason: format!("{head_count} heads do not divide the embedding length {embedding_length}"),
            });
        }
        let head_dim = bounded(
            "attention.key_length",
            gguf.metadata_usize_or(&key("attention.key_length"), embedding_length / head_count)?,
            MAX_HEAD_DIM,
        )?;
        if head_dim % 2 != 0 {
            return Err(ModelError::InvalidKey {
                key: key("attention.key_length"),
                reason: format!("a head dimension of {head_dim} is odd; RoPE rotates pairs"),
            });
        }
        let rope_dim = gguf.metadata_usize_or(&key("rope.dimension_count"), head_dim)?;
        if rope_dim != head_dim {
            return Err(ModelError::InvalidKey {
                key: key("rope.dimension_count"),
                reason: format!("partial rotary embedding ({rope_dim} of {head_dim} dims) is not supported"),
            });
        }
        let positive = |k: &str, v: f32| {
            if v.is_finite() && v > 0.0 {
                Ok(v)
            } else {
                Err(ModelError::InvalidKey {
                    key: key(k),
                    reason: format!("{v} is not a finite positive number"),
                })
            }
        };
        let cfg = Self {
            block_count: bounded("block_count", gguf.metadata_usize(&key("block_count"))?, MAX_LAYERS)?,
            embedding_length,
            feed_forward_length: bounded(
                "feed_forward_length",
                gguf.metadata_usize(&key("feed_forward_length"))?,
                MAX_WIDTH,
            )?,
            head_count,
            // Models without grouped-query attention omit the key: one KV head per query head.
            head_count_kv: gguf.metadata_usize_or(&key("attention.head_count_kv"), head_count)?,
            head_dim,
            context_length: bounded(
                "context_length",
                gguf.metadata_usize(&key("context_length"))?,
                u32::MAX as usize,
            )?,
            rms_norm_eps: positive(
                "attention.layer_norm_rms_epsilon",
                gguf.metadata_f32(&key("attention.layer_norm_rms_epsilon"))?,
            )?,
            rope_freq_base: positive(
                "rope.freq_base",
                gguf.metadata_f32_or(&key("rope.freq_base"), 10_000.0)?,
            )?,
        };
        if cfg.head_count_kv == 0 || cfg.head_count % cfg.head_count_kv != 0 {
            return Err(ModelError::InvalidKey {
                key: key("attention.head_count_kv"),
                reason: format!(
                    "{} KV heads do not divide {} query heads",
                    cfg.head_count_kv, cfg.head_count
                ),
            });
        }
        Ok(cfg)
    }
}

/// Bounds on hyperparameters, far above any released model (Llama 3.1 405B: 126 layers, 128 heads of 128,
/// width 16 384, feed-forward 53 248), so that the products the loader forms cannot overflow and a corrupt
/// count is refused before anything is sized by it.
const MAX_LAYERS: usize = 1024;
const MAX_HEADS: usize = 1024;
const MAX_HEAD_DIM: usize = 1024;
const MAX_WIDTH: usize = 1 << 20;

#[derive(Debug)]
struct Block {
    attn_norm: RmsNorm,
    attn_q: Linear,
    attn_k: Linear,
    attn_v: Linear,
    attn_output: Linear,
    ffn_norm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    fn load(gguf: &mut Gguf, cfg: &Config, i: usize) -> Result<Self, ModelError> {
        let p = format!("blk.{i}");
        let (h, q_dim, kv_dim) = (
            cfg.embedding_length,
            cfg.head_count * cfg.head_dim,
            cfg.head_count_kv * cfg.head_dim,
        );
        Ok(Self {
            attn_norm: RmsNorm::load(gguf, &format!("{p}.attn_norm"), h, cfg.rms_norm_eps)?,
            attn_q: Linear::load(gguf, &format!("{p}.attn_q"), q_dim, h, false)?,
            attn_k: Linear::load(gguf, &format!("{p}.attn_k"), kv_dim, h, false)?,
            attn_v: Linear::load(gguf, &format!("{p}.attn_v"), kv_dim, h, false)?,
            attn_output: Linear::load(gguf, &format!("{p}.attn_output"), h, q_dim, false)?,
            ffn_norm: RmsNorm::load(gguf, &format!("{p}.ffn_norm"), h, cfg.rms_norm_eps)?,
            mlp: Mlp::load(gguf, &p, h, cfg.feed_forward_length)?,
        })
    }

    /// `x`: `[tokens, hidden]` → `[tokens, hidden]`.
    fn forward(
        &self,
        x: &Tensor,
        m: &Model,
        step: &StepInputs,
        cache: &mut KvCache,
        i: usize,
        batch: &Batch<'_>,
    ) -> Result<Tensor, ModelError> {
        let h = self.attn_norm.forward(x)?;
        let [q, k, v] = Linear::forward_many([&self.attn_q, &self.attn_k, &self.attn_v], &h, Some(&step.rows))?;
        let attn = attend_rope(
            &q,
            &k,
            &v,
            &m.rotary,
            &step.cos,
            &step.sin,
            cache,
            i,
            batch,
            m.cfg.head_count,
        )?;
        let x = (x + self.attn_output.forward_rows(&attn, Some(&step.rows))?)?;
        let h = self.ffn_norm.forward(&x)?;
        Ok((&x + self.mlp.forward(&h, &step.rows)?)?)
    }
}

/// A loaded Llama-family model.
#[derive(Debug)]
pub struct Model {
    cfg: Config,
    spec: ModelSpec,
    embedding: Embedding,
    blocks: Vec<Block>,
    output_norm: RmsNorm,
    output: Linear,
    rotary: Rotary,
    device: Device,
}

impl Model {
    /// Load all weights from `gguf`.
    pub fn from_gguf(gguf: &mut Gguf) -> Result<Self, ModelError> {
        let arch = gguf.metadata_str("general.architecture")?.to_string();
        let cfg = Config::from_gguf(gguf, &arch)?;
        let (vocab, hidden) = embedding_shape(gguf)?;
        if hidden != cfg.embedding_length {
            return Err(ModelError::Shape {
                name: "token_embd.weight".into(),
                expected: vec![vocab, cfg.embedding_length],
                actual: vec![vocab, hidden],
            });
        }
        let freq_factors = if gguf.has_tensor("rope_freqs.weight") {
            let factors = gguf.vector("rope_freqs.weight", cfg.head_dim / 2)?.to_vec1::<f32>()?;
            if let Some(i) = factors.iter().position(|&f| f <= 0.0) {
                return Err(ModelError::InvalidTensor {
                    name: "rope_freqs.weight".into(),
                    reason: format!("frequency factor {i} is {}, not positive", factors[i]),
                });
            }
            Some(factors)
        } else {
            None
        };
        let rotary = Rotary::new(
            cfg.head_dim,
            cfg.rope_freq_base,
            gguf.rope_positions(cfg.context_length),
            RopeStyle::Interleaved,
            freq_factors.as_deref(),
            gguf.device(),
        )?;
        let mut embedding = Embedding::load(gguf, vocab, hidden)?;
        let blocks = (0..cfg.block_count)
            .map(|i| Block::load(gguf, &cfg, i))
            .collect::<Result<Vec<_>, _>>()?;
        let output_norm = RmsNorm::load(gguf, "output_norm", hidden, cfg.rms_norm_eps)?;
        let output = output_projection(gguf, &mut embedding, vocab, hidden)?;
        let spec = ModelSpec {
            architecture: Architecture::Llama,
            architecture_name: arch,
            name: gguf.metadata_str("general.name").ok().map(str::to_string),
            num_layers: cfg.block_count,
            num_heads: cfg.head_count,
            num_kv_heads: cfg.head_count_kv,
            head_dim: cfg.head_dim,
            hidden_size: hidden,
            vocab_size: vocab,
            context_length: cfg.context_length,
            quantization: gguf.file_type(),
        };
        let device = gguf.device().clone();
        Ok(Self {
            cfg,
            spec,
            embedding,
            blocks,
            output_norm,
            output,
            rotary,
            device,
        })
    }
}

impl CausalLm for Model {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn forward(&self, batch: &Batch<'_>, cache: &mut KvCache) -> Result<Tensor, ModelError> {
        let _enter = tracing::trace_span!("llama", tokens = batch.tokens.len()).entered();
        let step = StepInputs::new(batch, &self.rotary, cache, &self.device)?;
        let mut x = self.embedding.forward(&step.ids)?;
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, self, &step, cache, i, batch)?;
        }
        Ok(logits(&x, &step.logit_rows, &self.output_norm, &self.output)?)
    }
}
