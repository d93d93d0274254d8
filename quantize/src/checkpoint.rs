//! [`Checkpoint`]: a Hugging Face model directory — `config.json`, `*.safetensors` (sharded or not),
//! `tokenizer.json`, `tokenizer_config.json` — read as GGUF tensors and metadata.

use std::path::{Path, PathBuf};

use models::Architecture;
use serde_json::{json, Value as Json};

use crate::hparams::{hf_name, permute_rows, Hyperparams};
use crate::safetensors_reader::ShardSet;
use crate::QuantizeError;

/// `architectures[0]` values we convert, and the family each maps to.
const SUPPORTED: &[(&str, Architecture)] = &[
    ("LlamaForCausalLM", Architecture::Llama),
    ("MistralForCausalLM", Architecture::Llama),
    ("Qwen2ForCausalLM", Architecture::Qwen2),
    ("Qwen3ForCausalLM", Architecture::Qwen3),
];

/// Read and parse a JSON file, naming it in errors.
pub(crate) fn read_json(path: &Path) -> Result<Json, QuantizeError> {
    let text = std::fs::read_to_string(path).map_err(QuantizeError::io(path))?;
    serde_json::from_str(&text).map_err(|source| QuantizeError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Typed getters on one JSON object whose errors name the file and key.
pub(crate) struct JsonFile<'a> {
    pub path: &'a Path,
    pub json: &'a Json,
}

impl JsonFile<'_> {
    fn get(&self, key: &str) -> Result<&Json, QuantizeError> {
        match self.json.get(key) {
            Some(Json::Null) | None => Err(QuantizeError::MissingKey {
                path: self.path.to_path_buf(),
                key: key.into(),
            }),
            Some(v) => Ok(v),
        }
    }

    fn invalid(&self, key: &str, reason: impl Into<String>) -> QuantizeError {
        QuantizeError::InvalidKey {
            path: self.path.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    pub fn usize(&self, key: &str) -> Result<usize, QuantizeError> {
        let v = self.get(key)?;
        v.as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| self.invalid(key, format!("expected a non-negative integer, found {v}")))
    }

    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize, QuantizeError> {
        if self.json.get(key).is_none_or(Json::is_null) {
            Ok(default)
        } else {
            self.usize(key)
        }
    }

    pub fn f32_or(&self, key: &str, default: Option<f32>) -> Result<f32, QuantizeError> {
        match (self.json.get(key), default) {
            (None | Some(Json::Null), Some(d)) => Ok(d),
            _ => {
                let v = self.get(key)?;
                v.as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| self.invalid(key, format!("expected a number, found {v}")))
            }
        }
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, QuantizeError> {
        match self.json.get(key) {
            None | Some(Json::Null) => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.invalid(key, format!("expected true or false, found {v}"))),
        }
    }
}

/// Parse `config.json` into hyperparameters; the vocabulary size is the embedding rows.
pub fn hyperparams_from_config(path: &Path) -> Result<Hyperparams, QuantizeError> {
    let json = read_json(path)?;
    let cfg = JsonFile { path, json: &json };
    let arch_name = cfg
        .get("architectures")?
        .get(0)
        .and_then(Json::as_str)
        .ok_or_else(|| cfg.invalid("architectures", "expected a list of class names"))?;
    let architecture = SUPPORTED
        .iter()
        .find(|(n, _)| *n == arch_name)
        .map(|(_, a)| *a)
        .ok_or_else(|| QuantizeError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            architecture: arch_name.to_string(),
            supported: SUPPORTED.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
        })?;
    if json.get("rope_scaling").is_some_and(|v| !v.is_null()) {
        return Err(cfg.invalid("rope_scaling", "scaled RoPE (Llama 3.1, YaRN) is not supported yet"));
    }
    let embedding_length = cfg.usize("hidden_size")?;
    let head_count = cfg.usize("num_attention_heads")?;
    if head_count == 0 || embedding_length % head_count != 0 {
        return Err(cfg.invalid(
            "num_attention_heads",
            format!("{head_count} heads do not divide hidden_size {embedding_length}"),
        ));
    }
    let head_count_kv = cfg.usize_or("num_key_value_heads", head_count)?;
    if head_count_kv == 0 || head_count % head_count_kv != 0 {
        return Err(cfg.invalid(
            "num_key_value_heads",
            format!("{head_count_kv} KV heads do not divide {head_count} query heads"),
        ));
    }
    Ok(Hyperparams {
        architecture,
        block_count: cfg.usize("num_hidden_layers")?,
        embedding_length,
        feed_forward_length: cfg.usize("intermediate_size")?,
        head_count,
        head_count_kv,
        head_dim: cfg.usize_or("head_dim", embedding_length / head_count)?,
        context_length: cfg.usize("max_position_embeddings")?,
        rms_norm_eps: cfg.f32_or("rms_norm_eps", None)?,
        // Llama 2's default; every other family writes the key.
        rope_theta: cfg.f32_or("rope_theta", Some(10_000.0))?,
        vocab_size: cfg.usize("vocab_size")?,
        tied_embeddings: cfg.bool_or("tie_word_embeddings", false)?,
    })
}

/// The `config.json` describing `hp`, as `transformers` writes it for these families.
pub fn config_json(hp: &Hyperparams, bos: Option<u32>, eos: Option<u32>) -> Json {
    let (class, model_type) = match hp.architecture {
        Architecture::Llama => ("LlamaForCausalLM", "llama"),
        Architecture::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
        Architecture::Qwen3 => ("Qwen3ForCausalLM", "qwen3"),
    };
    json!({
        "architectures": [class],
        "model_type": model_type,
        "hidden_act": "silu",
        "hidden_size": hp.embedding_length,
        "intermediate_size": hp.feed_forward_length,
        "num_hidden_layers": hp.block_count,
        "num_attention_heads": hp.head_count,
        "num_key_value_heads": hp.head_count_kv,
        "head_dim": hp.head_dim,
        "max_position_embeddings": hp.context_length,
        "rms_norm_eps": short_float(hp.rms_norm_eps),
        "rope_theta": short_float(hp.rope_theta),
        "vocab_size": hp.vocab_size,
        "tie_word_embeddings": hp.tied_embeddings,
        "attention_bias": hp.architecture == Architecture::Qwen2,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float16",
    })
}

/// An f32 as the shortest decimal that reads back as it (`1e-5`, not `9.999999747378752e-6`).
fn short_float(x: f32) -> Json {
    x.to_string().parse::<f64>().map(Json::from).unwrap_or(Json::Null)
}

/// One GGUF tensor and where its data comes from in the checkpoint.
#[derive(Debug, Clone)]
struct Mapped {
    gguf: String,
    hf: String,
    shape: Vec<usize>,
    /// Heads for the llama Q/K permutation.
    permute_heads: Option<usize>,
}

/// An open Hugging Face checkpoint, validated against its config: every tensor the architecture needs is
/// present with the right shape and a readable dtype.
pub struct Checkpoint {
    dir: PathBuf,
    hparams: Hyperparams,
    shards: ShardSet,
    tensors: Vec<Mapped>,
}

impl Checkpoint {
    /// Open `dir` and check its tensors against `config.json`.
    pub fn open(dir: &Path) -> Result<Self, QuantizeError> {
        let hparams = hyperparams_from_config(&dir.join("config.json"))?;
        let shards = ShardSet::open_dir(dir)?;
        let mut tensors = Vec::new();
        for (gguf, shape) in hparams.tensors() {
            let hf = hf_name(&gguf).expect("every planned tensor has a Hugging Face name");
            if !shards.contains(&hf) {
                return Err(QuantizeError::MissingTensor {
                    path: dir.to_path_buf(),
                    tensor: hf,
                });
            }
            let actual = shards.shape(&hf)?;
            if actual != shape.as_slice() {
                return Err(QuantizeError::Shape {
                    path: shards.path_of(&hf).to_path_buf(),
                    tensor: hf,
                    expected: shape,
                    actual: actual.to_vec(),
                });
            }
            shards.check_dtype(&hf)?;
            tensors.push(Mapped {
                permute_heads: hparams.permutation(&gguf),
                gguf,
                hf,
                shape,
            });
        }
        for name in shards.names() {
            let known = tensors.iter().any(|m| m.hf == name)
                || name.ends_with(".rotary_emb.inv_freq")
                // Tied checkpoints sometimes carry a copy of the embeddings; llama.cpp drops it too.
                || (hparams.tied_embeddings && name == "lm_head.weight");
            if !known {
                return Err(QuantizeError::UnexpectedTensor {
                    path: shards.path_of(name).to_path_buf(),
                    tensor: name.to_string(),
                    architecture: hparams.gguf_arch().to_string(),
                });
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            hparams,
            shards,
            tensors,
        })
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The model's hyperparameters.
    pub fn hparams(&self) -> &Hyperparams {
        &self.hparams
    }

    /// GGUF names and shapes, in file order.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        self.tensors.iter().map(|m| (m.gguf.clone(), m.shape.clone())).collect()
    }

    /// Rows must be read in multiples of this for tensor `gguf` (whole heads where rows are permuted).
    pub fn row_group(&self, gguf: &str) -> usize {
        self.mapped(gguf).map_or(1, |m| {
            if m.permute_heads.is_some() {
                self.hparams.head_dim
            } else {
                1
            }
        })
    }

    fn mapped(&self, gguf: &str) -> Option<&Mapped> {
        self.tensors.iter().find(|m| m.gguf == gguf)
    }

    /// Rows `rows` of GGUF tensor `gguf` as f32, permuted as llama.cpp's converter does.
    pub fn read_rows(&self, gguf: &str, rows: std::ops::Range<usize>) -> Result<Vec<f32>, QuantizeError> {
        let m = self.mapped(gguf).ok_or_else(|| QuantizeError::MissingTensor {
            path: self.dir.clone(),
            tensor: gguf.into(),
        })?;
        let data = self.shards.read_rows(&m.hf, rows.clone())?;
        Ok(match m.permute_heads {
            Some(_) => {
                let hd = self.hparams.head_dim;
                permute_rows(&data, rows.len() / hd, hd, m.shape[1])
            }
            None => data,
        })
    }
}
