//! [`perplexity`]: a model's perplexity on a text, computed as llama.cpp's `llama-perplexity` does so the
//! numbers compare.
//!
//! The text is tokenized once (with BOS when the model adds one) and cut into chunks of `ctx` tokens; each
//! chunk is a fresh prefill whose first token is replaced by BOS (when the model adds one). Only the second
//! half of each chunk is scored: the logits at positions `ctx/2 .. ctx-1` predict the tokens after them, so
//! every scored token sees at least `ctx/2` tokens of context. Perplexity is `exp(mean negative log-likelihood)`
//! over all scored tokens, with log-softmax in f32 and sums in f64 as llama.cpp computes them.

use std::path::PathBuf;

use candle_core::Device;
use models::{Batch, KvCache, SeqInput};

use crate::EngineError;

/// KV positions per block; any multiple of 32 gives the same numbers.
const BLOCK_SIZE: usize = 32;

/// What to measure.
#[derive(Debug, Clone)]
pub struct PerplexityConfig {
    /// The GGUF model.
    pub model: PathBuf,
    /// Tokens per chunk (llama-perplexity's `--ctx-size`, default 512).
    pub ctx: usize,
    /// Score at most this many chunks (`--chunks`); all whole chunks when `None`.
    pub max_chunks: Option<usize>,
}

/// The result.
#[derive(Debug, Clone, PartialEq)]
pub struct PerplexityReport {
    /// Tokens in the whole text.
    pub text_tokens: usize,
    /// Chunks scored.
    pub chunks: usize,
    /// Tokens scored (`chunks × (ctx - 1 - ctx/2)`).
    pub scored_tokens: usize,
    /// Final perplexity.
    pub perplexity: f64,
    /// Its standard error, as llama.cpp prints after `+/-`.
    pub std_error: f64,
}

/// Measure the perplexity of `config.model` on `text`; `on_chunk(i, running_ppl)` is called after each chunk.
pub fn perplexity(
    config: &PerplexityConfig,
    text: &str,
    mut on_chunk: impl FnMut(usize, f64),
) -> Result<PerplexityReport, EngineError> {
    let path = &config.model;
    let model_err = |e: models::ModelError| EngineError::Model(e.to_string());
    let ctx = config.ctx;
    if ctx < 4 {
        return Err(EngineError::InvalidParameter {
            name: "ctx",
            value: ctx.to_string(),
            expected: "at least 4",
        });
    }
    let (tokenizer, model) = crate::handle::load_checked(path, &Device::Cpu, ctx)?;
    if ctx > model.spec().context_length {
        return Err(EngineError::ContextTooLong {
            prompt_tokens: ctx,
            context_length: model.spec().context_length,
        });
    }
    let tokens = tokenizer.encode(text, true)?;
    if tokens.len() < 2 * ctx {
        return Err(EngineError::InvalidParameter {
            name: "text",
            value: format!("{} tokens", tokens.len()),
            expected: "at least 2 × ctx tokens (llama-perplexity's rule)",
        });
    }
    let n_chunks = (tokens.len() / ctx).min(config.max_chunks.unwrap_or(usize::MAX));
    let num_blocks = ctx.div_ceil(BLOCK_SIZE);
    let mut cache = KvCache::new(model.spec().kv_layout(), num_blocks, BLOCK_SIZE).map_err(model_err)?;
    let block_table: Vec<u32> = (0..num_blocks as u32).collect();
    let bos = tokenizer.adds_bos().then(|| tokenizer.bos_token_id()).flatten();
    let first = ctx / 2;
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    for chunk in 0..n_chunks {
        let mut input = tokens[chunk * ctx..(chunk + 1) * ctx].to_vec();
        if let Some(bos) = bos {
            input[0] = bos;
        }
        let seqs = [SeqInput {
            num_computed: 0,
            num_new: ctx,
            block_table: &block_table,
            prompt_len: ctx,
            want_logits: true,
            all_logits: true,
        }];
        let logits = model
            .forward(
                &Batch {
                    tokens: &input,
                    seqs: &seqs,
                },
                &mut cache,
            )
            .map_err(model_err)?;
        let logits = logits.to_vec2::<f32>().map_err(|e| EngineError::Model(e.to_string()))?;
        for j in first..ctx - 1 {
            let target = tokens[chunk * ctx + j + 1] as usize;
            let row = &logits[j];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum_exp: f64 = row.iter().map(|&l| ((l - max).exp()) as f64).sum();
            let v = -((row[target] - max) as f64 - sum_exp.ln());
            nll += v;
            nll2 += v * v;
            count += 1;
        }
        on_chunk(chunk, (nll / count as f64).exp());
    }
    let mean = nll / count as f64;
    let var = nll2 / count as f64 - mean * mean;
    let ppl = mean.exp();
    let std_error = if var > 0.0 && count > 1 {
        (var / (count - 1) as f64).sqrt() * ppl
    } else {
        0.0
    };
    Ok(PerplexityReport {
        text_tokens: tokens.len(),
        chunks: n_chunks,
        scored_tokens: count,
        perplexity: ppl,
        std_error,
    })
}
