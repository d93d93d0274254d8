//! The platform's wire shapes, with the exact JSON field names of the reference
//! (`shared/protocols/dingtalk.md`): Stream frames, the connection-open call, tokens, cards and robot sends.
//! Requests are parsed leniently where SDKs differ (unknown keys are ignored everywhere).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Topic of robot-message callbacks.
pub const TOPIC_BOT_MESSAGE: &str = "/v1.0/im/bot/messages/get";

/// A downstream (server → client) Stream frame (§2.1). Every header value is a string.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Frame {
    pub spec_version: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub headers: BTreeMap<String, String>,
    /// A JSON document serialized into a string.
    pub data: String,
}

/// An upstream ACK frame (§2.2). Only `headers.messageId` correlates; everything else is tolerated.
#[derive(Debug, Deserialize)]
pub struct AckFrame {
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(default)]
    pub headers: HashMap<String, Value>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub data: Option<Value>,
}

impl AckFrame {
    /// The acknowledged push id, if the frame names one.
    pub fn message_id(&self) -> Option<&str> {
        self.headers.get("messageId").and_then(Value::as_str)
    }
}

/// One `subscriptions[]` entry of the open call.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Subscription {
    #[serde(rename = "type")]
    pub kind: String,
    pub topic: String,
}

/// `POST /v1.0/gateway/connections/open` body (§1.1).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenConnectionRequest {
    #[serde(default)]
    pub client_id: String,
    #[serde(default)]
    pub client_secret: String,
    #[serde(default)]
    pub subscriptions: Vec<Subscription>,
    #[serde(default)]
    pub ua: Option<String>,
    #[serde(default)]
    pub local_ip: Option<String>,
}

/// `POST /v1.0/oauth2/accessToken` body (§4).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessTokenRequest {
    #[serde(default)]
    pub app_key: String,
    #[serde(default)]
    pub app_secret: String,
}

/// `cardData` / `cardParamMap`: all values are strings on the wire.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CardData {
    #[serde(default)]
    pub card_param_map: BTreeMap<String, String>,
}

/// Deliver models (§6.2): only the fields the emulator checks.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupDeliverModel {
    #[serde(default)]
    pub robot_code: Option<String>,
    #[serde(default)]
    pub at_user_ids: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub recipients: Option<Vec<String>>,
}

/// Body of createAndDeliver, create and deliver (§6.2, §6.3); each call uses its own subset.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CardRequest {
    #[serde(default)]
    pub card_template_id: Option<String>,
    #[serde(default)]
    pub out_track_id: Option<String>,
    #[serde(default)]
    pub card_data: Option<CardData>,
    #[serde(default)]
    pub callback_type: Option<String>,
    #[serde(default)]
    pub open_space_id: Option<String>,
    #[serde(default)]
    pub im_group_open_deliver_model: Option<GroupDeliverModel>,
    #[serde(default)]
    pub im_robot_open_deliver_model: Option<Value>,
    #[serde(default)]
    pub user_id_type: Option<i64>,
}

/// `PUT /v1.0/card/instances` body (§6.5).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CardUpdateRequest {
    #[serde(default)]
    pub out_track_id: Option<String>,
    #[serde(default)]
    pub card_data: Option<CardData>,
    #[serde(default)]
    pub private_data: Option<Value>,
    #[serde(default)]
    pub card_update_options: Option<CardUpdateOptions>,
}

/// `cardUpdateOptions` of §6.5.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CardUpdateOptions {
    #[serde(default)]
    pub update_card_data_by_key: bool,
    #[serde(default)]
    pub update_private_data_by_key: bool,
}

/// `PUT /v1.0/card/streaming` body (§6.4). `isFull` is optional with default false.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamingRequest {
    #[serde(default)]
    pub out_track_id: Option<String>,
    #[serde(default)]
    pub guid: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub is_full: Option<bool>,
    #[serde(default)]
    pub is_finalize: Option<bool>,
    #[serde(default)]
    pub is_error: Option<bool>,
}

/// `POST /v1.0/robot/oToMessages/batchSend` body (§7.2).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OtoSendRequest {
    #[serde(default)]
    pub robot_code: Option<String>,
    #[serde(default)]
    pub user_ids: Option<Vec<String>>,
    #[serde(default)]
    pub msg_key: Option<String>,
    #[serde(default)]
    pub msg_param: Option<String>,
}

/// `POST /v1.0/robot/groupMessages/send` body (§7.2).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupSendRequest {
    #[serde(default)]
    pub robot_code: Option<String>,
    #[serde(default)]
    pub open_conversation_id: Option<String>,
    #[serde(default)]
    pub msg_key: Option<String>,
    #[serde(default)]
    pub msg_param: Option<String>,
}

/// The msgKeys of the robot send APIs (§7.2).
pub const MSG_KEYS: &[&str] = &[
    "sampleText",
    "sampleMarkdown",
    "sampleImageMsg",
    "sampleLink",
    "sampleActionCard",
    "sampleActionCard2",
    "sampleActionCard3",
    "sampleActionCard4",
    "sampleActionCard5",
    "sampleActionCard6",
    "sampleAudio",
    "sampleFile",
    "sampleVideo",
];
