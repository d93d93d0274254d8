//! HTTP skills: a configured skill that answers by calling a company endpoint (`[[skills.http]]`).
//!
//! The request: `method` to the `url` template (`{args}`, `{text}` and `{sender}` are filled in
//! percent-encoded), with the configured `headers` and the `secret_headers` (each read from a file when the
//! skills are built; the values are marked sensitive and never logged), and for POST/PUT the `body`
//! template (filled in as JSON strings). The call is bounded: `timeout_ms` for the whole exchange, and
//! `max_response_bytes` read at most. The answer: the `response` template with `{body}` (the response
//! text), `{status}` (the HTTP status) and `{json.a.b}` (a field of a JSON response, by path; arrays by
//! index) filled in. A slow, failing or oversized endpoint gets the user a [`CallStatus`]-specific
//! sentence, never silence.
//!
//! An HTTP skill is triggered like any skill (command, keyword, regex), and with `tool = true` is also
//! offered to the model as a function with one string argument, `query`, which becomes `{args}`.

use std::fmt;
use std::time::{Duration, Instant};

use futures::StreamExt;
use regex::Regex;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Method;
use serde_json::Value;

use super::calls::CallStatus;
use super::config::{parse_method, HttpSkillConfig, SkillError, TriggerKind};
use super::skill::{SkillInput, Trigger};

/// One finished call: what the user is told, and what the audit log keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOutcome {
    /// The answer for the user: the rendered response, or why there is none.
    pub text: String,
    pub status: CallStatus,
    /// The endpoint's HTTP status, when it answered.
    pub http_status: Option<u16>,
    pub latency: Duration,
}

/// An HTTP skill the model called as a tool: which, and how the call ended (a [`CallStatus::Refused`] one
/// when the access rules reserve the skill and the sender may not use it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolUse {
    pub skill: String,
    pub outcome: CallOutcome,
    /// Why the access rules refused the call, as audited.
    pub refusal: Option<String>,
}

/// A configured HTTP skill, ready to call.
pub struct HttpSkill {
    pub(super) name: String,
    pub(super) description: String,
    pub(super) triggers: Vec<Trigger>,
    pub(super) priority: i32,
    method: Method,
    url: String,
    /// Plain and secret headers (the secret ones marked sensitive).
    headers: HeaderMap,
    body: String,
    timeout: Duration,
    max_bytes: usize,
    response: String,
    tool: bool,
    argument: String,
    client: reqwest::Client,
}

impl fmt::Debug for HttpSkill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The headers stay out: they may hold secrets.
        f.debug_struct("HttpSkill")
            .field("name", &self.name)
            .field("method", &self.method)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl HttpSkill {
    /// Build the skill from `config`, reading its secret header files.
    pub fn new(config: &HttpSkillConfig) -> Result<Self, SkillError> {
        config.validate("http")?;
        let invalid = |problem: String| SkillError::Invalid(format!("http ({}): {problem}", config.name));
        let mut triggers = Vec::new();
        for pattern in config.patterns.iter().filter(|p| !p.trim().is_empty()) {
            triggers.push(match config.trigger {
                TriggerKind::Command => Trigger::Command(pattern.trim().trim_start_matches('/').to_owned()),
                TriggerKind::Keyword => Trigger::Keyword(pattern.trim().to_owned()),
                TriggerKind::Regex => Trigger::Regex(Regex::new(pattern).map_err(|e| SkillError::Regex {
                    skill: config.name.clone(),
                    reason: e.to_string(),
                })?),
            });
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let value =
                HeaderValue::from_str(value).map_err(|_| invalid(format!("header {name:?} has an invalid value")))?;
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| invalid(e.to_string()))?,
                value,
            );
        }
        for (name, path) in &config.secret_headers {
            let secret = std::fs::read_to_string(path).map_err(|e| {
                invalid(format!(
                    "cannot read the secret header {name:?} from {}: {e}",
                    path.display()
                ))
            })?;
            // The error must not echo the value.
            let mut value = HeaderValue::from_str(secret.trim()).map_err(|_| {
                invalid(format!(
                    "the secret header {name:?} in {} is not a valid value",
                    path.display()
                ))
            })?;
            value.set_sensitive(true);
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| invalid(e.to_string()))?,
                value,
            );
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| invalid(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            name: config.name.clone(),
            description: config.description.clone(),
            triggers,
            priority: config.priority,
            method: parse_method(&config.method).unwrap_or(Method::GET),
            url: config.url.clone(),
            headers,
            body: config.body.clone(),
            timeout: Duration::from_millis(config.timeout_ms),
            max_bytes: config.max_response_bytes,
            response: config.response.clone(),
            tool: config.tool,
            argument: config.argument.clone(),
            client,
        })
    }

    /// Whether the model is offered this skill as a tool.
    pub fn is_tool(&self) -> bool {
        self.tool
    }

    /// The tool the model is offered: `{"type": "function", "function": {name, description, parameters}}`.
    pub fn tool_definition(&self) -> Value {
        serde_json::json!({
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": {
                    "type": "object",
                    "properties": {"query": {"type": "string", "description": self.argument}},
                    "required": ["query"],
                },
            },
        })
    }

    /// Call the endpoint for `input` and render the answer. Never fails: a failure is a [`CallOutcome`]
    /// whose text tells the user what went wrong.
    pub async fn call(&self, input: &SkillInput<'_>) -> CallOutcome {
        let started = Instant::now();
        let (status, http_status, text) = match tokio::time::timeout(self.timeout, self.exchange(input)).await {
            Ok(Ok((code, body))) if (200..300).contains(&code) => {
                (CallStatus::Ok, Some(code), self.render(code, &body))
            }
            Ok(Ok((code, _))) => (
                CallStatus::HttpError,
                Some(code),
                format!(
                    "Sorry, {} answered with an error (HTTP {code}); please try again later.",
                    self.name
                ),
            ),
            Ok(Err(Exchange::TooLarge(code))) => (
                CallStatus::TooLarge,
                Some(code),
                format!(
                    "Sorry, {} answered with more than {} bytes, more than I may read; please ask your IT team.",
                    self.name, self.max_bytes
                ),
            ),
            Ok(Err(Exchange::Failed(reason))) => {
                tracing::warn!(skill = %self.name, %reason, "the HTTP skill's endpoint cannot be reached");
                (
                    CallStatus::Unreachable,
                    None,
                    format!(
                        "Sorry, {} cannot be reached just now; please try again later.",
                        self.name
                    ),
                )
            }
            Err(_) => (
                CallStatus::Timeout,
                None,
                format!(
                    "Sorry, {} did not answer within {} ms; please try again later.",
                    self.name,
                    self.timeout.as_millis()
                ),
            ),
        };
        CallOutcome {
            text,
            status,
            http_status,
            latency: started.elapsed(),
        }
    }

    /// Send the request and read at most `max_bytes` of the answer.
    async fn exchange(&self, input: &SkillInput<'_>) -> Result<(u16, String), Exchange> {
        let url = fill(&self.url, input, percent_encode);
        let mut request = self
            .client
            .request(self.method.clone(), url)
            .headers(self.headers.clone());
        if matches!(self.method, Method::POST | Method::PUT) && !self.body.is_empty() {
            let json_string = |s: &str| {
                let quoted = Value::String(s.to_owned()).to_string();
                quoted[1..quoted.len() - 1].to_owned()
            };
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(fill(&self.body, input, json_string));
        }
        // reqwest's error text names the URL, never the headers.
        let response = request.send().await.map_err(|e| Exchange::Failed(e.to_string()))?;
        let code = response.status().as_u16();
        if response.content_length().is_some_and(|n| n > self.max_bytes as u64) {
            return Err(Exchange::TooLarge(code));
        }
        let mut body = Vec::new();
        let mut chunks = response.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| Exchange::Failed(e.to_string()))?;
            if body.len() + chunk.len() > self.max_bytes {
                return Err(Exchange::TooLarge(code));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((code, String::from_utf8_lossy(&body).into_owned()))
    }

    /// The `response` template filled with the answer.
    fn render(&self, code: u16, body: &str) -> String {
        let json: Option<Value> = serde_json::from_str(body).ok();
        let placeholder = Regex::new(r"\{(body|status|json(?:\.[^{}]*)?)\}").expect("a valid regex");
        placeholder
            .replace_all(&self.response, |caps: &regex::Captures<'_>| match &caps[1] {
                "body" => body.to_owned(),
                "status" => code.to_string(),
                path => {
                    let mut value = json.as_ref();
                    for part in path.split('.').skip(1).filter(|p| !p.is_empty()) {
                        value = value.and_then(|v| match v {
                            Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
                            _ => v.get(part),
                        });
                    }
                    match value {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Null) | None => String::new(),
                        Some(other) => other.to_string(),
                    }
                }
            })
            .trim()
            .to_owned()
    }
}

/// Why an exchange has no answer to render.
enum Exchange {
    /// More than the limit (the HTTP status it came with).
    TooLarge(u16),
    /// Not sent or not read, with reqwest's reason.
    Failed(String),
}

/// `template` with `{args}`, `{text}` and `{sender}` replaced by `escape`d values.
fn fill(template: &str, input: &SkillInput<'_>, escape: impl Fn(&str) -> String) -> String {
    template
        .replace("{args}", &escape(input.args))
        .replace("{text}", &escape(input.text))
        .replace("{sender}", &escape(input.sender_id))
}

/// Percent-encode everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_percent_encoded_and_bodies_json_escaped() {
        let input = SkillInput {
            text: "order 12/3",
            args: "12/3 &x",
            sender_id: "u\"1",
            sender_nick: "",
        };
        assert_eq!(
            fill("http://h/o/{args}?by={sender}", &input, percent_encode),
            "http://h/o/12%2F3%20%26x?by=u%221"
        );
        let json_string = |s: &str| {
            let quoted = Value::String(s.to_owned()).to_string();
            quoted[1..quoted.len() - 1].to_owned()
        };
        assert_eq!(fill(r#"{"who":"{sender}"}"#, &input, json_string), r#"{"who":"u\"1"}"#);
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let config: HttpSkillConfig = toml::from_str(
            r#"
            name = "crm"
            url = "ftp://x"
            patterns = ["crm"]
            "#,
        )
        .unwrap();
        let err = config.validate("http[0]").unwrap_err().to_string();
        assert!(err.contains("http:// or https://"), "{err}");
        let config = HttpSkillConfig {
            url: "http://x".to_owned(),
            method: "PATCH".to_owned(),
            ..config
        };
        assert!(config.validate("http[0]").unwrap_err().to_string().contains("PATCH"));
    }

    #[test]
    fn responses_render_json_fields_and_the_body() {
        let config: HttpSkillConfig = toml::from_str(
            r#"
            name = "orders"
            url = "http://127.0.0.1:1/"
            patterns = ["order"]
            response = "Order {json.order.id}: {json.order.status} ({json.items.1}, {status})"
            "#,
        )
        .unwrap();
        let skill = HttpSkill::new(&config).unwrap();
        let body = r#"{"order": {"id": 7, "status": "shipped"}, "items": ["a", "b"]}"#;
        assert_eq!(skill.render(200, body), "Order 7: shipped (b, 200)");
    }
}
