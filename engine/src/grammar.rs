//! Structured output: a [`ResponseFormat`] compiled into a [`Grammar`] that masks each step's logits, so the
//! output is always a prefix of a document the format allows (OpenAI's `response_format`).
//!
//! The work is done by llguidance: a JSON schema becomes a grammar over bytes, and at each step its parser
//! walks a trie of the vocabulary's token bytes ([`Tokenizer::token_bytes`]) to find the tokens that keep the
//! output valid. The trie and llguidance's `ParserFactory` are built once per engine, on the first request
//! that asks for a format ([`GrammarCompiler`]); compiling one schema takes milliseconds and is bounded by
//! llguidance's `ParserLimits` (grammar size, lexer states, fuel), so a schema too large or too ambiguous to
//! enforce is refused with [`EngineError::ResponseFormat`] instead of stalling a step.
//!
//! Batch invariance: a mask is computed from one sequence's own tokens and applied to its own row of logits
//! after the forward pass, so it never changes what other sequences in the batch compute. A preempted
//! sequence keeps its grammar state (it lives with the request, not in the KV cache), so its recompute
//! continues from the same place.
//!
//! JSON is generated compactly (`", "` and `": "` separators, no other whitespace): a small model offered
//! free whitespace can spend its whole `max_tokens` on newlines.

use std::sync::Arc;
use std::time::{Duration, Instant};

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::{self, InferenceCapabilities, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use crate::{EngineError, Tokenizer};

/// The largest JSON schema accepted, in bytes of its JSON text.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;

/// What the output must be.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    /// Any JSON object (`{"type": "json_object"}`).
    JsonObject,
    /// A JSON value valid against this JSON schema (`{"type": "json_schema", "json_schema": {"schema": …}}`).
    JsonSchema(serde_json::Value),
}

/// A compiled [`ResponseFormat`] with its parser state: put it in [`crate::GenerateRequest::grammar`]. Made
/// by [`crate::EngineHandle::compile_grammar`]; one per request (it tracks that request's output).
pub struct Grammar {
    matcher: Matcher,
    /// How long compiling took (for logs and tests).
    compile_time: Duration,
}

impl Clone for Grammar {
    /// An independent copy: parser state and lexer caches are not shared with the original.
    fn clone(&self) -> Self {
        Self {
            matcher: self.matcher.deep_clone(),
            compile_time: self.compile_time,
        }
    }
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammar")
            .field("compile_time", &self.compile_time)
            .finish_non_exhaustive()
    }
}

impl Grammar {
    /// How long compiling the format took.
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// Set the logits of every token the grammar does not allow next to -inf. When the document is complete
    /// only the end-of-sequence tokens stay allowed.
    pub(crate) fn mask(&mut self, logits: &mut [f32]) -> Result<(), EngineError> {
        let allowed = self.matcher.compute_mask_or_eos().map_err(grammar_failed)?;
        let n = allowed.len().min(logits.len());
        let (known, beyond) = logits.split_at_mut(n);
        allowed.iter_unset_entries(|i| {
            if let Some(l) = known.get_mut(i) {
                *l = f32::NEG_INFINITY;
            }
        });
        // Padding rows of the output layer have no text.
        beyond.fill(f32::NEG_INFINITY);
        Ok(())
    }

    /// Advance past the sampled token.
    pub(crate) fn consume(&mut self, token: u32) -> Result<(), EngineError> {
        if self.matcher.is_stopped() {
            // Complete: what follows is end-of-sequence tokens (only with `ignore_eos`).
            return Ok(());
        }
        self.matcher.consume_token(token).map_err(grammar_failed)
    }
}

fn grammar_failed(err: impl std::fmt::Display) -> EngineError {
    EngineError::Model(format!("constrained decoding failed: {err}"))
}

/// Builds [`Grammar`]s for one tokenizer: the vocabulary's byte trie and llguidance's factory.
pub(crate) struct GrammarCompiler {
    factory: ParserFactory,
}

impl GrammarCompiler {
    /// Build the token trie of `tokenizer` (tens of milliseconds for a 50k vocabulary).
    pub(crate) fn new(tokenizer: &Tokenizer) -> Result<Self, EngineError> {
        let words = tokenizer.token_bytes();
        let eos = tokenizer.eos_token_ids();
        let Some(&first_eos) = eos.first() else {
            return Err(EngineError::ResponseFormat(
                "this model's vocabulary has no end-of-sequence token, so no output could end".into(),
            ));
        };
        let info = TokRxInfo::new(words.len() as u32, first_eos);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(eos);
        let env: TokEnv = Arc::new(TrieEnv { trie });
        let mut factory = ParserFactory::new(
            &env,
            InferenceCapabilities::default(),
            &llguidance::earley::SlicedBiasComputer::general_slices(),
        )
        .map_err(|e| EngineError::ResponseFormat(format!("cannot prepare the vocabulary: {e}")))?;
        factory.quiet();
        *factory.limits_mut() = ParserLimits {
            // Errors go to clients: the grammar and parser state would be noise (and echo the schema).
            verbose_errors: false,
            ..ParserLimits::default()
        };
        Ok(Self { factory })
    }

    /// Compile `format`. A schema llguidance cannot enforce (unknown keywords it cannot ignore safely,
    /// unsatisfiable, remote `$ref`, over the size and effort limits) is [`EngineError::ResponseFormat`].
    pub(crate) fn compile(&self, format: &ResponseFormat) -> Result<Grammar, EngineError> {
        let start = Instant::now();
        let mut schema = match format {
            ResponseFormat::JsonObject => serde_json::json!({"type": "object"}),
            ResponseFormat::JsonSchema(schema) => schema.clone(),
        };
        let size = schema.to_string().len();
        if size > MAX_SCHEMA_BYTES {
            return Err(EngineError::ResponseFormat(format!(
                "the schema is {size} bytes; at most {MAX_SCHEMA_BYTES} are accepted"
            )));
        }
        match &mut schema {
            serde_json::Value::Object(map) => {
                // Compact JSON (see the module doc); overrides any `x-guidance` the client sent.
                map.insert(
                    "x-guidance".into(),
                    serde_json::json!({
                        "whitespace_flexible": false,
                        "item_separator": ", ",
                        "key_separator": ": ",
                    }),
                );
            }
            serde_json::Value::Bool(_) => {}
            other => {
                return Err(EngineError::ResponseFormat(format!(
                    "a JSON schema is an object or a boolean, not {other}"
                )))
            }
        }
        let parser = self
            .factory
            .create_parser(TopLevelGrammar::from_json_schema(schema))
            .map_err(|e| EngineError::ResponseFormat(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(err) = matcher.get_error() {
            return Err(EngineError::ResponseFormat(err));
        }
        Ok(Grammar {
            matcher,
            compile_time: start.elapsed(),
        })
    }
}

/// The vocabulary as llguidance sees it: the trie, and greedy tokenizing over it (used only for the fixed
/// strings of a grammar; canonical tokenization is not required by masking).
struct TrieEnv {
    trie: TokTrie,
}

impl TokenizerEnv for TrieEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<toktrie::TokenId> {
        self.trie.greedy_tokenize(s)
    }

    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> Tokenizer {
        let home = std::env::var_os("HOME").expect("HOME is set");
        let dir = std::env::var_os("HEARTH_MODELS_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from(home).join(".cache/hearth/models"));
        Tokenizer::from_gguf(&dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")).expect("SmolLM2 is fetched")
    }

    #[test]
    fn token_bytes_spell_the_text_back() {
        let tok = smollm2();
        let bytes = tok.token_bytes();
        assert_eq!(bytes.len(), tok.vocab_size());
        let text = "{\"naïve\": [1, 2.5e3], \"城\": \"a\\nb\"}\n\ttabs  and spaces";
        let spelled: Vec<u8> = tok
            .encode(text, false)
            .unwrap()
            .iter()
            .flat_map(|&id| bytes[id as usize].clone())
            .collect();
        assert_eq!(String::from_utf8(spelled).unwrap(), text);
        for &eos in tok.eos_token_ids() {
            assert_eq!(bytes[eos as usize][0], 0xFF, "control tokens are never text");
        }
    }

    /// Walks a valid document token by token: each token is allowed by the mask before it, and the mask ends
    /// with only end-of-sequence allowed. Prints the mean time of one mask (`--nocapture`).
    #[test]
    fn masks_allow_a_valid_document_and_nothing_else_at_its_end() {
        let tok = smollm2();
        let compiler = GrammarCompiler::new(&tok).unwrap();
        let schema = serde_json::json!({
            "type": "object",
            "properties": {"name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "integer"}}},
            "required": ["name", "tags"],
        });
        let mut grammar = compiler.compile(&ResponseFormat::JsonSchema(schema)).unwrap();
        let doc = r#"{"name": "Ada Lovelace", "tags": [1, 22, 333]}"#;
        let ids = tok.encode(doc, false).unwrap();
        let mut total = Duration::ZERO;
        for &id in &ids {
            let mut logits = vec![0.0f32; tok.vocab_size() + 64];
            let start = Instant::now();
            grammar.mask(&mut logits).unwrap();
            total += start.elapsed();
            assert!(
                logits[id as usize].is_finite(),
                "{:?} is masked out",
                tok.decode(&[id], false)
            );
            assert!(
                logits[tok.vocab_size()..].iter().all(|l| l.is_infinite()),
                "padding rows"
            );
            grammar.consume(id).unwrap();
        }
        let mut logits = vec![0.0f32; tok.vocab_size()];
        grammar.mask(&mut logits).unwrap();
        let allowed: Vec<u32> = (0..logits.len() as u32)
            .filter(|&i| logits[i as usize].is_finite())
            .collect();
        assert!(
            !allowed.is_empty() && allowed.iter().all(|id| tok.eos_token_ids().contains(id)),
            "{allowed:?}"
        );
        println!(
            "{} masks, mean {:.1} µs; compile {:?}",
            ids.len(),
            total.as_secs_f64() * 1e6 / ids.len() as f64,
            grammar.compile_time()
        );

        // A fresh grammar refuses a document that does not start with `{`.
        let mut fresh = compiler.compile(&ResponseFormat::JsonObject).unwrap();
        let mut logits = vec![0.0f32; tok.vocab_size()];
        fresh.mask(&mut logits).unwrap();
        let hello = tok.encode("Hello", false).unwrap()[0];
        assert!(logits[hello as usize].is_infinite());
        assert!(fresh.consume(hello).is_err());
    }
}
