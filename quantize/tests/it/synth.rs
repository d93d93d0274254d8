//! The tiny synthetic preset: written quickly with the recipe's types and a real tokenizer, and hearth runs it.

use candle_core::quantized::GgmlDType;
use quantize::{synth, GgufFile, QuantType, SynthConfig};

use crate::{chat_answer, model_path, SMOLLM2};

#[test]
fn tiny_preset_has_the_recipe_types_and_generates() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.gguf");
    let cfg = SynthConfig {
        preset: "tiny".into(),
        quant: QuantType::Q4KM,
        output: out.clone(),
        tokenizer_from: model_path(SMOLLM2),
        seed: 7,
        progress: false,
    };
    synth(&cfg).expect("synthesizes");
    let infos = GgufFile::open(&out).unwrap().tensor_infos();
    let dtype = |name: &str| infos.iter().find(|t| t.name == name).map(|t| t.dtype);
    // Tied embeddings take the output's Q6_K; of 2 layers, `use_more_bits` picks layer 1 (the last eighth).
    assert_eq!(dtype("token_embd.weight"), Some(GgmlDType::Q6K));
    assert_eq!(dtype("blk.0.attn_v.weight"), Some(GgmlDType::Q4K));
    assert_eq!(dtype("blk.1.attn_v.weight"), Some(GgmlDType::Q6K));
    assert_eq!(dtype("blk.0.attn_q.weight"), Some(GgmlDType::Q4K));
    assert_eq!(dtype("blk.1.ffn_norm.weight"), Some(GgmlDType::F32));

    // Random weights, real tokenizer: the text is garbage but generation runs to the token limit or EOS.
    let _ = chat_answer(&out, "Hello");

    // The same seed writes the same bytes.
    let again = dir.path().join("again.gguf");
    synth(&SynthConfig {
        output: again.clone(),
        ..cfg
    })
    .expect("synthesizes again");
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
}

#[test]
fn a_tokenizer_larger_than_the_preset_vocabulary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        preset: "llama2-7b".into(),
        quant: QuantType::Q4KM,
        output: dir.path().join("x.gguf"),
        tokenizer_from: model_path(SMOLLM2),
        seed: 0,
        progress: false,
    };
    let err = synth(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("49152 tokens do not fit preset `llama2-7b` with 32000 embedding rows"),
        "{err}"
    );
}
