//! The platform's wire shapes, with the exact field names of the reference (`shared/protocols/feishu.md`):
//! the `pbbp2` protobuf frames of the long connection (§2), hand-written as prost messages, and the JSON
//! bodies of discovery, tokens, IM messages and CardKit. Requests are parsed leniently (unknown keys are
//! ignored, absent fields default), and the handlers say which absent field is an error.

use serde::{Deserialize, Serialize};

/// `method` of a control frame (ping, pong).
pub const METHOD_CONTROL: i32 = 0;
/// `method` of a data frame (events and the client's responses).
pub const METHOD_DATA: i32 = 1;

/// Header keys (§2.1).
pub mod header {
    /// `ping`, `pong`, `event` or `card`.
    pub const TYPE: &str = "type";
    /// Id of the logical message; fragments share it.
    pub const MESSAGE_ID: &str = "message_id";
    /// Number of fragments.
    pub const SUM: &str = "sum";
    /// 0-based fragment index.
    pub const SEQ: &str = "seq";
    /// Server trace id.
    pub const TRACE_ID: &str = "trace_id";
    /// Handler time the client appends to its response.
    pub const BIZ_RT: &str = "biz_rt";
}

/// One `pbbp2.Header` (proto2, both fields required).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Header {
    #[prost(string, required, tag = "1")]
    pub key: String,
    #[prost(string, required, tag = "2")]
    pub value: String,
}

/// One `pbbp2.Frame` (proto2). prost always encodes `required` fields, zero or not, as strict decoders
/// expect; decoding treats absent ones as 0.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Frame {
    #[prost(uint64, required, tag = "1")]
    pub seq_id: u64,
    #[prost(uint64, required, tag = "2")]
    pub log_id: u64,
    #[prost(int32, required, tag = "3")]
    pub service: i32,
    #[prost(int32, required, tag = "4")]
    pub method: i32,
    #[prost(message, repeated, tag = "5")]
    pub headers: Vec<Header>,
    #[prost(string, optional, tag = "6")]
    pub payload_encoding: Option<String>,
    #[prost(string, optional, tag = "7")]
    pub payload_type: Option<String>,
    #[prost(bytes = "vec", optional, tag = "8")]
    pub payload: Option<Vec<u8>>,
    #[prost(string, optional, tag = "9")]
    pub log_id_new: Option<String>,
}

impl Frame {
    /// The value of header `key`, if present.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers.iter().find(|h| h.key == key).map(|h| h.value.as_str())
    }

    /// A control frame of `kind` (`ping` or `pong`) with an optional payload.
    pub fn control(service: i32, kind: &str, payload: Option<Vec<u8>>) -> Self {
        Self {
            seq_id: 0,
            log_id: 0,
            service,
            method: METHOD_CONTROL,
            headers: vec![Header {
                key: header::TYPE.to_owned(),
                value: kind.to_owned(),
            }],
            payload_encoding: None,
            payload_type: None,
            payload,
            log_id_new: None,
        }
    }
}

/// The payload of a client's response frame (§2.4): `code` 200 is success; `data` is base64 of a
/// callback's answer.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ResponsePayload {
    pub code: i64,
    #[serde(default)]
    pub data: Option<String>,
}

/// `POST /callback/ws/endpoint` body (§1.1). Field names are PascalCase.
#[derive(Debug, Default, Deserialize)]
pub struct EndpointRequest {
    #[serde(rename = "AppID", default)]
    pub app_id: String,
    #[serde(rename = "AppSecret", default)]
    pub app_secret: String,
}

/// `ClientConfig` on the wire (discovery answer and pong payload), in seconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct WireClientConfig {
    pub reconnect_count: i64,
    pub reconnect_interval: i64,
    pub reconnect_nonce: i64,
    pub ping_interval: i64,
}

impl From<super::config::ClientConfig> for WireClientConfig {
    fn from(c: super::config::ClientConfig) -> Self {
        Self {
            reconnect_count: c.reconnect_count,
            reconnect_interval: c.reconnect_interval,
            reconnect_nonce: c.reconnect_nonce,
            ping_interval: c.ping_interval,
        }
    }
}

/// `POST /open-apis/auth/v3/tenant_access_token/internal` body (§5).
#[derive(Debug, Default, Deserialize)]
pub struct TokenRequest {
    #[serde(default)]
    pub app_id: String,
    #[serde(default)]
    pub app_secret: String,
}

/// `POST /open-apis/im/v1/messages` and `…/:message_id/reply` bodies (§7).
#[derive(Debug, Default, Deserialize)]
pub struct MessageRequest {
    #[serde(default)]
    pub receive_id: Option<String>,
    #[serde(default)]
    pub msg_type: Option<String>,
    /// A JSON document serialized into a string.
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub reply_in_thread: Option<bool>,
}

/// `POST /open-apis/cardkit/v1/cards` body (§8.1).
#[derive(Debug, Default, Deserialize)]
pub struct CreateCardRequest {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The card JSON 2.0 as a string.
    #[serde(default)]
    pub data: Option<String>,
}

/// `PUT /open-apis/cardkit/v1/cards/:card_id/elements/:element_id/content` body (§8.3).
#[derive(Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ContentRequest {
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub sequence: Option<i64>,
}

/// `PATCH /open-apis/cardkit/v1/cards/:card_id/settings` body (§8.5).
#[derive(Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct SettingsRequest {
    /// `{"config": {…}, "card_link": {…}}` as a string.
    #[serde(default)]
    pub settings: Option<String>,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub sequence: Option<i64>,
}

/// `PUT /open-apis/cardkit/v1/cards/:card_id` body (§8.6): a full replace.
#[derive(Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct UpdateCardRequest {
    #[serde(default)]
    pub card: Option<CardBody>,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub sequence: Option<i64>,
}

/// `card` of a full update.
#[derive(Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct CardBody {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub data: Option<String>,
}

/// `DELETE /open-apis/cardkit/v1/cards/:card_id/elements/:element_id` body (§8.6).
#[derive(Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct DeleteElementRequest {
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub sequence: Option<i64>,
}
