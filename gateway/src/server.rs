//! The HTTP server: [`app`] builds the router from an [`AppState`], [`serve`] runs it with graceful shutdown.
//!
//! Building the router is separate from serving it, so tests drive [`app`] with `tower::ServiceExt::oneshot`
//! and no socket, and also run [`serve`]-like real servers on `127.0.0.1:0`.
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models` (behind the optional API
//! keys); `GET /health` (engine load as JSON), `/healthz` (liveness), `/readyz` (readiness) and `/metrics`
//! (Prometheus) are always open, for probes and scrapers; so is the web console's page at `/`, while its data
//! (`/console/api/*`) needs a credential (see [`crate::access`] and [`crate::console`]). Anything else is a
//! 404 or 405 in OpenAI's error shape. Every route checks the `Host` header ([`crate::access::check_host`]).
//! Every request runs in a `request` span carrying its id (also returned as `x-request-id`) and route.
//!
//! Connections are accepted under [`ConnectionLimits`] (header-read and idle timeout, a connection cap), see
//! [`crate::connections`], and speak TLS when [`GatewayConfig::tls`] is set (see [`crate::tls`]).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use engine::EngineHandle;
use futures::FutureExt;
use rand::distr::{Alphanumeric, SampleString};
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::access::{self, Access, Credentials, Scope, ScopedKey};
use crate::admin_log::AdminLog;
use crate::config::{Secret, ServerSection};
use crate::connections::{self, ConnectionLimits};
use crate::console::{self, ConsoleState, ImLink};
use crate::error::{ApiError, ErrorKind};
use crate::metrics;
use crate::openai::{ModelCard, ModelList};
use crate::routing::ModelRouter;
use crate::tls::Tls;
use crate::{admin, completions};

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

/// Bytes of prompt text per token of context that `[server] max_prompt_bytes` allows by default.
/// Real text runs 1 to 6 bytes per token (Chinese about 1.5 to 3, English about 4, code up to 8): a prompt
/// longer than 16 bytes per context token cannot fit, and is refused without tokenizing it.
pub const PROMPT_BYTES_PER_TOKEN: usize = 16;

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
    /// The connection cap and timeouts [`serve`] applies.
    pub connections: ConnectionLimits,
    /// TLS [`serve`] speaks on every connection; `None`: plain HTTP.
    pub tls: Option<Tls>,
    /// The prompt-size bound and the tokenizer pool.
    pub prompts: Arc<PromptLimits>,
    /// Where admin actions that change state are recorded (see [`crate::admin_log`]); `None` until
    /// [`AppState::with_admin_log`] sets it (`hearth serve` does whenever the admin API is on), and such
    /// actions are refused without it.
    pub admin_log: Option<AdminLog>,
}

/// What bounds the work done on a prompt before the engine admits it.
#[derive(Debug)]
pub struct PromptLimits {
    /// Prompts over this many bytes get a 400 before tokenizing; `None`: [`PROMPT_BYTES_PER_TOKEN`] times
    /// the context length of the model that takes the request.
    pub max_prompt_bytes: Option<usize>,
    /// `max_tokens` of a chat request without one.
    pub default_max_tokens: usize,
    /// Tokenizing (template rendering and encoding) runs on the blocking pool, at most this many at once
    /// (one per CPU): more concurrent prompts wait here, so the memory tokenizing takes stays bounded.
    pub tokenizers: Arc<tokio::sync::Semaphore>,
}

impl PromptLimits {
    /// The byte bound for a model with `context_length` tokens of context.
    pub fn max_bytes(&self, context_length: usize) -> usize {
        self.max_prompt_bytes
            .unwrap_or_else(|| context_length.saturating_mul(PROMPT_BYTES_PER_TOKEN))
    }
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
            prompts: Arc::new(PromptLimits {
                max_prompt_bytes: server.max_prompt_bytes,
                default_max_tokens: server.default_max_tokens,
                tokenizers: Arc::new(tokio::sync::Semaphore::new(
                    std::thread::available_parallelism().map_or(2, |n| n.get()),
                )),
            }),
            admin_log: None,
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

/// The router, with state, limits and middleware applied.
pub fn app(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(completions::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(models))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_api_key));
    let admin = Router::new()
        .route("/admin/models", get(admin::list_models))
        .route("/admin/models/active", post(admin::switch_model))
        .route("/admin/skills/reload", post(admin::reload_skills))
        .route("/admin/audit", get(admin::audit))
        .route_layer(middleware::from_fn_with_state(state.clone(), admin::require_token));
    Router::new()
        .merge(v1)
        .merge(admin)
        .merge(console::routes(&state))
        .route("/health", get(health))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(metrics_page).route_layer(middleware::from_fn_with_state(
                state.clone(),
                access::require_metrics_scope,
            )),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), access::check_host))
        .layer(middleware::from_fn(request_span))
        .with_state(state)
}

/// Serve `app(state)` on `listener` until `shutdown` completes, then shut down in order: stop accepting,
/// let in-flight requests finish for up to `drain_timeout`, stop the engine (which ends any request still
/// running with a "shutting down" error), and wait for the last responses to close.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain_timeout: Duration,
) -> std::io::Result<()> {
    let models = state.models.clone();
    let ready = state.ready.clone();
    let limits = state.connections;
    let tls = state.tls.clone();
    let (stop_accepting, stop_rx) = tokio::sync::watch::channel(false);
    let server = connections::serve_connections(listener, app(state), limits, tls, stop_rx);
    let mut server = tokio::spawn(server);

    tokio::select! {
        result = &mut server => {
            stop_engines(&models).await;
            return result.map_err(std::io::Error::other)?;
        }
        () = shutdown => {}
    }
    tracing::info!(
        drain_timeout_s = drain_timeout.as_secs_f64(),
        "shutting down: no new connections; draining in-flight requests"
    );
    ready.store(false, Ordering::Relaxed);
    // Ignore a send error: it means the server task already finished, which `server` below reports.
    let _ = stop_accepting.send(true);
    let result = match tokio::time::timeout(drain_timeout, &mut server).await {
        Ok(result) => result,
        Err(_elapsed) => {
            tracing::warn!("drain deadline passed; stopping the engine under the remaining requests");
            stop_engines(&models).await;
            // Requests now end at once with a "shutting down" error; give the responses a moment to flush.
            match tokio::time::timeout(Duration::from_secs(5), &mut server).await {
                Ok(result) => result,
                Err(_elapsed) => {
                    tracing::warn!("connections still open after the engine stopped; closing them");
                    server.abort();
                    return Ok(());
                }
            }
        }
    };
    stop_engines(&models).await;
    tracing::info!("server stopped");
    result.map_err(std::io::Error::other)?
}

/// `EngineHandle::shutdown` joins the engine thread, so it runs on the blocking pool. Idempotent.
async fn stop_engines(models: &ModelRouter) {
    for engine in models.engines() {
        if let Err(err) = tokio::task::spawn_blocking(move || engine.shutdown()).await {
            tracing::error!(cause = %err, "stopping the engine failed");
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(cause = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(cause = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received Ctrl-C"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}

/// Bind `config.server.host:config.server.port`.
pub async fn bind(config: &GatewayConfig) -> std::io::Result<TcpListener> {
    TcpListener::bind((config.server.host.as_str(), config.server.port)).await
}

/// One span per request (id, method, route), an `x-request-id` header, one log line when the response
/// head is ready, and a JSON 500 if the handler panics. Streaming bodies re-enter the span themselves.
async fn request_span(mut req: Request, next: Next) -> Response {
    let id = Alphanumeric.sample_string(&mut rand::rng(), 24);
    let route = req.uri().path().to_owned();
    let span = tracing::info_span!("request", id = %id, method = %req.method(), route = %route);
    req.extensions_mut().insert(RequestId(id.clone()));
    let started = Instant::now();
    async move {
        // A panicking handler is a bug, but the client still gets a JSON 500 rather than a dropped connection.
        let mut response = match AssertUnwindSafe(next.run(req)).catch_unwind().await {
            Ok(response) => response,
            Err(panic) => {
                let cause = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-string panic payload".to_owned());
                ApiError::internal(&format_args!("handler panicked: {cause}")).into_response()
            }
        };
        tracing::info!(
            status = response.status().as_u16(),
            latency_ms = started.elapsed().as_millis() as u64,
            "response"
        );
        metrics::http_response(&route, response.status().as_u16());
        if let Ok(value) = HeaderValue::from_str(&id) {
            response.headers_mut().insert("x-request-id", value);
        }
        response
    }
    .instrument(span)
    .await
}

/// `Authorization: Bearer <key with the chat scope>` when the server has one.
async fn require_api_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !state.credentials.guards(Scope::Chat) {
        return next.run(req).await;
    }
    let unknown = ApiError::new(
        ErrorKind::Authentication,
        "Missing or incorrect API key: send `Authorization: Bearer <key>`.",
    )
    .with_code("invalid_api_key");
    access::grant(&state, req, next, &[Scope::Chat], unknown).await
}

/// The token of an `Authorization: Bearer <token>` header, if the request has one.
pub(crate) fn bearer_token(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Compare keys without an early exit, so response timing does not reveal a matching prefix.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `GET /v1/models`: the active model (requests name it or not: they go where the router sends them).
async fn models(State(state): State<AppState>) -> Json<ModelList> {
    let active = state.models.active();
    Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: active.name.to_string(),
            object: "model",
            created: state.started_at,
            owned_by: "hearth",
            max_model_len: active.engine.info().context_length,
        }],
    })
}

/// `GET /health` body: liveness plus the engine's load, for probes and tests.
#[derive(Debug, Serialize)]
pub struct Health {
    pub status: &'static str,
    pub model: String,
    #[serde(flatten)]
    pub load: EngineLoad,
}

/// The engine's load as `/health` and the console's status report it (flattened into both).
#[derive(Debug, Serialize)]
pub struct EngineLoad {
    pub running: usize,
    pub waiting: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
    pub requests_total: u64,
    pub requests_finished: u64,
    pub requests_cancelled: u64,
    pub requests_failed: u64,
    pub prompt_tokens_total: u64,
    pub generated_tokens_total: u64,
    pub prefix_cache_hit_tokens: u64,
    pub preemptions_total: u64,
}

impl From<&engine::EngineStats> for EngineLoad {
    fn from(stats: &engine::EngineStats) -> Self {
        Self {
            running: stats.running,
            waiting: stats.waiting,
            kv_blocks_used: stats.kv_blocks_used,
            kv_blocks_total: stats.kv_blocks_total,
            requests_total: stats.requests_total,
            requests_finished: stats.requests_finished,
            requests_cancelled: stats.requests_cancelled,
            requests_failed: stats.requests_failed,
            prompt_tokens_total: stats.prompt_tokens_total,
            generated_tokens_total: stats.generated_tokens_total,
            prefix_cache_hit_tokens: stats.prefix_cache_hit_tokens,
            preemptions_total: stats.preemptions_total,
        }
    }
}

async fn health(State(state): State<AppState>) -> Json<Health> {
    let active = state.models.active();
    Json(Health {
        status: "ok",
        model: active.name.to_string(),
        load: EngineLoad::from(&active.engine.stats()),
    })
}

/// `GET /healthz`: liveness. The process is up and its HTTP server answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: readiness. 200 while the engine runs and the server takes requests; 503 once shutdown
/// has begun or the engine has stopped.
async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::Relaxed) && state.models.active().engine.is_running() {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: shutting down\n").into_response()
    }
}

/// `GET /metrics`: Prometheus text format (version 0.0.4).
async fn metrics_page(State(state): State<AppState>) -> Response {
    let Some(handle) = metrics::handle() else {
        return ApiError::internal(&"metrics are unavailable: another recorder was installed").into_response();
    };
    metrics::observe_engine(&state.models.active().engine.stats());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        handle.render(),
    )
        .into_response()
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        format!("Unknown request URL: {method} {}.", uri.path()),
    )
    .with_code("unknown_url")
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!("Method {method} is not allowed for {}.", uri.path()),
    )
    .with_code("method_not_allowed")
}
