//! Broken checkpoints fail before anything is written, with an error naming the file and the tensor or key.

use std::path::Path;

use quantize::{quantize, QuantType, QuantizeConfig};
use safetensors::{tensor::TensorView, Dtype};
use serde_json::json;

const HIDDEN: usize = 64;
const FF: usize = 128;
const VOCAB: usize = 300;

/// A one-layer llama checkpoint's tensors: (name, shape).
fn tensors() -> Vec<(String, Vec<usize>)> {
    let mut t = vec![
        ("model.embed_tokens.weight".to_string(), vec![VOCAB, HIDDEN]),
        ("model.norm.weight".to_string(), vec![HIDDEN]),
    ];
    let p = "model.layers.0";
    for (n, s) in [
        ("input_layernorm.weight", vec![HIDDEN]),
        ("post_attention_layernorm.weight", vec![HIDDEN]),
        ("self_attn.q_proj.weight", vec![HIDDEN, HIDDEN]),
        ("self_attn.k_proj.weight", vec![HIDDEN, HIDDEN]),
        ("self_attn.v_proj.weight", vec![HIDDEN, HIDDEN]),
        ("self_attn.o_proj.weight", vec![HIDDEN, HIDDEN]),
        ("mlp.gate_proj.weight", vec![FF, HIDDEN]),
        ("mlp.up_proj.weight", vec![FF, HIDDEN]),
        ("mlp.down_proj.weight", vec![HIDDEN, FF]),
    ] {
        t.push((format!("{p}.{n}"), s));
    }
    t
}

/// Write a checkpoint into `dir`; `edit` may change the config, and `dtype_of` picks each tensor's dtype.
fn write_checkpoint(
    dir: &Path,
    edit: impl FnOnce(&mut serde_json::Value),
    shapes: Vec<(String, Vec<usize>)>,
    dtype_of: impl Fn(&str) -> Dtype,
) {
    let mut config = json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN, "intermediate_size": FF,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "vocab_size": VOCAB, "tie_word_embeddings": true
    });
    edit(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let dtype = dtype_of(&name);
            let bytes = vec![0u8; shape.iter().product::<usize>() * dtype.bitsize() / 8];
            (name, dtype, shape, bytes)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

/// Quantize `dir` and return the error message.
fn error_of(dir: &Path) -> String {
    let out = dir.join("out.gguf");
    let err = quantize(&QuantizeConfig {
        input: dir.to_path_buf(),
        output: out.clone(),
        quant: QuantType::Q8_0,
        progress: false,
    })
    .expect_err("the checkpoint is broken");
    assert!(!out.exists(), "nothing is written for a broken checkpoint");
    err.to_string()
}

fn check(
    edit: impl FnOnce(&mut serde_json::Value),
    shapes: Vec<(String, Vec<usize>)>,
    dtype_of: impl Fn(&str) -> Dtype,
    damage: impl FnOnce(&Path),
    expected: &[&str],
) {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), edit, shapes, dtype_of);
    damage(dir.path());
    let err = error_of(dir.path());
    for part in expected {
        assert!(err.contains(part), "error {err:?} should contain {part:?}");
    }
}

#[test]
fn malformed_checkpoints_name_the_file_and_the_tensor_or_key() {
    let f16 = |_: &str| Dtype::F16;
    let none = |_: &Path| {};

    // A missing config key.
    check(
        |c| {
            c.as_object_mut().unwrap().remove("num_hidden_layers");
        },
        tensors(),
        f16,
        none,
        &["config.json", "`num_hidden_layers`"],
    );

    // An architecture we do not convert.
    check(
        |c| c["architectures"] = json!(["GPT2LMHeadModel"]),
        tensors(),
        f16,
        none,
        &["config.json", "GPT2LMHeadModel", "LlamaForCausalLM"],
    );

    // A tensor whose shape disagrees with the config.
    let mut wrong = tensors();
    wrong.iter_mut().find(|(n, _)| n.ends_with("q_proj.weight")).unwrap().1 = vec![HIDDEN, HIDDEN / 2];
    check(
        |_| {},
        wrong,
        f16,
        none,
        &[
            "model.safetensors",
            "model.layers.0.self_attn.q_proj.weight",
            "[64, 32]",
            "[64, 64]",
        ],
    );

    // A dtype we cannot read.
    let int = |n: &str| {
        if n.ends_with("up_proj.weight") {
            Dtype::I32
        } else {
            Dtype::F16
        }
    };
    check(
        |_| {},
        tensors(),
        int,
        none,
        &["model.safetensors", "model.layers.0.mlp.up_proj.weight", "I32"],
    );

    // A missing tensor.
    let mut missing = tensors();
    missing.retain(|(n, _)| !n.ends_with("down_proj.weight"));
    check(
        |_| {},
        missing,
        f16,
        none,
        &["model.layers.0.mlp.down_proj.weight", "missing"],
    );

    // A file cut off while copying.
    let truncate = |dir: &Path| {
        let path = dir.join("model.safetensors");
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 100)
            .unwrap();
    };
    check(|_| {}, tensors(), f16, truncate, &["model.safetensors", "truncated"]);
}
