//! [`OpenApi`]: the calls the Feishu connector makes (endpoint discovery, tenant token, IM reply and send,
//! CardKit), each answer classified into [`FeishuError`], so the core can tell throttles, refused scopes and
//! stale tokens from other failures.
//!
//! The tenant token is cached until `token_refresh_margin_secs` before it expires; a call refused for its
//! token (99991661/99991663/99991671) drops the cache and is tried once more with a fresh one. A refused
//! scope (99991672) is named in the log and on the status page; a later success clears it.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::{json, Value};

use super::config::FeishuConfig;
use crate::im::token::{exchange, ApiClient};

/// Scope of reading messages (the receive event and reading chats).
pub const SCOPE_MESSAGE: &str = "im:message";
/// Scope of sending and replying as the bot.
pub const SCOPE_SEND: &str = "im:message:send_as_bot";
/// Scope of creating and streaming card entities.
pub const SCOPE_CARDKIT: &str = "cardkit:card:write";
/// The scopes the connector needs.
pub const SCOPES: [&str; 3] = [SCOPE_MESSAGE, SCOPE_SEND, SCOPE_CARDKIT];

/// Common code: rate limited.
const CODE_RATE_LIMITED: i64 = 99_991_400;
/// Common code: the app lacks a scope.
const CODE_MISSING_SCOPE: i64 = 99_991_672;
/// Token codes: missing, invalid or expired, malformed.
const TOKEN_CODES: [i64; 3] = [99_991_661, 99_991_663, 99_991_671];
/// CardKit: streaming mode is closed (300309) or timed out (200850).
const STREAMING_CLOSED: [i64; 2] = [300_309, 200_850];

/// A failed Feishu call.
#[derive(Debug, thiserror::Error)]
pub enum FeishuError {
    #[error("{api}: HTTP request failed: {source}")]
    Http { api: &'static str, source: reqwest::Error },
    #[error("{api}: throttled by the platform (code {code})")]
    Throttled { api: &'static str, code: i64 },
    #[error("{api}: the app lacks the `{scope}` scope ({code}); grant it in the Feishu developer console")]
    ScopeRefused {
        api: &'static str,
        scope: String,
        code: i64,
    },
    #[error("{api}: tenant token rejected ({code})")]
    InvalidToken { api: &'static str, code: i64 },
    #[error("{api}: the card's streaming mode is closed ({code})")]
    StreamingClosed { api: &'static str, code: i64 },
    #[error("{api}: HTTP {status} code {code}: {message}")]
    Platform {
        api: &'static str,
        status: u16,
        code: i64,
        message: String,
    },
    #[error("{api}: unexpected answer: {detail}")]
    Unexpected { api: &'static str, detail: String },
}

impl FeishuError {
    /// The platform code, for errors that carry one.
    pub fn code(&self) -> Option<i64> {
        match self {
            Self::Throttled { code, .. }
            | Self::ScopeRefused { code, .. }
            | Self::InvalidToken { code, .. }
            | Self::StreamingClosed { code, .. }
            | Self::Platform { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Where the long connection is to be opened, from endpoint discovery.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The WebSocket URL, opened as it is.
    pub url: String,
    /// `service_id` of the URL: every frame hearth sends carries it.
    pub service_id: i32,
    /// `PingInterval` of the `ClientConfig`, when given.
    pub ping_interval: Option<Duration>,
}

/// The connector's OpenAPI client: an [`ApiClient`] over the section; its calls are below.
pub type OpenApi = ApiClient<FeishuConfig>;

impl OpenApi {
    /// A client for `config`'s app and domain.
    pub fn new(config: FeishuConfig) -> Result<Self, FeishuError> {
        let limits = (config.http_timeout_secs, config.token_refresh_margin_secs);
        let base = config.base().to_owned();
        Self::with("feishu", &base, limits, config).map_err(|source| FeishuError::Http { api: "client", source })
    }

    /// `POST /callback/ws/endpoint`: a fresh long-connection URL (§1.1).
    pub async fn discover(&self) -> Result<Endpoint, FeishuError> {
        const API: &str = "callback/ws/endpoint";
        let url = format!("{}/callback/ws/endpoint", self.config.base());
        let body = json!({"AppID": self.config.app_id, "AppSecret": self.config.app_secret.expose()});
        let answer = self.send(API, Method::POST, &url, &body, None).await?;
        let data = answer.get("data").cloned().unwrap_or(Value::Null);
        let ws_url = data.get("URL").and_then(Value::as_str).unwrap_or_default().to_owned();
        let service_id = query_param(&ws_url, "service_id").and_then(|s| s.parse::<i32>().ok());
        let Some(service_id) = service_id else {
            return Err(FeishuError::Unexpected {
                api: API,
                detail: "data.URL is missing or has no service_id".to_owned(),
            });
        };
        let ping_interval = data
            .pointer("/ClientConfig/PingInterval")
            .and_then(Value::as_u64)
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        Ok(Endpoint {
            url: ws_url,
            service_id,
            ping_interval,
        })
    }

    /// Ask for a tenant token: `Ok` means the platform accepts the app's id and secret.
    pub async fn check_credentials(&self) -> Result<(), FeishuError> {
        self.token().await.map(drop)
    }

    /// Ask for each scope the connector needs ([`SCOPES`]) with a call that changes nothing: it names a
    /// message or card that does not exist, so a granted scope is answered with a not-found or parameter
    /// error and a missing one with 99991672. **\[UNCONFIRMED\]**: this relies on the platform checking the
    /// scope before the parameters (as the emulator does). `Ok(true)`: granted; `Ok(false)`: refused;
    /// `Err`: no verdict.
    pub async fn probe_scopes(&self) -> Vec<(&'static str, Result<bool, FeishuError>)> {
        const PROBE: &str = "om_hearth_permission_probe";
        let content = json!({"content": "probe", "sequence": 1});
        let reply = json!({"msg_type": "text", "content": json!({"text": "probe"}).to_string()});
        let probes: [(&'static str, &'static str, Method, String, &Value); 3] = [
            (
                SCOPE_MESSAGE,
                "im/message/get",
                Method::GET,
                format!("/open-apis/im/v1/messages/{PROBE}"),
                &Value::Null,
            ),
            (
                SCOPE_SEND,
                "im/message/reply",
                Method::POST,
                format!("/open-apis/im/v1/messages/{PROBE}/reply"),
                &reply,
            ),
            (
                SCOPE_CARDKIT,
                "cardkit/card_element/content",
                Method::PUT,
                "/open-apis/cardkit/v1/cards/0/elements/probe/content".to_owned(),
                &content,
            ),
        ];
        let mut verdicts = Vec::new();
        for (scope, api, method, path, body) in probes {
            let verdict = match self.call(api, method, &path, body, scope).await {
                Ok(_) => Ok(true),
                Err(FeishuError::ScopeRefused { .. }) => Ok(false),
                Err(FeishuError::Platform {
                    status: 400..=404,
                    code,
                    ..
                }) if code > 0 => Ok(true),
                Err(err) => Err(err),
            };
            verdicts.push((scope, verdict));
        }
        verdicts
    }

    /// The cached tenant token, renewed within the margin of its expiry.
    async fn token(&self) -> Result<String, FeishuError> {
        self.token.get(|| self.fetch_token()).await
    }

    /// A new tenant token and its lifetime in seconds.
    async fn fetch_token(&self) -> Result<(String, u64), FeishuError> {
        const API: &str = "auth/v3/tenant_access_token/internal";
        let url = format!("{}/open-apis/auth/v3/tenant_access_token/internal", self.config.base());
        let body = json!({"app_id": self.config.app_id, "app_secret": self.config.app_secret.expose()});
        let answer = self.send(API, Method::POST, &url, &body, None).await?;
        let token = answer.get("tenant_access_token").and_then(Value::as_str);
        let expire = answer.get("expire").and_then(Value::as_u64);
        let (Some(token), Some(expire)) = (token.filter(|t| !t.is_empty()), expire) else {
            return Err(FeishuError::Unexpected {
                api: API,
                detail: "tenant_access_token or expire missing".to_owned(),
            });
        };
        Ok((token.to_owned(), expire))
    }

    /// A bot call with the tenant token; a refused token is refreshed and the call tried once more. `scope`
    /// is the one the call needs: a refusal names it, a success clears it.
    pub(crate) async fn call(
        &self,
        api: &'static str,
        method: Method,
        path: &str,
        body: &impl Serialize,
        scope: &'static str,
    ) -> Result<Value, FeishuError> {
        let url = format!("{}{path}", self.config.base());
        let (method, url) = (&method, url.as_str());
        let result = self
            .authorized(
                api,
                || self.fetch_token(),
                |err| matches!(err, FeishuError::InvalidToken { .. }),
                |token| async move { self.send(api, method.clone(), url, body, Some(&token)).await },
            )
            .await;
        match result {
            Err(FeishuError::ScopeRefused { scope: named, code, .. }) => {
                let scope_name = if named.is_empty() { scope.to_owned() } else { named };
                let err = FeishuError::ScopeRefused {
                    api,
                    scope: scope_name.clone(),
                    code,
                };
                tracing::error!(api, scope = %scope_name, "the Feishu app lacks a scope: {err}");
                self.health.permission_refused(&scope_name, api, err.to_string());
                Err(err)
            }
            Ok(answer) => {
                self.health.permission_granted(scope);
                Ok(answer)
            }
            Err(err) => Err(err),
        }
    }

    /// One HTTP exchange; the envelope's `code` is classified.
    async fn send(
        &self,
        api: &'static str,
        method: Method,
        url: &str,
        body: &impl Serialize,
        token: Option<&str>,
    ) -> Result<Value, FeishuError> {
        let mut request = self.http.request(method, url).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let (status, text) = exchange(request)
            .await
            .map_err(|source| FeishuError::Http { api, source })?;
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let code = answer.get("code").and_then(Value::as_i64);
        let message = answer.get("msg").and_then(Value::as_str).unwrap_or_default().to_owned();
        match code {
            Some(0) if status.is_success() => Ok(answer),
            Some(code) => Err(classify(api, status, code, message, &answer)),
            None if status == StatusCode::TOO_MANY_REQUESTS => Err(FeishuError::Throttled {
                api,
                code: CODE_RATE_LIMITED,
            }),
            None => Err(FeishuError::Platform {
                api,
                status: status.as_u16(),
                code: -1,
                message: text.chars().take(200).collect(),
            }),
        }
    }
}

/// The error of a refused call with envelope `code`.
fn classify(api: &'static str, status: StatusCode, code: i64, message: String, answer: &Value) -> FeishuError {
    if code == CODE_RATE_LIMITED || code == 1_000_004 || status == StatusCode::TOO_MANY_REQUESTS {
        return FeishuError::Throttled { api, code };
    }
    if TOKEN_CODES.contains(&code) {
        return FeishuError::InvalidToken { api, code };
    }
    if code == CODE_MISSING_SCOPE {
        return FeishuError::ScopeRefused {
            api,
            scope: refused_scope(answer, &message),
            code,
        };
    }
    if STREAMING_CLOSED.contains(&code) {
        return FeishuError::StreamingClosed { api, code };
    }
    FeishuError::Platform {
        api,
        status: status.as_u16(),
        code,
        message,
    }
}

/// The scope a 99991672 names: `error.permission_violations[].subject`, else the first one the message
/// lists in brackets (`… required: [im:message, …]`); empty when neither says.
fn refused_scope(answer: &Value, message: &str) -> String {
    if let Some(subject) = answer
        .pointer("/error/permission_violations/0/subject")
        .and_then(Value::as_str)
    {
        return subject.to_owned();
    }
    message
        .split_once('[')
        .and_then(|(_, rest)| rest.split([',', ']']).next())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The value of query parameter `key` in `url`.
fn query_param<'a>(url: &'a str, key: &str) -> Option<&'a str> {
    let (_, query) = url.split_once('?')?;
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_read_from_the_violation_or_the_message() {
        let answer = json!({"error": {"permission_violations": [{"subject": "cardkit:card:write"}]}});
        assert_eq!(refused_scope(&answer, ""), "cardkit:card:write");
        let message = "Access denied. One of the following scopes is required: [im:message, im:message:send_as_bot].";
        assert_eq!(refused_scope(&Value::Null, message), "im:message");
        assert_eq!(refused_scope(&Value::Null, "denied"), "");
    }

    #[test]
    fn the_service_id_comes_from_the_query() {
        let url = "wss://h/ws/v2?fpid=493&device_id=7&service_id=33554678&ticket=t";
        assert_eq!(query_param(url, "service_id"), Some("33554678"));
        assert_eq!(query_param(url, "nope"), None);
    }
}
