//! The robot's inbound message ([`WeComMessage`], §4.1 of `shared/protocols/wecom.md`), the same body on
//! both transports, and the long connection's frames ([`Frame`]) and the request bodies the adapter sends.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// A user's message to the robot, as received, with what the adapter adds to reply to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeComMessage {
    /// The dedupe key.
    pub msgid: String,
    #[serde(default)]
    pub aibotid: String,
    /// The group; absent in a 1:1 chat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chatid: Option<String>,
    /// `single` or `group`.
    #[serde(default)]
    pub chattype: String,
    #[serde(default)]
    pub from: Sender,
    /// Seconds since the epoch (long-connection bodies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<u64>,
    /// The one-shot late-reply URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_url: Option<String>,
    #[serde(default)]
    pub msgtype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Content>,
    /// A voice message's transcript.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<Content>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixed: Option<Mixed>,
    /// The long connection's `req_id` of the push: every stream frame of the answer carries it. Absent in
    /// URL mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
    /// When hearth received it, Unix ms: the stream deadline counts from here when `create_time` is absent.
    #[serde(default)]
    pub received_ms: i64,
}

/// `from` of a body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sender {
    #[serde(default)]
    pub userid: String,
}

/// `{content}` of text and voice bodies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Content {
    #[serde(default)]
    pub content: String,
}

/// A mixed (text and images) message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Mixed {
    #[serde(default)]
    pub msg_item: Vec<MixedItem>,
}

/// One item of a mixed message; only its text is read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MixedItem {
    #[serde(default)]
    pub msgtype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Content>,
}

impl WeComMessage {
    /// Whether it came from a group.
    pub fn is_group(&self) -> bool {
        self.chattype == "group"
    }

    /// Where a proactive message to this conversation goes: the group, or the user of a 1:1 chat.
    pub fn conversation(&self) -> &str {
        match &self.chatid {
            Some(chatid) if !chatid.is_empty() => chatid,
            _ => &self.from.userid,
        }
    }

    /// The question: the text (a voice transcript, a mixed message's text items), without a group
    /// message's leading `@robot` mention, trimmed.
    pub fn question(&self) -> String {
        let text = match self.msgtype.as_str() {
            "voice" => self.voice.as_ref().map(|v| v.content.clone()).unwrap_or_default(),
            "mixed" => self
                .mixed
                .iter()
                .flat_map(|m| &m.msg_item)
                .filter_map(|item| item.text.as_ref().map(|t| t.content.as_str()))
                .collect::<Vec<_>>()
                .join("\n"),
            _ => self.text.as_ref().map(|t| t.content.clone()).unwrap_or_default(),
        };
        let text = text.trim();
        let text = match text.strip_prefix('@') {
            Some(rest) if self.is_group() => rest.split_once(char::is_whitespace).map_or("", |(_, rest)| rest),
            _ => text,
        };
        text.trim().to_owned()
    }

    /// When the user sent it, Unix ms.
    pub fn sent_ms(&self) -> i64 {
        match self.create_time {
            Some(secs) if secs > 0 => (secs as i64).saturating_mul(1000).min(self.received_ms.max(1)),
            _ => self.received_ms,
        }
    }
}

/// A long-connection frame from the server: a push (`cmd` set) or an acknowledgement (no `cmd`).
#[derive(Debug, Deserialize)]
pub struct Frame {
    #[serde(default)]
    pub cmd: Option<String>,
    #[serde(default)]
    pub headers: Headers,
    #[serde(default)]
    pub body: Option<Value>,
    #[serde(default)]
    pub errcode: i64,
    #[serde(default)]
    pub errmsg: String,
}

/// `headers` of a frame.
#[derive(Debug, Default, Deserialize)]
pub struct Headers {
    #[serde(default)]
    pub req_id: String,
}

/// Commands of the long connection (§2.3).
pub mod cmd {
    pub const SUBSCRIBE: &str = "aibot_subscribe";
    pub const PING: &str = "ping";
    pub const MSG_CALLBACK: &str = "aibot_msg_callback";
    pub const EVENT_CALLBACK: &str = "aibot_event_callback";
    pub const RESPOND_MSG: &str = "aibot_respond_msg";
    pub const SEND_MSG: &str = "aibot_send_msg";
}

/// A new `req_id` as the SDK makes them: `<prefix>_<unix ms>_<8 hex>`.
pub fn req_id(prefix: &str) -> String {
    format!("{prefix}_{}_{:08x}", crate::db::now_ms(), rand::random::<u32>())
}

/// A client request frame.
pub fn request(cmd: &str, req_id: &str, body: Option<Value>) -> String {
    let mut frame = json!({"cmd": cmd, "headers": {"req_id": req_id}});
    if let Some(body) = body {
        frame["body"] = body;
    }
    frame.to_string()
}

/// A stream reply body (§5.1): the full snapshot `content` of stream `id`.
pub fn stream_body(id: &str, content: &str, finish: bool) -> Value {
    json!({"msgtype": "stream", "stream": {"id": id, "finish": finish, "content": content}})
}

/// A markdown message body (`aibot_send_msg` adds `chatid`; a `response_url` takes it as it is).
pub fn markdown_body(chatid: Option<&str>, content: &str) -> Value {
    let mut body = json!({"msgtype": "markdown", "markdown": {"content": content}});
    if let Some(chatid) = chatid {
        body["chatid"] = json!(chatid);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_question_drops_a_group_mention() {
        let body = r#"{"msgid":"m1","aibotid":"b","chatid":"g1","chattype":"group","from":{"userid":"u"},
            "msgtype":"text","text":{"content":"@hearth  What is 2+2? "}}"#;
        let message: WeComMessage = serde_json::from_str(body).unwrap();
        assert_eq!(message.question(), "What is 2+2?");
        assert_eq!(message.conversation(), "g1");
        let single = WeComMessage {
            chattype: "single".to_owned(),
            chatid: None,
            ..message
        };
        assert_eq!(single.question(), "@hearth  What is 2+2?");
        assert_eq!(single.conversation(), "u");
    }
}
