//! Safetensors → GGUF quantization (Q4_K_M, Q4_0, Q8_0) and 7B-shaped synthetic models for benchmarks.
//!
//! Not written yet: this crate holds the place the workspace layout gives it. It will depend on `models` for
//! per-architecture tensor-name tables, and every file it writes will carry the metadata the loader needs.
