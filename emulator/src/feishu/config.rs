//! [`EmulatorConfig`]: the one app the emulator accepts, and every timing, limit and protocol choice it
//! makes. Each default is documented here, in one place; choices the wire reference
//! (`shared/protocols/feishu.md`) marks **\[UNCONFIRMED\]** or **\[OBSERVED\]** are fields, so a test can pin
//! either reading instead of the emulator guessing.

use std::time::Duration;

/// Default `app_id` of the emulated app. The Node SDK refuses ids that do not match `^cli_[0-9a-f]{16}$`.
pub const DEFAULT_APP_ID: &str = "cli_a1b2c3d4e5f60718";
/// Default `app_secret` of the emulated app.
pub const DEFAULT_APP_SECRET: &str = "emulator-app-secret";

/// The `ClientConfig` handed out by endpoint discovery and in pong payloads (§1.1, §2.2), in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientConfig {
    /// Reconnect attempts; -1 is unlimited.
    pub reconnect_count: i64,
    /// Seconds between reconnect attempts.
    pub reconnect_interval: i64,
    /// Upper bound of the random delay before the first reconnect attempt, in seconds.
    pub reconnect_nonce: i64,
    /// Seconds between client pings.
    pub ping_interval: i64,
}

impl Default for ClientConfig {
    /// The values the platform sends (and the SDKs' own defaults): -1, 120, 30, 120.
    fn default() -> Self {
        Self {
            reconnect_count: -1,
            reconnect_interval: 120,
            reconnect_nonce: 30,
            ping_interval: 120,
        }
    }
}

/// What a CardKit mutation whose `uuid` was already used on that card with the identical request gets.
/// The reference only says a conflicting uuid yields 200770 (§8.4) **\[UNCONFIRMED exact rule\]**; a reused
/// uuid with a different request is always 200770.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UuidReplay {
    /// The identical retry is answered with success and not applied again (the idempotency-key reading).
    Idempotent,
    /// Any reuse is 200770.
    Conflict,
}

/// Settings of one emulated Feishu. `Default` gives the platform's documented behaviour.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// The app's `app_id`. Other ids are refused by discovery and the token endpoint.
    pub app_id: String,
    /// The app's `app_secret`.
    pub app_secret: String,
    /// The tenant written into events (`header.tenant_key`, `sender.tenant_key`).
    pub tenant_key: String,
    /// The bot's display name (in @-mentions).
    pub bot_name: String,
    /// `ClientConfig` of discovery answers and pongs.
    pub client_config: ClientConfig,
    /// Send the `ClientConfig` (all four fields) as the payload of every pong. The reference calls the
    /// payload optional; default true.
    pub pong_carries_config: bool,
    /// `code` of a discovery answer refusing unknown credentials. The SDKs treat any code other than 1 and
    /// 1000040343 as fatal; which one the platform sends is **\[UNCONFIRMED\]**; default 10014 (the token
    /// endpoint's "app secret invalid").
    pub discovery_refusal_code: i64,
    /// How long a discovery ticket stays valid before the WebSocket handshake; tickets are single use.
    /// **\[UNCONFIRMED\]** lifetime; default 60 s.
    pub ticket_ttl: Duration,
    /// Most concurrent long connections of the app (documented: 50); the next handshake is refused with
    /// 514 and auth code 1000040350.
    pub max_connections: usize,
    /// HTTP status of a refused WebSocket upgrade, whose `Handshake-Status` header says 514 or 403.
    /// **\[UNCONFIRMED\]**: `None` (default) answers with the `Handshake-Status` value itself.
    pub handshake_http_status: Option<u16>,
    /// `Handshake-Autherrcode` of a 514 refusing an unknown, used or expired ticket (a retryable auth
    /// failure). **\[UNCONFIRMED\]** value; default 1000040351.
    pub ticket_refusal_auth_code: i64,
    /// A pushed event not answered with `code` 200 within this long is a failed push (documented: 3 s).
    pub response_timeout: Duration,
    /// Waits before each retry of a failed push (documented: 15 s, 5 min, 1 h, 6 h); after the last one the
    /// event is abandoned.
    pub retry_intervals: Vec<Duration>,
    /// Split event payloads longer than this into `sum > 1` fragments; `None` (default) never splits.
    /// When the platform splits is **\[UNCONFIRMED\]**.
    pub fragment_bytes: Option<usize>,
    /// Push group messages that do not @-mention the bot. The documented platform does only with the
    /// `im:message.group_msg` scope (default false).
    pub deliver_unmentioned_group_messages: bool,
    /// Lifetime of a tenant_access_token (documented: 7200 s).
    pub token_ttl: Duration,
    /// A token call returns a new token when the current one has less than this left (documented: 30 min).
    pub token_refresh_window: Duration,
    /// HTTP status of the 99991661/99991663/99991671 token errors. **\[UNCONFIRMED\]** (400 and 401 both
    /// appear in reports); default 400.
    pub token_error_status: u16,
    /// Scopes the app holds; calls needing another one get 99991672.
    pub scopes: Vec<String>,
    /// Operations per quota window on one card entity, all CardKit APIs together (documented: 10 per
    /// second); 0 disables the limit.
    pub card_ops_per_window: u32,
    /// Calls per quota window to one API by the app (documented: 50 per second); 0 disables the limit.
    pub api_calls_per_window: u32,
    /// Calls per minute to one API by the app (documented: 1000); 0 disables the limit.
    pub api_calls_per_minute: u32,
    /// Length of the short quota window (documented: one second). Tests stretch it so a burst of calls
    /// cannot straddle two windows on a slow machine.
    pub quota_window: Duration,
    /// Streaming mode is closed by the platform this long after it was turned on. **\[OBSERVED\]**: 10 min.
    pub streaming_window: Duration,
    /// Code of a content call on a card whose streaming mode is closed: 300309 (streaming closed, default) or
    /// 200850 (streaming timeout). Which one the auto-close gives is **\[OBSERVED\]** as either.
    pub streaming_closed_code: i64,
    /// See [`UuidReplay`]; default [`UuidReplay::Idempotent`].
    pub uuid_replay: UuidReplay,
    /// Largest text message `content`, in bytes (documented: 150 KB).
    pub max_text_bytes: usize,
    /// Largest card or post message `content`, and card JSON, in bytes (documented: 30 KB).
    pub max_card_bytes: usize,
    /// Most elements in a card (documented: 200).
    pub max_card_elements: usize,
    /// Largest element `content` of one streaming call, in characters (documented: 100 000).
    pub max_stream_chars: usize,
    /// Most markdown tables in one card; more is refused with `230099` / `11310` "card table number over
    /// limit". **\[OBSERVED\]**: reports see the fourth table refused.
    pub max_card_tables: usize,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            app_id: DEFAULT_APP_ID.to_owned(),
            app_secret: DEFAULT_APP_SECRET.to_owned(),
            tenant_key: "2ca1d211f64f6438".to_owned(),
            bot_name: "hearth".to_owned(),
            client_config: ClientConfig::default(),
            pong_carries_config: true,
            discovery_refusal_code: 10_014,
            ticket_ttl: Duration::from_secs(60),
            max_connections: 50,
            handshake_http_status: None,
            ticket_refusal_auth_code: 1_000_040_351,
            response_timeout: Duration::from_secs(3),
            retry_intervals: [15, 300, 3600, 6 * 3600].map(Duration::from_secs).to_vec(),
            fragment_bytes: None,
            deliver_unmentioned_group_messages: false,
            token_ttl: Duration::from_secs(7200),
            token_refresh_window: Duration::from_secs(30 * 60),
            token_error_status: 400,
            scopes: super::openapi::ALL_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
            card_ops_per_window: 10,
            api_calls_per_window: 50,
            api_calls_per_minute: 1000,
            quota_window: Duration::from_secs(1),
            streaming_window: Duration::from_secs(10 * 60),
            streaming_closed_code: 300_309,
            uuid_replay: UuidReplay::Idempotent,
            max_text_bytes: 150 * 1024,
            max_card_bytes: 30 * 1024,
            max_card_elements: 200,
            max_stream_chars: 100_000,
            max_card_tables: 3,
        }
    }
}
