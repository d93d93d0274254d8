//! [`DingTalkConfig`]: everything the DingTalk connector needs, as one serde struct with documented
//! defaults, so it can be read from its own TOML file today and embedded as a `[dingtalk]` section later.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::im::platform_config::ConfigError;
use crate::im::platform_config::{read_file, secret_from_file};
use crate::im::settings::{CardLimits, GroupSessions, Settings};
use crate::secret::Secret;

/// The connector's settings. Durations are whole seconds or milliseconds, as the field names say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DingTalkConfig {
    /// The app's AppKey (= `clientId`).
    pub app_key: String,
    /// The app's AppSecret (= `clientSecret`).
    pub app_secret: Secret,
    /// A file holding the AppSecret (instead of `app_secret`), as systemd and Kubernetes credentials provide
    /// it; read at load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_secret_file: Option<PathBuf>,
    /// The robot's code; empty means the AppKey (true for internal-app robots).
    pub robot_code: String,
    /// The AI-card template whose streaming variable is [`card_content_key`](Self::card_content_key).
    pub card_template_id: String,
    /// The template variable bound to the streaming markdown component.
    pub card_content_key: String,
    /// New-style OpenAPI base (connection open, token, cards, robot sends).
    pub api_base_url: String,
    /// Where the outbox lives (SQLite); created if missing.
    pub database: PathBuf,
    /// In group chats, answer only messages that @-mention the robot.
    pub require_mention_in_groups: bool,
    /// A connection that delivers no frame for this long is dead and is replaced (it may still answer
    /// pings: a zombie). Keep it above the platform's own ping interval (about 30 s, protocol notes §2.4),
    /// or a quiet but healthy connection is replaced.
    pub idle_timeout_secs: u64,
    /// hearth's own WebSocket ping on the Stream connection, every this many seconds (the official SDKs
    /// keep alive the same way, §2.9).
    pub ping_interval_secs: u64,
    /// A ping unanswered by a pong for this long means the socket is dead (a network path that died
    /// silently): it is replaced. A dead socket is thus found within `ping_interval_secs +
    /// pong_timeout_secs`, however rarely the platform itself pings.
    pub pong_timeout_secs: u64,
    /// Refresh the access token this long before it expires.
    pub token_refresh_margin_secs: u64,
    /// First reconnect delay; it doubles per failure up to [`backoff_max_ms`](Self::backoff_max_ms), plus
    /// up to 100% random jitter.
    pub backoff_initial_ms: u64,
    /// Longest reconnect delay.
    pub backoff_max_ms: u64,
    /// At most one streaming update per card per this interval; updates in between are coalesced
    /// (latest text wins).
    pub card_update_interval_ms: u64,
    /// Card update calls per second shared by every card of this connector (the platform counts QPS per
    /// app and API).
    pub card_updates_per_second: u32,
    /// After a 403/429 throttle, pause card updates this long (doubling per consecutive refusal).
    pub throttle_backoff_ms: u64,
    /// Attempts per card call before the card is given up and the answer is sent as markdown.
    pub card_call_attempts: u32,
    /// Most seconds card calls are retried once the platform starts refusing them (throttles, server
    /// errors) before the card is marked failed and the answer goes out as markdown: the user waits at
    /// most this long behind a card that does not move. Marking the card finished or failed gets the same
    /// bound of its own.
    pub card_retry_secs: u64,
    /// Most bytes of answer text in one AI card; a longer answer is cut (at a line or word break near the
    /// limit, never inside a character) and continues in a new card. The platform refuses or blanks cards
    /// well before large answers fit (about 3 000 CJK characters, protocol notes §6.4). At least
    /// [`MIN_CARD_BYTES`].
    pub card_max_bytes: usize,
    /// Most tokens of one answer.
    pub max_answer_tokens: usize,
    /// HTTP timeout of one OpenAPI call.
    pub http_timeout_secs: u64,
    /// Whose history a group message continues: the whole group's or the sender's own within the group.
    /// A 1:1 chat is always its own session.
    pub group_sessions: GroupSessions,
    /// A session idle for this long starts over.
    pub session_idle_secs: u64,
    /// Messages per second each user may send (token bucket, burst of the same size); 0: no limit.
    pub user_requests_per_second: u32,
    /// Regexes masked in the audit log's question and answer text.
    pub audit_mask_patterns: Vec<String>,
    /// Days settled messages and audit records are kept; older ones are deleted (hourly). 0 keeps them
    /// forever. Export the audit log first (`hearth audit export`) where it must be kept longer.
    pub retention_days: u32,
}

impl Default for DingTalkConfig {
    fn default() -> Self {
        Self {
            app_key: String::new(),
            app_secret: Secret(String::new()),
            app_secret_file: None,
            robot_code: String::new(),
            card_template_id: String::new(),
            card_content_key: "content".to_owned(),
            api_base_url: "https://api.dingtalk.com".to_owned(),
            database: PathBuf::from("hearth-dingtalk.sqlite3"),
            require_mention_in_groups: true,
            idle_timeout_secs: 60,
            ping_interval_secs: 5,
            pong_timeout_secs: 10,
            token_refresh_margin_secs: 300,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 60_000,
            card_update_interval_ms: 500,
            card_updates_per_second: 10,
            throttle_backoff_ms: 1_000,
            card_call_attempts: 6,
            card_retry_secs: 10,
            card_max_bytes: 8_000,
            max_answer_tokens: 256,
            http_timeout_secs: 10,
            group_sessions: GroupSessions::Group,
            session_idle_secs: 30 * 60,
            user_requests_per_second: 10,
            audit_mask_patterns: crate::audit::default_mask_patterns(),
            retention_days: 90,
        }
    }
}

/// The smallest [`DingTalkConfig::card_max_bytes`]: below it an answer would scatter over many cards.
pub const MIN_CARD_BYTES: usize = 256;

/// The platform's name in config errors.
const PLATFORM: &str = "DingTalk";

impl DingTalkConfig {
    /// Read a TOML file of this struct's fields (unknown keys are an error naming them).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let mut config: Self = read_file(PLATFORM, path)?;
        config.read_secret_file()?;
        Ok(config)
    }

    /// Set `app_secret` from `app_secret_file` (trimmed), when one is named; both set is an error.
    pub fn read_secret_file(&mut self) -> Result<(), ConfigError> {
        secret_from_file(
            PLATFORM,
            ("app_secret", "app_secret_file"),
            &mut self.app_secret,
            self.app_secret_file.as_deref(),
        )
    }

    /// Check that the connector can start with these settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.app_key.trim().is_empty() {
            return Err(ConfigError::Missing {
                platform: PLATFORM,
                field: "app_key",
            });
        }
        if self.app_secret.expose().is_empty() {
            return Err(ConfigError::Missing {
                platform: PLATFORM,
                field: "app_secret",
            });
        }
        if self.card_template_id.is_empty() {
            return Err(ConfigError::Missing {
                platform: PLATFORM,
                field: "card_template_id",
            });
        }
        if self.app_key != self.app_key.trim() {
            return Err(ConfigError::Invalid {
                platform: PLATFORM,
                field: "app_key",
                rule: "free of surrounding whitespace",
            });
        }
        if !(self.api_base_url.starts_with("http://") || self.api_base_url.starts_with("https://")) {
            return Err(ConfigError::Invalid {
                platform: PLATFORM,
                field: "api_base_url",
                rule: "an http:// or https:// URL",
            });
        }
        if self.card_updates_per_second == 0 || self.card_call_attempts == 0 || self.max_answer_tokens == 0 {
            return Err(ConfigError::Invalid {
                platform: PLATFORM,
                field: "card_updates_per_second/card_call_attempts/max_answer_tokens",
                rule: "at least 1",
            });
        }
        if self.card_max_bytes < MIN_CARD_BYTES {
            return Err(ConfigError::Invalid {
                platform: PLATFORM,
                field: "card_max_bytes",
                rule: "at least 256",
            });
        }
        if let Err(err) = crate::audit::Masker::new(&self.audit_mask_patterns) {
            tracing::error!(cause = %err, "invalid DingTalk audit_mask_patterns");
            return Err(ConfigError::Invalid {
                platform: PLATFORM,
                field: "audit_mask_patterns",
                rule: "valid regexes",
            });
        }
        Ok(())
    }

    /// The robot code, defaulting to the AppKey.
    pub fn robot(&self) -> &str {
        if self.robot_code.is_empty() {
            &self.app_key
        } else {
            &self.robot_code
        }
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.max(1))
    }

    pub(crate) fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs.max(1))
    }

    pub(crate) fn pong_timeout(&self) -> Duration {
        Duration::from_secs(self.pong_timeout_secs.max(1))
    }

    pub(crate) fn card_retry(&self) -> Duration {
        Duration::from_secs(self.card_retry_secs.max(1))
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
            call_attempts: self.card_call_attempts,
            retry_bound: self.card_retry(),
            throttle_backoff: Duration::from_millis(self.throttle_backoff_ms),
            cards: CardLimits {
                max_bytes: self.card_max_bytes,
                per_second: self.card_updates_per_second,
                min_interval: Duration::from_millis(self.card_update_interval_ms),
                max_age: None,
            },
        }
    }

    pub(crate) fn base(&self) -> &str {
        self.api_base_url.trim_end_matches('/')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip_and_validation() {
        let config: DingTalkConfig =
            toml::from_str("app_key = \"k\"\napp_secret = \"s\"\ncard_template_id = \"t\"\n").unwrap();
        assert_eq!(config.robot(), "k");
        assert_eq!(config.idle_timeout_secs, 60);
        config.validate().unwrap();
        assert!(toml::from_str::<DingTalkConfig>("app_kee = \"k\"")
            .unwrap_err()
            .to_string()
            .contains("app_kee"));
        assert!(matches!(
            DingTalkConfig::default().validate(),
            Err(ConfigError::Missing {
                platform: PLATFORM,
                field: "app_key"
            })
        ));
        let small = DingTalkConfig {
            card_max_bytes: 100,
            ..config
        };
        assert!(matches!(
            small.validate(),
            Err(ConfigError::Invalid {
                platform: PLATFORM,
                field: "card_max_bytes",
                ..
            })
        ));
    }

    #[test]
    fn the_app_secret_comes_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("app_secret");
        std::fs::write(&secret, "s3cret-from-a-file\n").unwrap();
        let config_file = dir.path().join("dingtalk.toml");
        let fields = format!("app_key = \"k\"\ncard_template_id = \"t\"\napp_secret_file = {secret:?}\n");
        std::fs::write(&config_file, &fields).unwrap();
        let config = DingTalkConfig::from_file(&config_file).unwrap();
        assert_eq!(config.app_secret.expose(), "s3cret-from-a-file");
        config.validate().unwrap();

        std::fs::write(&config_file, format!("{fields}app_secret = \"inline\"\n")).unwrap();
        let err = DingTalkConfig::from_file(&config_file).unwrap_err();
        assert!(err.to_string().contains("app_secret_file"), "{err}");
        std::fs::remove_file(&secret).unwrap();
        std::fs::write(&config_file, &fields).unwrap();
        let err = DingTalkConfig::from_file(&config_file).unwrap_err().to_string();
        assert!(err.contains("app_secret_file") && err.contains("app_secret"), "{err}");
    }
}
