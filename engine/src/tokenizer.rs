//! Text ⇄ token ids, built from the vocabulary stored in a GGUF file's metadata.
//!
//! A GGUF file describes its tokenizer with `tokenizer.ggml.*` keys rather than a `tokenizer.json`. This module
//! turns those keys into a HuggingFace `tokenizers::Tokenizer`, the same way llama.cpp's `llama-vocab.cpp`
//! interprets them, so that our token ids match llama.cpp's for the same file:
//!
//! - `tokenizer.ggml.model == "gpt2"`: byte-level BPE from `tokens` + `merges`. Text is first split by the
//!   regular expressions llama.cpp picks from `tokenizer.ggml.pre` (see `PreTokenizerKind`), then each piece is
//!   mapped to GPT-2's printable byte alphabet and merged.
//! - `tokenizer.ggml.model == "llama"`: SentencePiece BPE from `tokens` + `scores`. Spaces become `▁`, a `▁` is
//!   prepended to every piece of raw text, and characters outside the vocabulary fall back to `<0xNN>` byte
//!   tokens. SentencePiece merges the adjacent pair whose concatenation has the highest score; we express that
//!   as BPE merges ranked by the merged token's score (as HF's `SentencePieceExtractor` does).
//!
//! Control tokens (type 3) and user-defined tokens (type 4) become added tokens, so their text written in a
//! prompt (for example `<|im_start|>`) is always recognised as one token. Control tokens are "special": decoding
//! with `skip_special_tokens` drops them.
//!
//! The chat template (`tokenizer.chat_template`) travels with the tokenizer because it needs the BOS and EOS
//! token texts and because callers always use the two together.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab as BpeVocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::chat_template::{ChatMessage, ChatTemplate, ChatTools};
use crate::EngineError;

/// The `path` reported in [`EngineError::Load`] when the tokenizer is built from metadata the caller read.
const METADATA_SOURCE: &str = "GGUF metadata";

/// Token texts that llama.cpp treats as end of generation when the file marks them as control tokens
/// (`llama-vocab.cpp`, `special_eog_ids`). GGUF files often name only one EOS id, while chat models end a turn
/// with another token (`<|im_end|>` against `<|endoftext|>`), so we stop on all of them.
const END_OF_GENERATION_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<｜end▁of▁sentence｜>",
];

/// A tokenizer and chat template read from a GGUF file; cheap to share behind an `Arc`, safe to use from many
/// threads at once.
pub struct Tokenizer {
    /// The HuggingFace tokenizer doing the actual work.
    inner: tokenizers::Tokenizer,
    /// Number of entries in `tokenizer.ggml.tokens`; every valid id is below it.
    vocab_size: usize,
    /// Whether `encode(.., add_special_tokens = true)` puts BOS first (`tokenizer.ggml.add_bos_token`).
    add_bos: bool,
    /// Whether `encode(.., add_special_tokens = true)` puts EOS last (`tokenizer.ggml.add_eos_token`).
    add_eos: bool,
    /// `tokenizer.ggml.bos_token_id` (for SentencePiece files without it, llama.cpp's default 1).
    bos_token_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id` (for SentencePiece files without it, llama.cpp's default 2).
    eos_token_id: Option<u32>,
    /// Every token that ends a generation, deduplicated, the declared EOS first.
    eos_token_ids: Vec<u32>,
    /// Control-token ids: the ones `decode(.., skip_special_tokens = true)` drops.
    special_ids: HashSet<u32>,
    /// What [`Tokenizer::token_bytes`] needs to turn token texts back into the bytes they stand for.
    byte_table: ByteTable,
    /// The control tokens' texts, to keep them out of message text in [`Tokenizer::encode_chat`].
    control: crate::chat_prompt::ControlTokens,
    /// The compiled chat template, or why it failed to compile (kept so that chat requests can say why, while
    /// plain completions still work).
    chat_template: Option<Result<ChatTemplate, EngineError>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos_token_id", &self.bos_token_id)
            .field("eos_token_ids", &self.eos_token_ids)
            .field("has_chat_template", &self.chat_template().is_some())
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Read only the GGUF metadata (not the weights) of `path` and build the tokenizer and chat template.
    pub fn from_gguf(path: &Path) -> Result<Self, EngineError> {
        let load_error = |reason: String| EngineError::Load {
            path: path.display().to_string(),
            reason,
        };
        // `Gguf::open` checks the header before candle parses it (a malformed one must not panic here).
        let gguf = models::Gguf::open(path, &candle_core::Device::Cpu).map_err(|err| load_error(err.to_string()))?;
        Self::from_gguf_metadata(gguf.metadata_map()).map_err(|err| match err {
            EngineError::Load { reason, .. } => load_error(reason),
            other => other,
        })
    }

    /// Build the tokenizer and chat template from already-read GGUF metadata.
    ///
    /// Errors are [`EngineError::Load`] with `path` set to `"GGUF metadata"`; [`Tokenizer::from_gguf`] replaces
    /// it with the file's path.
    pub fn from_gguf_metadata(md: &HashMap<String, Value>) -> Result<Self, EngineError> {
        build(&Metadata(md)).map_err(|reason| EngineError::Load {
            path: METADATA_SOURCE.to_string(),
            reason,
        })
    }

    /// Text to ids. Control and user-defined token texts in `text` (e.g. `<|im_start|>`) become single tokens.
    ///
    /// With `add_special_tokens`, BOS is put first when the file asks for it (`tokenizer.ggml.add_bos_token`,
    /// by default true for SentencePiece and false for GPT-2 BPE vocabularies), and EOS last when
    /// `tokenizer.ggml.add_eos_token` is true. Text rendered from a chat template already contains its BOS, so
    /// encode it with `add_special_tokens = false`.
    ///
    /// A character the vocabulary has no token for, not even a byte token for each of its UTF-8 bytes, is
    /// left out whole, as the HuggingFace tokenizer does (llama.cpp throws): SmolLM2's vocabulary lacks the
    /// control bytes 0x04, 0x06, 0x13, 0x14, 0x16 and 0x1D and the lead bytes 0xF1 and 0xF2 (U+40000 to
    /// U+BFFFF), found by the `chat` fuzz target (`fuzz/regressions/chat`).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, EngineError> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|err| EngineError::Tokenizer(format!("cannot encode text: {err}")))?;
        let body = encoding.get_ids();
        let mut ids = Vec::with_capacity(body.len() + 2);
        if add_special_tokens && self.add_bos {
            ids.extend(self.bos_token_id);
        }
        ids.extend_from_slice(body);
        if add_special_tokens && self.add_eos {
            ids.extend(self.eos_token_id);
        }
        Ok(ids)
    }

    /// Ids to text. With `skip_special_tokens`, control tokens (BOS, EOS, `<|im_end|>` ...) are left out.
    /// An invalid UTF-8 byte sequence (for example a character cut in half) comes out as U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, EngineError> {
        if let Some(&token_id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(EngineError::InvalidToken {
                token_id,
                vocab_size: self.vocab_size,
            });
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|err| EngineError::Tokenizer(format!("cannot decode tokens: {err}")))
    }

    /// Token ids that end a generation: `tokenizer.ggml.eos_token_id`, `eot_token_id` and `eom_token_id` when
    /// present, plus control tokens whose text llama.cpp treats as end of generation (`<|im_end|>`,
    /// `<|eot_id|>`, `<end_of_turn>`, `<|endoftext|>` ...). Deduplicated; the declared EOS comes first.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// Whether `encode(text, true)` starts with BOS (`tokenizer.ggml.add_bos_token`, or the model type's default).
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// The BOS id (`tokenizer.ggml.bos_token_id`), if the file has one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    /// Number of tokens in the vocabulary (`tokenizer.ggml.tokens`); every valid id is below it. The model's
    /// output layer may be wider (padding rows), but ids past this have no text.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The chat template from `tokenizer.chat_template`, if the file has one that compiles.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref().and_then(|template| template.as_ref().ok())
    }

    /// The prompt ids of a chat: `messages` rendered with the model's chat template and encoded so that only
    /// the template's own control tokens (`<|im_start|>`, BOS ...) are control tokens; the same text typed
    /// inside a message (or role) is encoded as ordinary text, so no one can forge a turn. Messages without
    /// such text get exactly `encode(&apply_chat_template(..)?, false)`. Use this for every chat prompt.
    pub fn encode_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<Vec<u32>, EngineError> {
        self.encode_chat_with_tools(messages, &ChatTools::default(), add_generation_prompt)
    }

    /// [`Self::encode_chat`] with tools offered and the messages' tool-calling fields; the strings in `tools`
    /// are kept apart from control tokens as message text is.
    pub fn encode_chat_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: &ChatTools,
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, EngineError> {
        self.control
            .encode_chat(&self.inner, messages, tools, |messages, tools| {
                self.template()?
                    .render_with_tools(messages, tools, add_generation_prompt)
            })
    }

    /// Render `messages` with the model's chat template, as text (for display and tests). To build a prompt,
    /// use [`Tokenizer::encode_chat`]: encoding this text would turn control-token text typed in a message
    /// into control tokens.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        self.template()?.render(messages, add_generation_prompt)
    }

    /// The chat template, or why there is none to use.
    fn template(&self) -> Result<&ChatTemplate, EngineError> {
        match &self.chat_template {
            Some(Ok(template)) => Ok(template),
            Some(Err(compile_error)) => Err(compile_error.clone()),
            None => Err(EngineError::Template(
                "the model has no chat template (no `tokenizer.chat_template` in its GGUF file)".to_string(),
            )),
        }
    }

    /// The control tokens' texts and what keeps them out of message text.
    pub(crate) fn control(&self) -> &crate::chat_prompt::ControlTokens {
        &self.control
    }

    /// The bytes each token stands for, by id, for constrained decoding ([`crate::grammar`]). Tokens that are
    /// never output text (control, unknown, unused) start with 0xFF, a byte no UTF-8 text holds, so no grammar
    /// over text can match them (llguidance's marker for special tokens).
    pub(crate) fn token_bytes(&self) -> Vec<Vec<u8>> {
        let t = &self.byte_table;
        let gpt2 = t.byte_level.then(gpt2_unicode_to_byte);
        (0..self.vocab_size as u32)
            .map(|id| {
                let text = self.inner.id_to_token(id).unwrap_or_default();
                if t.unmatchable.contains(&id) {
                    let mut b = vec![0xFF];
                    b.extend_from_slice(text.as_bytes());
                    return b;
                }
                if t.literal.contains(&id) {
                    return text.into_bytes();
                }
                match &gpt2 {
                    Some(table) => text
                        .chars()
                        .flat_map(|c| match table.get(&c) {
                            Some(&b) => vec![b],
                            None => c.to_string().into_bytes(),
                        })
                        .collect(),
                    None => sentencepiece_bytes(&text),
                }
            })
            .collect()
    }

    /// Whether `id` is a control token, which `decode(.., skip_special_tokens = true)` drops.
    pub(crate) fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }
}

/// `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenType {
    Undefined,
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_gguf(value: i64) -> Self {
        match value {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Undefined,
        }
    }
}

/// How text is split into pieces before byte-level BPE, chosen from `tokenizer.ggml.pre` as llama.cpp does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreTokenizerKind {
    /// llama.cpp's `LLAMA_VOCAB_PRE_TYPE_DEFAULT` (the value `"default"`).
    Default,
    Gpt2,
    Llama3,
    /// DBRX and Smaug: the Llama 3 expression without Llama 3's `ignore_merges`.
    Dbrx,
    Qwen2,
    /// StarCoder, Refact, Command-R, SmolLM ...: every digit alone, then the GPT-2 expression.
    StarCoder,
    Falcon,
}

/// The GPT-2 expression as llama.cpp writes it.
const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3; `(?i:'s|...)` spelled out case by case, as llama.cpp does.
const LLAMA3_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2: Llama 3's expression with single digits.
const QWEN2_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl PreTokenizerKind {
    /// Map `tokenizer.ggml.pre` to a kind. Unknown names fall back to GPT-2 with a warning, where llama.cpp
    /// refuses the file: a slightly different split still produces valid ids, and the warning names the value.
    fn from_gguf(pre: Option<&str>) -> Self {
        match pre {
            None => {
                tracing::warn!("the GGUF file has no `tokenizer.ggml.pre`; splitting text as llama.cpp's `default`");
                Self::Default
            }
            Some("default") => Self::Default,
            Some(
                "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0"
                | "mellum" | "modern-bert" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" | "mpt" | "olmo" | "jais"
                | "trillion" | "granite-docling" | "exaone4",
            ) => Self::Gpt2,
            Some("llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2") => {
                Self::Llama3
            }
            Some("dbrx" | "smaug-bpe") => Self::Dbrx,
            Some("qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" | "hunyuan" | "kormo" | "f2llmv2") => {
                Self::Qwen2
            }
            Some(
                "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" | "mellum2",
            ) => Self::StarCoder,
            Some("falcon") => Self::Falcon,
            Some(other) => {
                tracing::warn!(
                    pre = other,
                    "unsupported `tokenizer.ggml.pre`; splitting text with the GPT-2 expression, token ids may \
                     differ from the model's own tokenizer"
                );
                Self::Gpt2
            }
        }
    }

    /// The expressions applied one after the other; each splits the pieces the previous one produced and
    /// keeps both matches and the text between them (llama.cpp `unicode_regex_split`).
    fn patterns(self) -> &'static [&'static str] {
        match self {
            Self::Default => &[r"[\p{P}\$\+<=>\^~\|]+", GPT2_PATTERN, r"\p{N}+", r"[0-9][0-9][0-9]"],
            Self::Gpt2 => &[GPT2_PATTERN],
            Self::Llama3 | Self::Dbrx => &[LLAMA3_PATTERN],
            Self::Qwen2 => &[QWEN2_PATTERN],
            Self::StarCoder => &[r"\p{N}", GPT2_PATTERN],
            Self::Falcon => &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2_PATTERN, r"[0-9][0-9][0-9]"],
        }
    }

    /// Llama 3 looks a whole piece up in the vocabulary before merging (llama.cpp `ignore_merges`).
    fn ignore_merges(self) -> bool {
        self == Self::Llama3
    }

    /// llama.cpp's default for `add_bos_token` when the file does not say.
    fn adds_bos_by_default(self) -> bool {
        self == Self::Llama3
    }
}

/// Typed access to GGUF metadata; every error names the key.
struct Metadata<'a>(&'a HashMap<String, Value>);

impl Metadata<'_> {
    fn string(&self, key: &str) -> Result<Option<&str>, String> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(format!("`{key}` should be a string, found {:?}", other.value_type())),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, String> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(format!("`{key}` should be a bool, found {:?}", other.value_type())),
        }
    }

    fn token_id(&self, key: &str, vocab_size: usize) -> Result<Option<u32>, String> {
        let Some(value) = self.0.get(key) else { return Ok(None) };
        let id = integer(value).ok_or_else(|| format!("`{key}` should be an integer, found {value:?}"))?;
        match u32::try_from(id) {
            Ok(id) if (id as usize) < vocab_size => Ok(Some(id)),
            _ => Err(format!(
                "`{key}` is {id}, outside the vocabulary of {vocab_size} tokens"
            )),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&[Value]>, String> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Array(values)) => Ok(Some(values)),
            Some(other) => Err(format!("`{key}` should be an array, found {:?}", other.value_type())),
        }
    }

    fn required_array(&self, key: &str) -> Result<&[Value], String> {
        self.array(key)?.ok_or_else(|| format!("missing key `{key}`"))
    }

    fn strings(&self, key: &str) -> Result<Vec<&str>, String> {
        self.required_array(key)?
            .iter()
            .enumerate()
            .map(|(i, value)| match value {
                Value::String(s) => Ok(s.as_str()),
                other => Err(format!(
                    "`{key}`[{i}] should be a string, found {:?}",
                    other.value_type()
                )),
            })
            .collect()
    }
}

fn integer(value: &Value) -> Option<i64> {
    match *value {
        Value::U8(v) => Some(v.into()),
        Value::I8(v) => Some(v.into()),
        Value::U16(v) => Some(v.into()),
        Value::I16(v) => Some(v.into()),
        Value::U32(v) => Some(v.into()),
        Value::I32(v) => Some(v.into()),
        Value::U64(v) => i64::try_from(v).ok(),
        Value::I64(v) => Some(v),
        _ => None,
    }
}

/// The vocabulary as the GGUF file lists it: one text and one type per id.
struct Vocab {
    tokens: Vec<String>,
    types: Vec<TokenType>,
}

impl Vocab {
    fn read(md: &Metadata) -> Result<Self, String> {
        let mut tokens: Vec<String> = md
            .strings("tokenizer.ggml.tokens")?
            .into_iter()
            .map(str::to_owned)
            .collect();
        if tokens.is_empty() {
            return Err("`tokenizer.ggml.tokens` is empty".to_string());
        }
        for (id, token) in tokens.iter_mut().enumerate() {
            if token.is_empty() {
                // Same placeholder as llama.cpp, so that the id keeps a unique, visible text.
                tracing::warn!(id, "empty token text in the GGUF vocabulary; naming it [EMPTY_{id}]");
                *token = format!("[EMPTY_{id}]");
            }
        }
        let types = match md.array("tokenizer.ggml.token_type")? {
            Some(values) => {
                if values.len() != tokens.len() {
                    return Err(format!(
                        "`tokenizer.ggml.token_type` has {} entries but `tokenizer.ggml.tokens` has {}",
                        values.len(),
                        tokens.len()
                    ));
                }
                values
                    .iter()
                    .map(|v| integer(v).map_or(TokenType::Undefined, TokenType::from_gguf))
                    .collect()
            }
            None => {
                tracing::warn!("no `tokenizer.ggml.token_type` in the GGUF file; treating every token as normal");
                vec![TokenType::Normal; tokens.len()]
            }
        };
        Ok(Self { tokens, types })
    }

    /// Text → id for every token; two ids with the same text would make encoding ambiguous.
    fn text_to_id(&self) -> Result<BpeVocab, String> {
        let mut map = BpeVocab::with_capacity(self.tokens.len());
        for (id, token) in self.tokens.iter().enumerate() {
            if let Some(previous) = map.insert(token.clone(), id as u32) {
                return Err(format!(
                    "token {token:?} appears twice in the vocabulary (ids {previous} and {id})"
                ));
            }
        }
        Ok(map)
    }

    fn ids_of_type(&self, kind: TokenType) -> impl Iterator<Item = u32> + '_ {
        self.types
            .iter()
            .enumerate()
            .filter(move |(_, t)| **t == kind)
            .map(|(id, _)| id as u32)
    }
}

fn build(md: &Metadata) -> Result<Tokenizer, String> {
    let model_type = md
        .string("tokenizer.ggml.model")?
        .ok_or("missing key `tokenizer.ggml.model`")?;
    let vocab = Vocab::read(md)?;
    let vocab_size = vocab.tokens.len();

    let (mut inner, default_add_bos) = match model_type {
        "gpt2" => {
            let pre = PreTokenizerKind::from_gguf(md.string("tokenizer.ggml.pre")?);
            (byte_level_bpe(md, &vocab, pre)?, pre.adds_bos_by_default())
        }
        "llama" => (sentencepiece_bpe(md, &vocab)?, true),
        other => {
            return Err(format!(
                "unsupported tokenizer model `{other}` (`tokenizer.ggml.model`); supported: `gpt2` (byte-level \
                 BPE), `llama` (SentencePiece)"
            ))
        }
    };

    // Control tokens are special (skipped by `decode(.., true)`); user-defined ones are plain added tokens.
    // `normalized(false)`: both are matched on the raw text, before any `▁` replacement.
    let added = |kind: TokenType, special: bool| -> Vec<AddedToken> {
        vocab
            .ids_of_type(kind)
            .map(|id| AddedToken::from(vocab.tokens[id as usize].clone(), special).normalized(false))
            .collect()
    };
    inner.add_special_tokens(&added(TokenType::Control, true));
    inner.add_tokens(&added(TokenType::UserDefined, false));
    let special_ids: HashSet<u32> = vocab.ids_of_type(TokenType::Control).collect();
    let byte_table = ByteTable {
        byte_level: model_type == "gpt2",
        unmatchable: [TokenType::Control, TokenType::Unknown, TokenType::Unused]
            .into_iter()
            .flat_map(|kind| vocab.ids_of_type(kind))
            .collect(),
        literal: vocab.ids_of_type(TokenType::UserDefined).collect(),
    };
    let control = crate::chat_prompt::ControlTokens::new(
        vocab
            .ids_of_type(TokenType::Control)
            .map(|id| (id, vocab.tokens[id as usize].clone())),
    )?;

    // llama.cpp's defaults for SentencePiece vocabularies that do not name them: <s> = 1, </s> = 2.
    let is_sentencepiece = model_type == "llama";
    let bos_token_id = special_token_id(
        md,
        "tokenizer.ggml.bos_token_id",
        is_sentencepiece.then_some(1),
        vocab_size,
    )?;
    let eos_token_id = special_token_id(
        md,
        "tokenizer.ggml.eos_token_id",
        is_sentencepiece.then_some(2),
        vocab_size,
    )?;
    let add_bos = md.bool("tokenizer.ggml.add_bos_token")?.unwrap_or(default_add_bos);
    let add_eos = md.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    if add_bos && bos_token_id.is_none() {
        return Err("`tokenizer.ggml.add_bos_token` is true but there is no `tokenizer.ggml.bos_token_id`".into());
    }
    if add_eos && eos_token_id.is_none() {
        return Err("`tokenizer.ggml.add_eos_token` is true but there is no `tokenizer.ggml.eos_token_id`".into());
    }

    let eos_token_ids = end_of_generation_ids(md, &vocab, eos_token_id)?;
    if eos_token_ids.is_empty() {
        tracing::warn!("the GGUF vocabulary has no end-of-generation token; generations end only on limits");
    }

    let token_text = |id: Option<u32>| id.map_or(String::new(), |id| vocab.tokens[id as usize].clone());
    let chat_template = md.string("tokenizer.chat_template")?.map(|source| {
        ChatTemplate::new(source, &token_text(bos_token_id), &token_text(eos_token_id)).inspect_err(
            |err| tracing::warn!(cause = %err, "the GGUF chat template does not compile; chat requests will fail"),
        )
    });

    tracing::debug!(
        model_type,
        pre = md.string("tokenizer.ggml.pre").ok().flatten(),
        vocab_size,
        ?bos_token_id,
        ?eos_token_ids,
        add_bos,
        "tokenizer loaded from GGUF metadata"
    );
    Ok(Tokenizer {
        inner,
        vocab_size,
        add_bos,
        add_eos,
        bos_token_id,
        eos_token_id,
        eos_token_ids,
        special_ids,
        byte_table,
        control,
        chat_template,
    })
}

/// How token texts map back to bytes ([`Tokenizer::token_bytes`]).
struct ByteTable {
    /// GPT-2 byte-level BPE: every byte is written as one printable character.
    byte_level: bool,
    /// Control, unknown and unused tokens: never text.
    unmatchable: HashSet<u32>,
    /// User-defined tokens: their text as written, in either model.
    literal: HashSet<u32>,
}

/// GPT-2's printable alphabet read backwards: the character each byte is written as, to the byte.
fn gpt2_unicode_to_byte() -> HashMap<char, u8> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut next = 256;
    (0..=255u32)
        .map(|b| {
            let c = if printable(b) {
                b
            } else {
                next += 1;
                next - 1
            };
            (char::from_u32(c).expect("GPT-2 alphabet is valid chars"), b as u8)
        })
        .collect()
}

/// A SentencePiece piece's bytes: `<0xNN>` is the byte NN, `▁` a space.
fn sentencepiece_bytes(text: &str) -> Vec<u8> {
    if let Some(hex) = text.strip_prefix("<0x").and_then(|t| t.strip_suffix('>')) {
        if let (2, Ok(b)) = (hex.len(), u8::from_str_radix(hex, 16)) {
            return vec![b];
        }
    }
    text.replace('▁', " ").into_bytes()
}

/// The id under `key`, else `default` (logged), when it is inside the vocabulary.
fn special_token_id(md: &Metadata, key: &str, default: Option<u32>, vocab_size: usize) -> Result<Option<u32>, String> {
    if let Some(id) = md.token_id(key, vocab_size)? {
        return Ok(Some(id));
    }
    let id = default.filter(|&id| (id as usize) < vocab_size);
    if let Some(id) = id {
        tracing::warn!(
            id,
            key,
            "the GGUF file has no such key; using llama.cpp's SentencePiece default"
        );
    }
    Ok(id)
}

/// EOS, EOT and EOM ids from the metadata, then control tokens named like an end of generation, in id order.
fn end_of_generation_ids(md: &Metadata, vocab: &Vocab, eos: Option<u32>) -> Result<Vec<u32>, String> {
    let mut ids = Vec::new();
    ids.extend(eos);
    ids.extend(md.token_id("tokenizer.ggml.eot_token_id", vocab.tokens.len())?);
    ids.extend(md.token_id("tokenizer.ggml.eom_token_id", vocab.tokens.len())?);
    // One pass over the vocabulary; ids come out in id order.
    let mut named: Vec<(u32, &str)> = vocab
        .tokens
        .iter()
        .zip(&vocab.types)
        .enumerate()
        .filter(|(_, (text, kind))| {
            matches!(kind, TokenType::Control | TokenType::UserDefined)
                && END_OF_GENERATION_NAMES.contains(&text.as_str())
        })
        .map(|(id, (text, _))| (id as u32, text.as_str()))
        .collect();
    // gpt-oss (harmony) ends a message with <|end|> but a generation only with <|return|> or <|call|>; llama.cpp
    // drops <|end|> in that case, and so do we.
    let has = |name: &str| named.iter().any(|&(_, text)| text == name);
    if has("<|return|>") && has("<|call|>") {
        named.retain(|&(_, text)| text != "<|end|>");
    }
    ids.extend(named.into_iter().map(|(id, _)| id));
    let mut seen = HashSet::new();
    ids.retain(|id| seen.insert(*id));
    Ok(ids)
}

/// GPT-2 style byte-level BPE (`tokenizer.ggml.model == "gpt2"`).
fn byte_level_bpe(md: &Metadata, vocab: &Vocab, pre: PreTokenizerKind) -> Result<tokenizers::Tokenizer, String> {
    let merges = md
        .strings("tokenizer.ggml.merges")?
        .into_iter()
        .enumerate()
        .map(|(i, merge)| {
            // Split at the first space after the first character, like llama.cpp (a piece may start with one).
            let split = merge
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == ' ')
                .map(|(pos, _)| pos);
            match split {
                Some(pos) => Ok((merge[..pos].to_string(), merge[pos + 1..].to_string())),
                None => Err(format!(
                    "`tokenizer.ggml.merges`[{i}] = {merge:?} is not two tokens separated by a space"
                )),
            }
        })
        .collect::<Result<Vec<_>, String>>()?;
    let text_to_id = vocab.text_to_id()?;
    let unspellable = unspellable_characters(&text_to_id);
    let bpe = BPE::builder()
        .vocab_and_merges(text_to_id, merges)
        .ignore_merges(pre.ignore_merges())
        .build()
        .map_err(|err| format!("cannot build the BPE model from `tokenizer.ggml.merges`: {err}"))?;

    let mut steps = Vec::new();
    for pattern in pre.patterns() {
        let split = Split::new(
            SplitPattern::Regex((*pattern).to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|err| format!("cannot compile the pre-tokenizer expression {pattern:?}: {err}"))?;
        steps.push(PreTokenizerWrapper::Split(split));
    }
    // Map every byte to GPT-2's printable alphabet; the splitting was done above.
    steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)));

    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    if let Some(pattern) = unspellable {
        // Runs after the added tokens are split off (they are all `normalized(false)`), so leaving a
        // character out never joins its neighbours into a control token's text.
        let drop = Replace::new(tokenizers::normalizers::replace::ReplacePattern::Regex(pattern), "")
            .map_err(|err| format!("cannot compile the filter of characters the vocabulary cannot spell: {err}"))?;
        tokenizer.with_normalizer(Some(drop));
    }
    tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(steps)));
    tokenizer.with_decoder(Some(ByteLevel::new(false, false, false)));
    Ok(tokenizer)
}

/// The character GPT-2's byte-level alphabet writes byte `b` as: printable Latin-1 bytes stand for
/// themselves, the others for U+0100 onwards in byte order.
fn byte_level_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&earlier| !printable(earlier)).count() as u32;
    char::from_u32(0x100 + rank).expect("U+0100..U+0143 are characters")
}

/// Most character ranges [`unspellable_characters`] spells out; a vocabulary missing more is left to the BPE
/// model, which drops the bytes it has no token for one by one.
const MAX_UNSPELLABLE_RANGES: usize = 4096;

/// A regular expression matching every character a byte-level vocabulary cannot spell, `None` if it can
/// spell them all. A character is unspellable when one of its UTF-8 bytes has no token: the BPE model would
/// drop that byte and keep the others, so a four-byte character of U+40000..U+BFFFF in SmolLM2 (no tokens
/// for the lead bytes 0xF1 and 0xF2) came out as stray continuation bytes that decode to U+FFFD (found by
/// the `chat` fuzz target; `fuzz/regressions/chat/lead-byte-f2`). Such characters are left out whole, as the
/// HuggingFace tokenizer leaves out a character without a token.
fn unspellable_characters(text_to_id: &BpeVocab) -> Option<String> {
    let mut missing = [false; 256];
    for b in 0..=255u8 {
        missing[b as usize] = !text_to_id.contains_key(byte_level_char(b).encode_utf8(&mut [0; 4]) as &str);
    }
    // Bytes no UTF-8 text contains do not matter.
    let matters = |b: usize| !matches!(b, 0xC0 | 0xC1 | 0xF5..=0xFF);
    if !(0..256).any(|b| missing[b] && matters(b)) {
        return None;
    }
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    let mut buf = [0u8; 4];
    for c in (0..=char::MAX as u32).filter_map(char::from_u32) {
        if !c.encode_utf8(&mut buf).bytes().any(|b| missing[b as usize]) {
            continue;
        }
        let c = c as u32;
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == c => *end = c,
            _ => ranges.push((c, c)),
        }
    }
    if ranges.len() > MAX_UNSPELLABLE_RANGES {
        tracing::warn!(
            ranges = ranges.len(),
            "the byte-level vocabulary lacks many byte tokens; characters it cannot spell lose those bytes only"
        );
        return None;
    }
    let class: String = ranges
        .iter()
        .map(|&(start, end)| match start == end {
            true => format!("\\x{{{start:x}}}"),
            false => format!("\\x{{{start:x}}}-\\x{{{end:x}}}"),
        })
        .collect();
    Some(format!("[{class}]"))
}

/// SentencePiece BPE (`tokenizer.ggml.model == "llama"`), as HF converts a Llama `tokenizer.model`.
fn sentencepiece_bpe(md: &Metadata, vocab: &Vocab) -> Result<tokenizers::Tokenizer, String> {
    let scores = md
        .required_array("tokenizer.ggml.scores")?
        .iter()
        .enumerate()
        .map(|(i, value)| match *value {
            Value::F32(score) => Ok(score),
            Value::F64(score) => Ok(score as f32),
            ref other => integer(other)
                .map(|score| score as f32)
                .ok_or_else(|| format!("`tokenizer.ggml.scores`[{i}] should be a number, found {other:?}")),
        })
        .collect::<Result<Vec<f32>, String>>()?;
    if scores.len() != vocab.tokens.len() {
        return Err(format!(
            "`tokenizer.ggml.scores` has {} entries but `tokenizer.ggml.tokens` has {}",
            scores.len(),
            vocab.tokens.len()
        ));
    }
    let text_to_id = vocab.text_to_id()?;
    let merges = sentencepiece_merges(vocab, &scores, &text_to_id);
    let unk_token = md
        .token_id("tokenizer.ggml.unknown_token_id", vocab.tokens.len())?
        .or_else(|| vocab.ids_of_type(TokenType::Unknown).next())
        .map(|id| vocab.tokens[id as usize].clone());

    let mut builder = BPE::builder()
        .vocab_and_merges(text_to_id, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk_token {
        builder = builder.unk_token(unk);
    }
    let bpe = builder
        .build()
        .map_err(|err| format!("cannot build the SentencePiece BPE model: {err}"))?;

    let add_space_prefix = md.bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
    let replace_spaces = Replace::new(" ", "▁").map_err(|err| err.to_string())?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    if add_space_prefix {
        let prepend = Prepend::new("▁".to_string());
        tokenizer.with_normalizer(Some(NormalizerSequence::new(vec![
            prepend.into(),
            replace_spaces.into(),
        ])));
    } else {
        tokenizer.with_normalizer(Some(replace_spaces));
    }
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ").map_err(|err| err.to_string())?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

/// SentencePiece merges the adjacent pair whose concatenation is the vocabulary piece with the highest score
/// (llama.cpp `llm_tokenizer_spm_session`). As BPE merges: every split `a + b` of a piece, with `a` and `b`
/// pieces too, ranked by the piece's score (ties by id). Control, byte and unknown tokens are never merge
/// results: they are matched as added tokens or produced by byte fallback.
fn sentencepiece_merges(vocab: &Vocab, scores: &[f32], text_to_id: &BpeVocab) -> Vec<(String, String)> {
    let mut ranked: Vec<(f32, usize, usize)> = Vec::new();
    for (id, piece) in vocab.tokens.iter().enumerate() {
        if matches!(
            vocab.types[id],
            TokenType::Control | TokenType::Byte | TokenType::Unknown
        ) {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if text_to_id.contains_key(left) && text_to_id.contains_key(right) {
                ranked.push((scores[id], id, split));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked
        .into_iter()
        .map(|(_, id, split)| {
            let (left, right) = vocab.tokens[id].split_at(split);
            (left.to_string(), right.to_string())
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;
    use std::sync::OnceLock;

    use super::*;

    /// Directory of the real GGUF models: `$HEARTH_MODELS_DIR`, or `~/.cache/hearth/models`.
    fn models_dir() -> PathBuf {
        match std::env::var_os("HEARTH_MODELS_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let home = std::env::var_os("HOME").expect("HOME is set when HEARTH_MODELS_DIR is not");
                PathBuf::from(home).join(".cache/hearth/models")
            }
        }
    }

    pub(crate) fn model_path(file: &str) -> PathBuf {
        let path = models_dir().join(file);
        assert!(
            path.is_file(),
            "test model {} is missing: run `scripts/fetch-models.sh` (or set HEARTH_MODELS_DIR)",
            path.display()
        );
        path
    }

    fn test_data(file: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(file)
    }

    fn load(cell: &'static OnceLock<Tokenizer>, path: PathBuf) -> &'static Tokenizer {
        cell.get_or_init(|| {
            Tokenizer::from_gguf(&path).unwrap_or_else(|err| panic!("loading {}: {err}", path.display()))
        })
    }

    /// SmolLM2-135M-Instruct: GPT-2 BPE, pre-tokenizer `smollm`.
    pub(crate) fn smollm2() -> &'static Tokenizer {
        static CELL: OnceLock<Tokenizer> = OnceLock::new();
        load(&CELL, model_path("SmolLM2-135M-Instruct.Q4_1.gguf"))
    }

    /// Qwen2.5-Coder-0.5B-Instruct: GPT-2 BPE, pre-tokenizer `qwen2`.
    pub(crate) fn qwen_05b() -> &'static Tokenizer {
        static CELL: OnceLock<Tokenizer> = OnceLock::new();
        load(&CELL, model_path("qwen2.5-coder-0.5b-instruct.gguf"))
    }

    /// Qwen2.5-Coder-1.5B-Instruct: same vocabulary as the 0.5B, a different chat template revision.
    pub(crate) fn qwen_15b() -> &'static Tokenizer {
        static CELL: OnceLock<Tokenizer> = OnceLock::new();
        load(&CELL, model_path("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"))
    }

    /// llama.cpp's vocab-only Llama 2 SentencePiece file (`models/ggml-vocab-llama-spm.gguf`).
    pub(crate) fn llama_spm() -> &'static Tokenizer {
        static CELL: OnceLock<Tokenizer> = OnceLock::new();
        load(&CELL, test_data("ggml-vocab-llama-spm.gguf.testdata"))
    }

    fn metadata(path: &Path) -> HashMap<String, Value> {
        let mut reader = std::io::BufReader::new(std::fs::File::open(path).expect("test model opens"));
        candle_core::quantized::gguf_file::Content::read(&mut reader)
            .expect("test model has a valid GGUF header")
            .metadata
    }

    /// Run llama.cpp's `test-tokenizer-0` vectors: `.inp` holds inputs separated by `__ggml_vocab_test__`
    /// lines, `.out` one line of expected ids per input (encoded without BOS). Returns the failures.
    fn llama_cpp_vectors(tokenizer: &Tokenizer, name: &str) -> (usize, Vec<String>) {
        let inputs = std::fs::read_to_string(test_data(&format!("{name}.inp"))).expect("vector inputs exist");
        let outputs = std::fs::read_to_string(test_data(&format!("{name}.out"))).expect("vector outputs exist");
        let inputs: Vec<&str> = inputs.split("\n__ggml_vocab_test__\n").collect();
        let outputs: Vec<&str> = outputs.split('\n').collect();
        assert_eq!(inputs.len(), outputs.len(), "{name}: as many inputs as outputs");
        let mut failures = Vec::new();
        for (input, output) in inputs.iter().zip(&outputs) {
            let expected: Vec<u32> = output
                .split_whitespace()
                .map(|id| id.parse().expect("ids are integers"))
                .collect();
            let got = tokenizer.encode(input, false).expect("encodes");
            if got != expected {
                failures.push(format!("{input:?}: expected {expected:?}, got {got:?}"));
            }
        }
        (inputs.len(), failures)
    }

    #[test]
    fn llama_cpp_vectors_qwen2() {
        // llama.cpp's qwen2 vectors were made with Qwen2's vocabulary; Qwen2.5's is the same (same tokens up to
        // id 151645, same merges), so we run them against the real model.
        let (count, failures) = llama_cpp_vectors(qwen_05b(), "ggml-vocab-qwen2.gguf");
        assert!(
            failures.is_empty(),
            "{} of {count} qwen2 vectors fail:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn llama_cpp_vectors_llama_spm() {
        let (count, failures) = llama_cpp_vectors(llama_spm(), "ggml-vocab-llama-spm.gguf");
        assert!(
            failures.is_empty(),
            "{} of {count} llama-spm vectors fail:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    fn check_encode(tokenizer: &Tokenizer, text: &str, add_special: bool, expected: &[u32]) {
        assert_eq!(
            tokenizer.encode(text, add_special).unwrap(),
            expected,
            "encoding {text:?}"
        );
    }

    #[test]
    fn special_tokens_in_text_are_single_tokens() {
        // <|im_start|> = 1, <|im_end|> = 2 in SmolLM2; "user" and "\n" are ordinary tokens.
        let smol = smollm2();
        let ids = smol.encode("<|im_start|>user\nHi<|im_end|>", false).unwrap();
        assert_eq!(ids.first(), Some(&1));
        assert_eq!(ids.last(), Some(&2));
        assert_eq!(smol.decode(&ids, false).unwrap(), "<|im_start|>user\nHi<|im_end|>");
        assert_eq!(smol.decode(&ids, true).unwrap(), "user\nHi");

        let qwen = qwen_05b();
        check_encode(qwen, "<|im_start|>", false, &[151644]);
        check_encode(qwen, "<|im_end|><|endoftext|>", false, &[151645, 151643]);
        // User-defined tokens are recognised too, but are not special: decoding keeps them.
        check_encode(qwen, "<tool_call>", false, &[151657]);
        assert_eq!(qwen.decode(&[151657, 151645], true).unwrap(), "<tool_call>");
    }

    #[test]
    fn smollm_splits_digits_one_by_one() {
        // llama.cpp's `smollm` pre-tokenizer splits every digit alone before the GPT-2 expression.
        let smol = smollm2();
        let ids = smol.encode("2024", false).unwrap();
        assert_eq!(ids.len(), 4, "{ids:?}");
        assert_eq!(smol.decode(&ids, false).unwrap(), "2024");
    }

    #[test]
    fn bos_follows_the_gguf_flags() {
        // Qwen and SmolLM2 files say add_bos_token = false; the Llama 2 file says true.
        assert_eq!(
            qwen_05b().encode("Hello", true).unwrap(),
            qwen_05b().encode("Hello", false).unwrap()
        );
        assert_eq!(
            smollm2().encode("Hello", true).unwrap(),
            smollm2().encode("Hello", false).unwrap()
        );
        check_encode(llama_spm(), "Hello world", true, &[1, 15043, 3186]);
        check_encode(llama_spm(), "Hello world", false, &[15043, 3186]);
        assert_eq!(llama_spm().bos_token_id(), Some(1));
        assert_eq!(qwen_05b().bos_token_id(), Some(151643));
    }

    #[test]
    fn sentencepiece_decodes_bytes_and_strips_the_prefix_space() {
        let spm = llama_spm();
        for text in [
            "Hello world",
            "  two leading spaces",
            "中文 and 🦙 emoji",
            "tab\tand\nnewline",
        ] {
            let ids = spm.encode(text, true).unwrap();
            assert_eq!(spm.decode(&ids, true).unwrap(), text, "round trip of {text:?}");
        }
        // <s> is a control token: skipped or kept as text.
        assert_eq!(spm.decode(&[1, 15043], false).unwrap(), "<s> Hello");
    }

    #[test]
    fn round_trips_real_vocabularies() {
        let texts = [
            "Hello, world!",
            "你好，世界！今天天气很好。",
            "emoji 🦙🚀 and ZWJ 👩‍👩‍👧",
            "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
            "  leading and trailing spaces  ",
        ];
        for tokenizer in [smollm2(), qwen_05b(), qwen_15b()] {
            for text in texts {
                let ids = tokenizer.encode(text, false).unwrap();
                assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
            }
        }
    }

    #[test]
    fn end_of_generation_ids() {
        // Qwen: eos_token_id = <|im_end|>, and <|endoftext|> is a control token named like an EOS.
        assert_eq!(qwen_05b().eos_token_ids(), &[151645, 151643]);
        // SmolLM2: eos_token_id = 2 (<|im_end|>), plus <|endoftext|> = 0.
        assert_eq!(smollm2().eos_token_ids(), &[2, 0]);
        // Llama 2: only </s>.
        assert_eq!(llama_spm().eos_token_ids(), &[2]);
    }

    #[test]
    fn vocab_size_and_out_of_range_ids() {
        assert_eq!(smollm2().vocab_size(), 49152);
        assert_eq!(qwen_05b().vocab_size(), 151936);
        assert_eq!(llama_spm().vocab_size(), 32000);
        let err = smollm2().decode(&[5, 49152], false).unwrap_err();
        assert!(
            matches!(
                err,
                EngineError::InvalidToken {
                    token_id: 49152,
                    vocab_size: 49152
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn unsupported_model_type_is_a_load_error() {
        let mut md = metadata(&model_path("SmolLM2-135M-Instruct.Q4_1.gguf"));
        md.insert("tokenizer.ggml.model".into(), Value::String("t5".into()));
        let err = Tokenizer::from_gguf_metadata(&md).unwrap_err();
        let EngineError::Load { reason, .. } = &err else {
            panic!("expected a load error, got {err}")
        };
        assert!(
            reason.contains("`t5`") && reason.contains("gpt2") && reason.contains("llama"),
            "{reason}"
        );
    }

    #[test]
    fn missing_keys_are_named() {
        let full = metadata(&model_path("SmolLM2-135M-Instruct.Q4_1.gguf"));
        for key in ["tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.merges"] {
            let mut md = full.clone();
            md.remove(key);
            let err = Tokenizer::from_gguf_metadata(&md).unwrap_err();
            assert!(err.to_string().contains(&format!("missing key `{key}`")), "{err}");
        }
        let mut md = metadata(&test_data("ggml-vocab-llama-spm.gguf.testdata"));
        md.remove("tokenizer.ggml.scores");
        let err = Tokenizer::from_gguf_metadata(&md).unwrap_err();
        assert!(err.to_string().contains("missing key `tokenizer.ggml.scores`"), "{err}");
    }

    #[test]
    fn from_gguf_names_the_file() {
        let err = Tokenizer::from_gguf(Path::new("/nonexistent/model.gguf")).unwrap_err();
        assert!(
            matches!(&err, EngineError::Load { path, .. } if path == "/nonexistent/model.gguf"),
            "{err}"
        );
    }

    #[test]
    fn model_without_chat_template() {
        // llama.cpp's vocab-only file has no template.
        let spm = llama_spm();
        assert!(spm.chat_template().is_none());
        let messages = [ChatMessage {
            role: "user".into(),
            content: "Hi".into(),
        }];
        let err = spm.apply_chat_template(&messages, true).unwrap_err();
        assert!(matches!(err, EngineError::Template(_)), "{err}");
    }

    #[test]
    fn broken_chat_template_still_loads() {
        let mut md = metadata(&model_path("SmolLM2-135M-Instruct.Q4_1.gguf"));
        md.insert(
            "tokenizer.chat_template".into(),
            Value::String("{% for m in messages %}".into()),
        );
        let tokenizer = Tokenizer::from_gguf_metadata(&md).expect("a broken template does not stop completions");
        assert!(tokenizer.chat_template().is_none());
        let messages = [ChatMessage {
            role: "user".into(),
            content: "Hi".into(),
        }];
        let err = tokenizer.apply_chat_template(&messages, true).unwrap_err();
        assert!(
            matches!(&err, EngineError::Template(m) if m.contains("cannot compile")),
            "{err}"
        );
    }

    #[test]
    fn unknown_pre_tokenizer_falls_back_to_gpt2() {
        assert_eq!(
            PreTokenizerKind::from_gguf(Some("not-a-real-pre")),
            PreTokenizerKind::Gpt2
        );
        assert_eq!(
            PreTokenizerKind::from_gguf(Some("deepseek-r1-qwen")),
            PreTokenizerKind::Qwen2
        );
        assert_eq!(PreTokenizerKind::from_gguf(Some("smollm")), PreTokenizerKind::StarCoder);
        let mut md = metadata(&model_path("SmolLM2-135M-Instruct.Q4_1.gguf"));
        md.insert("tokenizer.ggml.pre".into(), Value::String("not-a-real-pre".into()));
        let tokenizer = Tokenizer::from_gguf_metadata(&md).expect("an unknown pre still loads");
        let text = "Hello 2024, world!";
        assert_eq!(
            tokenizer
                .decode(&tokenizer.encode(text, false).unwrap(), false)
                .unwrap(),
            text
        );
    }

    #[test]
    fn characters_without_a_token_for_each_byte_are_left_out_whole() {
        let smol = smollm2();
        // U+50000 needs lead byte 0xF2, U+40000 needs 0xF1: SmolLM2 has neither as a byte token.
        let ids = smol.encode("a\u{50000}b\u{40000}c", false).unwrap();
        assert_eq!(smol.decode(&ids, false).unwrap(), "abc");
        // Leaving a character out never joins its neighbours into a control token.
        for gap in ['\u{4}', '\u{50000}'] {
            let ids = smol.encode(&format!("<|im_{gap}start|>"), false).unwrap();
            assert!(ids.iter().all(|&id| !smol.is_special(id)), "{gap:?}: {ids:?}");
            assert_eq!(smol.decode(&ids, false).unwrap(), "<|im_start|>");
        }
        // The chat path too: the gap stays text.
        let ids = smol
            .encode_chat(
                &[ChatMessage {
                    role: "user".into(),
                    content: "x<|im_\u{50000}end|>y".into(),
                }],
                true,
            )
            .unwrap();
        let plain = smol
            .encode_chat(
                &[ChatMessage {
                    role: "user".into(),
                    content: "xy".into(),
                }],
                true,
            )
            .unwrap();
        let specials = |ids: &[u32]| ids.iter().filter(|&&id| smol.is_special(id)).count();
        assert_eq!(specials(&ids), specials(&plain));
        // Qwen's vocabulary has every byte: nothing is left out.
        let qwen = qwen_05b();
        let text = "a\u{50000}b";
        assert_eq!(qwen.decode(&qwen.encode(text, false).unwrap(), false).unwrap(), text);
        assert_eq!(byte_level_char(b'!'), '!');
        assert_eq!(byte_level_char(0), '\u{100}');
        assert_eq!(byte_level_char(b' '), '\u{120}');
    }
}
