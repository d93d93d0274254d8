//! [`AppState`]: what every HTTP handler may use, built from a [`GatewayConfig`]; and the per-request
//! [`RequestId`]. It lives below the handlers, the console and the server that use it, so none of them
//! imports another to reach it.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use engine::EngineHandle;

use crate::access::{Access, Credentials, ScopedKey};
use crate::admin_log::AdminLog;
use crate::config::ServerSection;
use crate::connections::ConnectionLimits;
use crate::generation::PromptLimits;
use crate::im::link::ImLink;
use crate::routing::ModelRouter;
use crate::secret::Secret;
use crate::tls::Tls;

/// Where and how to serve: the config file's `[server]` section, with the command line's overrides applied
/// (see `ServeArgs::gateway_config`), plus what only the command line says. Defaults are the `hearth serve`
/// defaults.
#[derive(Debug, Clone, Default)]
pub struct GatewayConfig {
    /// Every `[server]` setting. Its `*_file` keys must already be read into `api_keys`, `admin_token` and
    /// each key's `key` (`Config::with_secret_files`): they are not looked at here, and a named key with no
    /// key is skipped.
    pub server: ServerSection,
    /// A DingTalk emulator (`http://HOST:PORT`) whose conversations the console's IM page shows.
    pub emulator_url: Option<String>,
    /// The certificate and key to speak HTTPS with, read from `server.tls_cert_file`/`tls_key_file` or the
    /// `--tls-cert`/`--tls-key` flags; `None`: plain HTTP.
    pub tls: Option<Tls>,
}

impl GatewayConfig {
    /// After SIGINT/SIGTERM, how long in-flight requests may run before the engine is stopped under them.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.server.shutdown_timeout_secs)
    }

    /// The connection cap and the header-read (and idle) timeout.
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.server.max_connections,
            header_read_timeout: Duration::from_secs(self.server.header_read_timeout_secs),
        }
    }

    /// `[[server.keys]]` entries that hold a key, as the credentials check takes them.
    fn scoped_keys(&self) -> Vec<ScopedKey> {
        self.server
            .keys
            .iter()
            .filter_map(|entry| {
                Some(ScopedKey {
                    name: entry.name.clone(),
                    key: entry.key.as_ref()?.expose().to_owned(),
                    scopes: entry.scopes.clone(),
                })
            })
            .collect()
    }
}

/// What every handler may use: cheap to clone, no globals.
#[derive(Clone)]
pub struct AppState {
    /// The loaded models: which one takes a request, and switching between them.
    pub models: Arc<ModelRouter>,
    /// Every credential and its scopes: `/v1/*` needs chat, `/admin/*` admin, `/metrics` metrics, each once
    /// any credential grants it (see [`crate::access`]).
    pub credentials: Arc<Credentials>,
    /// Body limit applied to every route.
    pub max_body_bytes: usize,
    /// Reported as `created` by `/v1/models`: when this server started, in Unix seconds.
    pub started_at: u64,
    /// False once shutdown has begun: `/readyz` answers 503 so load balancers stop sending requests.
    pub ready: Arc<AtomicBool>,
    /// The web console's emulator link and platform list.
    pub console: Arc<ConsoleState>,
    /// The `Host` check and the console's credential rule.
    pub access: Arc<Access>,
    /// The connection cap and timeouts [`serve`](crate::serve) applies.
    pub connections: ConnectionLimits,
    /// TLS [`serve`](crate::serve) speaks on every connection; `None`: plain HTTP.
    pub tls: Option<Tls>,
    /// The prompt-size bound and the tokenizer pool.
    pub prompts: Arc<PromptLimits>,
    /// Where admin actions that change state are recorded (see [`crate::admin_log`]); `None` until
    /// [`AppState::with_admin_log`] sets it (`hearth serve` does whenever the admin API is on), and such
    /// actions are refused without it.
    pub admin_log: Option<AdminLog>,
    /// WeCom URL mode's callback handler, mounted at `/im/wecom/callback` when set.
    pub wecom_callback: Option<Arc<crate::wecom::Callback>>,
}

impl AppState {
    /// State serving one model, named `config.server.served_model_name` or after its file.
    pub fn new(engine: EngineHandle, config: &GatewayConfig) -> Self {
        let model_name = config
            .server
            .served_model_name
            .clone()
            .unwrap_or_else(|| engine.info().name.clone());
        Self::with_router(ModelRouter::single(model_name, engine), config)
    }

    /// State serving `models`.
    pub fn with_router(models: ModelRouter, config: &GatewayConfig) -> Self {
        Self::with_shared_router(Arc::new(models), config)
    }

    /// State serving `models`, which the IM connectors share.
    pub fn with_shared_router(models: Arc<ModelRouter>, config: &GatewayConfig) -> Self {
        let started_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let server = &config.server;
        let api_keys: Vec<String> = server.api_keys.iter().map(|k| k.expose().to_owned()).collect();
        Self {
            models,
            credentials: Arc::new(Credentials::new(
                &api_keys,
                server.admin_token.as_ref().map(Secret::expose),
                &config.scoped_keys(),
            )),
            max_body_bytes: server.max_body_bytes,
            started_at,
            ready: Arc::new(AtomicBool::new(true)),
            console: Arc::new(ConsoleState::new(config.emulator_url.clone(), Vec::new())),
            access: Arc::new(Access::new(&server.host, &server.allowed_hosts)),
            connections: config.connection_limits(),
            tls: config.tls.clone(),
            prompts: Arc::new(PromptLimits::new(server.max_prompt_bytes, server.default_max_tokens)),
            admin_log: None,
            wecom_callback: None,
        }
    }

    /// This state with admin actions recorded in `log`.
    pub fn with_admin_log(self, log: AdminLog) -> Self {
        Self {
            admin_log: Some(log),
            ..self
        }
    }

    /// This state with the IM connectors `platforms` shown by the console and reached by the admin API.
    pub fn with_platforms(self, platforms: Vec<ImLink>) -> Self {
        let console = ConsoleState::new(self.console.emulator_url.clone(), platforms);
        Self {
            console: Arc::new(console),
            ..self
        }
    }
}

/// The id of one HTTP request: in its span, its `x-request-id` header and its completion id.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// What the console needs besides the engine: where the emulator is, which IM connectors run.
#[derive(Default)]
pub struct ConsoleState {
    /// Base URL of a DingTalk emulator (`http://127.0.0.1:PORT`) whose control API the IM page shows.
    pub emulator_url: Option<String>,
    /// IM connectors running in this process.
    pub platforms: Vec<ImLink>,
    /// Client of the IM proxy.
    pub http: reqwest::Client,
}

impl ConsoleState {
    /// Console state for `emulator_url` and the connectors `platforms`.
    pub fn new(emulator_url: Option<String>, platforms: Vec<ImLink>) -> Self {
        let emulator_url = emulator_url.map(|u| u.trim_end_matches('/').to_owned());
        // The change feed long-polls for up to 60 s; leave room above that.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(75))
            .build()
            .unwrap_or_default();
        Self {
            emulator_url,
            platforms,
            http,
        }
    }
}
