//! What the fuzz targets in `fuzz/` run (a chat through the tokenizer and chat template, a model file
//! through every load check), and the tests that replay their committed inputs. Each function panics only
//! where an invariant breaks: bad input must get an error. Not an API; hidden from the docs.

use std::path::Path;

use crate::{ChatMessage, Tokenizer};

/// The private-use characters `encode_chat` may use as sentinels (U+F0000 to U+FFFFD).
const SENTINELS: std::ops::RangeInclusive<u32> = 0xF0000..=0xFFFFD;

/// The most messages one input becomes.
const MAX_MESSAGES: usize = 16;

/// The chat `data` describes: byte 0 holds `add_generation_prompt` (bit 0) and which tokenizer to use (the
/// bits above, modulo their number); the rest, read lossily as UTF-8, is split at NUL into role, content,
/// role, content, … (a missing last content is empty).
pub fn chat_messages(data: &[u8]) -> (Vec<ChatMessage>, bool, usize) {
    let Some((flags, rest)) = data.split_first() else {
        return (Vec::new(), false, 0);
    };
    let text = String::from_utf8_lossy(rest);
    let mut fields = text.split('\0');
    let mut messages = Vec::new();
    while let Some(role) = fields.next() {
        if messages.len() == MAX_MESSAGES {
            break;
        }
        messages.push(ChatMessage {
            role: role.to_owned(),
            content: fields.next().unwrap_or_default().to_owned(),
        });
    }
    (messages, flags & 1 == 1, usize::from(flags >> 1))
}

/// The chat `data` describes (see [`chat_messages`]) rendered and encoded with one of `tokenizers` as every
/// chat prompt is (`encode_chat`). A template may refuse a chat (an error); otherwise:
/// - no text typed in a message or role becomes a control token: the control tokens are exactly those of
///   the same chat with every control-token text in it replaced by U+FFFD;
/// - every id decodes, and the ids spell the rendered prompt (unless a message holds one of the private-use
///   characters `encode_chat` uses as sentinels, which it documents as coming back as control-token text).
pub fn chat(tokenizers: &[&Tokenizer], data: &[u8]) {
    let (messages, add_generation_prompt, pick) = chat_messages(data);
    let Some(tokenizer) = tokenizers.get(pick % tokenizers.len().max(1)) else {
        return;
    };
    let Ok(ids) = tokenizer.encode_chat(&messages, add_generation_prompt) else {
        return;
    };
    let stripped: Option<Vec<ChatMessage>> = messages
        .iter()
        .map(|m| {
            Some(ChatMessage {
                role: tokenizer.control().strip(&m.role)?,
                content: tokenizer.control().strip(&m.content)?,
            })
        })
        .collect();
    if let Some(Ok(stripped_ids)) = stripped.map(|stripped| tokenizer.encode_chat(&stripped, add_generation_prompt)) {
        let control =
            |ids: &[u32]| -> Vec<u32> { ids.iter().copied().filter(|&id| tokenizer.is_special(id)).collect() };
        assert_eq!(
            control(&ids),
            control(&stripped_ids),
            "text typed in a message became a control token"
        );
    }
    let decoded = tokenizer.decode(&ids, false).expect("ids from encode_chat decode");
    let sentinel = |m: &ChatMessage| {
        m.role
            .chars()
            .chain(m.content.chars())
            .any(|c| SENTINELS.contains(&(c as u32)))
    };
    if !messages.iter().any(sentinel) {
        let rendered = tokenizer
            .apply_chat_template(&messages, add_generation_prompt)
            .expect("the template rendered this chat in encode_chat");
        // A character the vocabulary cannot spell, byte by byte, is left out (see `Tokenizer::encode`).
        let unencodable = |c: char| tokenizer.encode(&c.to_string(), false).is_ok_and(|ids| ids.is_empty());
        let rendered: String = rendered.chars().filter(|&c| !unencodable(c)).collect();
        assert_eq!(decoded, rendered, "the prompt ids do not spell the rendered prompt");
    }
}

/// `path` (a file the fuzzer wrote) through every check a model load makes (`check_model`: header,
/// hyperparameters, tokenizer and chat template, tensor shapes and values); it may fail, never panic.
pub fn model_file(path: &Path) {
    let _ = crate::check_model(path);
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::tokenizer::tests::{qwen_05b, smollm2};

    /// Every file of the committed corpus and regressions of fuzz target `target` (`fuzz/corpus/TARGET`,
    /// `fuzz/regressions/TARGET`).
    fn committed_inputs(target: &str) -> Vec<PathBuf> {
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut inputs: Vec<PathBuf> = ["corpus", "regressions"]
            .iter()
            .filter_map(|dir| std::fs::read_dir(fuzz.join(dir).join(target)).ok())
            .flat_map(|entries| entries.flatten().map(|entry| entry.path()))
            .filter(|path| path.is_file())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "no committed inputs for fuzz target {target}");
        inputs
    }

    /// The committed inputs of `target` (each crash a fuzz run found stays there) pass again.
    fn replay(target: &str, run: impl Fn(&Path)) {
        for path in committed_inputs(target) {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&path))).is_err() {
                panic!("fuzz input {} fails again", path.display());
            }
        }
    }

    #[test]
    fn chat_corpus_replays() {
        let tokenizers = [smollm2(), qwen_05b()];
        replay("chat", |path| chat(&tokenizers, &std::fs::read(path).unwrap()));
    }

    #[test]
    fn gguf_corpus_replays() {
        replay("gguf", model_file);
        // The seeds are complete models (fuzz/make_gguf_seeds.py), so the fuzzer starts from files that
        // pass every check and mutates its way into each one.
        for seed in ["llama-f32", "qwen2-f32", "llama-q8_0"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../fuzz/corpus/gguf")
                .join(seed);
            if let Err(err) = crate::check_model(&path) {
                panic!("seed {seed} does not load: {err}");
            }
        }
    }

    #[test]
    fn chat_inputs_are_read_as_documented() {
        let (messages, add_generation_prompt, pick) = chat_messages(b"\x03user\0hi\0assistant");
        assert!(add_generation_prompt);
        assert_eq!(pick, 1);
        assert_eq!(
            messages,
            [
                ChatMessage {
                    role: "user".into(),
                    content: "hi".into()
                },
                ChatMessage {
                    role: "assistant".into(),
                    content: String::new()
                },
            ]
        );
    }
}
