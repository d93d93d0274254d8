//! Who may reach what:
//! - [`Credentials`]: every credential the server accepts, each named and granting [`Scope`]s: `api_keys`
//!   chat, the admin token admin, and `[[server.keys]]` what they list. An area is guarded once any credential
//!   grants its scope: `/v1/*` by chat, `/admin/*` by admin (off without one), `/metrics` by metrics (open
//!   without one, for scrapers); a known key without the scope gets 403 `insufficient_scope`;
//! - `guards::check_host`: the `Host` header must name this server ([`HostPolicy`]), so a web page cannot reach a
//!   hearth on loopback through a DNS name it rebinds to 127.0.0.1 (DNS rebinding);
//! - `guards::require_console_credential`: the console's data (`/console/api/*`: audit records, the IM proxy)
//!   needs the admin token or an API key when either is configured; with neither, it is served only when
//!   hearth listens on loopback (on any other address it is refused, and `serve` says so at start);
//! - [`check_same_origin_json`]: a state-changing console call must be a same-origin JSON request, which a
//!   cross-site form or `fetch(..., {mode: "no-cors"})` cannot make (CSRF).

use std::net::IpAddr;

use axum::extract::Request;
use axum::http::{header, HeaderMap};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorKind};

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `/v1/*`: chat and completions, the model list.
    Chat,
    /// `/admin/*`: switch models, reload skills.
    Admin,
    /// `/metrics`.
    Metrics,
}

/// A credential with a name (for logs: who did what) and its scopes.
#[derive(Clone, PartialEq, Eq)]
pub struct ScopedKey {
    pub name: String,
    pub key: String,
    pub scopes: Vec<Scope>,
}

impl std::fmt::Debug for ScopedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopedKey")
            .field("name", &self.name)
            .field("key", &"***")
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// Every credential the server accepts.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    keys: Vec<ScopedKey>,
}

/// Why a bearer token was not granted a scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or one the server does not know: 401.
    Unknown,
    /// A known key without the scope: 403.
    OutOfScope,
}

impl Credentials {
    /// `api_keys` (scope chat, named `api_keys[i]`), the admin token (scope admin, named `admin_token`) and
    /// the named keys.
    pub fn new(api_keys: &[String], admin_token: Option<&str>, named: &[ScopedKey]) -> Self {
        let mut keys: Vec<ScopedKey> = api_keys
            .iter()
            .enumerate()
            .map(|(i, key)| ScopedKey {
                name: format!("api_keys[{i}]"),
                key: key.clone(),
                scopes: vec![Scope::Chat],
            })
            .collect();
        keys.extend(admin_token.map(|token| ScopedKey {
            name: "admin_token".to_owned(),
            key: token.to_owned(),
            scopes: vec![Scope::Admin],
        }));
        keys.extend(named.iter().cloned());
        Self { keys }
    }

    /// Whether any credential grants `scope` (so the area it opens is guarded).
    pub fn guards(&self, scope: Scope) -> bool {
        self.keys.iter().any(|k| k.scopes.contains(&scope))
    }

    /// The name of the credential `token` is, when it grants one of `scopes`. Every key is compared, so the
    /// timing does not tell which one (or whether any) matched.
    pub fn grant(&self, token: Option<&str>, scopes: &[Scope]) -> Result<&str, Refusal> {
        let token = token.ok_or(Refusal::Unknown)?;
        let matched = self.keys.iter().fold(None, |found, k| {
            let hit = constant_time_eq(token.as_bytes(), k.key.as_bytes());
            if hit && found.is_none() {
                Some(k)
            } else {
                found
            }
        });
        match matched {
            None => Err(Refusal::Unknown),
            Some(k) if k.scopes.iter().any(|s| scopes.contains(s)) => Ok(&k.name),
            Some(_) => Err(Refusal::OutOfScope),
        }
    }
}

/// Who made a request, as its credential is named; in the request's extensions once a check granted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

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

/// The token of an `Authorization: Bearer <token>` header, if the request has one.
pub fn bearer_token(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Compare keys without an early exit, so response timing does not reveal a matching prefix.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    fn credentials_grant_their_scopes_only() {
        let named = |name: &str, key: &str, scopes: &[Scope]| ScopedKey {
            name: name.to_owned(),
            key: key.to_owned(),
            scopes: scopes.to_vec(),
        };
        let credentials = Credentials::new(
            &["sk-chat".to_owned()],
            Some("admin-token-0123456789"),
            &[named("grafana", "sk-metrics", &[Scope::Metrics])],
        );
        assert_eq!(credentials.grant(Some("sk-chat"), &[Scope::Chat]), Ok("api_keys[0]"));
        assert_eq!(credentials.grant(Some("sk-metrics"), &[Scope::Metrics]), Ok("grafana"));
        assert_eq!(
            credentials.grant(Some("sk-metrics"), &[Scope::Chat]),
            Err(Refusal::OutOfScope)
        );
        assert_eq!(
            credentials.grant(Some("admin-token-0123456789"), &[Scope::Chat, Scope::Admin]),
            Ok("admin_token")
        );
        assert_eq!(
            credentials.grant(Some("sk-nope"), &[Scope::Chat]),
            Err(Refusal::Unknown)
        );
        assert_eq!(credentials.grant(None, &[Scope::Chat]), Err(Refusal::Unknown));
        assert!(credentials.guards(Scope::Metrics));
        assert!(!Credentials::new(&[], None, &[]).guards(Scope::Chat));
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
