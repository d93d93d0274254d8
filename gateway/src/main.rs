//! `hearth`: run a 4-bit LLM in-process and serve it (`serve`), or use it from the terminal
//! (`generate`, `chat`), and make model files (`quantize`, `synth`, `export`, `perplexity`). Arguments are
//! parsed in [`cli`]; the subcommands live in [`commands`] and [`model_tools`].

mod cli;
mod commands;
mod model_tools;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

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
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command {
        cli::Command::Serve(args) => commands::serve(args),
        cli::Command::Generate(args) => commands::generate(args),
        cli::Command::Chat(args) => commands::chat(args),
        cli::Command::Quantize(args) => model_tools::quantize(args),
        cli::Command::Synth(args) => model_tools::synth(args),
        cli::Command::Export(args) => model_tools::export(args),
        cli::Command::Perplexity(args) => model_tools::perplexity(args),
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}
