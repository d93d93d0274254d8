//! The model-file subcommands: `quantize`, `synth`, `export` (thin wrappers over the `quantize` crate) and
//! `perplexity` (over the engine's). All tensor work happens in those crates; this module only resolves
//! paths, prints a summary to stdout and times the work.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use engine::PerplexityConfig;
use quantize::{ExportConfig, QuantizeConfig, SynthConfig};

use crate::cli::{ExportArgs, PerplexityArgs, QuantizeArgs, SynthArgs};

/// `hearth quantize`.
pub fn quantize(args: QuantizeArgs) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let config = QuantizeConfig {
        input: args.input.clone(),
        output: args.output.clone(),
        quant: args.quant,
        progress: true,
    };
    let report = quantize::quantize(&config).with_context(|| format!("cannot quantize {}", args.input.display()))?;
    println!(
        "wrote {} ({} tensors, {:.1} MB, {:?}) in {:.1} s",
        args.output.display(),
        report.tensors,
        report.bytes as f64 / 1e6,
        report.types,
        start.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// `hearth synth`.
pub fn synth(args: SynthArgs) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let tokenizer_from = match args.tokenizer_from {
        Some(p) => p,
        None => default_tokenizer_source(&args.preset)?,
    };
    let config = SynthConfig {
        preset: args.preset.clone(),
        quant: args.quant,
        output: args.output.clone(),
        tokenizer_from: tokenizer_from.clone(),
        seed: args.seed,
        progress: true,
    };
    let bytes = quantize::synth(&config).with_context(|| format!("cannot synthesize preset `{}`", args.preset))?;
    println!(
        "wrote {} (preset {}, tokenizer from {}, {:.1} MB) in {:.1} s",
        args.output.display(),
        args.preset,
        tokenizer_from.display(),
        bytes as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// The tokenizer source `synth` uses when none is given: a real GGUF of the same family whose vocabulary
/// fits the preset's embedding rows.
fn default_tokenizer_source(preset: &str) -> anyhow::Result<PathBuf> {
    let models = gateway::model_path::models_dir()?;
    let candidate = match preset {
        "qwen2.5-7b" => models.join("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
        "llama2-7b" | "mistral-7b" => {
            // Llama 2 and Mistral share a 32000-token SentencePiece vocabulary; llama.cpp's source tree carries it.
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
            let src = home.join(".cache/hearth/llama.cpp/src");
            let found = std::fs::read_dir(&src)
                .ok()
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("llama.cpp/models/ggml-vocab-llama-spm.gguf"))
                .find(|p| p.exists());
            found.with_context(|| {
                format!(
                    "no ggml-vocab-llama-spm.gguf under {}; pass --tokenizer-from with a 32000-token Llama GGUF",
                    src.display()
                )
            })?
        }
        _ => models.join("SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    anyhow::ensure!(
        candidate.exists(),
        "{} does not exist; pass --tokenizer-from FILE.gguf",
        candidate.display()
    );
    Ok(candidate)
}

/// `hearth export`.
pub fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let config = ExportConfig {
        model: args.model.clone(),
        output_dir: args.output.clone(),
        progress: true,
    };
    let report = quantize::export(&config).with_context(|| format!("cannot export {}", args.model.display()))?;
    println!(
        "wrote {} ({} tensors, {:.1} MB of f16) in {:.1} s",
        args.output.display(),
        report.tensors,
        report.bytes as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// `hearth perplexity`: prints the running estimate per chunk and the final one, like llama-perplexity.
pub fn perplexity(args: PerplexityArgs) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let text = std::fs::read_to_string(&args.text).with_context(|| format!("cannot read {}", args.text.display()))?;
    let config = PerplexityConfig {
        model: args.model.clone(),
        ctx: args.ctx,
        max_chunks: args.chunks,
    };
    let report = engine::perplexity(&config, &text, |i, ppl| {
        print!("[{}]{ppl:.4},", i + 1);
        use std::io::Write;
        let _ = std::io::stdout().flush();
    })
    .with_context(|| format!("cannot measure perplexity of {}", args.model.display()))?;
    println!();
    println!(
        "Final estimate: PPL = {:.4} +/- {:.5} ({} chunks of {} tokens, {} scored, {:.1} s)",
        report.perplexity,
        report.std_error,
        report.chunks,
        args.ctx,
        report.scored_tokens,
        start.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
