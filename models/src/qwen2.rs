//! Qwen2 and Qwen2.5, and DeepSeek-R1-Distill-Qwen (GGUF `general.architecture` = `qwen2`).
//!
//! The Llama block with two differences, as llama.cpp runs these files:
//! - q, k and v projections carry biases (`attn_q.bias`, `attn_k.bias`, `attn_v.bias`);
//! - RoPE is the NEOX kind: pairs `(i, i + d/2)`.
//! `rope.freq_base` is always present in Qwen2 files (1 000 000 for 2.5); absent, llama.cpp's default 10 000
//! applies. Small Qwen models tie the output projection to the embedding table (no `output.weight`).

use candle_core::{Device, Tensor};

use crate::attention::attend_rope;
use crate::nn::{
    embedding_shape, logits, output_projection, Embedding, Linear, Mlp, RmsNorm, RopeStyle, Rotary, StepInputs,
};
use crate::{Architecture, Batch, CausalLm, Gguf, KvCache, ModelError, ModelSpec};

pub use crate::llama::Config;

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
            attn_q: Linear::load(gguf, &format!("{p}.attn_q"), q_dim, h, true)?,
            attn_k: Linear::load(gguf, &format!("{p}.attn_k"), kv_dim, h, true)?,
            attn_v: Linear::load(gguf, &format!("{p}.attn_v"), kv_dim, h, true)?,
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

/// A loaded Qwen2 model.
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
        let cfg = Config::from_gguf(gguf, "qwen2")?;
        let (vocab, hidden) = embedding_shape(gguf)?;
        if hidden != cfg.embedding_length {
            return Err(ModelError::Shape {
                name: "token_embd.weight".into(),
                expected: vec![vocab, cfg.embedding_length],
                actual: vec![vocab, hidden],
            });
        }
        let rotary = Rotary::new(
            cfg.head_dim,
            cfg.rope_freq_base,
            gguf.rope_positions(cfg.context_length),
            RopeStyle::Neox,
            None,
            gguf.device(),
        )?;
        let mut embedding = Embedding::load(gguf, vocab, hidden)?;
        let blocks = (0..cfg.block_count)
            .map(|i| Block::load(gguf, &cfg, i))
            .collect::<Result<Vec<_>, _>>()?;
        let output_norm = RmsNorm::load(gguf, "output_norm", hidden, cfg.rms_norm_eps)?;
        let output = output_projection(gguf, &mut embedding, vocab, hidden)?;
        let spec = ModelSpec {
            architecture: Architecture::Qwen2,
            architecture_name: "qwen2".into(),
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
        let _enter = tracing::trace_span!("qwen2", tokens = batch.tokens.len()).entered();
        let step = StepInputs::new(batch, &self.rotary, cache, &self.device)?;
        let mut x = self.embedding.forward(&step.ids)?;
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, self, &step, cache, i, batch)?;
        }
        Ok(logits(&x, &step.logit_rows, &self.output_norm, &self.output)?)
    }
}
