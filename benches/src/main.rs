//! `hearth-bench`: tokens/s and latency of hearth on one GGUF, side by side with llama.cpp on the same file.
//!
//! It measures, with the same prompts for both engines:
//! - single-stream prefill tok/s (a prompt of `--prompt-tokens`, one generated token),
//! - single-stream decode tok/s (`--gen-tokens`, EOS ignored),
//! - a concurrency sweep: for each C of `--concurrency`, aggregate tok/s and the p50/p99 of time to first
//!   token and of inter-token latency with C concurrent streams.
//!
//! hearth runs first, in this process; then llama.cpp's `llama-server` runs as a child process on loopback
//! (never both at once, so they do not share the CPU), with C slots for C streams.
//! Output: one JSON line per figure (stdout, or `--json FILE`), then a markdown table with ratios; with
//! `--out DIR` also `bench.json` (one document), `bench.md` and `bench.svg` (the sweep, plotted).
//! It measures and never asserts; see benches/README.md.
#![forbid(unsafe_code)]

mod hearth;
mod llama;
mod paired;
mod plot;
mod prompt;
mod provenance;
mod report;
mod stats;
mod sweep;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;

use crate::prompt::{Workload, WorkloadConfig};
use crate::provenance::{git_revision, load_average, Device, LlamaBuild};
use crate::report::{EngineKind, EngineResults, RunInfo};

/// Benchmark hearth against llama.cpp on one GGUF model (CPU).
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

    /// Concurrency levels of the sweep, comma-separated (e.g. 1,4,16).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,2,4,8,16,32,64",
        value_parser = clap::value_parser!(u32).range(1..=1024)
    )]
    concurrency: Vec<u32>,

    /// Runs per figure; throughputs are the median, latency percentiles pool all runs.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,

    /// Time box per concurrency level and engine: no further run starts after this many seconds, and when
    /// one run alone takes longer, the higher levels are skipped.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    max_seconds: f64,

    /// CPU threads for both engines [default: $RAYON_NUM_THREADS, else all cores]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    threads: Option<u32>,

    /// Where both engines run the model: `cpu`, `cuda` or `cuda:N` (hearth needs a `--features cuda` build;
    /// llama.cpp then offloads every layer to that GPU, so it must be a CUDA build of llama-server).
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    device: engine::Device,

    /// Measure only single-stream decode, hearth and llama.cpp taking turns on the same prompt, `--repeat`
    /// pairs; reports every pair and the median of the per-pair ratios (bench-paired.md/.json with --out).
    /// For bandwidth-bound models on machines whose memory bandwidth drifts.
    #[arg(long)]
    paired_decode: bool,

    /// Write the JSON lines to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Also write bench.json (every figure in one document), bench.md (the table) and bench.svg (the sweep
    /// plotted) into this folder, created if missing.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// mimalloc keeps freed pages for reuse: a decode step allocates and frees the same buffers every few
/// milliseconds, and glibc's allocator hands them back to the kernel and faults them in again.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let model = args.model.clone().unwrap_or_else(|| {
        let dir = std::env::var_os("HEARTH_MODELS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".cache/hearth/models"));
        dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    if !model.is_file() {
        bail!(
            "model file {} not found (scripts/fetch-models.sh fetches the default ones)",
            model.display()
        );
    }
    if !(args.max_seconds.is_finite() && args.max_seconds > 0.0) {
        bail!(
            "--max-seconds must be a positive number of seconds, got {}",
            args.max_seconds
        );
    }
    let max_seconds = Duration::from_secs_f64(args.max_seconds);
    // Fail on a bad output folder before minutes of measuring.
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating the output folder {}", dir.display()))?;
    }
    let llama_server = args
        .llama_server
        .clone()
        .unwrap_or_else(|| home.join(".cache/hearth/llama.cpp/bin/llama-server"));
    let measure_llama = if args.skip_llama {
        eprintln!("llama.cpp: skipped (--skip-llama)");
        false
    } else if !llama_server.is_file() {
        eprintln!(
            "llama.cpp: {} not found; measuring hearth only. Build it with `scripts/build-llama-cpp.sh` \
             (or pass --llama-server PATH).",
            llama_server.display()
        );
        false
    } else {
        true
    };
    if args.paired_decode && !measure_llama {
        bail!("--paired-decode needs llama.cpp (see above)");
    }
    let threads = resolve_threads(args.threads);
    let device = Device::from(args.device);

    let mut concurrency: Vec<usize> = args.concurrency.iter().map(|&c| c as usize).collect();
    concurrency.sort_unstable();
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
    let handle = hearth::load(&model, device, &workload_config)?;
    let workload = Workload::new(handle.tokenizer(), &workload_config)?;
    let mut info = RunInfo {
        git_rev: git_revision(),
        model: model
            .file_name()
            .map_or_else(|| model.display().to_string(), |n| n.to_string_lossy().into_owned()),
        quant: handle.info().quantization.clone(),
        device: device.describe(threads),
        threads,
        llama_cpp: measure_llama.then(|| LlamaBuild::of(&llama_server)),
        prompt_tokens: workload.prompt_tokens,
        gen_tokens: workload.gen_tokens,
        repeat: args.repeat as usize,
        max_seconds: args.max_seconds,
        started_at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        load_avg_1m,
        load_avg_1m_end: None,
    };
    eprintln!("hearth-bench: {}", info.caption());

    // One thread drives the requests; the compute threads belong to the engines.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    if args.paired_decode {
        let config = llama::LlamaConfig {
            binary: &llama_server,
            model: &model,
            device,
            threads,
        };
        let mut paired = paired::PairedDecode::default();
        let measured = runtime.block_on(until_interrupted(paired::measure(
            &handle,
            &config,
            &workload,
            &mut paired,
        )));
        handle.shutdown();
        info.load_avg_1m_end = load_average();
        let table = paired.markdown(&info);
        print!("{table}");
        if let Some(dir) = &args.out {
            write_file(&dir.join("bench-paired.md"), &table)?;
            write_file(&dir.join("bench-paired.json"), &format!("{:#}\n", paired.json(&info)))?;
        }
        return measured.context("paired decode");
    }
    // Figures measured before an error or an interrupt are still reported; the error comes after.
    let mut failure = None;
    let mut hearth_results = EngineResults::new(EngineKind::Hearth);
    let measured = runtime.block_on(until_interrupted(hearth::measure(
        &handle,
        &workload,
        max_seconds,
        &mut hearth_results,
    )));
    handle.shutdown();
    drop(handle);
    let mut results = vec![hearth_results];
    if let Err(e) = measured {
        failure = Some(e.context("measuring hearth"));
    }

    if measure_llama && failure.is_none() {
        let config = llama::LlamaConfig {
            binary: &llama_server,
            model: &model,
            device,
            threads,
        };
        let mut llama_results = EngineResults::new(EngineKind::LlamaCpp);
        // On SIGINT/SIGTERM the measuring future is dropped, and with it the running llama-server (killed).
        let measured = runtime.block_on(until_interrupted(llama::measure(
            &config,
            &workload,
            max_seconds,
            &mut llama_results,
        )));
        results.push(llama_results);
        if let Err(e) = measured {
            failure = Some(e.context("measuring llama.cpp"));
        }
    }

    info.load_avg_1m_end = load_average();
    let lines = report::json_lines(&info, &results);
    match &args.json {
        Some(path) => write_file(path, &lines)?,
        None => print!("{lines}"),
    }
    let table = report::markdown(&info, &results);
    println!();
    print!("{table}");
    if let Some(dir) = &args.out {
        let document = report::json_document(&info, &results);
        let document = serde_json::to_string_pretty(&document).context("serializing bench.json")?;
        write_file(&dir.join("bench.json"), &(document + "\n"))?;
        write_file(&dir.join("bench.md"), &table)?;
        write_file(&dir.join("bench.svg"), &plot::svg(&info, &results)?)?;
    }

    match failure {
        Some(e) => Err(e),
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

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("hearth-bench: wrote {}", path.display());
    Ok(())
}
