//! [`EmulatorConfig`]: the one app the emulator accepts, and every timing, limit and protocol choice it
//! makes. Each default is documented here, in one place; choices the wire reference marks
//! **\[UNCONFIRMED\]** are fields, so a test can pin either reading instead of the emulator guessing.

use std::time::Duration;

/// Default `clientId` (= AppKey = robotCode) of the emulated app.
pub const DEFAULT_CLIENT_ID: &str = "dingemulatorappkey";
/// Default `clientSecret` (= AppSecret) of the emulated app.
pub const DEFAULT_CLIENT_SECRET: &str = "emulator-app-secret";

/// Settings of one emulated DingTalk. `Default` gives the platform's documented behaviour.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// The app's `clientId` (also its AppKey and robotCode). Other ids are refused with 401 `authFailed`.
    pub client_id: String,
    /// The app's `clientSecret`.
    pub client_secret: String,
    /// The corp id written into callbacks (`chatbotCorpId`, `senderCorpId`).
    pub corp_id: String,
    /// How long a connection ticket stays valid (documented: 90 s, single use).
    pub ticket_ttl: Duration,
    /// Lifetime of an access token (documented: 7200 s); reissuing a valid token extends it.
    pub token_ttl: Duration,
    /// An un-ACKed CALLBACK is pushed again after this long, with the same `messageId` and `data`
    /// (field reports: about 60 s).
    pub redelivery_after: Duration,
    /// Pushes of one message after the first before the emulator gives up on it.
    pub max_redeliveries: u32,
    /// Interval of SYSTEM `ping` frames on each connection; `None` sends none.
    /// **\[UNCONFIRMED\]** in the reference; default 30 s (a third-party report says 20–30 s).
    pub ping_interval: Option<Duration>,
    /// After a SYSTEM `disconnect` frame the TCP connection is dropped this much later (documented: ~10 s).
    pub disconnect_grace: Duration,
    /// Send a `disconnect` frame (`persistent connection is timeout`) this long after a connection opens;
    /// `None` keeps connections forever.
    pub connection_lifetime: Option<Duration>,
    /// Most calls per second to one OpenAPI per app; more get 403
    /// `Forbidden.AccessDenied.QpsLimitForAppkeyAndApi`. 0 disables the limit. Documented: 20 QPS.
    pub qps_per_api: u32,
    /// Lifetime of a `sessionWebhook` (doc samples imply about 90 minutes).
    pub session_webhook_ttl: Duration,
    /// Messages per minute one robot may send through sessionWebhooks; the next one is refused with
    /// errcode 130101 (`send too fast, exceed 20 times per minute`, as field reports show it) and the robot
    /// stays throttled for [`webhook_throttle`](Self::webhook_throttle). 0 disables the limit. Documented as
    /// 20 per minute for custom group robots; whether it applies to sessionWebhooks is **\[UNCONFIRMED\]**;
    /// default 20.
    pub webhook_messages_per_minute: u32,
    /// How long a robot over [`webhook_messages_per_minute`](Self::webhook_messages_per_minute) stays
    /// throttled (documented: 10 minutes).
    pub webhook_throttle: Duration,
    /// HTTP status of the sessionWebhook's `300001 session 不存在` answer. **\[UNCONFIRMED\]**; default 200
    /// (the legacy `errcode` envelope is normally sent with 200).
    pub session_webhook_error_status: u16,
    /// HTTP status refusing a WebSocket upgrade with a bad, reused or expired ticket. **\[UNCONFIRMED\]**;
    /// default 401, with the OpenAPI error envelope.
    pub ticket_refusal_status: u16,
    /// Accept `content: ""` on `PUT /v1.0/card/streaming`. **[UNCONFIRMED — conflicting]**: documented as
    /// `param.stream.contentEmpty`, reported working; default false (the documented 400).
    pub accept_empty_stream_content: bool,
    /// Largest `content` of one streaming call, in bytes, before 400 `param.stream.content`
    /// ("content is too large"). **\[UNCONFIRMED\]**: the documented guidance is ≤ 1 KB per call but SDKs
    /// send whole answers; default 10 240.
    pub max_stream_content_bytes: usize,
    /// Largest robot-API `msgParam`, in bytes (documented: 15 000).
    pub max_msg_param_bytes: usize,
    /// Most `userIds` in one `oToMessages/batchSend`. **\[UNCONFIRMED\]**: the doc text says 20, its error
    /// table 100; default 20.
    pub max_oto_user_ids: usize,
    /// Card variables bound to a markdown component: streaming them with `isFull: false` is a 400
    /// `param.stream.isFull`. The emulator has no template designer, so this is declared here; default empty.
    pub markdown_keys: Vec<String>,
    /// Push group messages that do not @-mention the robot (with `isInAtList: false`). The documented
    /// platform does not (default false); turning it on lets a connector's own mention filter be tested.
    pub deliver_unmentioned_group_messages: bool,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            client_secret: DEFAULT_CLIENT_SECRET.to_owned(),
            corp_id: "dingemulatorcorp".to_owned(),
            ticket_ttl: Duration::from_secs(90),
            token_ttl: Duration::from_secs(7200),
            redelivery_after: Duration::from_secs(60),
            max_redeliveries: 3,
            ping_interval: Some(Duration::from_secs(30)),
            disconnect_grace: Duration::from_secs(10),
            connection_lifetime: None,
            qps_per_api: 20,
            session_webhook_ttl: Duration::from_secs(90 * 60),
            webhook_messages_per_minute: 20,
            webhook_throttle: Duration::from_secs(10 * 60),
            session_webhook_error_status: 200,
            ticket_refusal_status: 401,
            accept_empty_stream_content: false,
            max_stream_content_bytes: 10 * 1024,
            max_msg_param_bytes: 15_000,
            max_oto_user_ids: 20,
            markdown_keys: Vec::new(),
            deliver_unmentioned_group_messages: false,
        }
    }
}
