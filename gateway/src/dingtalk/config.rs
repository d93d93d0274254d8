//! [`DingTalkConfig`]: everything the DingTalk connector needs, as one serde struct with documented
//! defaults, so it can be read from its own TOML file today and embedded as a `[dingtalk]` section later.

use std::path::PathBuf;
use std::time::Duration;

pub use crate::im::platform_config::ConfigError;
use crate::im::platform_config::{ensure, platform_section, require};
use crate::im::settings::{CardLimits, Settings};
use crate::secret::Secret;

platform_section! {
    platform: "DingTalk";
    secrets: [app_secret <- app_secret_file];
    /// The connector's settings. Durations are whole seconds or milliseconds, as the field names say.
    pub struct DingTalkConfig {
        /// The app's AppKey (= `clientId`).
        pub app_key: String = String::new(),
        /// The app's AppSecret (= `clientSecret`).
        pub app_secret: Secret = Secret(String::new()),
        /// A file holding the AppSecret (instead of `app_secret`), as systemd and Kubernetes credentials
        /// provide it; read at load.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub app_secret_file: Option<PathBuf> = None,
        /// The robot's code; empty means the AppKey (true for internal-app robots).
        pub robot_code: String = String::new(),
        /// The AI-card template whose streaming variable is [`card_content_key`](Self::card_content_key).
        pub card_template_id: String = String::new(),
        /// The template variable bound to the streaming markdown component.
        pub card_content_key: String = "content".to_owned(),
        /// New-style OpenAPI base (connection open, token, cards, robot sends).
        pub api_base_url: String = "https://api.dingtalk.com".to_owned(),
        /// Where the outbox lives (SQLite); created if missing.
        pub database: PathBuf = PathBuf::from("hearth-dingtalk.sqlite3"),
        /// In group chats, answer only messages that @-mention the robot.
        pub require_mention_in_groups: bool = true,
        /// A connection that delivers no frame for this long is dead and is replaced (it may still answer
        /// pings: a zombie). Keep it above the platform's own ping interval (about 30 s, protocol notes
        /// §2.4), or a quiet but healthy connection is replaced.
        pub idle_timeout_secs: u64 = 60,
        /// hearth's own WebSocket ping on the Stream connection, every this many seconds (the official SDKs
        /// keep alive the same way, §2.9).
        pub ping_interval_secs: u64 = 5,
        /// A ping unanswered by a pong for this long means the socket is dead (a network path that died
        /// silently): it is replaced. A dead socket is thus found within `ping_interval_secs +
        /// pong_timeout_secs`, however rarely the platform itself pings.
        pub pong_timeout_secs: u64 = 10,
        /// Refresh the access token this long before it expires.
        pub token_refresh_margin_secs: u64 = 300,
        /// Longest reconnect delay.
        pub backoff_max_ms: u64 = 60_000,
        /// At most one streaming update per card per this interval; updates in between are coalesced
        /// (latest text wins).
        pub card_update_interval_ms: u64 = 500,
        /// Card update calls per second shared by every card of this connector (the platform counts QPS per
        /// app and API).
        pub card_updates_per_second: u32 = 10,
        /// Attempts per card call before the card is given up and the answer is sent as markdown.
        pub card_call_attempts: u32 = 6,
        /// Most seconds card calls are retried once the platform starts refusing them (throttles, server
        /// errors) before the card is marked failed and the answer goes out as markdown: the user waits at
        /// most this long behind a card that does not move. Marking the card finished or failed gets the
        /// same bound of its own.
        pub card_retry_secs: u64 = 10,
        /// Most bytes of answer text in one AI card; a longer answer is cut (at a line or word break near
        /// the limit, never inside a character) and continues in a new card. The platform refuses or blanks
        /// cards well before large answers fit (about 3 000 CJK characters, protocol notes §6.4). At least
        /// [`MIN_CARD_BYTES`].
        pub card_max_bytes: usize = 8_000,
    }
}

/// The smallest [`DingTalkConfig::card_max_bytes`]: below it an answer would scatter over many cards.
pub const MIN_CARD_BYTES: usize = 256;

/// The platform's name in config errors.
const PLATFORM: &str = DingTalkConfig::PLATFORM;

impl DingTalkConfig {
    /// Check that the connector can start with these settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        require(PLATFORM, "app_key", &self.app_key)?;
        require(PLATFORM, "app_secret", self.app_secret.expose())?;
        require(PLATFORM, "card_template_id", &self.card_template_id)?;
        let app_key = &self.app_key;
        ensure(
            app_key == app_key.trim(),
            PLATFORM,
            "app_key",
            "free of surrounding whitespace",
        )?;
        let url = &self.api_base_url;
        let web = url.starts_with("http://") || url.starts_with("https://");
        ensure(web, PLATFORM, "api_base_url", "an http:// or https:// URL")?;
        let counts = [self.card_updates_per_second, self.card_call_attempts];
        let field = "card_updates_per_second/card_call_attempts";
        ensure(!counts.contains(&0), PLATFORM, field, "at least 1")?;
        let size = self.card_max_bytes >= MIN_CARD_BYTES;
        ensure(size, PLATFORM, "card_max_bytes", "at least 256")?;
        self.validate_shared(PLATFORM)
    }

    /// The robot code, defaulting to the AppKey.
    pub fn robot(&self) -> &str {
        if self.robot_code.is_empty() {
            &self.app_key
        } else {
            &self.robot_code
        }
    }

    /// What the IM core takes from this section.
    pub fn settings(&self) -> Settings {
        let cards = CardLimits {
            max_bytes: self.card_max_bytes,
            per_second: self.card_updates_per_second,
            min_interval: Duration::from_millis(self.card_update_interval_ms),
            max_tables: None,
            max_age: None,
        };
        self.shared_settings(&self.database, self.card_call_attempts, self.card_retry_secs, cards)
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
