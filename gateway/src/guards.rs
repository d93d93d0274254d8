//! The middleware that applies [`crate::access`]'s rules to requests: a bearer token granting a scope
//! (`grant`), the `/metrics` scope, the `Host` check and the console's credential. It takes the
//! [`AppState`], so it sits above `state`, while the rules themselves sit below it.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::access::{bearer_token, Caller, Refusal, Scope};
use crate::error::{ApiError, ErrorKind};
use crate::state::AppState;

/// Let `req` on when its bearer token grants one of `scopes` (noting the [`Caller`]), else answer 401 with
/// `unknown` or 403 `insufficient_scope`.
pub(crate) async fn grant(
    state: &AppState,
    mut req: Request,
    next: Next,
    scopes: &[Scope],
    unknown: ApiError,
) -> Response {
    match state.credentials.grant(bearer_token(&req), scopes) {
        Ok(name) => {
            req.extensions_mut().insert(Caller(name.to_owned()));
            next.run(req).await
        }
        Err(Refusal::Unknown) => unknown.into_response(),
        Err(Refusal::OutOfScope) => ApiError::new(
            ErrorKind::PermissionDenied,
            format!(
                "This key may not do this: it needs the scope {}.",
                scopes
                    .iter()
                    .map(|s| format!("{s:?}").to_ascii_lowercase())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        )
        .with_code("insufficient_scope")
        .into_response(),
    }
}

/// `/metrics`: open unless a credential has the metrics scope, then it needs one.
pub async fn require_metrics_scope(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !state.credentials.guards(Scope::Metrics) {
        return next.run(req).await;
    }
    let unknown = ApiError::new(
        ErrorKind::Authentication,
        "Missing or incorrect key: send `Authorization: Bearer <key with the metrics scope>`.",
    )
    .with_code("invalid_api_key");
    grant(&state, req, next, &[Scope::Metrics], unknown).await
}

/// Refuse a request whose `Host` header names another server (403 `host_not_allowed`). A request without
/// one (HTTP/1.0) passes: browsers always send it, so DNS rebinding cannot leave it out.
pub async fn check_host(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{fffd}"));
    match host {
        Some(host) if !state.access.hosts.allows(host) => {
            tracing::warn!(host, "refused a request for another host (DNS rebinding?)");
            ApiError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "This server does not answer for the host {host:?}: add it to server.allowed_hosts to allow it."
                ),
            )
            .with_code("host_not_allowed")
            .into_response()
        }
        _ => next.run(req).await,
    }
}

/// `/console/api/*`: `Authorization: Bearer <a credential with the chat or admin scope>` when one is
/// configured (401 otherwise); with none, only a loopback listener serves it (403 otherwise).
pub async fn require_console_credential(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let configured = state.credentials.guards(Scope::Chat) || state.credentials.guards(Scope::Admin);
    if !configured {
        if state.access.console_open_without_credential {
            return next.run(req).await;
        }
        return ApiError::new(
            ErrorKind::PermissionDenied,
            "The console's data needs a credential when hearth listens on a non-loopback address: set \
             server.admin_token or server.api_keys.",
        )
        .with_code("console_credential_required")
        .into_response();
    }
    let unknown = ApiError::new(
        ErrorKind::Authentication,
        "The console's data needs a credential: send `Authorization: Bearer <admin token or API key>` \
         (the console asks for it on its Admin page).",
    )
    .with_code("invalid_console_credential");
    grant(&state, req, next, &[Scope::Chat, Scope::Admin], unknown).await
}
