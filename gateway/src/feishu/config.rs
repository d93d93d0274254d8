//! [`FeishuConfig`]: the `[feishu]` section, as one serde struct with documented defaults. Settings the
//! wire reference (`shared/protocols/feishu.md`) marks UNCONFIRMED or OBSERVED are keys here, not guesses
//! in code.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::im::platform_config::ConfigError;
use crate::im::platform_config::{read_file, secret_from_file};
use crate::im::settings::{CardLimits, GroupSessions, Settings};
use crate::secret::Secret;

/// The OpenAPI (and endpoint discovery) base of Feishu, China.
pub const FEISHU_DOMAIN: &str = "https://open.feishu.cn";
/// The OpenAPI (and endpoint discovery) base of Lark, international.
pub const LARK_DOMAIN: &str = "https://open.larksuite.com";

/// The smallest [`FeishuConfig::card_max_bytes`]: below it an answer would scatter over many cards.
pub const MIN_CARD_BYTES: usize = 256;
/// The largest [`FeishuConfig::card_max_bytes`]: a card's JSON must stay under the platform's 30 KB
/// (200860) even when escaping doubles the text.
pub const MAX_CARD_BYTES: usize = 14_000;

/// The connector's settings. Durations are whole seconds or milliseconds, as the field names say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeishuConfig {
    /// The app's App ID (`cli_…`).
    pub app_id: String,
    /// The app's App Secret.
    pub app_secret: Secret,
    /// A file holding the App Secret (instead of `app_secret`); read at load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_secret_file: Option<PathBuf>,
    /// `feishu` (open.feishu.cn), `lark` (open.larksuite.com), or a base URL such as an emulator's
    /// `http://127.0.0.1:PORT`: endpoint discovery and the OpenAPI both live there.
    pub domain: String,
    /// Where the outbox lives (SQLite); created if missing. The card book (each card's entity and sequence
    /// counter) lives beside it, in `NAME.cards.sqlite3`.
    pub database: PathBuf,
    /// In group chats, answer only messages that @-mention the bot (1:1 chats are always answered).
    pub require_mention_in_groups: bool,
    /// A connection that delivers no event for this long is replaced (it may still answer pings: a zombie,
    /// whose pushes vanish). A replaced quiet connection costs one discovery call.
    pub idle_timeout_secs: u64,
    /// hearth's ping on the long connection, every this many seconds at most (a shorter interval the
    /// platform asks for in a pong is taken).
    pub ping_interval_secs: u64,
    /// A ping unanswered by a pong for this long means the path is dead: the socket is replaced.
    pub pong_timeout_secs: u64,
    /// Refresh the tenant token this long before it expires.
    pub token_refresh_margin_secs: u64,
    /// First reconnect delay; it doubles per failure up to `backoff_max_ms`, plus up to 100% jitter.
    pub backoff_initial_ms: u64,
    /// Longest reconnect delay.
    pub backoff_max_ms: u64,
    /// At most one streaming update per card per this interval; updates in between are coalesced.
    pub card_update_interval_ms: u64,
    /// Card calls per second shared by every card of this connector (the platform allows 10 per card and
    /// 50 per API and app).
    pub card_updates_per_second: u32,
    /// After a throttle (429 / 99991400), pause card calls this long (doubling per consecutive refusal).
    pub throttle_backoff_ms: u64,
    /// Attempts per card call before the card is given up and the answer is sent as a plain reply.
    pub card_call_attempts: u32,
    /// Most seconds card calls are retried once the platform refuses them before the card is given up.
    pub card_retry_secs: u64,
    /// Most bytes of answer text in one card; a longer answer continues in a new card. The card's JSON must
    /// stay under 30 KB (200860), so at most [`MAX_CARD_BYTES`].
    pub card_max_bytes: usize,
    /// A card is streamed into for at most this long, then finished and the answer continues in a new
    /// card: the platform closes streaming mode about 10 minutes after it was turned on (OBSERVED).
    pub card_max_age_secs: u64,
    /// What the chat list shows for a card while it streams.
    pub card_placeholder: String,
    /// Most tokens of one answer.
    pub max_answer_tokens: usize,
    /// HTTP timeout of one OpenAPI call.
    pub http_timeout_secs: u64,
    /// Whose history a group message continues.
    pub group_sessions: GroupSessions,
    /// A session idle for this long starts over.
    pub session_idle_secs: u64,
    /// Messages per second each user may send; 0: no limit.
    pub user_requests_per_second: u32,
    /// Regexes masked in the audit log's question and answer text.
    pub audit_mask_patterns: Vec<String>,
    /// Days settled messages and audit records are kept; 0 keeps them forever.
    pub retention_days: u32,
}

impl Default for FeishuConfig {
    fn default() -> Self {
        Self {
            app_id: String::new(),
            app_secret: Secret(String::new()),
            app_secret_file: None,
            domain: "feishu".to_owned(),
            database: PathBuf::from("hearth-feishu.sqlite3"),
            require_mention_in_groups: true,
            idle_timeout_secs: 300,
            ping_interval_secs: 30,
            pong_timeout_secs: 10,
            token_refresh_margin_secs: 300,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 60_000,
            card_update_interval_ms: 300,
            card_updates_per_second: 20,
            throttle_backoff_ms: 1_000,
            card_call_attempts: 6,
            card_retry_secs: 10,
            card_max_bytes: 10_000,
            card_max_age_secs: 9 * 60,
            card_placeholder: "…".to_owned(),
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

/// The platform's name in config errors.
const PLATFORM: &str = "Feishu";

impl FeishuConfig {
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
        if self.app_id.trim().is_empty() {
            return Err(ConfigError::Missing {
                platform: PLATFORM,
                field: "app_id",
            });
        }
        if self.app_secret.expose().is_empty() {
            return Err(ConfigError::Missing {
                platform: PLATFORM,
                field: "app_secret",
            });
        }
        if self.app_id != self.app_id.trim() {
            return Err(ConfigError::Invalid {
                platform: PLATFORM,
                field: "app_id",
                rule: "free of surrounding whitespace",
            });
        }
        let base = self.base();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ConfigError::Invalid {
                platform: PLATFORM,
                field: "domain",
                rule: "`feishu`, `lark` or an http:// or https:// URL",
            });
        }
        if self.card_updates_per_second == 0 || self.card_call_attempts == 0 || self.max_answer_tokens == 0 {
            return Err(ConfigError::Invalid {
                platform: PLATFORM,
                field: "card_updates_per_second/card_call_attempts/max_answer_tokens",
                rule: "at least 1",
            });
        }
        if !(MIN_CARD_BYTES..=MAX_CARD_BYTES).contains(&self.card_max_bytes) {
            return Err(ConfigError::Invalid {
                platform: PLATFORM,
                field: "card_max_bytes",
                rule: "between 256 and 14000",
            });
        }
        if self.card_max_age_secs == 0 {
            return Err(ConfigError::Invalid {
                platform: PLATFORM,
                field: "card_max_age_secs",
                rule: "at least 1",
            });
        }
        if self.card_placeholder.trim().is_empty() {
            return Err(ConfigError::Invalid {
                platform: PLATFORM,
                field: "card_placeholder",
                rule: "non-empty (the platform refuses empty text)",
            });
        }
        if let Err(err) = crate::audit::Masker::new(&self.audit_mask_patterns) {
            tracing::error!(cause = %err, "invalid Feishu audit_mask_patterns");
            return Err(ConfigError::Invalid {
                platform: PLATFORM,
                field: "audit_mask_patterns",
                rule: "valid regexes",
            });
        }
        Ok(())
    }

    /// The base URL `domain` names, without a trailing slash.
    pub fn base(&self) -> &str {
        match self.domain.as_str() {
            "feishu" => FEISHU_DOMAIN,
            "lark" => LARK_DOMAIN,
            other => other.trim_end_matches('/'),
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
            retry_bound: Duration::from_secs(self.card_retry_secs.max(1)),
            throttle_backoff: Duration::from_millis(self.throttle_backoff_ms),
            cards: CardLimits {
                max_bytes: self.card_max_bytes,
                per_second: self.card_updates_per_second,
                min_interval: Duration::from_millis(self.card_update_interval_ms),
                max_age: Some(Duration::from_secs(self.card_max_age_secs)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_and_validation() {
        let config: FeishuConfig = toml::from_str("app_id = \"cli_1\"\napp_secret = \"s\"\n").unwrap();
        assert_eq!(config.base(), FEISHU_DOMAIN);
        config.validate().unwrap();
        let lark = FeishuConfig {
            domain: "lark".to_owned(),
            ..config.clone()
        };
        assert_eq!(lark.base(), LARK_DOMAIN);
        let local = FeishuConfig {
            domain: "http://127.0.0.1:9/".to_owned(),
            ..config.clone()
        };
        assert_eq!(local.base(), "http://127.0.0.1:9");
        let bad = FeishuConfig {
            domain: "open.feishu.cn".to_owned(),
            ..config.clone()
        };
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::Invalid {
                platform: PLATFORM,
                field: "domain",
                ..
            })
        ));
        let big = FeishuConfig {
            card_max_bytes: 40_000,
            ..config
        };
        assert!(matches!(
            big.validate(),
            Err(ConfigError::Invalid {
                platform: PLATFORM,
                field: "card_max_bytes",
                ..
            })
        ));
        assert!(toml::from_str::<FeishuConfig>("app_idd = \"k\"")
            .unwrap_err()
            .to_string()
            .contains("app_idd"));
        assert!(matches!(
            FeishuConfig::default().validate(),
            Err(ConfigError::Missing {
                platform: PLATFORM,
                field: "app_id"
            })
        ));
    }
}
