//! Stream frames parsed once at the edge into [`Inbound`] (with an explicit `Unknown`), the robot message
//! they carry ([`BotMessage`]), and the ACK frames sent back.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Topic of robot-message callbacks.
pub const TOPIC_BOT_MESSAGE: &str = "/v1.0/im/bot/messages/get";

/// A downstream frame as it arrives.
#[derive(Debug, Deserialize)]
struct RawFrame {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    headers: std::collections::HashMap<String, Value>,
    #[serde(default)]
    data: Value,
}

/// What a frame means to the connector.
#[derive(Debug)]
pub enum Inbound {
    /// SYSTEM `ping`: answer with the same data.
    Ping { message_id: String, data: String },
    /// SYSTEM `disconnect`: the server stops delivering here; open a new connection.
    Disconnect {
        message_id: String,
        data: String,
        reason: String,
    },
    /// A robot message (CALLBACK on the bot topic).
    Bot {
        message_id: String,
        message: Box<BotMessage>,
    },
    /// A robot-message CALLBACK whose data could not be read.
    BadBot { message_id: String, error: String },
    /// Anything else; logged and answered with 404, as the SDKs do.
    Unknown {
        message_id: String,
        kind: String,
        topic: String,
    },
}

/// A frame that is not even JSON with a messageId.
#[derive(Debug, thiserror::Error)]
#[error("malformed Stream frame: {0}")]
pub struct FrameError(String);

impl Inbound {
    /// Parse one text frame.
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        let raw: RawFrame = serde_json::from_str(text).map_err(|e| FrameError(e.to_string()))?;
        let header = |name: &str| {
            raw.headers
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let message_id = header("messageId");
        if message_id.is_empty() {
            return Err(FrameError("no headers.messageId".to_owned()));
        }
        let topic = header("topic");
        let data = match &raw.data {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        Ok(match (raw.kind.as_str(), topic.as_str()) {
            ("SYSTEM", "ping") => Self::Ping { message_id, data },
            ("SYSTEM", "disconnect") => {
                let reason = serde_json::from_str::<Value>(&data)
                    .ok()
                    .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or_default();
                Self::Disconnect {
                    message_id,
                    data,
                    reason,
                }
            }
            ("CALLBACK", TOPIC_BOT_MESSAGE) => match serde_json::from_str::<BotMessage>(&data) {
                Ok(message) => Self::Bot {
                    message_id,
                    message: Box::new(message),
                },
                Err(err) => Self::BadBot {
                    message_id,
                    error: err.to_string(),
                },
            },
            (kind, _) => Self::Unknown {
                message_id,
                kind: kind.to_owned(),
                topic,
            },
        })
    }
}

/// `conversationType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConversationType {
    #[serde(rename = "1")]
    Single,
    #[serde(rename = "2")]
    Group,
}

impl ConversationType {
    /// The wire value.
    pub fn wire(self) -> &'static str {
        match self {
            Self::Single => "1",
            Self::Group => "2",
        }
    }

    /// From the wire value.
    pub fn from_wire(s: &str) -> Option<Self> {
        match s {
            "1" => Some(Self::Single),
            "2" => Some(Self::Group),
            _ => None,
        }
    }
}

/// The text body of a message.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TextContent {
    #[serde(default)]
    pub content: String,
}

/// The fields of a robot-message callback the connector uses (§3 of the reference); serialized the same way
/// into the outbox, so an answer resumed after a crash has them all.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BotMessage {
    pub conversation_id: String,
    pub conversation_type: ConversationType,
    pub msg_id: String,
    #[serde(default)]
    pub msgtype: String,
    #[serde(default)]
    pub text: Option<TextContent>,
    #[serde(default)]
    pub robot_code: Option<String>,
    /// The sender's userId in the org; empty for external members and while the robot is unpublished.
    #[serde(default)]
    pub sender_staff_id: String,
    /// The sender's encrypted id; always given.
    #[serde(default)]
    pub sender_id: String,
    /// The sender's unionId, when given: a 1:1 card can address it when the staff id is empty.
    #[serde(default)]
    pub sender_union_id: Option<String>,
    #[serde(default)]
    pub sender_nick: String,
    #[serde(default)]
    pub is_in_at_list: bool,
    #[serde(default)]
    pub session_webhook: Option<String>,
    #[serde(default)]
    pub session_webhook_expired_time: Option<u64>,
}

/// Who a 1:1 card or robot message goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addressee<'a> {
    /// `userIdType` 1: the sender's staff id.
    StaffId(&'a str),
    /// `userIdType` 2: the sender's unionId (the staff id is empty).
    UnionId(&'a str),
    /// Neither: only the sessionWebhook reaches the sender.
    Unknown,
}

impl BotMessage {
    /// How the sender can be addressed by a 1:1 card: the staff id, else the unionId (external members and
    /// robots not yet published have no staff id, protocol notes §3).
    pub fn addressee(&self) -> Addressee<'_> {
        match (
            self.sender_staff_id.trim(),
            self.sender_union_id.as_deref().map(str::trim),
        ) {
            (staff, _) if !staff.is_empty() => Addressee::StaffId(staff),
            (_, Some(union)) if !union.is_empty() => Addressee::UnionId(union),
            _ => Addressee::Unknown,
        }
    }

    /// The sender as sessions, rate limits and the audit log know them: the staff id, else the encrypted
    /// senderId.
    pub fn sender(&self) -> &str {
        if self.sender_staff_id.is_empty() {
            &self.sender_id
        } else {
            &self.sender_staff_id
        }
    }

    /// The question: the text with the leading space left by a stripped @mention removed.
    pub fn question(&self) -> String {
        self.text
            .as_ref()
            .map(|t| t.content.trim().to_owned())
            .unwrap_or_default()
    }
}

/// An ACK frame for `message_id` with `code` and `data` (already a JSON string).
pub fn ack(message_id: &str, code: u16, message: &str, data: &str) -> String {
    json!({
        "code": code,
        "headers": {"messageId": message_id, "contentType": "application/json"},
        "message": message,
        "data": data,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_into_inbound() {
        let ping = r#"{"specVersion":"1.0","type":"SYSTEM","headers":{"topic":"ping","messageId":"m1"},"data":"{\"opaque\":\"x\"}"}"#;
        assert!(matches!(Inbound::parse(ping).unwrap(), Inbound::Ping { data, .. } if data == r#"{"opaque":"x"}"#));
        let bot = json!({"type":"CALLBACK","headers":{"topic":TOPIC_BOT_MESSAGE,"messageId":"m2"},
            "data": json!({"conversationId":"cid","conversationType":"2","msgId":"msg1","text":{"content":" hi"},"isInAtList":true}).to_string()}).to_string();
        let Inbound::Bot { message, .. } = Inbound::parse(&bot).unwrap() else {
            panic!("a bot message")
        };
        assert_eq!(
            (message.question().as_str(), message.conversation_type),
            ("hi", ConversationType::Group)
        );
        let event = r#"{"type":"EVENT","headers":{"topic":"x","messageId":"m3"},"data":""}"#;
        assert!(matches!(Inbound::parse(event).unwrap(), Inbound::Unknown { .. }));
        assert!(Inbound::parse(r#"{"type":"SYSTEM","headers":{}}"#).is_err());
    }
}
