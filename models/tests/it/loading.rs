//! Loading real files, and the clear errors broken ones get.

use std::io::Write;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use models::ModelError;

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-models-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A tiny GGUF with the given architecture and one tensor of `dtype`.
fn tiny_gguf(name: &str, arch: &str, dtype: GgmlDType) -> std::path::PathBuf {
    let path = scratch(name);
    let t = QTensor::quantize(
        &Tensor::zeros((2, 256), candle_core::DType::F32, &Device::Cpu).unwrap(),
        dtype,
    )
    .unwrap();
    let arch = Value::String(arch.into());
    let mut f = std::fs::File::create(&path).unwrap();
    gguf_file::write(&mut f, &[("general.architecture", &arch)], &[("token_embd.weight", &t)]).unwrap();
    path
}

fn load(path: &std::path::Path) -> ModelError {
    models::load(path, &Device::Cpu, 4096).map(|_| ()).unwrap_err()
}

#[test]
fn real_models_load_with_their_shapes() {
    let m = models::load(
        &crate::model_path("SmolLM2-135M-Instruct.Q4_1.gguf"),
        &Device::Cpu,
        4096,
    )
    .unwrap();
    let s = m.spec();
    assert_eq!(
        (s.num_layers, s.num_heads, s.num_kv_heads, s.head_dim, s.vocab_size),
        (30, 9, 3, 64, 49152)
    );
    assert_eq!(s.quantization, "Q4_1");
}

#[test]
fn a_truncated_file_names_the_tensor_and_sizes() {
    let whole = std::fs::read(crate::model_path("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let path = scratch("truncated.gguf");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&whole[..whole.len() / 2])
        .unwrap();
    let e = load(&path);
    assert!(matches!(e, ModelError::Truncated { .. }), "{e}");
    assert!(
        e.to_string().contains("truncated.gguf") && e.to_string().contains("is truncated"),
        "{e}"
    );
}

#[test]
fn a_corrupt_header_is_not_a_gguf() {
    let path = scratch("corrupt.gguf");
    std::fs::write(&path, b"GGUF\x03\x00\x00\x00garbage that is not a header").unwrap();
    assert!(matches!(load(&path), ModelError::InvalidGguf { .. }));
    std::fs::write(&path, b"PK\x03\x04 a zip file").unwrap();
    let e = load(&path);
    assert!(
        e.to_string().contains("corrupt.gguf") && e.to_string().contains("not a valid GGUF"),
        "{e}"
    );
}

#[test]
fn an_unsupported_architecture_lists_the_supported_ones() {
    let e = load(&tiny_gguf("gpt2.gguf", "gpt2", GgmlDType::F32));
    assert_eq!(
        e.to_string(),
        "unsupported architecture `gpt2` (supported: llama, mistral, qwen2, qwen3)"
    );
}

#[test]
fn an_unsupported_tensor_type_is_named() {
    // Write a valid file with a Q8_1 tensor (a type GGUF models do not ship and we do not run).
    let e = load(&tiny_gguf("q8_1.gguf", "llama", GgmlDType::Q8_1));
    assert!(
        matches!(&e, ModelError::UnsupportedTensorType { name, .. } if name == "token_embd.weight"),
        "{e}"
    );
}

#[test]
fn a_missing_hyperparameter_names_its_key() {
    let e = load(&tiny_gguf("nokeys.gguf", "llama", GgmlDType::F32));
    assert_eq!(
        e.to_string(),
        "GGUF metadata key `llama.attention.head_count` is missing"
    );
}
