//! [`synth`]: 7B-shaped GGUF files with random but valid weights, for speed measurements without a real 7B.
//!
//! The tensors have exactly the real models' shapes and the types the Q4_K_M (or other) recipe gives them.
//! Quantized blocks are generated directly — random quants, small positive f16 scales — rather than
//! quantizing random floats, so a 7B file takes as long as writing 4–5 GB. The tokenizer (`tokenizer.*`
//! keys) is copied from a real GGUF of the same family; its token list is padded with `[PAD{id}]` tokens up
//! to the preset's vocabulary, as llama.cpp's converter pads Qwen's.

use std::path::PathBuf;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use models::Architecture;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use rayon::prelude::*;

use crate::gguf_reader::GgufFile;
use crate::gguf_writer::{GgufWriter, TensorInfo};
use crate::hparams::Hyperparams;
use crate::recipe::{QuantType, Recipe};
use crate::{progress, QuantizeError};

/// Preset names accepted by [`synth`].
pub const PRESETS: &[&str] = &["qwen2.5-7b", "llama2-7b", "mistral-7b", "tiny"];

/// The hyperparameters of a preset; `tiny` (2 layers, hidden 256, for tests) takes the tokenizer's vocabulary.
pub fn preset(name: &str, tokenizer_vocab: usize) -> Result<Hyperparams, QuantizeError> {
    let llama = |block_count, ff, kv, ctx, theta, vocab| Hyperparams {
        architecture: Architecture::Llama,
        block_count,
        embedding_length: 4096,
        feed_forward_length: ff,
        head_count: 32,
        head_count_kv: kv,
        head_dim: 128,
        context_length: ctx,
        rms_norm_eps: 1e-5,
        rope_theta: theta,
        vocab_size: vocab,
        tied_embeddings: false,
    };
    Ok(match name {
        "qwen2.5-7b" => Hyperparams {
            architecture: Architecture::Qwen2,
            block_count: 28,
            embedding_length: 3584,
            feed_forward_length: 18944,
            head_count: 28,
            head_count_kv: 4,
            head_dim: 128,
            context_length: 32768,
            rms_norm_eps: 1e-6,
            rope_theta: 1_000_000.0,
            vocab_size: 152_064,
            tied_embeddings: false,
        },
        "llama2-7b" => llama(32, 11008, 32, 4096, 10_000.0, 32_000),
        // Mistral 7B v0.2: grouped-query attention, 32k context.
        "mistral-7b" => llama(32, 14336, 8, 32768, 1_000_000.0, 32_000),
        "tiny" => Hyperparams {
            architecture: Architecture::Llama,
            block_count: 2,
            embedding_length: 256,
            feed_forward_length: 512,
            head_count: 4,
            head_count_kv: 2,
            head_dim: 64,
            context_length: 2048,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            vocab_size: tokenizer_vocab,
            tied_embeddings: true,
        },
        other => {
            return Err(QuantizeError::InvalidArgument(format!(
                "unknown preset `{other}` (known: {})",
                PRESETS.join(", ")
            )))
        }
    })
}

/// What to synthesize.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    /// One of [`PRESETS`].
    pub preset: String,
    /// Recipe for the tensor types.
    pub quant: QuantType,
    /// The GGUF file to write.
    pub output: PathBuf,
    /// The GGUF whose `tokenizer.*` keys are copied.
    pub tokenizer_from: PathBuf,
    /// Seed of the weights: the same seed gives the same file.
    pub seed: u64,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// Bytes generated per chunk.
const CHUNK_BYTES: usize = 32 << 20;

/// Write the synthetic model; returns the file size.
pub fn synth(config: &SynthConfig) -> Result<u64, QuantizeError> {
    let source = GgufFile::open(&config.tokenizer_from)?;
    let tokens = match source.metadata().get("tokenizer.ggml.tokens") {
        Some(Value::Array(t)) => t.len(),
        _ => {
            return Err(QuantizeError::MissingKey {
                path: config.tokenizer_from.clone(),
                key: "tokenizer.ggml.tokens".into(),
            })
        }
    };
    let hp = preset(&config.preset, tokens)?;
    if tokens > hp.vocab_size {
        return Err(QuantizeError::Tokenizer {
            path: config.tokenizer_from.clone(),
            reason: format!(
                "{tokens} tokens do not fit preset `{}` with {} embedding rows; take the tokenizer from a GGUF of the same family",
                config.preset, hp.vocab_size
            ),
        });
    }
    let mut metadata = vec![
        ("general.architecture".to_string(), Value::String(hp.gguf_arch().into())),
        (
            "general.name".to_string(),
            Value::String(format!("synthetic {}", config.preset)),
        ),
        ("general.file_type".to_string(), Value::U32(config.quant.file_type())),
        ("general.quantization_version".to_string(), Value::U32(2)),
    ];
    metadata.extend(hp.gguf_metadata());
    let mut keys: Vec<&String> = source
        .metadata()
        .keys()
        .filter(|k| k.starts_with("tokenizer."))
        .collect();
    keys.sort();
    for key in keys {
        let mut value = source.metadata()[key].clone();
        if let Value::Array(items) = &mut value {
            if items.len() == tokens {
                let first = items.first().cloned();
                for i in tokens..hp.vocab_size {
                    items.push(match (key.as_str(), &first) {
                        ("tokenizer.ggml.tokens", _) => Value::String(format!("[PAD{i}]")),
                        ("tokenizer.ggml.token_type", _) => Value::I32(4),
                        (_, Some(Value::F32(_))) => Value::F32(0.0),
                        (_, Some(other)) => other.clone(),
                        (_, None) => Value::I32(0),
                    });
                }
            }
        }
        metadata.push((key.clone(), value));
    }

    let recipe = Recipe {
        quant: config.quant,
        n_layers: hp.block_count,
        tied_embeddings: hp.tied_embeddings,
    };
    let plan: Vec<TensorInfo> = hp
        .tensors()
        .into_iter()
        .map(|(name, shape)| TensorInfo {
            dtype: recipe.tensor_type(&name, &shape),
            name,
            shape,
        })
        .collect();
    let total: u64 = plan.iter().map(TensorInfo::size_in_bytes).sum();
    let bar = progress::bar(total, config.progress);
    let mut writer = GgufWriter::create(&config.output, &metadata, plan.clone())?;
    for (index, info) in plan.iter().enumerate() {
        bar.set_message(info.name.clone());
        let row_bytes = info.row_bytes();
        let rows = info.size_in_bytes() as usize / row_bytes;
        let step = (CHUNK_BYTES / row_bytes).max(1);
        let ranges: Vec<(usize, usize)> = (0..rows).step_by(step).map(|s| (s, (s + step).min(rows))).collect();
        for batch in ranges.chunks(rayon::current_num_threads().max(1)) {
            let chunks: Vec<Vec<u8>> = batch
                .par_iter()
                .map(|&(start, end)| {
                    let seed = config.seed ^ ((index as u64) << 40) ^ start as u64;
                    random_rows(info, (end - start) * row_bytes, StdRng::seed_from_u64(seed))
                })
                .collect();
            for c in chunks {
                writer.write_data(&info.name, &c)?;
                bar.inc(c.len() as u64);
            }
        }
    }
    writer.finish()?;
    bar.finish_and_clear();
    let bytes = std::fs::metadata(&config.output)
        .map_err(QuantizeError::io(&config.output))?
        .len();
    tracing::info!(preset = %config.preset, output = %config.output.display(), bytes, "synthesized");
    Ok(bytes)
}

/// `len` bytes of valid data of `info`'s type: random quants with small finite scales.
fn random_rows(info: &TensorInfo, len: usize, mut rng: StdRng) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let f16 = |x: f32| half::f16::from_f32(x).to_le_bytes();
    match info.dtype {
        GgmlDType::F32 => {
            let norm = info.name.contains("_norm");
            for c in out.chunks_exact_mut(4) {
                let x = if norm { 1.0 } else { rng.random_range(-0.02f32..0.02) };
                c.copy_from_slice(&x.to_le_bytes());
            }
        }
        GgmlDType::F16 => {
            for c in out.chunks_exact_mut(2) {
                c.copy_from_slice(&f16(rng.random_range(-0.02f32..0.02)));
            }
        }
        dtype => {
            rng.fill_bytes(&mut out);
            // Byte offsets of the f16 scale fields in each block (ggml's block layouts).
            let scales: &[usize] = match dtype {
                GgmlDType::Q4_0 | GgmlDType::Q5_0 | GgmlDType::Q8_0 => &[0],
                GgmlDType::Q4_1 | GgmlDType::Q5_1 | GgmlDType::Q4K | GgmlDType::Q5K => &[0, 2],
                GgmlDType::Q2K => &[80, 82],
                GgmlDType::Q3K => &[108],
                GgmlDType::Q6K => &[208],
                _ => &[],
            };
            // Weights of roughly ±0.02: the scale times a quant of up to ~32 and a 6-bit sub-scale.
            let magnitude = match dtype {
                GgmlDType::Q8_0 => 2e-4,
                GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 => 2e-3,
                _ => 1e-4,
            };
            for block in out.chunks_exact_mut(dtype.type_size()) {
                for &at in scales {
                    block[at..at + 2].copy_from_slice(&f16(magnitude * rng.random_range(0.5f32..1.5)));
                }
            }
        }
    }
    out
}
