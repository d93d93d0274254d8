//! A chat through the chat template and the tokenizer (`engine::fuzzing::chat`), with the vocabularies and
//! templates of SmolLM2 and Qwen2.5 (from `$HEARTH_MODELS_DIR`, else `~/.cache/hearth/models`; fetched by
//! `scripts/fetch-models.sh --all`).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use engine::Tokenizer;

const MODELS: [&str; 2] = ["SmolLM2-135M-Instruct.Q4_1.gguf", "qwen2.5-coder-0.5b-instruct.gguf"];

fn tokenizers() -> &'static [Tokenizer] {
    static TOKENIZERS: OnceLock<Vec<Tokenizer>> = OnceLock::new();
    TOKENIZERS.get_or_init(|| {
        let dir = std::env::var_os("HEARTH_MODELS_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/hearth/models")))
            .expect("set HEARTH_MODELS_DIR or HOME");
        MODELS
            .iter()
            .map(|file| {
                let path = dir.join(file);
                Tokenizer::from_gguf(&path)
                    .unwrap_or_else(|err| panic!("{}: {err} (run scripts/fetch-models.sh --all)", path.display()))
            })
            .collect()
    })
}

// The vocabularies load once, before fuzzing starts (Qwen2.5's takes seconds: not part of the first input's
// time, which the timeout counts).
libfuzzer_sys::fuzz_target!(init: { tokenizers(); }, |data: &[u8]| {
    let tokenizers: Vec<&Tokenizer> = tokenizers().iter().collect();
    engine::fuzzing::chat(&tokenizers, data);
});
