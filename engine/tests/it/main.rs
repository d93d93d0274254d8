//! Integration tests of the engine with real models (fetched by `scripts/fetch-models.sh --all`).

mod batching;
mod fidelity;
mod requests;
mod structured;
mod tensor_ops;

use std::path::PathBuf;

use engine::{ChatMessage, Engine, EngineConfig, EngineHandle, Event, GenerateRequest};

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
pub const QWEN_1_5B: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";
pub const QWEN_0_5B: &str = "qwen2.5-coder-0.5b-instruct.gguf";

/// Load `file` with `tweak` applied to the default config.
pub fn engine(file: &str, tweak: impl FnOnce(&mut EngineConfig)) -> EngineHandle {
    let mut cfg = EngineConfig::new(model_path(file));
    cfg.kv_cache_tokens = 4096;
    tweak(&mut cfg);
    Engine::load(cfg).expect("model loads")
}

/// Eight chat prompts of different lengths, English and Chinese.
pub fn chat_prompts() -> Vec<String> {
    [
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "Explain in two sentences why the sky is blue.",
        "List three prime numbers larger than 100.",
        "用一句话介绍一下长城。",
        "Write a Python function that reverses a string, with a docstring.",
        "Summarise the plot of Romeo and Juliet for a ten-year-old, in a short paragraph, and then give one lesson from it.",
        "Translate to French: The meeting is moved to Thursday at 3 pm because the room is booked.",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Token ids of a one-turn chat with the model's template.
pub fn chat_tokens(engine: &EngineHandle, user: &str) -> Vec<u32> {
    let tok = engine.tokenizer();
    let text = tok
        .apply_chat_template(
            &[ChatMessage {
                role: "user".into(),
                content: user.into(),
            }],
            true,
        )
        .expect("template renders");
    tok.encode(&text, false).expect("prompt encodes")
}

/// Run `req` to the end; returns the generated token ids and the final event.
pub fn collect(engine: &EngineHandle, req: GenerateRequest) -> (Vec<u32>, Event) {
    let mut stream = engine.submit(req).expect("request accepted");
    let mut ids = Vec::new();
    loop {
        match stream.blocking_next().expect("stream ends with Finished or Error") {
            Event::Token(t) => ids.push(t.token_id),
            end => return (ids, end),
        }
    }
}
