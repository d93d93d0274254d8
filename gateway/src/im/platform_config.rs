//! What every platform's config section shares: its error, which names the platform and the key, reading the
//! section from a TOML file of its own, and a secret read from a file (`*_file` keys, as systemd and
//! Kubernetes credentials provide them).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::secret::Secret;

/// A platform configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid {platform} config: {source}")]
    Parse {
        platform: &'static str,
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{platform} `{field}` is required")]
    Missing {
        platform: &'static str,
        field: &'static str,
    },
    #[error("{platform} `{field}` must be {rule}")]
    Invalid {
        platform: &'static str,
        field: &'static str,
        rule: &'static str,
    },
    #[error("{platform} `{file_field}` must be set without `{field}`: keep one")]
    SecretTwice {
        platform: &'static str,
        field: &'static str,
        file_field: &'static str,
    },
    #[error("{platform} `{field}`: cannot read {path}: {source}")]
    SecretFile {
        platform: &'static str,
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `platform`'s section read from the TOML file `path` (unknown keys are an error naming them).
pub fn read_file<T: DeserializeOwned>(platform: &'static str, path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        platform,
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// Set `secret` from the file `file` names (trimmed), when it names one; `secret` set as well is an error.
/// `fields` are the two keys' names (`app_secret`, `app_secret_file`), for the messages.
pub fn secret_from_file(
    platform: &'static str,
    fields: (&'static str, &'static str),
    secret: &mut Secret,
    file: Option<&Path>,
) -> Result<(), ConfigError> {
    let Some(path) = file else {
        return Ok(());
    };
    let (key, file_key) = fields;
    if !secret.expose().is_empty() {
        return Err(ConfigError::SecretTwice {
            platform,
            field: key,
            file_field: file_key,
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
        platform,
        field: file_key,
        path: path.to_owned(),
        source,
    })?;
    *secret = Secret(text.trim().to_owned());
    Ok(())
}

/// `Err(Missing)` when `value` is blank.
pub fn require(platform: &'static str, field: &'static str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::Missing { platform, field });
    }
    Ok(())
}

/// `Err(Invalid)` naming `rule` unless `holds`.
pub fn ensure(holds: bool, platform: &'static str, field: &'static str, rule: &'static str) -> Result<(), ConfigError> {
    if holds {
        Ok(())
    } else {
        Err(ConfigError::Invalid { platform, field, rule })
    }
}

/// Declares a platform's configuration section: a serde struct of the platform's own fields, each written
/// with its default (`pub ping_interval_secs: u64 = 30,`), followed by the knobs every platform shares
/// (answer length, sessions, per-user rate, audit masks, retention, HTTP timeout, backoffs, the node's
/// name and lease), whose defaults are the same everywhere. Unknown keys are an error naming them.
///
/// The header names the platform (for errors) and its secrets that may come from files instead
/// (`secrets: [app_secret <- app_secret_file]`). The struct gets `Default`, `PLATFORM`, `from_file`,
/// `read_secret_files`, and private helpers: `shared_settings`, the core's
/// [`Settings`](super::settings::Settings) from the shared knobs and the platform's delivery limits, and
/// `validate_shared`.
macro_rules! platform_section {
    (
        platform: $platform:literal;
        secrets: [$($secret:ident <- $secret_file:ident),* $(,)?];
        $(#[$attr:meta])*
        pub struct $name:ident {
            $(
                $(#[$field_attr:meta])*
                pub $field:ident: $ty:ty = $default:expr,
            )*
        }
    ) => {
        $(#[$attr])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $(
                $(#[$field_attr])*
                pub $field: $ty,
            )*
            /// Most tokens of one answer.
            pub max_answer_tokens: usize,
            /// Whose history a group message continues: the whole group's or the sender's own within the
            /// group. A 1:1 chat is always its own session.
            pub group_sessions: $crate::im::settings::GroupSessions,
            /// A session idle for this long starts over.
            pub session_idle_secs: u64,
            /// Messages per second each user may send (token bucket, burst of the same size); 0: no limit.
            pub user_requests_per_second: u32,
            /// Regexes masked in the audit log's question and answer text.
            pub audit_mask_patterns: Vec<String>,
            /// Days settled messages and audit records are kept; older ones are deleted (hourly). 0 keeps
            /// them forever. Export the audit log first (`hearth audit export`) where it must be kept longer.
            pub retention_days: u32,
            /// HTTP timeout of one platform call.
            pub http_timeout_secs: u64,
            /// After a throttled call, pause calls this long (doubling per consecutive refusal).
            pub throttle_backoff_ms: u64,
            /// First reconnect delay; it doubles per failure up to `backoff_max_ms`, plus up to 100% random
            /// jitter.
            pub backoff_initial_ms: u64,
            /// This node's name in the leases of a store several nodes share; empty: the host name. Nodes
            /// on one store must have different names.
            pub node_id: String,
            /// A node holds a message it stored or claimed this long without renewing the lease (it renews
            /// it every third of that while it answers); a node that died loses its messages to the others
            /// once their leases run out.
            pub lease_secs: u64,
        }

        impl Default for $name {
            fn default() -> Self {
                Self {
                    $($field: $default,)*
                    max_answer_tokens: 256,
                    group_sessions: $crate::im::settings::GroupSessions::Group,
                    session_idle_secs: 30 * 60,
                    user_requests_per_second: 10,
                    audit_mask_patterns: $crate::audit::default_mask_patterns(),
                    retention_days: 90,
                    http_timeout_secs: 10,
                    throttle_backoff_ms: 1_000,
                    backoff_initial_ms: 1_000,
                    node_id: String::new(),
                    lease_secs: 30,
                }
            }
        }

        impl $name {
            /// The platform's name in config errors.
            pub const PLATFORM: &'static str = $platform;

            /// Read a TOML file of this struct's fields (unknown keys are an error naming them), and the
            /// secret files it names.
            pub fn from_file(path: &std::path::Path) -> Result<Self, $crate::im::platform_config::ConfigError> {
                let mut config: Self = $crate::im::platform_config::read_file(Self::PLATFORM, path)?;
                config.read_secret_files()?;
                Ok(config)
            }

            /// Set each secret from its `*_file` (trimmed), when one is named; both set is an error.
            pub fn read_secret_files(&mut self) -> Result<(), $crate::im::platform_config::ConfigError> {
                $(
                    $crate::im::platform_config::secret_from_file(
                        Self::PLATFORM,
                        (stringify!($secret), stringify!($secret_file)),
                        &mut self.$secret,
                        self.$secret_file.as_deref(),
                    )?;
                )*
                Ok(())
            }

            /// The core's settings: the shared knobs, with the platform's `database`, its attempts and
            /// retry bound per call, and its `cards`.
            fn shared_settings(
                &self,
                database: &std::path::Path,
                call_attempts: u32,
                retry_secs: u64,
                cards: $crate::im::settings::CardLimits,
            ) -> $crate::im::settings::Settings {
                $crate::im::settings::Settings {
                    database: database.to_owned(),
                    max_answer_tokens: self.max_answer_tokens,
                    group_sessions: self.group_sessions,
                    session_idle: std::time::Duration::from_secs(self.session_idle_secs),
                    user_requests_per_second: self.user_requests_per_second,
                    audit_mask_patterns: self.audit_mask_patterns.clone(),
                    retention_days: self.retention_days,
                    call_attempts,
                    retry_bound: std::time::Duration::from_secs(retry_secs.max(1)),
                    throttle_backoff: std::time::Duration::from_millis(self.throttle_backoff_ms),
                    cards,
                    node: if self.node_id.trim().is_empty() {
                        $crate::im::outbox::default_node_id()
                    } else {
                        self.node_id.trim().to_owned()
                    },
                    lease: std::time::Duration::from_secs(self.lease_secs.max(1)),
                }
            }

            /// Check the shared knobs.
            fn validate_shared(&self, platform: &'static str) -> Result<(), $crate::im::platform_config::ConfigError> {
                $crate::im::platform_config::ensure(self.max_answer_tokens > 0, platform, "max_answer_tokens", "at least 1")?;
                if let Err(err) = $crate::audit::Masker::new(&self.audit_mask_patterns) {
                    tracing::error!(platform, cause = %err, "invalid audit_mask_patterns");
                    return Err($crate::im::platform_config::ConfigError::Invalid {
                        platform,
                        field: "audit_mask_patterns",
                        rule: "valid regexes",
                    });
                }
                Ok(())
            }
        }
    };
}
pub(crate) use platform_section;
