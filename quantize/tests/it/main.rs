//! Integration tests of the quantize crate with the real SmolLM2 model (fetched by
//! `scripts/fetch-models.sh --all`): export → quantize round trips that load and chat, malformed checkpoints
//! that fail with errors naming the file and tensor or key, and the tiny synthetic preset.

mod malformed;
mod round_trip;
mod synth;

use std::path::PathBuf;

/// Path of a real model; panics with the fix when it is missing.
pub fn model_path(file: &str) -> PathBuf {
    let dir = std::env::var_os("HEARTH_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/hearth/models"));
    let path = dir.join(file);
    assert!(
        path.exists(),
        "{} is missing: run `scripts/fetch-models.sh --all` first",
        path.display()
    );
    path
}

pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The greedy answer of `model` to one chat question.
pub fn chat_answer(model: &std::path::Path, question: &str) -> String {
    use engine::{ChatMessage, Engine, EngineConfig, Event, GenerateRequest};
    let mut cfg = EngineConfig::new(model);
    cfg.kv_cache_tokens = 1024;
    let engine = Engine::load(cfg).expect("model loads");
    let tok = engine.tokenizer();
    let messages = [ChatMessage {
        role: "user".into(),
        content: question.into(),
    }];
    let prompt = tok
        .encode(
            &tok.apply_chat_template(&messages, true).expect("template renders"),
            false,
        )
        .expect("encodes");
    let req = GenerateRequest::greedy(prompt, 16);
    let mut events = engine.submit(req).expect("submitted");
    let mut text = String::new();
    while let Some(ev) = events.blocking_next() {
        match ev {
            Event::Token(chunk) => text.push_str(&chunk.text),
            Event::Finished(_) => break,
            Event::Error(e) => panic!("generation failed: {e}"),
        }
    }
    engine.shutdown();
    text
}
