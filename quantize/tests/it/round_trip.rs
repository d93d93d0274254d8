//! SmolLM2 GGUF → exported f16 checkpoint → our Q8_0 and Q4_K_M: the files load, chat, and keep the
//! original's perplexity.

use std::path::Path;

use engine::{perplexity, PerplexityConfig};
use quantize::{export, quantize, ExportConfig, GgufFile, QuantType, QuantizeConfig};

use crate::{chat_answer, model_path, SMOLLM2};

/// Perplexity on this repository's own prose (a few thousand tokens), 4 chunks of 128 tokens.
fn ppl(model: &Path) -> f64 {
    // A frozen copy of the project's docs: a fixed English text, so the figures move only when the code does.
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/perplexity.txt"))
        .expect("test text exists");
    let cfg = PerplexityConfig {
        model: model.to_path_buf(),
        ctx: 128,
        max_chunks: Some(12),
    };
    perplexity(&cfg, &text, |_, _| {}).expect("perplexity runs").perplexity
}

#[test]
fn smollm2_export_then_quantize_loads_chats_and_keeps_perplexity() {
    let dir = tempfile::tempdir().unwrap();
    let original = model_path(SMOLLM2);
    let ckpt = dir.path().join("smollm2-hf");
    export(&ExportConfig {
        model: original.clone(),
        output_dir: ckpt.clone(),
        progress: false,
    })
    .expect("exports");
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ] {
        assert!(ckpt.join(f).exists(), "{f} written");
    }
    let base = ppl(&original);
    // SmolLM2-135M loses 6-11 % to Q4_K_M (+6.6 % on lcet10.txt over 20 chunks, +10.4 % on this text), as
    // llama.cpp's own Q4_K_M does (ours is within 0.12 % of it); a broken quantizer is off by far more.
    for (quant, tolerance) in [
        (QuantType::F16, 0.005),
        (QuantType::Q8_0, 0.02),
        (QuantType::Q4KM, 0.15),
    ] {
        let out = dir.path().join(format!("smollm2-{quant}.gguf"));
        let report = quantize(&QuantizeConfig {
            input: ckpt.clone(),
            output: out.clone(),
            quant,
            progress: false,
        })
        .expect("quantizes");
        assert_eq!(
            report.tensors, 272,
            "30 blocks of 9 tensors, embeddings, output norm; tied output"
        );

        // The tokenizer and chat template came back: the model answers.
        let answer = chat_answer(&out, "What is the capital of France?");
        assert!(!answer.trim().is_empty(), "{quant}: empty answer");

        let p = ppl(&out);
        eprintln!("{quant}: perplexity {p:.3} vs the original's {base:.3}");
        assert!(
            (p / base - 1.0).abs() < tolerance,
            "{quant}: perplexity {p:.3} vs the original's {base:.3}"
        );
    }

    // Requantizing the Q8_0 file to Q4_K_M gives the recipe's types, like quantizing the checkpoint does.
    let q8 = dir.path().join("smollm2-Q8_0.gguf");
    let requant = dir.path().join("requant.gguf");
    quantize(&QuantizeConfig {
        input: q8,
        output: requant.clone(),
        quant: QuantType::Q4KM,
        progress: false,
    })
    .expect("requantizes");
    let direct = GgufFile::open(&dir.path().join("smollm2-Q4_K_M.gguf"))
        .unwrap()
        .tensor_infos();
    let via_q8 = GgufFile::open(&requant).unwrap().tensor_infos();
    assert_eq!(
        direct.iter().map(|t| (&t.name, t.dtype)).collect::<Vec<_>>(),
        via_q8.iter().map(|t| (&t.name, t.dtype)).collect::<Vec<_>>()
    );
}
