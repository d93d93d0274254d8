//! The HTTP server: [`app`] builds the router from an [`AppState`], [`serve`] runs it with graceful shutdown.
//!
//! Building the router is separate from serving it, so tests drive [`app`] with `tower::ServiceExt::oneshot`
//! and no socket, and also run [`serve`]-like real servers on `127.0.0.1:0`.
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models` (behind the optional API
//! keys); `GET /health` (engine load as JSON), `/healthz` (liveness), `/readyz` (readiness) and `/metrics`
//! (Prometheus) are always open, for probes and scrapers; so is the web console's page at `/`, while its data
//! (`/console/api/*`) needs a credential (see [`crate::access`] and [`crate::console`]). Anything else is a
//! 404 or 405 in OpenAI's error shape. Every route checks the `Host` header ([`crate::guards::check_host`]).
//! Every request runs in a `request` span carrying its id (also returned as `x-request-id`) and route.
//!
//! Connections are accepted under [`ConnectionLimits`](crate::ConnectionLimits) (header-read and idle timeout,
//! a connection cap), see [`crate::connections`], and speak TLS when [`GatewayConfig::tls`] is set (see
//! [`crate::tls`]).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::FutureExt;
use rand::distr::{Alphanumeric, SampleString};
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::access::Scope;
use crate::connections;
use crate::console;
use crate::error::{ApiError, ErrorKind};
use crate::metrics::{self, EngineLoad};
use crate::openai::{ModelCard, ModelList};
use crate::routing::ModelRouter;
use crate::state::{AppState, GatewayConfig, RequestId};
use crate::{admin, completions, guards};

/// The router, with state, limits and middleware applied. The metrics recorder is installed here, before
/// any request, so what happens before the first scrape of `/metrics` is counted too.
pub fn app(state: AppState) -> Router {
    let _ = metrics::handle();
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
    let wecom = match &state.wecom_callback {
        Some(callback) => crate::wecom::callback::routes(callback.clone()),
        None => Router::new(),
    };
    Router::new()
        .merge(v1)
        .merge(admin)
        .merge(wecom)
        .merge(console::routes(&state))
        .route("/health", get(health))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(metrics_page).route_layer(middleware::from_fn_with_state(
                state.clone(),
                guards::require_metrics_scope,
            )),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), guards::check_host))
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
    guards::grant(&state, req, next, &[Scope::Chat], unknown).await
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
