//! Chat prompts in which what people typed stays text.
//!
//! Rendering a chat template gives one string, and encoding it with control-token parsing on (as a template's
//! own `<|im_start|>` needs) would also turn a `<|im_start|>` typed inside a message into the control token:
//! one member of a group chat could forge turns for the others. [`ControlTokens::encode_chat`] keeps them
//! apart: control-token texts inside message contents (and roles) are swapped for private-use sentinels
//! before rendering, the rendered prompt is split at the control tokens the template itself wrote, and each
//! piece between them is encoded with the sentinels put back and control-token parsing off (user-defined
//! added tokens still match, as llama.cpp's `parse_special = false` does). Messages without control-token
//! text take the plain path (render, then encode), so their ids are exactly what they always were.

use std::sync::OnceLock;

use aho_corasick::{AhoCorasick, MatchKind};

use crate::chat_template::{ChatMessage, ChatTools};
use crate::EngineError;

/// The first sentinel: Supplementary Private Use Area-A, which no tokenizer gives meaning to. A message
/// that already holds one of these characters gets it back as the control token's *text* (never the token).
const SENTINEL_BASE: u32 = 0xF0000;
/// Sentinels available (U+F0000 to U+FFFFD).
const SENTINELS: usize = 0xFFFE;

/// The vocabulary's control tokens and what encodes text without them.
pub(crate) struct ControlTokens {
    /// Finds control-token texts, leftmost-longest as the tokenizer's added-token split does.
    automaton: AhoCorasick,
    /// The id and text of each pattern of `automaton`.
    tokens: Vec<(u32, String)>,
    /// A copy of the tokenizer with control-token parsing off, built the first time a message needs it.
    text_only: OnceLock<tokenizers::Tokenizer>,
}

impl ControlTokens {
    /// The control tokens `(id, text)` of a vocabulary (empty texts are left out: they match nothing).
    pub(crate) fn new(tokens: impl IntoIterator<Item = (u32, String)>) -> Result<Self, String> {
        let tokens: Vec<(u32, String)> = tokens.into_iter().filter(|(_, t)| !t.is_empty()).collect();
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(tokens.iter().map(|(_, t)| t))
            .map_err(|e| format!("cannot index the control tokens: {e}"))?;
        Ok(Self {
            automaton,
            tokens,
            text_only: OnceLock::new(),
        })
    }

    /// Render `messages` (with `tools`) with `render` and encode the result with `inner` (control-token
    /// parsing on) such that only the template's own control tokens become control tokens. Every string of
    /// `tools` (tool definitions, tool calls, tool results) is kept apart as message text is.
    pub(crate) fn encode_chat(
        &self,
        inner: &tokenizers::Tokenizer,
        messages: &[ChatMessage],
        tools: &ChatTools,
        render: impl Fn(&[ChatMessage], &ChatTools) -> Result<String, EngineError>,
    ) -> Result<Vec<u32>, EngineError> {
        let forged = |s: &str| self.automaton.is_match(s);
        let forged_json = |v: &serde_json::Value| json_strings_any(v, &forged);
        let forged_tools = tools.tools.iter().any(forged_json)
            || tools
                .extras
                .iter()
                .flatten()
                .any(|extras| extras.iter().any(|(k, v)| forged(k) || forged_json(v)));
        if !forged_tools && !messages.iter().any(|m| forged(&m.content) || forged(&m.role)) {
            return encode(inner, &render(messages, tools)?);
        }
        if self.tokens.len() > SENTINELS {
            return Err(EngineError::Tokenizer(format!(
                "{} control tokens are more than the {SENTINELS} sentinels that keep message text apart",
                self.tokens.len()
            )));
        }
        let hide = |s: &str| {
            let mut out = String::with_capacity(s.len());
            let mut last = 0;
            for m in self.automaton.find_iter(s) {
                out.push_str(&s[last..m.start()]);
                out.push(sentinel(m.pattern().as_usize()));
                last = m.end();
            }
            out.push_str(&s[last..]);
            out
        };
        let hidden: Vec<ChatMessage> = messages
            .iter()
            .map(|m| ChatMessage {
                role: hide(&m.role),
                content: hide(&m.content),
            })
            .collect();
        let hidden_tools = ChatTools {
            tools: tools.tools.iter().map(|v| json_strings_map(v, &hide)).collect(),
            extras: tools
                .extras
                .iter()
                .map(|extras| {
                    extras
                        .as_ref()
                        .map(|m| m.iter().map(|(k, v)| (hide(k), json_strings_map(v, &hide))).collect())
                })
                .collect(),
        };
        let rendered = render(&hidden, &hidden_tools)?;
        let mut ids = Vec::new();
        let mut last = 0;
        for m in self.automaton.find_iter(&rendered) {
            self.encode_text(inner, &rendered[last..m.start()], &mut ids)?;
            ids.push(self.tokens[m.pattern().as_usize()].0);
            last = m.end();
        }
        self.encode_text(inner, &rendered[last..], &mut ids)?;
        Ok(ids)
    }

    /// `text` with every control-token text in it replaced by U+FFFD, repeated while replacing forms new
    /// ones (what a message says without any forged turn; the fuzz target compares the control tokens of
    /// the two); `None` if some still remain after a few rounds.
    pub(crate) fn strip(&self, text: &str) -> Option<String> {
        let mut text = text.to_owned();
        let replacement = vec!["\u{FFFD}"; self.tokens.len()];
        for _ in 0..8 {
            if !self.automaton.is_match(&text) {
                return Some(text);
            }
            text = self.automaton.replace_all(&text, &replacement);
        }
        (!self.automaton.is_match(&text)).then_some(text)
    }

    /// Append the ids of `piece` (no template control token in it), with sentinels turned back into the
    /// texts they hid and encoded as text.
    fn encode_text(&self, inner: &tokenizers::Tokenizer, piece: &str, ids: &mut Vec<u32>) -> Result<(), EngineError> {
        let range = SENTINEL_BASE..SENTINEL_BASE + self.tokens.len() as u32;
        if !piece.chars().any(|c| range.contains(&(c as u32))) {
            ids.extend(encode(inner, piece)?);
            return Ok(());
        }
        let restored: String = piece
            .chars()
            .map(|c| match range.contains(&(c as u32)) {
                true => self.tokens[(c as u32 - SENTINEL_BASE) as usize].1.clone(),
                false => c.to_string(),
            })
            .collect();
        let text_only = self.text_only.get_or_init(|| {
            let mut t = inner.clone();
            t.set_encode_special_tokens(true);
            t
        });
        ids.extend(encode(text_only, &restored)?);
        Ok(())
    }
}

/// Whether any string (or object key) in `value` satisfies `test`.
fn json_strings_any(value: &serde_json::Value, test: &impl Fn(&str) -> bool) -> bool {
    match value {
        serde_json::Value::String(s) => test(s),
        serde_json::Value::Array(items) => items.iter().any(|v| json_strings_any(v, test)),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| test(k) || json_strings_any(v, test)),
        _ => false,
    }
}

/// `value` with every string (and object key) passed through `map`.
fn json_strings_map(value: &serde_json::Value, map: &impl Fn(&str) -> String) -> serde_json::Value {
    match value {
        serde_json::Value::String(s) => serde_json::Value::String(map(s)),
        serde_json::Value::Array(items) => items.iter().map(|v| json_strings_map(v, map)).collect(),
        serde_json::Value::Object(object) => object.iter().map(|(k, v)| (map(k), json_strings_map(v, map))).collect(),
        other => other.clone(),
    }
}

/// The sentinel standing for control token `i` (`i` < [`SENTINELS`]).
fn sentinel(i: usize) -> char {
    char::from_u32(SENTINEL_BASE + i as u32).expect("U+F0000..U+FFFFD are characters")
}

fn encode(tokenizer: &tokenizers::Tokenizer, text: &str) -> Result<Vec<u32>, EngineError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    tokenizer
        .encode_fast(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|err| EngineError::Tokenizer(format!("cannot encode text: {err}")))
}
