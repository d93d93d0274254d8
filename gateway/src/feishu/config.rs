//! [`FeishuConfig`]: the `[feishu]` section, as one serde struct with documented defaults. Settings the
//! wire reference (`shared/protocols/feishu.md`) marks UNCONFIRMED or OBSERVED are keys here, not guesses
//! in code.

use std::path::PathBuf;
use std::time::Duration;

pub use crate::im::platform_config::ConfigError;
use crate::im::platform_config::{ensure, platform_section, require};
use crate::im::settings::{CardLimits, Settings};
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

platform_section! {
    platform: "Feishu";
    secrets: [app_secret <- app_secret_file];
    /// The connector's settings. Durations are whole seconds or milliseconds, as the field names say.
    pub struct FeishuConfig {
        /// The app's App ID (`cli_…`).
        pub app_id: String = String::new(),
        /// The app's App Secret.
        pub app_secret: Secret = Secret(String::new()),
        /// A file holding the App Secret (instead of `app_secret`); read at load.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub app_secret_file: Option<PathBuf> = None,
        /// `feishu` (open.feishu.cn), `lark` (open.larksuite.com), or a base URL such as an emulator's
        /// `http://127.0.0.1:PORT`: endpoint discovery and the OpenAPI both live there.
        pub domain: String = "feishu".to_owned(),
        /// Where the outbox lives (SQLite); created if missing.
        pub database: PathBuf = PathBuf::from("hearth-feishu.sqlite3"),
        /// The card book (each card's entity and sequence counter), a SQLite file; unset: beside
        /// `database`, in `NAME.cards.sqlite3` (with a shared store, `[data] dir`/feishu.cards.sqlite3).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub card_book: Option<PathBuf> = None,
        /// In group chats, answer only messages that @-mention the bot (1:1 chats are always answered).
        pub require_mention_in_groups: bool = true,
        /// A connection that delivers no event for this long is replaced (it may still answer pings: a
        /// zombie, whose pushes vanish). A replaced quiet connection costs one discovery call.
        pub idle_timeout_secs: u64 = 300,
        /// hearth's ping on the long connection, every this many seconds at most (a shorter interval the
        /// platform asks for in a pong is taken).
        pub ping_interval_secs: u64 = 30,
        /// A ping unanswered by a pong for this long means the path is dead: the socket is replaced.
        pub pong_timeout_secs: u64 = 10,
        /// Refresh the tenant token this long before it expires.
        pub token_refresh_margin_secs: u64 = 300,
        /// Longest reconnect delay.
        pub backoff_max_ms: u64 = 60_000,
        /// At most one streaming update per card per this interval; updates in between are coalesced.
        pub card_update_interval_ms: u64 = 300,
        /// Card calls per second shared by every card of this connector (the platform allows 10 per card
        /// and 50 per API and app).
        pub card_updates_per_second: u32 = 20,
        /// Attempts per card call before the card is given up and the answer is sent as a plain reply.
        pub card_call_attempts: u32 = 6,
        /// Most seconds card calls are retried once the platform refuses them before the card is given up.
        pub card_retry_secs: u64 = 10,
        /// Most bytes of answer text in one card; a longer answer continues in a new card. The card's JSON
        /// must stay under 30 KB (200860), so at most [`MAX_CARD_BYTES`].
        pub card_max_bytes: usize = 10_000,
        /// Most markdown tables in one card; a card ends before its first table past it and the answer
        /// continues in a new card, since the platform refuses a card with more (`230099` / `11310`, "card
        /// table number over limit"). The limit is not documented: reports put it at 3 to 5
        /// (UNCONFIRMED). 0: no limit.
        pub card_max_tables: usize = 3,
        /// A card is streamed into for at most this long, then finished and the answer continues in a new
        /// card: the platform closes streaming mode about 10 minutes after it was turned on (OBSERVED).
        pub card_max_age_secs: u64 = 9 * 60,
        /// What the chat list shows for a card while it streams.
        pub card_placeholder: String = "…".to_owned(),
    }
}

/// The platform's name in config errors.
const PLATFORM: &str = FeishuConfig::PLATFORM;

impl FeishuConfig {
    /// Check that the connector can start with these settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        require(PLATFORM, "app_id", &self.app_id)?;
        require(PLATFORM, "app_secret", self.app_secret.expose())?;
        let app_id = &self.app_id;
        ensure(
            app_id == app_id.trim(),
            PLATFORM,
            "app_id",
            "free of surrounding whitespace",
        )?;
        let base = self.base();
        let web = base.starts_with("http://") || base.starts_with("https://");
        ensure(
            web,
            PLATFORM,
            "domain",
            "`feishu`, `lark` or an http:// or https:// URL",
        )?;
        let counts = [self.card_updates_per_second, self.card_call_attempts];
        let field = "card_updates_per_second/card_call_attempts";
        ensure(!counts.contains(&0), PLATFORM, field, "at least 1")?;
        let size = (MIN_CARD_BYTES..=MAX_CARD_BYTES).contains(&self.card_max_bytes);
        ensure(size, PLATFORM, "card_max_bytes", "between 256 and 14000")?;
        ensure(self.card_max_age_secs > 0, PLATFORM, "card_max_age_secs", "at least 1")?;
        let placeholder = !self.card_placeholder.trim().is_empty();
        ensure(
            placeholder,
            PLATFORM,
            "card_placeholder",
            "non-empty (the platform refuses empty text)",
        )?;
        self.validate_shared(PLATFORM)
    }

    /// The base URL `domain` names, without a trailing slash.
    pub fn base(&self) -> &str {
        match self.domain.as_str() {
            "feishu" => FEISHU_DOMAIN,
            "lark" => LARK_DOMAIN,
            other => other.trim_end_matches('/'),
        }
    }

    /// What the IM core takes from this section.
    pub fn settings(&self) -> Settings {
        let cards = CardLimits {
            max_bytes: self.card_max_bytes,
            per_second: self.card_updates_per_second,
            min_interval: Duration::from_millis(self.card_update_interval_ms),
            max_tables: (self.card_max_tables > 0).then_some(self.card_max_tables),
            max_age: Some(Duration::from_secs(self.card_max_age_secs)),
        };
        self.shared_settings(&self.database, self.card_call_attempts, self.card_retry_secs, cards)
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
