//! The configuration file: one TOML file (`hearth.example.toml` documents every key), overridden by
//! `HEARTH_<SECTION>__<KEY>` environment variables, overridden in turn by command-line flags.
//!
//! Unknown keys and wrong types are errors that name the key and where it came from. Secrets (API keys,
//! the admin token) live only in the file, in files it names (`api_keys_file`, `admin_token_file`, as
//! systemd and Kubernetes credentials provide them) or in the environment; their `Debug` output is redacted,
//! so logging a [`Config`] never leaks them, and [`permission_warnings`] names a file holding them that
//! other users can read.

use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::access::Scope;
use crate::dingtalk::config::DingTalkConfig;
pub use crate::secret::Secret;
use crate::skills::config::SkillsConfig;

/// The commented example configuration, with every key at its default.
pub const EXAMPLE: &str = include_str!("../hearth.example.toml");

/// Environment variables `HEARTH_<SECTION>__<KEY>` (double underscore between section and key) override
/// the file; single-level names such as `HEARTH_MODEL` belong to the command line, not to this file.
pub const ENV_PREFIX: &str = "HEARTH_";

/// Everything `hearth.toml` can say. Every section is optional; a missing key takes its default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerSection,
    pub engine: EngineSection,
    /// The models this server can run; the first is loaded at start. Empty: the default model.
    pub models: Vec<ModelEntry>,
    pub routing: RoutingSection,
    pub log: LogSection,
    pub data: DataSection,
    /// `[dingtalk]`: the DingTalk connector; absent: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dingtalk: Option<DingTalkConfig>,
    /// `[feishu]`: the Feishu (Lark) connector; absent: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feishu: Option<crate::feishu::config::FeishuConfig>,
    /// `[wecom]`: the WeCom connector; absent: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wecom: Option<crate::wecom::config::WeComConfig>,
    /// `[skills]`: answers without the model, for every IM connector.
    pub skills: SkillsConfig,
    /// `[access]`: who may talk to the assistant over IM, per platform, and with what role.
    pub access: crate::access_rules::AccessConfig,
}

/// `[server]`: where and how the HTTP API listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub host: String,
    pub port: u16,
    /// The model name clients see; unset: the model entry's name, else the GGUF file stem.
    pub served_model_name: Option<String>,
    /// Keys accepted as `Authorization: Bearer KEY` on `/v1/*`; empty: no key needed.
    pub api_keys: Vec<Secret>,
    /// A file of more API keys, one per line (blank lines and `#` comments skipped); read at load.
    pub api_keys_file: Option<PathBuf>,
    /// Bearer token of the `/admin/*` API; unset: the admin API is off.
    pub admin_token: Option<Secret>,
    /// A file holding the admin token (instead of `admin_token`); read at load.
    pub admin_token_file: Option<PathBuf>,
    /// Named keys with scopes (`[[server.keys]]`), besides `api_keys` (chat) and `admin_token` (admin).
    pub keys: Vec<KeyEntry>,
    /// Request bodies above this many bytes get a 413.
    pub max_body_bytes: usize,
    /// Prompts longer than this many bytes get a 400 before they are tokenized; unset: 16 bytes per token of
    /// the model's context.
    pub max_prompt_bytes: Option<usize>,
    /// `max_tokens` of a chat request that gives none.
    pub default_max_tokens: usize,
    /// After SIGTERM, seconds in-flight answers may take to finish before they are failed.
    pub shutdown_timeout_secs: u64,
    /// Host names the `Host` header may carry besides loopback ones and `host` (against DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Most HTTP connections open at once.
    pub max_connections: usize,
    /// Seconds a client has to send a request head, an idle keep-alive connection stays open, and a request
    /// body may send nothing.
    pub header_read_timeout_secs: u64,
    /// A PEM certificate chain (the server's certificate first): with `tls_key_file`, the listener speaks
    /// HTTPS only; neither: plain HTTP (behind a reverse proxy that terminates TLS, or on loopback).
    pub tls_cert_file: Option<PathBuf>,
    /// The PEM private key of `tls_cert_file` (PKCS#8, PKCS#1 or SEC1).
    pub tls_key_file: Option<PathBuf>,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 8080,
            served_model_name: None,
            api_keys: Vec::new(),
            api_keys_file: None,
            admin_token: None,
            admin_token_file: None,
            keys: Vec::new(),
            max_body_bytes: 4 * 1024 * 1024,
            max_prompt_bytes: None,
            default_max_tokens: 1024,
            shutdown_timeout_secs: 30,
            allowed_hosts: Vec::new(),
            max_connections: 512,
            header_read_timeout_secs: 10,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// One `[[server.keys]]` entry: a named key and what it may do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// Who holds it, for logs (`caller = NAME` on admin actions); unique.
    pub name: String,
    /// The key itself; or `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Secret>,
    /// A file holding the key; read at load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// `chat` (`/v1/*`), `admin` (`/admin/*`), `metrics` (`/metrics`).
    pub scopes: Vec<Scope>,
}

/// `[engine]`: how much work the engine takes on. Unset values take the engine's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    pub max_batch_tokens: Option<usize>,
    pub max_running: Option<usize>,
    pub max_waiting: Option<usize>,
    pub kv_cache_tokens: Option<usize>,
    pub ctx_size: Option<usize>,
}

/// One `[[models]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// The name clients and the admin API use for this model.
    pub name: String,
    /// The GGUF file.
    pub path: PathBuf,
    /// Expected SHA-256 of the file (hex); `hearth doctor` checks it when set.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// `[routing]`: which model takes a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSection {
    /// Name of a `[[models]]` entry that takes requests while the active model's queue is slow.
    pub fallback: Option<String>,
    /// "Slow": the active model's oldest queued request has waited this many seconds.
    pub fallback_after_secs: f64,
}

impl Default for RoutingSection {
    fn default() -> Self {
        Self {
            fallback: None,
            fallback_after_secs: 3.0,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `text` or `json` (one JSON object per line).
    pub format: LogFormat,
    /// A tracing filter such as `info` or `info,gateway=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[data]`: where hearth keeps its state. Its `Debug` hides the store URL's password.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// The data directory (the SQLite database lives here).
    pub dir: PathBuf,
    /// The store the IM connectors keep their messages, sessions and audit log in, when set: a
    /// `postgres://…` URL that several nodes of one bot share, or `sqlite:///path`. It takes the place of
    /// each platform's own `database` file. Unset: each platform's SQLite file (one node).
    pub url: Option<String>,
}

impl std::fmt::Debug for DataSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataSection")
            .field("dir", &self.dir)
            .field("url", &self.url.as_deref().map(redact_url_password))
            .finish()
    }
}

impl Default for DataSection {
    fn default() -> Self {
        let dir = std::env::var_os("HOME")
            .map(|home| PathBuf::from(home).join(".local/share/hearth"))
            .unwrap_or_else(|| PathBuf::from("/var/lib/hearth"));
        Self { dir, url: None }
    }
}

/// Why the configuration cannot be used. Each message names the key or the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("invalid configuration: `{key}` in {origin}: {reason}")]
    Invalid {
        key: String,
        origin: String,
        reason: String,
    },
    #[error("invalid configuration: `{key}` {problem}")]
    Value { key: String, problem: String },
    #[error("invalid configuration: `{key}`: cannot read {path}: {reason}")]
    SecretFile { key: String, path: PathBuf, reason: String },
}

/// The largest `engine.kv_cache_tokens`: past it even the smallest model's cache needs terabytes of memory.
pub const MAX_KV_CACHE_TOKENS: usize = 1 << 24;

/// The largest `engine.ctx_size`.
pub const MAX_CTX_SIZE: usize = 1 << 20;

impl Config {
    /// Defaults, then `file` (which must exist when given), then `HEARTH_<SECTION>__<KEY>` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// [`Config::load`] with the environment given explicitly (tests must not mutate the process's).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::Missing(file.to_owned()));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        let mut from_env = Vec::new();
        for (key, value) in env {
            let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let Some((section, field)) = rest.split_once("__") else {
                continue;
            };
            let path = format!("{}.{}", section.to_ascii_lowercase(), field.to_ascii_lowercase());
            figment = figment.merge(Serialized::global(&path, env_value(&value)));
            from_env.push((path, key));
        }
        let config: Config = figment.extract().map_err(|err| {
            let key = err.path.join(".");
            // Name the variable when the bad value came from the environment, else the file.
            let origin = match from_env
                .iter()
                .find(|(p, _)| *p == key || p.starts_with(&format!("{key}.")))
            {
                Some((_, var)) => format!("the environment variable {var}"),
                None => file.map_or_else(|| "the defaults".to_owned(), |f| f.display().to_string()),
            };
            ConfigError::Invalid {
                key,
                origin,
                reason: err.kind.to_string(),
            }
        })?;
        let mut config = config;
        config.read_secret_files()?;
        config.validate()?;
        config.skills.validate().map_err(|e| ConfigError::Value {
            key: "skills".to_owned(),
            problem: e.to_string(),
        })?;
        // The directory file is read too, so `hearth config check` catches a missing or malformed one.
        config.access.rules().map_err(|e| ConfigError::Value {
            key: "access".to_owned(),
            problem: e.to_string(),
        })?;
        Ok(config)
    }

    /// This configuration with the keys of `server.api_keys_file` and the token of `server.admin_token_file`
    /// added (as [`Config::load`] does).
    pub fn with_secret_files(mut self) -> Result<Self, ConfigError> {
        self.read_secret_files()?;
        Ok(self)
    }

    /// Add the keys of `server.api_keys_file` and the token of `server.admin_token_file`.
    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        let read = |key: &str, path: &Path| {
            std::fs::read_to_string(path).map_err(|err| ConfigError::SecretFile {
                key: key.to_owned(),
                path: path.to_owned(),
                reason: err.to_string(),
            })
        };
        if let Some(path) = &self.server.api_keys_file {
            let text = read("server.api_keys_file", path)?;
            for (i, line) in text.lines().enumerate() {
                let key = line.trim();
                if key.is_empty() || key.starts_with('#') {
                    continue;
                }
                if key.chars().any(char::is_whitespace) {
                    return Err(ConfigError::Value {
                        key: "server.api_keys_file".to_owned(),
                        problem: format!(
                            "line {} of {} contains whitespace inside the key, which no Authorization header can carry",
                            i + 1,
                            path.display()
                        ),
                    });
                }
                self.server.api_keys.push(Secret(key.to_owned()));
            }
        }
        for (i, entry) in self.server.keys.iter_mut().enumerate() {
            if let Some(path) = &entry.key_file {
                let key = format!("server.keys[{i}].key_file");
                if entry.key.is_some() {
                    return Err(ConfigError::Value {
                        key,
                        problem: "is set together with `key`: keep one".to_owned(),
                    });
                }
                entry.key = Some(Secret(read(&key, path)?.trim().to_owned()));
            }
        }
        if let Some(path) = &self.server.admin_token_file {
            if self.server.admin_token.is_some() {
                return Err(ConfigError::Value {
                    key: "server.admin_token_file".to_owned(),
                    problem: "is set together with server.admin_token: keep one".to_owned(),
                });
            }
            let token = read("server.admin_token_file", path)?;
            self.server.admin_token = Some(Secret(token.trim().to_owned()));
        }
        if let Some(dingtalk) = &mut self.dingtalk {
            dingtalk.read_secret_files().map_err(|err| ConfigError::Value {
                key: "dingtalk.app_secret_file".to_owned(),
                problem: err.to_string(),
            })?;
        }
        if let Some(feishu) = &mut self.feishu {
            feishu.read_secret_files().map_err(|err| ConfigError::Value {
                key: "feishu.app_secret_file".to_owned(),
                problem: err.to_string(),
            })?;
        }
        if let Some(wecom) = &mut self.wecom {
            wecom.read_secret_files().map_err(|err| ConfigError::Value {
                key: "wecom.secret_file/token_file/encoding_aes_key_file".to_owned(),
                problem: err.to_string(),
            })?;
        }
        Ok(())
    }

    /// Checks serde cannot express: positive sizes, unique model names, a usable admin token.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: &str| {
            Err(ConfigError::Value {
                key: key.to_owned(),
                problem: problem.to_owned(),
            })
        };
        let engine = [
            ("engine.max_batch_tokens", self.engine.max_batch_tokens),
            ("engine.max_running", self.engine.max_running),
            ("engine.max_waiting", self.engine.max_waiting),
            ("engine.kv_cache_tokens", self.engine.kv_cache_tokens),
            ("engine.ctx_size", self.engine.ctx_size),
        ];
        for (key, value) in engine {
            if value == Some(0) {
                return invalid(key, "must be at least 1");
            }
        }
        if let Some(tokens) = self.engine.kv_cache_tokens.filter(|&t| t > MAX_KV_CACHE_TOKENS) {
            return invalid(
                "engine.kv_cache_tokens",
                &format!(
                    "is {tokens}, more than {MAX_KV_CACHE_TOKENS}: a KV cache that large needs more memory than a machine has \
                     (16384 is the default; `hearth doctor` estimates the memory a value needs)"
                ),
            );
        }
        if let Some(url) = &self.data.url {
            if let Err(err) = crate::store::Locator::parse(url) {
                return invalid("data.url", &err.to_string());
            }
        }
        if let Some(tokens) = self.engine.ctx_size.filter(|&t| t > MAX_CTX_SIZE) {
            return invalid(
                "engine.ctx_size",
                &format!("is {tokens}, more than {MAX_CTX_SIZE} tokens"),
            );
        }
        check_log_level(&self.log.level).or_else(|problem| invalid("log.level", &problem))?;
        let server = &self.server;
        for (key, value) in [
            ("server.max_body_bytes", server.max_body_bytes),
            ("server.max_prompt_bytes", server.max_prompt_bytes.unwrap_or(1)),
            ("server.default_max_tokens", server.default_max_tokens),
            ("server.max_connections", server.max_connections),
            (
                "server.header_read_timeout_secs",
                server.header_read_timeout_secs as usize,
            ),
        ] {
            if value == 0 {
                return invalid(key, "must be at least 1");
            }
        }
        match (&server.tls_cert_file, &server.tls_key_file) {
            (Some(_), None) => return invalid("server.tls_key_file", "is missing: server.tls_cert_file needs its key"),
            (None, Some(_)) => {
                return invalid(
                    "server.tls_cert_file",
                    "is missing: server.tls_key_file needs its certificate",
                )
            }
            _ => {}
        }
        if server.api_keys.iter().any(|k| k.0.trim().is_empty()) {
            return invalid("server.api_keys", "must not contain an empty key");
        }
        // A key with a space can never match: the bearer token is trimmed and ends at the header's end.
        if let Some(i) = server
            .api_keys
            .iter()
            .position(|k| k.0.chars().any(char::is_whitespace))
        {
            return invalid(
                &format!("server.api_keys[{i}]"),
                "contains whitespace, which no Authorization header can carry: remove it",
            );
        }
        for (i, entry) in server.keys.iter().enumerate() {
            let key = |field: &str| format!("server.keys[{i}].{field}");
            if entry.name.trim().is_empty() || server.keys[..i].iter().any(|k| k.name == entry.name) {
                return invalid(&key("name"), "must be a name no other key has");
            }
            let Some(secret) = &entry.key else {
                return invalid(&key("key"), "is missing: set `key` or `key_file`");
            };
            if secret.0.is_empty() || secret.0.chars().any(char::is_whitespace) {
                return invalid(
                    &key("key"),
                    "must not be empty or contain whitespace, which no Authorization header can carry",
                );
            }
            if entry.scopes.is_empty() {
                return invalid(
                    &key("scopes"),
                    "must list at least one of \"chat\", \"admin\", \"metrics\"",
                );
            }
            if entry.scopes.contains(&Scope::Admin) && secret.0.len() < 16 {
                return invalid(&key("key"), "must be at least 16 characters for the admin scope");
            }
        }
        if let Some(token) = &server.admin_token {
            if token.0.len() < 16 {
                return invalid("server.admin_token", "must be at least 16 characters");
            }
            if token.0.chars().any(char::is_whitespace) {
                return invalid(
                    "server.admin_token",
                    "contains whitespace, which no Authorization header can carry: remove it",
                );
            }
        }
        if let Some(fallback) = &self.routing.fallback {
            if !self.models.iter().any(|m| &m.name == fallback) {
                return invalid(
                    "routing.fallback",
                    &format!("names {fallback:?}, which is not a [[models]] entry"),
                );
            }
        }
        if !(self.routing.fallback_after_secs.is_finite() && self.routing.fallback_after_secs >= 0.0) {
            return invalid("routing.fallback_after_secs", "must be a number of seconds, 0 or more");
        }
        for (i, model) in self.models.iter().enumerate() {
            if model.name.trim().is_empty() {
                return invalid(&format!("models[{i}].name"), "must not be empty");
            }
            if self.models[..i].iter().any(|m| m.name == model.name) {
                return invalid(
                    &format!("models[{i}].name"),
                    &format!("repeats the name {:?}", model.name),
                );
            }
            if let Some(sum) = &model.sha256 {
                if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return invalid(&format!("models[{i}].sha256"), "must be 64 hexadecimal digits");
                }
            }
        }
        Ok(())
    }

    /// The configuration as TOML with secrets replaced by `***`, for `hearth config check`.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        for key in &mut shown.server.api_keys {
            key.0 = "***".to_owned();
        }
        if let Some(token) = &mut shown.server.admin_token {
            token.0 = "***".to_owned();
        }
        for entry in &mut shown.server.keys {
            if let Some(key) = &mut entry.key {
                key.0 = "***".to_owned();
            }
        }
        if let Some(dingtalk) = &mut shown.dingtalk {
            dingtalk.app_secret = Secret("***".to_owned());
        }
        if let Some(feishu) = &mut shown.feishu {
            feishu.app_secret = Secret("***".to_owned());
        }
        if let Some(wecom) = &mut shown.wecom {
            for secret in [&mut wecom.secret, &mut wecom.token, &mut wecom.encoding_aes_key] {
                *secret = Secret("***".to_owned());
            }
        }
        if let Some(url) = &mut shown.data.url {
            *url = redact_url_password(url);
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|err| format!("# cannot show the configuration: {err}\n"))
    }
}

/// A `log.level` must be a tracing filter of levels: `info`, or `info,gateway=debug,hyper=warn`. A bare
/// word that is no level (`lots`) would be read as a target name and log nothing, so it is refused.
fn check_log_level(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let is_level = |s: &str| LEVELS.contains(&s.trim().to_ascii_lowercase().as_str());
    if filter.trim().is_empty() {
        return Err("is empty: write a level such as \"info\"".to_owned());
    }
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let ok = match directive.rsplit_once('=') {
            Some((target, level)) => !target.trim().is_empty() && is_level(level),
            None => is_level(directive),
        };
        if !ok {
            return Err(format!(
                "has {directive:?}, which is not a level: write trace, debug, info, warn, error or off, or \
                 TARGET=LEVEL (for example \"info,gateway=debug\")"
            ));
        }
    }
    Ok(())
}

/// Warnings about files holding secrets that other users can read: `file` when it sets `api_keys`,
/// `admin_token` or a `[dingtalk]` `app_secret`, and the files `api_keys_file` and `admin_token_file`
/// name. Each names the file and its mode. `serve` logs them, `config check` prints them.
pub fn permission_warnings(file: Option<&Path>, config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut check = |path: &Path, holds: &str| {
        if let Some(mode) = group_or_other_readable(path) {
            warnings.push(format!(
                "{} holds {holds} but its mode is {mode:04o}: other users of this machine can read it; run `chmod 600 {}`",
                path.display(),
                path.display()
            ));
        }
    };
    if let Some(file) = file {
        let held = secrets_in(file);
        if !held.is_empty() {
            check(file, &held.join(", "));
        }
    }
    if let Some(path) = &config.server.api_keys_file {
        check(path, "API keys (server.api_keys_file)");
    }
    if let Some(path) = &config.server.admin_token_file {
        check(path, "the admin token (server.admin_token_file)");
    }
    if let Some(path) = config.dingtalk.as_ref().and_then(|d| d.app_secret_file.as_ref()) {
        check(path, "the DingTalk app secret (dingtalk.app_secret_file)");
    }
    if let Some(path) = config.feishu.as_ref().and_then(|f| f.app_secret_file.as_ref()) {
        check(path, "the Feishu app secret (feishu.app_secret_file)");
    }
    if let Some(wecom) = &config.wecom {
        let files = [
            (&wecom.secret_file, "the WeCom secret (wecom.secret_file)"),
            (&wecom.token_file, "the WeCom callback token (wecom.token_file)"),
            (
                &wecom.encoding_aes_key_file,
                "the WeCom EncodingAESKey (wecom.encoding_aes_key_file)",
            ),
        ];
        for (file, what) in files {
            if let Some(path) = file {
                check(path, what);
            }
        }
    }
    warnings
}

/// The secret keys `file` sets itself (not through the environment or other files).
fn secrets_in(file: &Path) -> Vec<&'static str> {
    let Some(table) = std::fs::read_to_string(file)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
    else {
        return Vec::new();
    };
    let get = |section: &str, key: &str| table.get(section).and_then(|s| s.get(key)).cloned();
    let mut held = Vec::new();
    if get("server", "api_keys").is_some_and(|keys| keys.as_array().is_some_and(|a| !a.is_empty())) {
        held.push("server.api_keys");
    }
    if get("server", "admin_token").is_some() {
        held.push("server.admin_token");
    }
    let inline_key = |entry: &toml::Value| entry.get("key").is_some();
    if get("server", "keys").is_some_and(|keys| keys.as_array().is_some_and(|a| a.iter().any(inline_key))) {
        held.push("server.keys");
    }
    if get("dingtalk", "app_secret").is_some() {
        held.push("dingtalk.app_secret");
    }
    if get("feishu", "app_secret").is_some() {
        held.push("feishu.app_secret");
    }
    for key in ["secret", "token", "encoding_aes_key"] {
        if get("wecom", key).is_some() {
            held.push(match key {
                "secret" => "wecom.secret",
                "token" => "wecom.token",
                _ => "wecom.encoding_aes_key",
            });
        }
    }
    if get("data", "url").and_then(|url| url.as_str().map(password_in_url)) == Some(true) {
        held.push("data.url");
    }
    held
}

/// Whether the store URL `url` carries a password (`postgres://user:PASSWORD@host/db`).
fn password_in_url(url: &str) -> bool {
    redact_url_password(url) != url
}

/// `url` with the password of its `user:password@` part shown as `***`.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, password)) if !password.is_empty() => format!("{scheme}://{user}:***{}", &rest[at..]),
        _ => url.to_owned(),
    }
}

/// The file's permission bits when its group or others may read it.
#[cfg(unix)]
fn group_or_other_readable(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o044 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn group_or_other_readable(_path: &Path) -> Option<u32> {
    None
}

/// An environment value as TOML would read it (numbers, booleans, arrays), else as a plain string.
fn env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut table| table.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn the_example_parses_to_the_defaults_and_documents_every_key() {
        let file = write(EXAMPLE);
        let config = Config::load_with_env(Some(file.path()), []).unwrap();
        assert_eq!(config.server, ServerSection::default());
        assert_eq!(config.engine, EngineSection::default());
        assert_eq!(config.skills, SkillsConfig::default());
        // Every key of every section appears in the example, commented out or not.
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (section, value) in &defaults {
            let Some(table) = value.as_table() else { continue };
            assert!(
                EXAMPLE.contains(&format!("[{section}]")),
                "section [{section}] is not in the example"
            );
            for key in table.keys() {
                assert!(
                    EXAMPLE.contains(&format!("{key} =")),
                    "{section}.{key} is not in the example"
                );
            }
        }
        // [dingtalk] is absent by default, so its keys are checked from the connector's own defaults.
        let dingtalk = toml::Table::try_from(crate::dingtalk::config::DingTalkConfig::default()).unwrap();
        for key in dingtalk.keys() {
            assert!(
                EXAMPLE.contains(&format!("# {key} =")),
                "dingtalk.{key} is not in the example"
            );
        }
        let feishu = toml::Table::try_from(crate::feishu::config::FeishuConfig::default()).unwrap();
        for key in feishu.keys() {
            assert!(
                EXAMPLE.contains(&format!("# {key} =")),
                "feishu.{key} is not in the example"
            );
        }
        let wecom = toml::Table::try_from(crate::wecom::config::WeComConfig::default()).unwrap();
        for key in wecom.keys() {
            assert!(
                EXAMPLE.contains(&format!("# {key} =")),
                "wecom.{key} is not in the example"
            );
        }
        for key in [
            "served_model_name",
            "api_keys",
            "admin_token",
            "max_batch_tokens",
            "ctx_size",
            "[[models]]",
            "sha256",
            "fallback =",
        ] {
            assert!(EXAMPLE.contains(key), "{key} is not in the example");
        }
    }

    #[test]
    fn tls_files_come_in_pairs_and_from_the_environment() {
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<Vec<_>>()
        };
        let config = Config::load_with_env(
            None,
            env(&[
                ("HEARTH_SERVER__TLS_CERT_FILE", "/etc/hearth/cert.pem"),
                ("HEARTH_SERVER__TLS_KEY_FILE", "/etc/hearth/key.pem"),
            ]),
        )
        .unwrap();
        assert_eq!(config.server.tls_cert_file, Some(PathBuf::from("/etc/hearth/cert.pem")));
        assert_eq!(config.server.tls_key_file, Some(PathBuf::from("/etc/hearth/key.pem")));
        let err = Config::load_with_env(None, env(&[("HEARTH_SERVER__TLS_CERT_FILE", "/c.pem")])).unwrap_err();
        assert!(err.to_string().contains("server.tls_key_file"), "{err}");
        let err = Config::load_with_env(None, env(&[("HEARTH_SERVER__TLS_KEY_FILE", "/k.pem")])).unwrap_err();
        assert!(err.to_string().contains("server.tls_cert_file"), "{err}");
    }

    #[test]
    fn file_then_environment() {
        let file = write("[server]\nport = 9000\nhost = \"0.0.0.0\"\n[engine]\nmax_running = 8\n[[models]]\nname = \"a\"\npath = \"/m/a.gguf\"\n");
        let env = [
            ("HEARTH_SERVER__PORT".to_owned(), "9100".to_owned()),
            ("HEARTH_MODEL".to_owned(), "/x".to_owned()),
        ];
        let config = Config::load_with_env(Some(file.path()), env).unwrap();
        assert_eq!(config.server.port, 9100, "the environment overrides the file");
        assert_eq!(config.server.host, "0.0.0.0");
        assert_eq!(config.engine.max_running, Some(8));
        assert_eq!(config.models[0].path, PathBuf::from("/m/a.gguf"));
        let env = [("HEARTH_LOG__FORMAT".to_owned(), "json".to_owned())];
        assert_eq!(Config::load_with_env(None, env).unwrap().log.format, LogFormat::Json);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[server]\nprot = 1\n", "prot"),
            ("[server]\nport = \"eighty\"\n", "port"),
            ("[server]\nport = 70000\n", "port"),
            ("[engine]\nmax_running = 0\n", "engine.max_running"),
            ("[log]\nformat = \"xml\"\n", "format"),
            (
                "[[models]]\nname = \"a\"\npath = \"a\"\n[[models]]\nname = \"a\"\npath = \"b\"\n",
                "models[1].name",
            ),
            ("[[models]]\nname = \"a\"\n", "path"),
            ("[server]\nadmin_token = \"short\"\n", "server.admin_token"),
            (
                "[server]\nadmin_token = \"a long token with spaces\"\n",
                "server.admin_token",
            ),
            (
                "[server]\napi_keys = [\"good-key\", \"sk-with space\"]\n",
                "server.api_keys[1]",
            ),
            (
                "[server]\napi_keys = [\"sk-trailing-newline\\n\"]\n",
                "server.api_keys[0]",
            ),
            ("[server]\nmax_connections = 0\n", "server.max_connections"),
            ("[log]\nlevel = \"lots\"\n", "log.level"),
            ("[log]\nlevel = \"info,gateway=loud\"\n", "log.level"),
            ("[engine]\nkv_cache_tokens = 1000000000000\n", "engine.kv_cache_tokens"),
            ("[engine]\nkv_cache_tokens = 1e12\n", "kv_cache_tokens"),
            ("[engine]\nctx_size = 1000000000\n", "engine.ctx_size"),
            (
                "[[skills.custom]]\nname = \"x\"\ntrigger = \"regex\"\npatterns = [\"(\"]\nreply = \"y\"\n",
                "custom[0].patterns[0]",
            ),
            ("[skills]\nescalate_patterns = [\"[a-\"]\n", "escalate_patterns[0]"),
            (
                "[server]\nadmin_token_file = \"/nonexistent/token\"\n",
                "server.admin_token_file",
            ),
            (
                "[[server.keys]]\nname = \"a\"\nkey = \"k1\"\nscopes = [\"chat\"]\n[[server.keys]]\nname = \"a\"\nkey = \"k2\"\nscopes = [\"chat\"]\n",
                "server.keys[1].name",
            ),
            ("[[server.keys]]\nname = \"a\"\nscopes = [\"chat\"]\n", "server.keys[0].key"),
            ("[[server.keys]]\nname = \"a\"\nkey = \"k\"\nscopes = []\n", "server.keys[0].scopes"),
            ("[[server.keys]]\nname = \"a\"\nkey = \"k\"\nscopes = [\"root\"]\n", "scopes"),
            ("[[server.keys]]\nname = \"a\"\nkey = \"short\"\nscopes = [\"admin\"]\n", "server.keys[0].key"),
            ("[serve]\nport = 1\n", "serve"),
            ("[routing]\nfallback = \"small\"\n", "routing.fallback"),
        ];
        for (text, key) in cases {
            let file = write(text);
            let err = Config::load_with_env(Some(file.path()), []).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?}: {err}");
        }
        let env = [("HEARTH_SERVER__PORT".to_owned(), "abc".to_owned())];
        let err = Config::load_with_env(None, env).unwrap_err().to_string();
        assert!(err.contains("HEARTH_SERVER__PORT"), "{err}");
        let missing = Config::load_with_env(Some(Path::new("/nonexistent/hearth.toml")), []).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/hearth.toml"));
    }

    #[test]
    fn good_log_levels_pass() {
        for level in [
            "info",
            "warn",
            "info,gateway=debug,hyper=warn",
            "OFF",
            "gateway::server=trace",
        ] {
            assert_eq!(check_log_level(level), Ok(()), "{level}");
        }
    }

    #[test]
    fn the_dingtalk_app_secret_comes_from_a_file() {
        let secret = write("dingtalk-secret\n");
        let file = write(&format!(
            "[dingtalk]\napp_key = \"k\"\ncard_template_id = \"t\"\napp_secret_file = {:?}\n",
            secret.path()
        ));
        let config = Config::load_with_env(Some(file.path()), []).unwrap();
        let dingtalk = config.dingtalk.as_ref().unwrap();
        assert_eq!(dingtalk.app_secret.expose(), "dingtalk-secret");
        assert!(!config.to_redacted_toml().contains("dingtalk-secret"));
        let env = [(
            "HEARTH_DINGTALK__APP_SECRET_FILE".to_owned(),
            "/nonexistent/secret".to_owned(),
        )];
        let err = Config::load_with_env(Some(file.path()), env).unwrap_err().to_string();
        assert!(
            err.contains("dingtalk.app_secret_file") && err.contains("/nonexistent/secret"),
            "{err}"
        );
    }

    #[test]
    fn secrets_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::write(&keys, "# clients\nsk-from-file-1\n\n  sk-from-file-2  \n").unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "admin-token-from-a-file\n").unwrap();
        let file = write(&format!(
            "[server]\napi_keys = [\"sk-inline\"]\napi_keys_file = {keys:?}\nadmin_token_file = {token:?}\n"
        ));
        let config = Config::load_with_env(Some(file.path()), []).unwrap();
        let loaded: Vec<&str> = config.server.api_keys.iter().map(Secret::expose).collect();
        assert_eq!(loaded, ["sk-inline", "sk-from-file-1", "sk-from-file-2"]);
        assert_eq!(
            config.server.admin_token.as_ref().map(Secret::expose),
            Some("admin-token-from-a-file")
        );
        std::fs::write(&keys, "sk-ok\nsk-bad key\n").unwrap();
        let err = Config::load_with_env(Some(file.path()), []).unwrap_err().to_string();
        assert!(err.contains("server.api_keys_file") && err.contains("line 2"), "{err}");
        assert!(!err.contains("sk-bad"), "the key itself is not shown: {err}");
    }

    #[test]
    fn named_keys_read_their_files_and_never_show() {
        let dir = tempfile::tempdir().unwrap();
        let grafana = dir.path().join("grafana");
        std::fs::write(&grafana, "sk-grafana-from-file\n").unwrap();
        let file = write(&format!(
            "[[server.keys]]\nname = \"grafana\"\nkey_file = {grafana:?}\nscopes = [\"metrics\"]\n\
             [[server.keys]]\nname = \"ops\"\nkey = \"sk-ops-very-secret-key\"\nscopes = [\"admin\", \"chat\"]\n"
        ));
        let config = Config::load_with_env(Some(file.path()), []).unwrap();
        let keys = &config.server.keys;
        assert_eq!(keys[0].key.as_ref().map(Secret::expose), Some("sk-grafana-from-file"));
        assert_eq!(keys[0].scopes, [Scope::Metrics]);
        assert_eq!(keys[1].scopes, [Scope::Admin, Scope::Chat]);
        let shown = config.to_redacted_toml();
        assert!(
            !shown.contains("very-secret") && !shown.contains("sk-grafana"),
            "{shown}"
        );
        assert_eq!(secrets_in(file.path()), ["server.keys"]);
    }

    #[cfg(unix)]
    #[test]
    fn readable_files_with_secrets_are_named_with_their_mode() {
        use std::os::unix::fs::PermissionsExt;
        let file = write("[server]\napi_keys = [\"sk-1\"]\n");
        let set_mode = |mode| std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        set_mode(0o644);
        let config = Config::load_with_env(Some(file.path()), []).unwrap();
        let warnings = permission_warnings(Some(file.path()), &config);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains(&file.path().display().to_string())
                && warnings[0].contains("0644")
                && warnings[0].contains("server.api_keys"),
            "{warnings:?}"
        );
        set_mode(0o600);
        assert_eq!(permission_warnings(Some(file.path()), &config), Vec::<String>::new());
        // A readable file without secrets is no concern.
        let plain = write("[server]\nport = 9000\n");
        std::fs::set_permissions(plain.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(permission_warnings(Some(plain.path()), &config), Vec::<String>::new());
    }

    #[test]
    fn secrets_never_show() {
        let file = write("[server]\napi_keys = [\"sk-very-secret\"]\nadmin_token = \"admin-token-very-secret\"\n[dingtalk]\napp_key = \"k\"\napp_secret = \"ding-very-secret\"\n[data]\nurl = \"postgres://hearth:pg-very-secret@db.internal:5432/hearth\"\n");
        let config = Config::load_with_env(Some(file.path()), []).unwrap();
        assert_eq!(config.server.api_keys[0].expose(), "sk-very-secret");
        assert_eq!(config.dingtalk.as_ref().unwrap().app_key, "k");
        for shown in [format!("{config:?}"), config.to_redacted_toml()] {
            assert!(!shown.contains("very-secret"), "{shown}");
            assert!(
                shown.contains("postgres://hearth:***@db.internal:5432/hearth"),
                "{shown}"
            );
        }
        assert!(secrets_in(file.path()).contains(&"data.url"));
        for plain in [
            "postgres://db/hearth",
            "postgres://user@db/hearth",
            "sqlite:///var/lib/h.db",
            "/x/y",
        ] {
            assert_eq!(redact_url_password(plain), plain);
        }
    }
}
