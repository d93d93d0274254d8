//! `hearth-bench`: tokens/s and latency of hearth on one GGUF, side by side with llama.cpp on the same file.
//!
//! It measures, with the same prompts for both engines:
//! - single-stream prefill tok/s (a prompt of `--prompt-tokens`, one generated token),
//! - single-stream decode tok/s (`--gen-tokens`, EOS ignored),
//! - aggregate tok/s and median time to first token with C concurrent streams, for each C of `--concurrency`.
//!
//! hearth runs first, in this process; then llama.cpp's `llama-server` runs as a child process on loopback
//! (never both at once, so they do not share the CPU). Each figure is the median of `--repeat` runs.
//! Output: one JSON line per figure (stdout, or `--json FILE`), then a markdown table with ratios.
//! It measures and never asserts; see benches/README.md.

mod hearth;
mod llama;
mod prompt;
mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;

use crate::prompt::{Workload, WorkloadConfig};
use crate::report::{EngineKind, RunInfo};

/// Benchmark hearth against llama.cpp on one GGUF model (CPU or CUDA).
#[derive(Parser, Debug)]
#[command(name = "hearth-bench", version)]
struct Args {
    /// The GGUF model file [default: $HEARTH_MODELS_DIR or ~/.cache/hearth/models, SmolLM2-135M-Instruct.Q4_1.gguf]
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,

    /// llama.cpp's server binary; build it with scripts/build-llama-cpp.sh
    /// [default: ~/.cache/hearth/llama.cpp/bin/llama-server]
    #[arg(long, value_name = "PATH")]
    llama_server: Option<PathBuf>,

    /// Measure hearth only.
    #[arg(long)]
    skip_llama: bool,

    /// Prompt length in tokens.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    prompt_tokens: u32,

    /// Tokens generated per stream in the decode and aggregate runs (EOS is ignored).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(2..))]
    gen_tokens: u32,

    /// Concurrency levels for the aggregate runs, comma-separated (e.g. 1,8).
    #[arg(long, value_delimiter = ',', default_value = "8", value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: Vec<u32>,

    /// Runs per figure; the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,

    /// CPU threads for both engines [default: $RAYON_NUM_THREADS, else all cores]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    threads: Option<u32>,

    /// Where both engines run the model: `cpu`, `cuda` or `cuda:N` (hearth needs a `--features cuda` build;
    /// llama.cpp then offloads every layer to that GPU, so it must be a CUDA build of llama-server).
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    device: engine::Device,

    /// Write the JSON lines to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hearth-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    let model = args.model.clone().unwrap_or_else(|| {
        let dir = std::env::var_os("HEARTH_MODELS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".cache/hearth/models"));
        dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    if !model.is_file() {
        bail!("model file {} not found (scripts/fetch-models.sh fetches the default ones)", model.display());
    }
    let llama_server =
        args.llama_server.clone().unwrap_or_else(|| home.join(".cache/hearth/llama.cpp/bin/llama-server"));
    let threads = resolve_threads(args.threads);

    let mut concurrency: Vec<usize> = args.concurrency.iter().map(|&c| c as usize).collect();
    concurrency.dedup();
    let workload_config = WorkloadConfig {
        prompt_tokens: args.prompt_tokens as usize,
        gen_tokens: args.gen_tokens as usize,
        repeat: args.repeat as usize,
        concurrency,
    };

    let load_avg_1m = load_average();
    if let Some(load) = load_avg_1m.filter(|&l| l > 0.5) {
        eprintln!(
            "hearth-bench: warning: the load average is {load:.2} before starting; other work on this machine \
             makes the figures low and noisy"
        );
    }
    let handle = hearth::load(&model, &workload_config, args.device)?;
    let workload = Workload::new(handle.tokenizer(), &workload_config)?;
    let mut info = RunInfo {
        git_rev: git_revision(),
        model: model.file_name().map_or_else(|| model.display().to_string(), |n| n.to_string_lossy().into_owned()),
        quant: handle.info().quantization.clone(),
        device: args.device.to_string(),
        threads,
        prompt_tokens: workload.prompt_tokens,
        gen_tokens: workload.gen_tokens,
        repeat: args.repeat as usize,
        started_at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        load_avg_1m,
        load_avg_1m_end: None,
    };

    // One thread drives the requests; the compute threads belong to the engines.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut results = Vec::new();
    let hearth_figures = runtime.block_on(until_interrupted(hearth::measure(&handle, &workload)));
    handle.shutdown();
    drop(handle);
    results.push((EngineKind::Hearth, hearth_figures?));

    let mut llama_error = None;
    if args.skip_llama {
        eprintln!("llama.cpp: skipped (--skip-llama)");
    } else if !llama_server.is_file() {
        eprintln!(
            "llama.cpp: {} not found; measuring hearth only. Build it with `scripts/build-llama-cpp.sh` \
             (or pass --llama-server PATH).",
            llama_server.display()
        );
    } else {
        let gpu = match args.device {
            engine::Device::Cpu => None,
            engine::Device::Cuda(n) => Some(n),
        };
        let config = llama::LlamaConfig { binary: &llama_server, model: &model, threads, gpu };
        // On SIGINT/SIGTERM the measuring future is dropped, and with it the running llama-server (killed).
        match runtime.block_on(until_interrupted(llama::measure(&config, &workload))) {
            Ok(figures) => results.push((EngineKind::LlamaCpp, figures)),
            // Report what hearth measured before failing.
            Err(e) => llama_error = Some(e),
        }
    }

    info.load_avg_1m_end = load_average();
    let lines = report::json_lines(&info, &results);
    match &args.json {
        Some(path) => write_file(path, &lines)?,
        None => print!("{lines}"),
    }
    println!();
    print!("{}", report::markdown_table(&info, &results));

    match llama_error {
        Some(e) => Err(e.context("measuring llama.cpp")),
        None => Ok(()),
    }
}

/// Run `work` unless SIGINT or SIGTERM comes first; then drop it (which kills a running llama-server) and
/// return an error.
async fn until_interrupted<T>(work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let interrupted = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    };
    tokio::select! {
        r = work => r,
        r = interrupted => match r {
            Ok(()) => bail!("interrupted"),
            Err(e) => Err(anyhow::Error::new(e).context("listening for SIGINT/SIGTERM")),
        },
    }
}

/// The thread count both engines use. `--threads` is passed to candle through `RAYON_NUM_THREADS` (which it
/// reads when its thread pool starts, at model load) and to llama-server as `-t`.
fn resolve_threads(flag: Option<u32>) -> usize {
    if let Some(t) = flag {
        // Set before the engine (and so candle's pool) starts; nothing else runs yet.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
        return t as usize;
    }
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The 1-minute load average from /proc/loadavg; `None` where there is none.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// `git rev-parse --short HEAD`, with `-dirty` when tracked files differ from it; "unknown" outside a repository.
fn git_revision() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(rev) if !rev.is_empty() => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{rev}-dirty")
            } else {
                rev
            }
        }
        _ => "unknown".to_string(),
    }
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("hearth-bench: wrote {}", path.display());
    Ok(())
}
