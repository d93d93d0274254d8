//! [`WeComConfig`]: the `[wecom]` section, everything the WeCom connector needs, as one serde struct with
//! documented defaults. The wire reference (`shared/protocols/wecom.md`) leaves some behaviour
//! **\[UNCONFIRMED\]**; each such choice is a field here rather than a guess in the code.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::im::platform_config::ConfigError;
use crate::im::settings::{CardLimits, GroupSessions, Settings};
use crate::secret::Secret;

/// Which transport carries the robot's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The WebSocket long connection (`bot_id` and `secret`): nothing needs to be reachable from outside.
    LongConnection,
    /// URL mode: WeCom POSTs encrypted callbacks to `/im/wecom/callback` on this server (`token` and
    /// `encoding_aes_key`).
    Callback,
}

/// The connector's settings. Durations are whole seconds or milliseconds, as the field names say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WeComConfig {
    /// `long_connection` or `callback`.
    pub mode: Mode,
    /// The intelligent robot's BotID (both modes: it keys the outbox).
    pub bot_id: String,
    /// The long-connection Secret.
    pub secret: Secret,
    /// URL mode: the callback Token (signatures).
    pub token: Secret,
    /// URL mode: the callback EncodingAESKey (43 characters).
    pub encoding_aes_key: Secret,
    /// The long connection's address (an emulator's `ws://127.0.0.1:PORT`).
    pub ws_url: String,
    /// Where the outbox, the sessions and the audit log live (SQLite); created if missing.
    pub database: PathBuf,
    /// A `ping` every this many seconds on the long connection (the SDK's 30 s).
    pub heartbeat_secs: u64,
    /// Pings in a row without an acknowledgement after which the socket is taken for dead and replaced
    /// (the SDK's 2).
    pub missed_heartbeats: u32,
    /// How long a request on the long connection waits for its acknowledgement (the SDK's 5 s).
    pub ack_timeout_ms: u64,
    /// First reconnect delay; it doubles per failure up to [`backoff_max_ms`](Self::backoff_max_ms) (the
    /// SDK's 1 s and 30 s).
    pub backoff_initial_ms: u64,
    /// Longest reconnect delay.
    pub backoff_max_ms: u64,
    /// After another instance took the connection over (`disconnected_event`), connect again after this
    /// many seconds; 0 (the default, as the SDK does) never: reconnecting would kick the newer instance
    /// out, and it would kick back. The takeover is logged and shown on the status page.
    pub reconnect_after_takeover_secs: u64,
    /// At most one stream snapshot per stream per this interval; snapshots in between are coalesced
    /// (latest text wins).
    pub stream_update_interval_ms: u64,
    /// An open stream gets a snapshot at least this often, the last one repeated when the answer has not
    /// moved (third-party reports read the 6-minute limit as an inactivity window, §2.5).
    pub keepalive_secs: u64,
    /// Seconds after the user's message past which a stream is no longer written: the answer (or what is
    /// left of it) goes out as a message instead. The platform's limit is 6 minutes (360 s); the default
    /// leaves a margin.
    pub stream_deadline_secs: u64,
    /// Stream and send calls per second shared by every answer of this connector. **\[UNCONFIRMED\]**
    /// platform limit; the default is conservative.
    pub updates_per_second: u32,
    /// After a throttled call, pause calls this long (doubling per consecutive throttle).
    pub throttle_backoff_ms: u64,
    /// Attempts per call before a stream is given up and the answer is sent as a message.
    pub call_attempts: u32,
    /// Most seconds calls are retried once the platform starts refusing them before the stream is given
    /// up.
    pub retry_secs: u64,
    /// Most bytes of one stream snapshot (the platform's 20 480); a longer answer continues in a new
    /// stream.
    pub max_snapshot_bytes: usize,
    /// Most tokens of one answer.
    pub max_answer_tokens: usize,
    /// Whose history a group message continues.
    pub group_sessions: GroupSessions,
    /// A session idle for this long starts over.
    pub session_idle_secs: u64,
    /// Messages per second each user may send (token bucket, burst of the same size); 0: no limit.
    pub user_requests_per_second: u32,
    /// Regexes masked in the audit log's question and answer text.
    pub audit_mask_patterns: Vec<String>,
    /// Days settled messages and audit records are kept; 0 keeps them forever.
    pub retention_days: u32,
    /// HTTP timeout of a `response_url` POST.
    pub http_timeout_secs: u64,
}

impl Default for WeComConfig {
    fn default() -> Self {
        Self {
            mode: Mode::LongConnection,
            bot_id: String::new(),
            secret: Secret(String::new()),
            token: Secret(String::new()),
            encoding_aes_key: Secret(String::new()),
            ws_url: "wss://openws.work.weixin.qq.com".to_owned(),
            database: PathBuf::from("hearth-wecom.sqlite3"),
            heartbeat_secs: 30,
            missed_heartbeats: 2,
            ack_timeout_ms: 5_000,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 30_000,
            reconnect_after_takeover_secs: 0,
            stream_update_interval_ms: 500,
            keepalive_secs: 60,
            stream_deadline_secs: 330,
            updates_per_second: 20,
            throttle_backoff_ms: 1_000,
            call_attempts: 6,
            retry_secs: 10,
            max_snapshot_bytes: 20_480,
            max_answer_tokens: 256,
            group_sessions: GroupSessions::Group,
            session_idle_secs: 30 * 60,
            user_requests_per_second: 10,
            audit_mask_patterns: crate::audit::default_mask_patterns(),
            retention_days: 90,
            http_timeout_secs: 10,
        }
    }
}

/// The smallest [`WeComConfig::max_snapshot_bytes`].
pub const MIN_SNAPSHOT_BYTES: usize = 256;

/// The platform's name in config errors.
const PLATFORM: &str = "WeCom";

impl WeComConfig {
    /// Check that the connector can start with these settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bot_id.trim().is_empty() {
            return Err(ConfigError::Missing {
                platform: PLATFORM,
                field: "bot_id",
            });
        }
        match self.mode {
            Mode::LongConnection => {
                if self.secret.expose().is_empty() {
                    return Err(ConfigError::Missing {
                        platform: PLATFORM,
                        field: "secret",
                    });
                }
                if !(self.ws_url.starts_with("ws://") || self.ws_url.starts_with("wss://")) {
                    return Err(ConfigError::Invalid {
                        platform: PLATFORM,
                        field: "ws_url",
                        rule: "a ws:// or wss:// URL",
                    });
                }
            }
            Mode::Callback => {
                if self.token.expose().is_empty() {
                    return Err(ConfigError::Missing {
                        platform: PLATFORM,
                        field: "token",
                    });
                }
                if emulator::wecom::crypto::MsgCrypt::new(self.token.expose(), self.encoding_aes_key.expose()).is_err()
                {
                    return Err(ConfigError::Invalid {
                        platform: PLATFORM,
                        field: "encoding_aes_key",
                        rule: "43 base64 characters of a 32-byte key",
                    });
                }
            }
        }
        if self.updates_per_second == 0 || self.call_attempts == 0 || self.max_answer_tokens == 0 {
            return Err(ConfigError::Invalid {
                platform: PLATFORM,
                field: "updates_per_second/call_attempts/max_answer_tokens",
                rule: "at least 1",
            });
        }
        if self.max_snapshot_bytes < MIN_SNAPSHOT_BYTES {
            return Err(ConfigError::Invalid {
                platform: PLATFORM,
                field: "max_snapshot_bytes",
                rule: "at least 256",
            });
        }
        if self.stream_deadline_secs == 0 || self.keepalive_secs == 0 || self.heartbeat_secs == 0 {
            return Err(ConfigError::Invalid {
                platform: PLATFORM,
                field: "stream_deadline_secs/keepalive_secs/heartbeat_secs",
                rule: "at least 1",
            });
        }
        if crate::audit::Masker::new(&self.audit_mask_patterns).is_err() {
            return Err(ConfigError::Invalid {
                platform: PLATFORM,
                field: "audit_mask_patterns",
                rule: "valid regexes",
            });
        }
        Ok(())
    }

    pub(crate) fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs.max(1))
    }

    pub(crate) fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms.max(1))
    }

    pub(crate) fn keepalive(&self) -> Duration {
        Duration::from_secs(self.keepalive_secs.max(1))
    }

    /// What the IM core takes from this section.
    pub fn settings(&self) -> Settings {
        Settings {
            database: self.database.clone(),
            max_answer_tokens: self.max_answer_tokens,
            group_sessions: self.group_sessions,
            session_idle: Duration::from_secs(self.session_idle_secs),
            user_requests_per_second: self.user_requests_per_second,
            audit_mask_patterns: self.audit_mask_patterns.clone(),
            retention_days: self.retention_days,
            call_attempts: self.call_attempts,
            retry_bound: Duration::from_secs(self.retry_secs.max(1)),
            throttle_backoff: Duration::from_millis(self.throttle_backoff_ms),
            cards: CardLimits {
                max_bytes: self.max_snapshot_bytes,
                per_second: self.updates_per_second,
                min_interval: Duration::from_millis(self.stream_update_interval_ms),
                // A message's streams all end at its deadline; past it the adapter refuses stream calls
                // and the core sends the rest as a message.
                max_age: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip_and_validation() {
        let config: WeComConfig = toml::from_str("bot_id = \"b\"\nsecret = \"s\"\n").unwrap();
        assert_eq!(config.mode, Mode::LongConnection);
        config.validate().unwrap();
        assert!(toml::from_str::<WeComConfig>("bot = \"b\"")
            .unwrap_err()
            .to_string()
            .contains("bot"));
        assert!(matches!(
            WeComConfig::default().validate(),
            Err(ConfigError::Missing {
                platform: PLATFORM,
                field: "bot_id"
            })
        ));
        let callback: WeComConfig =
            toml::from_str("mode = \"callback\"\nbot_id = \"b\"\ntoken = \"t\"\nencoding_aes_key = \"short\"\n")
                .unwrap();
        assert!(matches!(
            callback.validate(),
            Err(ConfigError::Invalid {
                platform: PLATFORM,
                field: "encoding_aes_key",
                ..
            })
        ));
    }
}
