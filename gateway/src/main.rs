//! `hearth`: run a 4-bit LLM in-process and serve it (`serve`), or use it from the terminal
//! (`generate`, `chat`), and make model files (`quantize`, `synth`, `export`, `perplexity`). Arguments are
//! parsed in [`cli`]; the subcommands live in [`commands`], [`model_tools`] and [`pull`].
#![forbid(unsafe_code)]

mod cli;
mod commands;
mod emulate_wecom;
mod kb_cli;
mod model_tools;
mod pull;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use gateway::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

/// mimalloc keeps freed pages for reuse: a decode step allocates and frees the same buffers every few
/// milliseconds, and glibc's allocator hands them back to the kernel and faults them in again.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        // `hearth generate … | head` closes our stdout early; that is not an error.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = cli::Cli::parse();
    if let cli::Command::Config(command) = &cli.command {
        return commands::config(command, cli.config.as_deref());
    }
    let config = Config::load(cli.config.as_deref())?;
    init_logging(cli.log_format.unwrap_or(config.log.format), &config.log.level);
    for warning in gateway::config::permission_warnings(cli.config.as_deref(), &config) {
        tracing::warn!("{warning}");
    }
    match cli.command {
        cli::Command::Serve(args) => commands::serve(args, &config, cli.config.clone()),
        cli::Command::Audit(cli::AuditCommand::Export(args)) => commands::audit_export(args, &config),
        cli::Command::Generate(args) => commands::generate(args, &config),
        cli::Command::Chat(args) => commands::chat(args, &config),
        cli::Command::Doctor(args) => commands::doctor(args, config, cli.config),
        cli::Command::Pull(args) => pull::pull(args),
        cli::Command::Quantize(args) => model_tools::quantize(args),
        cli::Command::Synth(args) => model_tools::synth(args),
        cli::Command::Export(args) => model_tools::export(args),
        cli::Command::Perplexity(args) => model_tools::perplexity(args),
        cli::Command::Kb(command) => kb_cli::run(command, &config),
        cli::Command::Emulate(cli::EmulateArgs {
            platform: cli::EmulatePlatform::Dingtalk(args),
        }) => commands::emulate_dingtalk(args),
        cli::Command::Emulate(cli::EmulateArgs {
            platform: cli::EmulatePlatform::Feishu(args),
        }) => commands::emulate_feishu(args),
        cli::Command::Emulate(cli::EmulateArgs {
            platform: cli::EmulatePlatform::Wecom(args),
        }) => emulate_wecom::emulate(args),
        cli::Command::Config(_) => unreachable!("handled before the configuration is loaded"),
    }
}

/// Logs go to stderr, as text (colored on a terminal) or one JSON object per line. `RUST_LOG` overrides
/// the configured level.
fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}
