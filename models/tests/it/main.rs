//! Integration tests of the models crate: loading real and broken GGUF files, and the tensor-ops attention
//! path against the CPU kernel. (Output fidelity against the
//! reference runs through the whole engine, in `engine/tests/it/fidelity.rs`.)

mod attention_ops;
mod loading;

use std::path::PathBuf;

/// Path of a real model fetched by `scripts/fetch-models.sh`; panics with the fix when it is missing.
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
