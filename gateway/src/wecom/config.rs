//! [`WeComConfig`]: the `[wecom]` section, everything the WeCom connector needs, as one serde struct with
//! documented defaults. The wire reference (`shared/protocols/wecom.md`) leaves some behaviour
//! **\[UNCONFIRMED\]**; each such choice is a field here rather than a guess in the code.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::im::platform_config::ConfigError;
use crate::im::platform_config::{ensure, platform_section, require};
use crate::im::settings::{CardLimits, Settings};
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

platform_section! {
    platform: "WeCom";
    secrets: [secret <- secret_file, token <- token_file, encoding_aes_key <- encoding_aes_key_file];
    /// The connector's settings. Durations are whole seconds or milliseconds, as the field names say.
    pub struct WeComConfig {
        /// `long_connection` or `callback`.
        pub mode: Mode = Mode::LongConnection,
        /// The intelligent robot's BotID (both modes: it keys the outbox).
        pub bot_id: String = String::new(),
        /// The long-connection Secret.
        pub secret: Secret = Secret(String::new()),
        /// A file holding the Secret (instead of `secret`); read at load.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub secret_file: Option<PathBuf> = None,
        /// URL mode: the callback Token (signatures).
        pub token: Secret = Secret(String::new()),
        /// A file holding the Token (instead of `token`); read at load.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub token_file: Option<PathBuf> = None,
        /// URL mode: the callback EncodingAESKey (43 characters).
        pub encoding_aes_key: Secret = Secret(String::new()),
        /// A file holding the EncodingAESKey (instead of `encoding_aes_key`); read at load.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub encoding_aes_key_file: Option<PathBuf> = None,
        /// The long connection's address (an emulator's `ws://127.0.0.1:PORT`).
        pub ws_url: String = "wss://openws.work.weixin.qq.com".to_owned(),
        /// Where the outbox, the sessions and the audit log live (SQLite); created if missing.
        pub database: PathBuf = PathBuf::from("hearth-wecom.sqlite3"),
        /// A `ping` every this many seconds on the long connection (the SDK's 30 s).
        pub heartbeat_secs: u64 = 30,
        /// Pings in a row without an acknowledgement after which the socket is taken for dead and replaced
        /// (the SDK's 2).
        pub missed_heartbeats: u32 = 2,
        /// How long a request on the long connection waits for its acknowledgement (the SDK's 5 s).
        pub ack_timeout_ms: u64 = 5_000,
        /// Longest reconnect delay (the SDK's 30 s).
        pub backoff_max_ms: u64 = 30_000,
        /// After another instance took the connection over (`disconnected_event`), connect again after
        /// this many seconds; 0 (the default, as the SDK does) never: reconnecting would kick the newer
        /// instance out, and it would kick back. The takeover is logged and shown on the status page.
        pub reconnect_after_takeover_secs: u64 = 0,
        /// At most one stream snapshot per stream per this interval; snapshots in between are coalesced
        /// (latest text wins).
        pub stream_update_interval_ms: u64 = 500,
        /// An open stream gets a snapshot at least this often, the last one repeated when the answer has
        /// not moved (third-party reports read the 6-minute limit as an inactivity window, §2.5).
        pub keepalive_secs: u64 = 60,
        /// Seconds after the user's message past which a stream is no longer written: the answer (or what
        /// is left of it) goes out as a message instead. The platform's limit is 6 minutes (360 s); the
        /// default leaves a margin.
        pub stream_deadline_secs: u64 = 330,
        /// Stream and send calls per second shared by every answer of this connector.
        /// **\[UNCONFIRMED\]** platform limit; the default is conservative.
        pub updates_per_second: u32 = 20,
        /// Attempts per call before a stream is given up and the answer is sent as a message.
        pub call_attempts: u32 = 6,
        /// Most seconds calls are retried once the platform starts refusing them before the stream is
        /// given up.
        pub retry_secs: u64 = 10,
        /// Most bytes of one stream snapshot (the platform's 20 480); a longer answer continues in a new
        /// stream.
        pub max_snapshot_bytes: usize = 20_480,
    }
}

/// The smallest [`WeComConfig::max_snapshot_bytes`].
pub const MIN_SNAPSHOT_BYTES: usize = 256;

/// The platform's name in config errors.
const PLATFORM: &str = WeComConfig::PLATFORM;

impl WeComConfig {
    /// Check that the connector can start with these settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        require(PLATFORM, "bot_id", &self.bot_id)?;
        match self.mode {
            Mode::LongConnection => {
                require(PLATFORM, "secret", self.secret.expose())?;
                let ws = self.ws_url.starts_with("ws://") || self.ws_url.starts_with("wss://");
                ensure(ws, PLATFORM, "ws_url", "a ws:// or wss:// URL")?;
            }
            Mode::Callback => {
                require(PLATFORM, "token", self.token.expose())?;
                let (token, key) = (self.token.expose(), self.encoding_aes_key.expose());
                let key_ok = emulator::wecom::crypto::MsgCrypt::new(token, key).is_ok();
                ensure(
                    key_ok,
                    PLATFORM,
                    "encoding_aes_key",
                    "43 base64 characters of a 32-byte key",
                )?;
            }
        }
        let counts = [self.updates_per_second, self.call_attempts];
        ensure(
            !counts.contains(&0),
            PLATFORM,
            "updates_per_second/call_attempts",
            "at least 1",
        )?;
        let size = self.max_snapshot_bytes >= MIN_SNAPSHOT_BYTES;
        ensure(size, PLATFORM, "max_snapshot_bytes", "at least 256")?;
        let periods = [self.stream_deadline_secs, self.keepalive_secs, self.heartbeat_secs];
        let field = "stream_deadline_secs/keepalive_secs/heartbeat_secs";
        ensure(!periods.contains(&0), PLATFORM, field, "at least 1")?;
        self.validate_shared(PLATFORM)
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
        let cards = CardLimits {
            max_bytes: self.max_snapshot_bytes,
            per_second: self.updates_per_second,
            min_interval: Duration::from_millis(self.stream_update_interval_ms),
            // A message's streams all end at its deadline; past it the adapter refuses stream calls
            // and the core sends the rest as a message.
            max_tables: None,
            max_age: None,
        };
        self.shared_settings(&self.database, self.call_attempts, self.retry_secs, cards)
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
