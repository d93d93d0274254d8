//! [`SkillsConfig`]: the `[skills]` section of the config file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use regex::Regex;
use reqwest::header::HeaderName;
use reqwest::Method;
use serde::{Deserialize, Serialize};

/// `[skills]`: the built-in skills' settings and the configured ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SkillsConfig {
    /// Off: every message goes to the model.
    pub enabled: bool,
    /// The first lines of the `help` answer.
    pub help_text: String,
    /// The platform user id (DingTalk staffId) escalations go to; empty: no escalation.
    pub escalate_to: String,
    /// Regexes that hand the conversation to [`escalate_to`](Self::escalate_to) (`/human` always does).
    pub escalate_patterns: Vec<String>,
    /// What the user is told when the conversation is handed over.
    pub escalate_reply: String,
    /// Skills answering a fixed template (`[[skills.custom]]`).
    pub custom: Vec<CustomSkill>,
    /// Skills answering by calling an endpoint (`[[skills.http]]`).
    pub http: Vec<HttpSkillConfig>,
}

impl Default for SkillsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            help_text: "I am hearth, a private assistant. Ask me anything, or use:".to_owned(),
            escalate_to: String::new(),
            escalate_patterns: vec!["转人工".to_owned(), "(?i)\\b(human|agent|operator)\\b".to_owned()],
            escalate_reply: "I have asked a colleague to take over; they will contact you here soon.".to_owned(),
            custom: Vec::new(),
            http: Vec::new(),
        }
    }
}

impl SkillsConfig {
    /// Names must be unique and non-empty, each skill needs a pattern, and every regex must compile.
    pub fn validate(&self) -> Result<(), SkillError> {
        const BUILT_IN: [&str; 4] = ["help", "new", "status", "escalate"];
        for (i, skill) in self.custom.iter().enumerate() {
            if skill.name.trim().is_empty() {
                return Err(SkillError::Invalid(format!("custom[{i}].name must not be empty")));
            }
            if BUILT_IN.contains(&skill.name.as_str()) || self.custom[..i].iter().any(|s| s.name == skill.name) {
                return Err(SkillError::Invalid(format!(
                    "custom[{i}].name repeats the name {:?}",
                    skill.name
                )));
            }
            if skill.patterns.iter().all(|p| p.trim().is_empty()) {
                return Err(SkillError::Invalid(format!(
                    "custom[{i}] ({}) needs at least one pattern",
                    skill.name
                )));
            }
            if skill.trigger == TriggerKind::Regex {
                for (j, pattern) in skill.patterns.iter().enumerate() {
                    check_regex(&format!("custom[{i}].patterns[{j}] (skill {:?})", skill.name), pattern)?;
                }
            }
        }
        let custom = self.custom.iter().map(|s| s.name.as_str());
        for (i, skill) in self.http.iter().enumerate() {
            let key = format!("http[{i}]");
            if skill.name.trim().is_empty() {
                return Err(SkillError::Invalid(format!("{key}.name must not be empty")));
            }
            if BUILT_IN.contains(&skill.name.as_str())
                || custom.clone().any(|n| n == skill.name)
                || self.http[..i].iter().any(|s| s.name == skill.name)
            {
                return Err(SkillError::Invalid(format!(
                    "{key}.name repeats the name {:?}",
                    skill.name
                )));
            }
            skill.validate(&key)?;
        }
        // Checked whether or not escalation is on, so `hearth config check` catches a bad pattern before an
        // operator turns it on.
        for (i, pattern) in self.escalate_patterns.iter().enumerate() {
            check_regex(&format!("escalate_patterns[{i}]"), pattern)?;
        }
        Ok(())
    }
}

/// A regex that does not compile is an error naming its key.
fn check_regex(key: &str, pattern: &str) -> Result<(), SkillError> {
    regex::Regex::new(pattern)
        .map(drop)
        .map_err(|e| SkillError::Invalid(format!("{key} is not a valid regex: {e}")))
}

/// How a configured skill's patterns are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TriggerKind {
    /// `/pattern`, then arguments.
    Command,
    /// The whole message equals the pattern (case-insensitive).
    Keyword,
    /// The regex matches somewhere in the message.
    Regex,
}

/// One `[[skills.custom]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomSkill {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub trigger: TriggerKind,
    /// Commands (without or with the `/`), keywords or regexes, per [`trigger`](Self::trigger).
    pub patterns: Vec<String>,
    /// The answer; `{text}` is the message, `{args}` a command's arguments.
    pub reply: String,
    /// Breaks ties between skills matched by the same kind of trigger; higher wins.
    #[serde(default)]
    pub priority: i32,
}

/// Why skills could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum SkillError {
    #[error("skill `{skill}`: invalid regex: {reason}")]
    Regex { skill: String, reason: String },
    #[error("skills: {0}")]
    Invalid(String),
    #[error("cannot read the skills from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
}

/// One `[[skills.http]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSkillConfig {
    pub name: String,
    /// What it does: shown by `help` and given to the model as the tool's description.
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_trigger")]
    pub trigger: TriggerKind,
    /// Commands, keywords or regexes, per [`trigger`](Self::trigger); may be empty for a tool-only skill.
    #[serde(default)]
    pub patterns: Vec<String>,
    /// GET, POST, PUT or DELETE.
    #[serde(default = "default_method")]
    pub method: String,
    /// `http://` or `https://`; `{args}`, `{text}`, `{sender}` are filled in percent-encoded.
    pub url: String,
    /// Plain headers (not secret).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers whose values are read from files (trimmed): `{ Authorization = "/etc/hearth/crm-auth" }`.
    #[serde(default)]
    pub secret_headers: BTreeMap<String, PathBuf>,
    /// The request body for POST and PUT; `{args}`, `{text}`, `{sender}` are filled in as JSON strings.
    #[serde(default)]
    pub body: String,
    /// The whole call, connection to last byte.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// A longer response is refused.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// The answer: `{body}`, `{status}`, `{json.field.sub}` (a field of a JSON response).
    #[serde(default = "default_response")]
    pub response: String,
    /// Also offered to the model as a tool (IM answers).
    #[serde(default)]
    pub tool: bool,
    /// The tool argument's description (what `query` should hold).
    #[serde(default = "default_argument")]
    pub argument: String,
    #[serde(default)]
    pub priority: i32,
}

fn default_trigger() -> TriggerKind {
    TriggerKind::Command
}
fn default_method() -> String {
    "GET".to_owned()
}
fn default_timeout_ms() -> u64 {
    5000
}
fn default_max_response_bytes() -> usize {
    64 * 1024
}
fn default_response() -> String {
    "{body}".to_owned()
}
fn default_argument() -> String {
    "the user's request, e.g. an order number or a name".to_owned()
}

impl HttpSkillConfig {
    /// The checks that need no network: method, URL scheme, bounds, header names and templates.
    pub fn validate(&self, key: &str) -> Result<(), SkillError> {
        let invalid = |problem: String| Err(SkillError::Invalid(format!("{key} ({}): {problem}", self.name)));
        if parse_method(&self.method).is_none() {
            return invalid(format!("method {:?} is not GET, POST, PUT or DELETE", self.method));
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return invalid(format!("url {:?} must start with http:// or https://", self.url));
        }
        if self.timeout_ms == 0 || self.timeout_ms > 600_000 {
            return invalid(format!("timeout_ms is {}, not in 1..=600000", self.timeout_ms));
        }
        if self.max_response_bytes == 0 || self.max_response_bytes > 16 * 1024 * 1024 {
            return invalid(format!(
                "max_response_bytes is {}, not in 1..=16777216",
                self.max_response_bytes
            ));
        }
        for name in self.headers.keys().chain(self.secret_headers.keys()) {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                return invalid(format!("{name:?} is not a valid header name"));
            }
        }
        if self.patterns.iter().all(|p| p.trim().is_empty()) && !self.tool {
            return invalid("needs a pattern, or tool = true".to_owned());
        }
        if self.trigger == TriggerKind::Regex {
            for pattern in &self.patterns {
                if let Err(e) = Regex::new(pattern) {
                    return invalid(format!("{pattern:?} is not a valid regex: {e}"));
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn parse_method(method: &str) -> Option<Method> {
    match method.to_ascii_uppercase().as_str() {
        "GET" => Some(Method::GET),
        "POST" => Some(Method::POST),
        "PUT" => Some(Method::PUT),
        "DELETE" => Some(Method::DELETE),
        _ => None,
    }
}
