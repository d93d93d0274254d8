//! The tokenizer both ways: Hugging Face `tokenizer.json` + `tokenizer_config.json` ↔ GGUF `tokenizer.*` keys.
//!
//! Only byte-level BPE tokenizers (`tokenizer.ggml.model = "gpt2"`: Qwen, SmolLM, Llama 3) are converted.
//! GGUF stores them as a token list, token types and merges; llama.cpp identifies the pre-tokenizer (how text
//! is split before BPE) by name in `tokenizer.ggml.pre`. [`PRE_TOKENIZERS`] is the table between those
//! names and the `pre_tokenizer` section Hugging Face writes for the same split.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde_json::{json, Value as Json};

use crate::QuantizeError;

/// GGUF token types (llama.cpp `enum llama_token_type`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A pre-tokenizer llama.cpp knows by name and its Hugging Face description.
struct PreTokenizer {
    gguf: &'static str,
    hf: fn() -> Json,
    normalizer: fn() -> Json,
    ignore_merges: bool,
}

fn split_then_bytes(regex: &str) -> Json {
    json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}
    ]})
}

/// The pre-tokenizers we convert, matched structurally on import.
const PRE_TOKENIZERS: &[PreTokenizer] = &[
    PreTokenizer {
        gguf: "qwen2",
        hf: || split_then_bytes(QWEN2_REGEX),
        normalizer: || json!({"type": "NFC"}),
        ignore_merges: false,
    },
    PreTokenizer {
        gguf: "llama-bpe",
        hf: || split_then_bytes(LLAMA3_REGEX),
        normalizer: || Json::Null,
        ignore_merges: true,
    },
    PreTokenizer {
        gguf: "smollm",
        hf: || {
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
            ]})
        },
        normalizer: || Json::Null,
        ignore_merges: false,
    },
    PreTokenizer {
        gguf: "gpt-2",
        hf: || json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
        normalizer: || Json::Null,
        ignore_merges: false,
    },
];

/// The structural fingerprint of a pre-tokenizer: its type names, regexes and digit/regex flags, ignoring
/// the offset options that do not change the split.
fn fingerprint(pre: &Json) -> String {
    match pre.get("type").and_then(Json::as_str) {
        Some("Sequence") => {
            let parts: Vec<String> = pre
                .get("pretokenizers")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
                .map(fingerprint)
                .collect();
            parts.join("+")
        }
        Some("Split") => format!(
            "Split({})",
            pre.pointer("/pattern/Regex").and_then(Json::as_str).unwrap_or("?")
        ),
        Some("Digits") => format!(
            "Digits({})",
            pre.get("individual_digits").and_then(Json::as_bool).unwrap_or(false)
        ),
        Some("ByteLevel") => format!(
            "ByteLevel({})",
            pre.get("use_regex").and_then(Json::as_bool).unwrap_or(true)
        ),
        Some(other) => other.to_string(),
        None => "none".to_string(),
    }
}

/// What llama.cpp's converter treats as a control token even when `special` is false.
fn looks_special(token: &str) -> bool {
    (token.starts_with("<|") && token.ends_with("|>")) || matches!(token, "<pad>" | "<mask>" | "<s>" | "</s>" | "<unk>")
}

/// The id of a special token named in `tokenizer_config.json` (a string, or an object with `content`).
fn named_token(cfg: &Json, key: &str, ids: &HashMap<&str, u32>) -> Option<u32> {
    let v = cfg.get(key)?;
    let name = v.as_str().or_else(|| v.get("content").and_then(Json::as_str))?;
    ids.get(name).copied()
}

/// The GGUF `tokenizer.*` keys for the checkpoint in `dir`, with the token list padded to `vocab_rows`
/// (the embedding rows) by `[PAD{id}]` tokens, as llama.cpp's converter does.
pub fn gguf_from_hf(dir: &Path, vocab_rows: usize) -> Result<Vec<(String, Value)>, QuantizeError> {
    let tok_path = dir.join("tokenizer.json");
    let tok = crate::checkpoint::read_json(&tok_path)?;
    let err = |reason: String| QuantizeError::Tokenizer {
        path: tok_path.clone(),
        reason,
    };
    let model = tok.get("model").ok_or_else(|| QuantizeError::MissingKey {
        path: tok_path.clone(),
        key: "model".into(),
    })?;
    if model.get("type").and_then(Json::as_str) != Some("BPE")
        || model.get("byte_fallback").and_then(Json::as_bool) == Some(true)
    {
        return Err(err(
            "only byte-level BPE tokenizers are supported (SentencePiece-style and WordPiece are not yet)".into(),
        ));
    }
    let pre_json = tok.get("pre_tokenizer").cloned().unwrap_or(Json::Null);
    let print = fingerprint(&pre_json);
    let pre = PRE_TOKENIZERS
        .iter()
        .find(|p| fingerprint(&(p.hf)()) == print)
        .ok_or_else(|| {
            err(format!(
                "unrecognized `pre_tokenizer` ({print}); supported: {}",
                PRE_TOKENIZERS.iter().map(|p| p.gguf).collect::<Vec<_>>().join(", ")
            ))
        })?;

    let mut tokens: Vec<Option<(String, i32)>> = Vec::new();
    let mut put = |id: usize, text: &str, kind: i32| {
        if tokens.len() <= id {
            tokens.resize(id + 1, None);
        }
        tokens[id] = Some((text.to_string(), kind));
    };
    let vocab = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| err("`model.vocab` is not an object".into()))?;
    for (text, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| err(format!("`model.vocab`[{text:?}] is not an id")))?;
        put(id as usize, text, NORMAL);
    }
    for added in tok.get("added_tokens").and_then(Json::as_array).into_iter().flatten() {
        let id = added
            .get("id")
            .and_then(Json::as_u64)
            .ok_or_else(|| err("an `added_tokens` entry has no `id`".into()))?;
        let text = added
            .get("content")
            .and_then(Json::as_str)
            .ok_or_else(|| err(format!("added token {id} has no `content`")))?;
        let special = added.get("special").and_then(Json::as_bool).unwrap_or(false);
        put(
            id as usize,
            text,
            if special || looks_special(text) {
                CONTROL
            } else {
                USER_DEFINED
            },
        );
    }
    if tokens.len() > vocab_rows {
        return Err(err(format!(
            "{} tokens do not fit the {vocab_rows} embedding rows of config.json `vocab_size`",
            tokens.len()
        )));
    }
    let tokens: Vec<(String, i32)> = (0..vocab_rows)
        .map(|i| {
            tokens
                .get(i)
                .cloned()
                .flatten()
                .unwrap_or_else(|| (format!("[PAD{i}]"), USER_DEFINED))
        })
        .collect();
    let ids: HashMap<&str, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, (t, _))| (t.as_str(), i as u32))
        .collect();

    let mut merges = Vec::new();
    for (i, m) in model
        .get("merges")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let merge = match m {
            Json::String(s) => s.clone(),
            Json::Array(pair) if pair.len() == 2 => format!(
                "{} {}",
                pair[0].as_str().unwrap_or_default(),
                pair[1].as_str().unwrap_or_default()
            ),
            other => {
                return Err(err(format!(
                    "`model.merges`[{i}] = {other} is neither \"a b\" nor [\"a\", \"b\"]"
                )))
            }
        };
        merges.push(Value::String(merge));
    }

    let cfg_path = dir.join("tokenizer_config.json");
    let cfg = if cfg_path.exists() {
        crate::checkpoint::read_json(&cfg_path)?
    } else {
        Json::Null
    };
    let config = crate::checkpoint::read_json(&dir.join("config.json"))?;
    let config_id = |key: &str| config.get(key).and_then(Json::as_u64).map(|x| x as u32);

    let mut md = vec![
        ("tokenizer.ggml.model".to_string(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".to_string(), Value::String(pre.gguf.into())),
        (
            "tokenizer.ggml.tokens".to_string(),
            Value::Array(tokens.iter().map(|(t, _)| Value::String(t.clone())).collect()),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            Value::Array(tokens.iter().map(|(_, k)| Value::I32(*k)).collect()),
        ),
        ("tokenizer.ggml.merges".to_string(), Value::Array(merges)),
    ];
    let bos = named_token(&cfg, "bos_token", &ids).or_else(|| config_id("bos_token_id"));
    let eos = named_token(&cfg, "eos_token", &ids).or_else(|| config_id("eos_token_id"));
    let pad = named_token(&cfg, "pad_token", &ids);
    for (key, id) in [("bos_token_id", bos), ("eos_token_id", eos), ("padding_token_id", pad)] {
        if let Some(id) = id {
            md.push((format!("tokenizer.ggml.{key}"), Value::U32(id)));
        }
    }
    for key in ["add_bos_token", "add_eos_token"] {
        if let Some(b) = cfg.get(key).and_then(Json::as_bool) {
            md.push((format!("tokenizer.ggml.{key}"), Value::Bool(b)));
        }
    }
    if let Some(t) = cfg.get("chat_template").and_then(Json::as_str) {
        md.push(("tokenizer.chat_template".to_string(), Value::String(t.to_string())));
    }
    Ok(md)
}

/// The Hugging Face tokenizer files for a GGUF vocabulary: `(tokenizer.json, tokenizer_config.json, bos, eos)`.
pub fn hf_from_gguf(
    path: &Path,
    md: &HashMap<String, Value>,
) -> Result<(Json, Json, Option<u32>, Option<u32>), QuantizeError> {
    let err = |reason: String| QuantizeError::Tokenizer {
        path: path.to_path_buf(),
        reason,
    };
    let string = |key: &str| md.get(key).and_then(|v| v.to_string().ok()).map(String::as_str);
    let id = |key: &str| {
        md.get(key)
            .and_then(|v| v.to_u32().ok().or_else(|| v.to_u64().ok().map(|x| x as u32)))
    };
    let array = |key: &str| -> Result<&Vec<Value>, QuantizeError> {
        md.get(key)
            .ok_or_else(|| QuantizeError::MissingKey {
                path: path.to_path_buf(),
                key: key.into(),
            })?
            .to_vec()
            .map_err(|e| QuantizeError::InvalidKey {
                path: path.to_path_buf(),
                key: key.into(),
                reason: e.to_string(),
            })
    };
    match string("tokenizer.ggml.model") {
        Some("gpt2") => {}
        other => {
            return Err(err(format!(
                "`tokenizer.ggml.model` is {other:?}; only byte-level BPE (`gpt2`) can be exported yet"
            )))
        }
    }
    let pre_name = string("tokenizer.ggml.pre").unwrap_or("default");
    let pre = PRE_TOKENIZERS.iter().find(|p| p.gguf == pre_name).ok_or_else(|| {
        err(format!(
            "`tokenizer.ggml.pre` = {pre_name:?} has no Hugging Face equivalent here (supported: {})",
            PRE_TOKENIZERS.iter().map(|p| p.gguf).collect::<Vec<_>>().join(", ")
        ))
    })?;
    let tokens = array("tokenizer.ggml.tokens")?;
    let types = array("tokenizer.ggml.token_type")?;
    if types.len() != tokens.len() {
        return Err(err(format!("{} token types for {} tokens", types.len(), tokens.len())));
    }
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    let mut texts = Vec::with_capacity(tokens.len());
    for (i, (t, k)) in tokens.iter().zip(types).enumerate() {
        let text = t
            .to_string()
            .map_err(|_| err(format!("token {i} is not a string")))?
            .clone();
        let kind = k.to_i32().map_err(|_| err(format!("token type {i} is not an i32")))?;
        // Every token goes in the BPE vocabulary (as SmolLM2's own tokenizer.json has it): transformers'
        // `get_vocab`, which llama.cpp's converter reads, misses added tokens absent from it.
        vocab.insert(text.clone(), json!(i));
        if kind != NORMAL {
            added.push(json!({
                "id": i, "content": text, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": kind != CONTROL, "special": kind == CONTROL
            }));
        }
        texts.push(text);
    }
    let merges: Vec<Json> = array("tokenizer.ggml.merges")?
        .iter()
        .filter_map(|m| m.to_string().ok().map(|s| json!(s)))
        .collect();
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": (pre.normalizer)(),
        "pre_tokenizer": (pre.hf)(),
        "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": pre.ignore_merges,
            "vocab": vocab, "merges": merges
        }
    });
    let bos = id("tokenizer.ggml.bos_token_id");
    let eos = id("tokenizer.ggml.eos_token_id");
    let pad = id("tokenizer.ggml.padding_token_id");
    let name = |id: Option<u32>| {
        id.and_then(|i| texts.get(i as usize))
            .map(|t| json!(t))
            .unwrap_or(Json::Null)
    };
    let mut config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name(bos),
        "eos_token": name(eos),
        "pad_token": name(pad),
        "model_max_length": 1_000_000_000u64,
        "clean_up_tokenization_spaces": false,
    });
    for key in ["add_bos_token", "add_eos_token"] {
        if let Some(b) = md.get(&format!("tokenizer.ggml.{key}")).and_then(|v| v.to_bool().ok()) {
            config[key] = json!(b);
        }
    }
    if let Some(t) = string("tokenizer.chat_template") {
        config["chat_template"] = json!(t);
    }
    Ok((tokenizer, config, bos, eos))
}
