//! Who may reach what, besides the API keys of `/v1/*` and the admin token of `/admin/*`:
//! - [`check_host`]: the `Host` header must name this server ([`HostPolicy`]), so a web page cannot reach a
//!   hearth on loopback through a DNS name it rebinds to 127.0.0.1 (DNS rebinding);
//! - [`require_console_credential`]: the console's data (`/console/api/*`: audit records, the IM proxy)
//!   needs the admin token or an API key when either is configured; with neither, it is served only when
//!   hearth listens on loopback (on any other address it is refused, and `serve` says so at start);
//! - [`check_same_origin_json`]: a state-changing console call must be a same-origin JSON request, which a
//!   cross-site form or `fetch(..., {mode: "no-cors"})` cannot make (CSRF).

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorKind};
use crate::server::{bearer_token, key_matches, AppState};

/// Which `Host` header values requests may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPolicy {
    /// Host names (lowercase, without port) accepted besides loopback ones; `None`: any host.
    allowed: Option<Vec<String>>,
}

impl HostPolicy {
    /// The policy of a server listening on `listen_host` with the operator's `allowed_hosts`:
    /// - loopback names and addresses (`localhost`, `*.localhost`, `127.0.0.0/8`, `::1`) always pass;
    /// - so do the listen address itself and every `allowed_hosts` entry;
    /// - a server on the unspecified address (`0.0.0.0`, `::`) with no `allowed_hosts` accepts any host:
    ///   it is reachable by every name and address of the machine, and its keys guard it.
    pub fn new(listen_host: &str, allowed_hosts: &[String]) -> Self {
        let unspecified = listen_host
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified());
        if unspecified && allowed_hosts.is_empty() {
            return Self { allowed: None };
        }
        let mut allowed: Vec<String> = allowed_hosts.iter().map(|h| normalize(h)).collect();
        if !unspecified {
            allowed.push(normalize(listen_host));
        }
        Self { allowed: Some(allowed) }
    }

    /// Whether a request whose `Host` header is `host` (with or without a port) may go on.
    pub fn allows(&self, host: &str) -> bool {
        let Some(allowed) = &self.allowed else {
            return true;
        };
        let name = normalize(strip_port(host));
        is_loopback_host(&name) || allowed.contains(&name)
    }
}

/// `localhost`, a `*.localhost` name (browsers resolve them to loopback themselves), or a loopback address.
pub fn is_loopback_host(host: &str) -> bool {
    let host = normalize(host);
    host == "localhost" || host.ends_with(".localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Lowercase, without brackets around an IPv6 address or a final dot.
fn normalize(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// `name:port` → `name`; `[v6]:port` → `[v6]`; a bare IPv6 address stays whole.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
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

/// What the console's data needs, fixed at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The `Host` headers requests may carry.
    pub hosts: HostPolicy,
    /// With no credential configured: whether the console's data is served (only on a loopback listener).
    pub console_open_without_credential: bool,
}

impl Access {
    /// The rules of a server listening on `listen_host`.
    pub fn new(listen_host: &str, allowed_hosts: &[String]) -> Self {
        Self {
            hosts: HostPolicy::new(listen_host, allowed_hosts),
            console_open_without_credential: is_loopback_host(listen_host),
        }
    }
}

/// `/console/api/*`: `Authorization: Bearer <admin token or an API key>` when either is configured (401
/// otherwise); with neither, only a loopback listener serves it (403 otherwise).
pub async fn require_console_credential(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let configured = state.admin_token.is_some() || !state.api_keys.is_empty();
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
    let granted = bearer_token(&req).is_some_and(|token| {
        let admin = state
            .admin_token
            .as_deref()
            .is_some_and(|expected| key_matches(token, [expected]));
        // Both checks run, so the timing does not tell which kind of credential matched.
        admin | key_matches(token, state.api_keys.iter().map(|k| &**k))
    });
    if granted {
        next.run(req).await
    } else {
        ApiError::new(
            ErrorKind::Authentication,
            "The console's data needs a credential: send `Authorization: Bearer <admin token or API key>` \
             (the console asks for it on its Admin page).",
        )
        .with_code("invalid_console_credential")
        .into_response()
    }
}

/// A state-changing console call must declare a JSON body (`Content-Type: application/json`, which a
/// cross-site form cannot send and a cross-site `fetch` can only send after a CORS preflight this server
/// never grants), and must not come from another site (`Sec-Fetch-Site`, `Origin`).
pub fn check_same_origin_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            ErrorKind::UnsupportedMediaType,
            "This call needs a JSON body: send `Content-Type: application/json`.",
        )
        .with_code("unsupported_media_type"));
    }
    let cross_site = || {
        ApiError::new(
            ErrorKind::PermissionDenied,
            "Cross-origin requests are refused: the console calls this from its own page only.",
        )
        .with_code("cross_origin")
    };
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.to_str(), Ok("same-origin" | "none")) {
            return Err(cross_site());
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| o.strip_prefix("http://").or_else(|| o.strip_prefix("https://")));
        match (origin_host, host) {
            (Some(origin_host), Some(host)) if origin_host.eq_ignore_ascii_case(host) => {}
            _ => return Err(cross_site()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_by_listen_address() {
        let loopback = HostPolicy::new("127.0.0.1", &[]);
        for host in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "app.localhost",
            "127.0.0.2",
        ] {
            assert!(loopback.allows(host), "{host}");
        }
        for host in [
            "attacker.example:8080",
            "attacker.example",
            "10.0.0.5:8080",
            "127.0.0.1.nip.io",
        ] {
            assert!(!loopback.allows(host), "{host}");
        }
        let listed = HostPolicy::new("127.0.0.1", &["hearth.corp".to_owned()]);
        assert!(listed.allows("hearth.corp:8080") && listed.allows("Hearth.Corp."));
        assert!(!listed.allows("other.corp"));
        let specific = HostPolicy::new("10.0.0.5", &[]);
        assert!(specific.allows("10.0.0.5:8080") && specific.allows("localhost"));
        assert!(!specific.allows("attacker.example"));
        assert!(HostPolicy::new("0.0.0.0", &[]).allows("anything.example"));
        let any_but_listed = HostPolicy::new("::", &["hearth.corp".to_owned()]);
        assert!(any_but_listed.allows("hearth.corp") && !any_but_listed.allows("attacker.example"));
    }

    #[test]
    fn loopback_listeners() {
        for host in ["127.0.0.1", "localhost", "::1", "[::1]"] {
            assert!(Access::new(host, &[]).console_open_without_credential, "{host}");
        }
        for host in ["0.0.0.0", "::", "10.0.0.5", "hearth.corp"] {
            assert!(!Access::new(host, &[]).console_open_without_credential, "{host}");
        }
    }
}
