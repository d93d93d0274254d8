//! The pre-norm decoder every supported architecture shares; what differs per architecture is a [`Variant`].
//!
//! A block is RMSNorm → grouped-query attention with RoPE → residual → RMSNorm → SwiGLU MLP → residual,
//! over a token embedding and under a final RMSNorm and output projection (tied to the embedding table when
//! the file has no `output.weight`). The architecture files ([`crate::llama`], [`crate::qwen2`],
//! [`crate::qwen3`]) say how their files differ: q/k/v biases, per-head q/k norms, the RoPE pairing and
//! Llama 3's frequency factors. Adding an architecture of this shape is a new file with a `Variant`, an
//! [`crate::Architecture`] arm and its `general.architecture` name.

use candle_core::{Device, Tensor};

use crate::attention::{attend_rope, LayerCtx};
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
        if !embedding_length.is_multiple_of(head_count) {
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
        if !head_dim.is_multiple_of(2) {
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
        if cfg.head_count_kv == 0 || !cfg.head_count.is_multiple_of(cfg.head_count_kv) {
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

/// How one architecture's files differ from the shared decoder.
#[derive(Debug, Clone)]
pub struct Variant {
    /// Which architecture this is.
    pub architecture: Architecture,
    /// The file's `general.architecture` (`llama`, `mistral`, `qwen2`, `qwen3`): the metadata key prefix.
    pub name: String,
    /// Which elements RoPE rotates together.
    pub rope: RopeStyle,
    /// Whether q, k and v carry biases (`attn_q.bias`, …).
    pub qkv_bias: bool,
    /// Whether each head's query and key are RMS-normalised before RoPE (`attn_q_norm`, `attn_k_norm`).
    pub qk_norm: bool,
    /// Whether `rope_freqs.weight`, when present, divides the RoPE frequencies (Llama 3).
    pub rope_freq_factors: bool,
}

/// Per-head q/k RMS norms, weights of length `head_dim`.
#[derive(Debug)]
struct QkNorm {
    q: RmsNorm,
    k: RmsNorm,
}

#[derive(Debug)]
struct Block {
    attn_norm: RmsNorm,
    attn_q: Linear,
    attn_k: Linear,
    attn_v: Linear,
    qk_norm: Option<QkNorm>,
    attn_output: Linear,
    ffn_norm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    fn load(gguf: &mut Gguf, cfg: &Config, variant: &Variant, i: usize) -> Result<Self, ModelError> {
        let p = format!("blk.{i}");
        let (h, q_dim, kv_dim) = (
            cfg.embedding_length,
            cfg.head_count * cfg.head_dim,
            cfg.head_count_kv * cfg.head_dim,
        );
        let (eps, bias) = (cfg.rms_norm_eps, variant.qkv_bias);
        let qk_norm = if variant.qk_norm {
            Some(QkNorm {
                q: RmsNorm::load(gguf, &format!("{p}.attn_q_norm"), cfg.head_dim, eps)?,
                k: RmsNorm::load(gguf, &format!("{p}.attn_k_norm"), cfg.head_dim, eps)?,
            })
        } else {
            None
        };
        Ok(Self {
            attn_norm: RmsNorm::load(gguf, &format!("{p}.attn_norm"), h, eps)?,
            attn_q: Linear::load(gguf, &format!("{p}.attn_q"), q_dim, h, bias)?,
            attn_k: Linear::load(gguf, &format!("{p}.attn_k"), kv_dim, h, bias)?,
            attn_v: Linear::load(gguf, &format!("{p}.attn_v"), kv_dim, h, bias)?,
            qk_norm,
            attn_output: Linear::load(gguf, &format!("{p}.attn_output"), h, q_dim, false)?,
            ffn_norm: RmsNorm::load(gguf, &format!("{p}.ffn_norm"), h, eps)?,
            mlp: Mlp::load(gguf, &p, h, cfg.feed_forward_length)?,
        })
    }

    /// `x`: `[tokens, hidden]` → `[tokens, hidden]`.
    fn forward(
        &self,
        x: &Tensor,
        head_dim: usize,
        step: &StepInputs,
        ctx: &LayerCtx<'_>,
        cache: &mut KvCache,
    ) -> Result<Tensor, ModelError> {
        let h = self.attn_norm.forward(x)?;
        let [q, k, v] = Linear::forward_many([&self.attn_q, &self.attn_k, &self.attn_v], &h, Some(&step.rows))?;
        let (q, k) = match &self.qk_norm {
            Some(norm) => (
                per_head_norm(&norm.q, &q, head_dim)?,
                per_head_norm(&norm.k, &k, head_dim)?,
            ),
            None => (q, k),
        };
        let attn = attend_rope(&q, &k, &v, ctx, cache)?;
        let x = (x + self.attn_output.forward_rows(&attn, Some(&step.rows))?)?;
        let h = self.ffn_norm.forward(&x)?;
        Ok((&x + self.mlp.forward(&h, &step.rows)?)?)
    }
}

/// Normalise each head of `x` (`[tokens, heads * head_dim]`) on its own.
fn per_head_norm(norm: &RmsNorm, x: &Tensor, head_dim: usize) -> candle_core::Result<Tensor> {
    let (tokens, width) = x.dims2()?;
    norm.forward(&x.reshape((tokens * width / head_dim, head_dim))?)?
        .reshape((tokens, width))
}

/// A loaded decoder-only model of any supported architecture.
#[derive(Debug)]
pub struct Decoder {
    cfg: Config,
    spec: ModelSpec,
    embedding: Embedding,
    blocks: Vec<Block>,
    output_norm: RmsNorm,
    output: Linear,
    rotary: Rotary,
    device: Device,
}

impl Decoder {
    /// Load all weights from `gguf`, as `variant` says its files are laid out.
    pub fn load(gguf: &mut Gguf, variant: Variant) -> Result<Self, ModelError> {
        let cfg = Config::from_gguf(gguf, &variant.name)?;
        let (vocab, hidden) = embedding_shape(gguf)?;
        if hidden != cfg.embedding_length {
            return Err(ModelError::Shape {
                name: "token_embd.weight".into(),
                expected: vec![vocab, cfg.embedding_length],
                actual: vec![vocab, hidden],
            });
        }
        let freq_factors = if variant.rope_freq_factors && gguf.has_tensor("rope_freqs.weight") {
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
            variant.rope,
            freq_factors.as_deref(),
            gguf.device(),
        )?;
        let mut embedding = Embedding::load(gguf, vocab, hidden)?;
        let blocks = (0..cfg.block_count)
            .map(|i| Block::load(gguf, &cfg, &variant, i))
            .collect::<Result<Vec<_>, _>>()?;
        let output_norm = RmsNorm::load(gguf, "output_norm", hidden, cfg.rms_norm_eps)?;
        let output = output_projection(gguf, &mut embedding, vocab, hidden)?;
        let spec = ModelSpec {
            architecture: variant.architecture,
            architecture_name: variant.name,
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

impl CausalLm for Decoder {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn forward(&self, batch: &Batch<'_>, cache: &mut KvCache) -> Result<Tensor, ModelError> {
        let _enter =
            tracing::trace_span!("decoder", arch = %self.spec.architecture_name, tokens = batch.tokens.len()).entered();
        let step = StepInputs::new(batch, &self.rotary, cache, &self.device)?;
        let mut x = self.embedding.forward(&step.ids)?;
        for (layer, block) in self.blocks.iter().enumerate() {
            let ctx = LayerCtx {
                rotary: &self.rotary,
                cos: &step.cos,
                sin: &step.sin,
                batch,
                layer,
                num_heads: self.cfg.head_count,
            };
            x = block.forward(&x, self.cfg.head_dim, &step, &ctx, cache)?;
        }
        Ok(logits(&x, &step.logit_rows, &self.output_norm, &self.output)?)
    }
}
