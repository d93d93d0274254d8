//! [`EmulatorConfig`]: the one robot the emulator accepts, and every timing, limit and protocol choice it
//! makes. Each default is documented here, in one place; choices `shared/protocols/wecom.md` marks
//! **\[UNCONFIRMED\]** are fields, so a test can pin either reading instead of the emulator guessing.

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default BotID of the emulated intelligent robot.
pub const DEFAULT_BOT_ID: &str = "aibemulatorbot";
/// Default long-connection Secret.
pub const DEFAULT_SECRET: &str = "emulator-bot-secret";
/// Default callback Token.
pub const DEFAULT_TOKEN: &str = "emulatortoken";
/// Default callback EncodingAESKey (43 characters).
pub const DEFAULT_ENCODING_AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

/// How the stream lifetime is read (§2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamExpiry {
    /// The documented reading: a stream expires [`EmulatorConfig::stream_ttl`] after the user's message.
    Absolute,
    /// Third-party reports for the long connection: it expires that long after its last update, so
    /// periodic snapshots keep it open. URL mode always uses the absolute reading (the platform drives
    /// the refreshes itself).
    Inactivity,
}

impl FromStr for StreamExpiry {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "absolute" => Ok(Self::Absolute),
            "inactivity" => Ok(Self::Inactivity),
            other => Err(format!("unknown stream expiry {other:?}: absolute or inactivity")),
        }
    }
}

/// What happens to a user's message while [`EmulatorConfig::max_in_flight_per_user`] of theirs await a
/// reply. **\[UNCONFIRMED\]**: the documentation states the limit but not what the platform does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InFlightOverflow {
    /// The message is refused and never pushed (its state reads `refused`). The default.
    Refuse,
    /// The message waits and is pushed when one of the user's messages is answered or expires.
    Hold,
}

impl FromStr for InFlightOverflow {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "refuse" => Ok(Self::Refuse),
            "hold" => Ok(Self::Hold),
            other => Err(format!("unknown in-flight overflow {other:?}: refuse or hold")),
        }
    }
}

/// The `errcode`s the emulator answers with. Those seen in field reports are marked OBSERVED; the others
/// are **\[UNCONFIRMED\]** choices.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorCodes {
    /// `aibot_subscribe` with an unknown bot id or a wrong secret (OBSERVED: 853000).
    pub auth_failed: i64,
    /// A reply whose `req_id` the platform never pushed (OBSERVED: 846605).
    pub unknown_req_id: i64,
    /// A stream update after the stream expired or finished (OBSERVED: 846608).
    pub stream_expired: i64,
    /// A request before `aibot_subscribe` succeeded. UNCONFIRMED; default 853000.
    pub not_subscribed: i64,
    /// A malformed request (missing field, unknown `msgtype` or `cmd`, unknown `chatid`). UNCONFIRMED;
    /// default 40058 (WeCom's generic "invalid parameter").
    pub invalid_request: i64,
    /// A stream snapshot or markdown over [`EmulatorConfig::max_content_bytes`]. UNCONFIRMED; default 40058.
    pub content_too_long: i64,
    /// A `response_url` already used, expired or unknown. UNCONFIRMED; default 40058.
    pub response_url_invalid: i64,
}

impl Default for ErrorCodes {
    fn default() -> Self {
        Self {
            auth_failed: 853000,
            unknown_req_id: 846605,
            stream_expired: 846608,
            not_subscribed: 853000,
            invalid_request: 40058,
            content_too_long: 40058,
            response_url_invalid: 40058,
        }
    }
}

/// Settings of one emulated WeCom intelligent robot. `Default` gives the platform's documented behaviour.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// The robot's BotID (`aibotid` in every body).
    pub bot_id: String,
    /// The long-connection Secret.
    pub secret: String,
    /// The callback Token (URL mode signatures).
    pub token: String,
    /// The callback EncodingAESKey (43 characters).
    pub encoding_aes_key: String,
    /// The robot's display name: group messages carry `@NAME ` before the text (§4.1).
    pub bot_name: String,
    /// URL mode from the start: pushes go to this callback URL instead of the long connection. The control
    /// API sets it at run time after a URL verification, as saving it in the admin console does.
    pub callback_url: Option<String>,
    /// Stream lifetime (documented: 6 minutes).
    pub stream_ttl: Duration,
    /// How [`stream_ttl`](Self::stream_ttl) is read on the long connection.
    pub stream_expiry: StreamExpiry,
    /// Answer an update of an expired stream with 846608 (true, the default) or acknowledge it with 0 and
    /// drop it (false), as WecomTeam/wecom-openclaw-plugin PR #90 reports. **\[UNCONFIRMED\]**.
    pub refuse_expired_updates: bool,
    /// Largest stream snapshot or markdown content, in UTF-8 bytes (documented: 20 480).
    pub max_content_bytes: usize,
    /// Messages of one user awaiting a reply at once (documented: 3); 0 disables the limit.
    pub max_in_flight_per_user: usize,
    /// What a message over that limit does.
    pub in_flight_overflow: InFlightOverflow,
    /// Interval of stream refresh callbacks in URL mode. **\[UNCONFIRMED\]**; default 1 s.
    pub refresh_interval: Duration,
    /// How long a callback POST may take before it counts as failed. **\[UNCONFIRMED\]** for intelligent
    /// robots; default 5 s (legacy app callbacks).
    pub callback_timeout: Duration,
    /// Retries of a failed message callback, with the same `msgid`. **\[UNCONFIRMED\]**; default 3 (legacy
    /// app callbacks).
    pub callback_retries: u32,
    /// How long the URL verification GET may take (documented: 1 s).
    pub verify_timeout: Duration,
    /// Accept passive replies padded to 16-byte blocks. **\[UNCONFIRMED\]**: the official Node SDK's
    /// decryption accepts them, the official samples produce 32; default false.
    pub accept_16_byte_padding: bool,
    /// Lifetime of a `response_url` (documented: 1 hour, one use).
    pub response_url_ttl: Duration,
    /// Accept `msgtype: "stream"` on a `response_url`. **\[UNCONFIRMED\]** (the official plugin posts it);
    /// default false.
    pub response_url_accepts_stream: bool,
    /// How long a welcome or card-update reply may follow its event (documented: 5 s).
    pub event_reply_window: Duration,
    /// Largest WebSocket frame the emulator reads, in bytes.
    pub max_frame_bytes: usize,
    /// Largest callback answer read in URL mode, in bytes.
    pub max_callback_answer_bytes: usize,
    /// Open long connections at most; more are refused with HTTP 503.
    pub max_connections: usize,
    /// Frames waiting to be written to one connection; a connection that falls this far behind is closed.
    pub outbound_queue: usize,
    /// Updates kept in each stream's history (the oldest are dropped; `updatesTotal` counts all).
    pub max_stream_history: usize,
    /// Messages and events the emulator keeps; posting more is refused.
    pub max_messages: usize,
    /// The `errcode`s it answers with.
    pub errcodes: ErrorCodes,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            bot_id: DEFAULT_BOT_ID.to_owned(),
            secret: DEFAULT_SECRET.to_owned(),
            token: DEFAULT_TOKEN.to_owned(),
            encoding_aes_key: DEFAULT_ENCODING_AES_KEY.to_owned(),
            bot_name: "hearth".to_owned(),
            callback_url: None,
            stream_ttl: Duration::from_secs(6 * 60),
            stream_expiry: StreamExpiry::Absolute,
            refuse_expired_updates: true,
            max_content_bytes: 20_480,
            max_in_flight_per_user: 3,
            in_flight_overflow: InFlightOverflow::Refuse,
            refresh_interval: Duration::from_secs(1),
            callback_timeout: Duration::from_secs(5),
            callback_retries: 3,
            verify_timeout: Duration::from_secs(1),
            accept_16_byte_padding: false,
            response_url_ttl: Duration::from_secs(60 * 60),
            response_url_accepts_stream: false,
            event_reply_window: Duration::from_secs(5),
            max_frame_bytes: 16 << 20,
            max_callback_answer_bytes: 1 << 20,
            max_connections: 16,
            outbound_queue: 1024,
            max_stream_history: 500,
            max_messages: 10_000,
            errcodes: ErrorCodes::default(),
        }
    }
}
