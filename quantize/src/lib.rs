//! Model files in and out of GGUF: quantization, export and synthetic models.
//!
//! - [`quantize()`]: a Hugging Face checkpoint directory (config.json, safetensors shards in f16/bf16/f32,
//!   tokenizer.json, tokenizer_config.json) or a GGUF file → a GGUF file in Q4_K_M, Q4_0, Q8_0 or F16, with
//!   the metadata, tensor names and llama Q/K permutation llama.cpp's `convert_hf_to_gguf.py` produces and the
//!   per-tensor types of llama.cpp's `llama-quantize` ([`Recipe`]). Tensors stream through
//!   [`GgufWriter`] a chunk of rows at a time, so memory stays far below the model's size.
//! - [`export()`]: the inverse — a GGUF file → an f16 safetensors checkpoint with config and tokenizer.
//! - [`synth()`]: 7B-shaped files with random valid weights for benchmarks.
//!
//! The families are those `models` runs: Llama (incl. Mistral, SmolLM), Qwen2 and Qwen3. This crate names
//! tensors with llama.cpp's GGUF names and depends on `models` only for [`models::Architecture`].
// Unsafe only where a file is memory-mapped (`safetensors_reader.rs`), each site allowed and explained.
#![deny(unsafe_code)]

mod checkpoint;
mod convert;
mod error;
mod export;
mod gguf_reader;
mod gguf_writer;
mod hparams;
mod progress;
mod recipe;
mod safetensors_reader;
mod synth;
mod vocab;

pub use checkpoint::{hyperparams_from_config, Checkpoint};
pub use convert::{is_gguf, quantize, QuantizeConfig, QuantizeReport};
pub use error::QuantizeError;
pub use export::{export, ExportConfig, ExportReport};
pub use gguf_reader::GgufFile;
pub use gguf_writer::{GgufWriter, TensorInfo};
pub use hparams::Hyperparams;
pub use recipe::{use_more_bits, QuantType, Recipe};
pub use safetensors_reader::ShardSet;
pub use synth::{preset, synth, SynthConfig, PRESETS};
