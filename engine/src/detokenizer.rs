//! Incremental detokenization of one generation stream.
//!
//! Decoding token by token does not work: a token may be part of a UTF-8 character (byte-fallback tokens,
//! byte-level BPE pieces of a Chinese character or an emoji), and SentencePiece decoders treat the first token
//! of a text differently (they drop its leading space). So, like text-generation-inference's
//! `prefix_offset`/`read_offset` scheme and candle's `TokenOutputStream`, we decode a small window twice: the
//! tokens already emitted in the last chunk (`prefix`), and the same plus the new ones. The text the second has
//! beyond the first is what the new tokens add; it is emitted once it does not end in U+FFFD (an incomplete
//! character), and the window then slides forward.
//!
//! ```text
//!   ids:  ... | emitted last time | not yet emitted |
//!             ^ window start      ^ read
//!   emit decode(window)[len(decode(window[..read]))..]
//! ```

use crate::{EngineError, Tokenizer};

/// After this many tokens without a complete character, emit what we have (its U+FFFD included). A real
/// character takes at most 4 byte tokens, so only a model emitting invalid bytes gets here; the limit keeps
/// each `push` O(window) even then.
const MAX_PENDING_TOKENS: usize = 16;

/// Turns one stream of generated token ids into text chunks; see the module docs.
///
/// Concatenating every [`push`](Detokenizer::push) result and the [`finish`](Detokenizer::finish) result gives
/// `tokenizer.decode(all_ids, skip_special_tokens)`, except when the stream is cut inside a multi-byte character
/// sequence that `decode` would render differently as a whole; `finish` then yields the cut part as U+FFFD.
#[derive(Debug, Clone)]
pub struct Detokenizer {
    skip_special_tokens: bool,
    /// The window: ids emitted in the last chunk, then ids not emitted yet. Older ids are dropped.
    ids: Vec<u32>,
    /// `ids[..read]` have been emitted.
    read: usize,
    /// `decode(ids[..read])`, computed once per window.
    prefix_text: Option<String>,
}

impl Detokenizer {
    /// A detokenizer for one stream; with `skip_special_tokens`, control tokens produce no text.
    pub fn new(skip_special_tokens: bool) -> Self {
        Self {
            skip_special_tokens,
            ids: Vec::new(),
            read: 0,
            prefix_text: None,
        }
    }

    /// Add one generated token; returns the text it completes, possibly empty (part of a character, a
    /// skipped special token, or a SentencePiece space waiting for its word).
    pub fn push(&mut self, tokenizer: &Tokenizer, token_id: u32) -> Result<String, EngineError> {
        if token_id as usize >= tokenizer.vocab_size() {
            return Err(EngineError::InvalidToken {
                token_id,
                vocab_size: tokenizer.vocab_size(),
            });
        }
        if self.skip_special_tokens && tokenizer.is_special(token_id) {
            // `decode` drops skipped tokens before its decoder runs, so leaving them out of the window changes
            // nothing and keeps it small.
            return Ok(String::new());
        }
        self.ids.push(token_id);
        let prefix_len = self.prefix_text(tokenizer)?.len();
        let text = tokenizer.decode(&self.ids, self.skip_special_tokens)?;
        let pending = self.ids.len() - self.read;
        let complete = text.len() > prefix_len && !text.ends_with('\u{FFFD}');
        if !complete && pending < MAX_PENDING_TOKENS {
            return Ok(String::new());
        }
        let chunk = self.suffix(text);
        // Slide: the tokens just emitted become the prefix of the next window.
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        self.prefix_text = None;
        Ok(chunk)
    }

    /// End of stream: whatever is still held back (an incomplete character comes out as U+FFFD). Resets the
    /// detokenizer for a new stream.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String, EngineError> {
        let rest = if self.read < self.ids.len() {
            let prefix = self.prefix_text(tokenizer)?.to_owned();
            let text = tokenizer.decode(&self.ids, self.skip_special_tokens)?;
            if text.starts_with(&prefix) {
                text[prefix.len()..].to_owned()
            } else {
                // The decoder rendered the window differently as a whole (a byte-fallback run that a cut
                // character makes invalid); the emitted part stands, the rest is decoded alone.
                tokenizer.decode(&self.ids[self.read..], self.skip_special_tokens)?
            }
        } else {
            String::new()
        };
        *self = Self::new(self.skip_special_tokens);
        Ok(rest)
    }

    fn prefix_text(&mut self, tokenizer: &Tokenizer) -> Result<&str, EngineError> {
        if self.prefix_text.is_none() {
            self.prefix_text = Some(tokenizer.decode(&self.ids[..self.read], self.skip_special_tokens)?);
        }
        Ok(self.prefix_text.as_deref().expect("set just above"))
    }

    /// The part of `text` after the window's prefix text.
    fn suffix(&self, mut text: String) -> String {
        let prefix = self
            .prefix_text
            .as_deref()
            .expect("computed before decoding the window");
        if text.starts_with(prefix) {
            return text.split_off(prefix.len());
        }
        // Not expected from the decoders we build; emit from the first difference rather than panic.
        let common = text
            .char_indices()
            .zip(prefix.chars())
            .take_while(|((_, a), b)| a == b)
            .count();
        let start = text.char_indices().nth(common).map_or(text.len(), |(i, _)| i);
        tracing::debug!(prefix, text, "detokenizer window does not extend its prefix");
        text.split_off(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::tests::{llama_spm, qwen_05b, smollm2};

    /// Stream `ids` through a detokenizer; returns the chunks (the last one from `finish`).
    fn stream(tokenizer: &Tokenizer, ids: &[u32], skip: bool) -> Vec<String> {
        let mut detokenizer = Detokenizer::new(skip);
        let mut chunks: Vec<String> = ids.iter().map(|&id| detokenizer.push(tokenizer, id).unwrap()).collect();
        chunks.push(detokenizer.finish(tokenizer).unwrap());
        chunks
    }

    /// The streaming property: chunks concatenate to `decode(ids)`, and no chunk splits a character (each is
    /// a `String`, so that holds by construction) or carries U+FFFD that `decode` does not have.
    fn check_stream(tokenizer: &Tokenizer, text: &str, add_special: bool) {
        let ids = tokenizer.encode(text, add_special).unwrap();
        for skip in [true, false] {
            let chunks = stream(tokenizer, &ids, skip);
            let expected = tokenizer.decode(&ids, skip).unwrap();
            assert_eq!(
                chunks.concat(),
                expected,
                "stream of {text:?} (skip_special_tokens = {skip})"
            );
            assert!(chunks.iter().all(|chunk| !chunk.contains('\u{FFFD}')), "{chunks:?}");
        }
    }

    const TEXTS: &[&str] = &[
        "Hello, world! How are you today?",
        "你好，世界！今天天气很好，我们去公园散步吧。",
        "emoji: 🦙🚀😶‍🌫️ 👩‍👩‍👧 ✅ and flags 🇫🇷🇯🇵",
        "mixed 中文 and English, numbers 1234567 and code `fn main() {}`",
        "  leading spaces, trailing spaces  \n\n\ttabs\r\n",
        "Ünïcödé àccénts and ßtraße, Кириллица, العربية, हिन्दी",
    ];

    #[test]
    fn stream_matches_decode_gpt2_vocabularies() {
        for tokenizer in [smollm2(), qwen_05b()] {
            for text in TEXTS {
                check_stream(tokenizer, text, false);
            }
            check_stream(tokenizer, "<|im_start|>assistant\n你好<|im_end|><|endoftext|>", false);
        }
    }

    #[test]
    fn stream_matches_decode_sentencepiece() {
        for text in TEXTS {
            check_stream(llama_spm(), text, true);
        }
        check_stream(llama_spm(), "</s>after an EOS", true);
    }

    #[test]
    fn byte_fallback_characters_wait_until_complete() {
        // Llama 2 has no token for 🦙: it is four byte tokens <0xF0> <0x9F> <0xA6> <0x99> (ids 3 + byte).
        let spm = llama_spm();
        let ids = spm.encode("a🦙", false).unwrap();
        assert_eq!(&ids[ids.len() - 4..], &[3 + 0xF0, 3 + 0x9F, 3 + 0xA6, 3 + 0x99]);
        let chunks = stream(spm, &ids, true);
        let n = chunks.len();
        assert_eq!(&chunks[n - 5..], &["", "", "", "🦙", ""], "{chunks:?}");
    }

    #[test]
    fn chinese_streams_in_whole_characters() {
        // Qwen's byte-level pieces can end inside a character; every chunk must still be whole characters,
        // and every character must come out as soon as its last byte arrives.
        let qwen = qwen_05b();
        let text = "龘靐齉爩麤 — rare characters take several byte-level tokens each";
        let ids = qwen.encode(text, false).unwrap();
        let chunks = stream(qwen, &ids, true);
        assert_eq!(chunks.concat(), text);
        assert!(
            chunks.iter().any(String::is_empty),
            "some token ends inside a character: {chunks:?}"
        );
        assert_eq!(
            chunks.last().map(String::as_str),
            Some(""),
            "nothing held back at the end"
        );
    }

    #[test]
    fn finish_flushes_a_cut_character_as_replacement() {
        let spm = llama_spm();
        // The first two of 🦙's four byte tokens, then end of stream.
        let mut detokenizer = Detokenizer::new(true);
        assert_eq!(detokenizer.push(spm, 3 + 0xF0).unwrap(), "");
        assert_eq!(detokenizer.push(spm, 3 + 0x9F).unwrap(), "");
        let rest = detokenizer.finish(spm).unwrap();
        assert!(!rest.is_empty() && rest.chars().all(|c| c == '\u{FFFD}'), "{rest:?}");
        // finish resets: the detokenizer can serve a new stream.
        assert_eq!(detokenizer.push(spm, 15043).unwrap(), "Hello");
    }

    #[test]
    fn window_stays_small() {
        let qwen = qwen_05b();
        let text = TEXTS.concat().repeat(20);
        let ids = qwen.encode(&text, false).unwrap();
        let mut detokenizer = Detokenizer::new(true);
        let mut out = String::new();
        for &id in &ids {
            out.push_str(&detokenizer.push(qwen, id).unwrap());
            assert!(
                detokenizer.ids.len() <= 2 * MAX_PENDING_TOKENS,
                "window of {} ids",
                detokenizer.ids.len()
            );
        }
        out.push_str(&detokenizer.finish(qwen).unwrap());
        assert_eq!(out, text);
    }

    #[test]
    fn skipped_special_tokens_never_enter_the_window() {
        let smol = smollm2();
        let mut detokenizer = Detokenizer::new(true);
        for _ in 0..100 {
            assert_eq!(detokenizer.push(smol, 2).unwrap(), ""); // <|im_end|>
        }
        assert!(detokenizer.ids.is_empty());
        assert!(
            detokenizer.push(smol, 1_000_000).is_err(),
            "out-of-range ids are errors"
        );
    }
}
