//! The platform's JSON shapes (`shared/protocols/wecom.md` §2, §4, §5): long-connection frames, reply
//! bodies shared by both transports, and the URL-mode envelopes. Requests are parsed leniently (unknown
//! keys are ignored); what the emulator checks is checked after parsing, with an error naming the field.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Long-connection commands (§2.3).
pub mod cmd {
    /// Client → server: authenticate with bot id and secret.
    pub const SUBSCRIBE: &str = "aibot_subscribe";
    /// Client → server: heartbeat.
    pub const PING: &str = "ping";
    /// Server → client: a user's message.
    pub const MSG_CALLBACK: &str = "aibot_msg_callback";
    /// Server → client: an event.
    pub const EVENT_CALLBACK: &str = "aibot_event_callback";
    /// Client → server: a reply to a message, with the callback's `req_id`.
    pub const RESPOND_MSG: &str = "aibot_respond_msg";
    /// Client → server: the welcome reply to `enter_chat`.
    pub const RESPOND_WELCOME: &str = "aibot_respond_welcome_msg";
    /// Client → server: the card update answering `template_card_event`.
    pub const RESPOND_UPDATE: &str = "aibot_respond_update_msg";
    /// Client → server: a proactive message.
    pub const SEND_MSG: &str = "aibot_send_msg";
    /// Prefix of the media upload commands (not emulated).
    pub const UPLOAD_PREFIX: &str = "aibot_upload_media_";
}

/// `headers` of every frame.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Headers {
    #[serde(default)]
    pub req_id: String,
}

/// A client → server frame: `{cmd, headers: {req_id}, body}`.
#[derive(Debug, Deserialize)]
pub struct ClientFrame {
    #[serde(default)]
    pub cmd: Option<String>,
    #[serde(default)]
    pub headers: Headers,
    #[serde(default)]
    pub body: Option<Value>,
}

/// A server → client push: `{cmd, headers: {req_id}, body}`.
#[derive(Debug, Serialize)]
pub struct Push<'a> {
    pub cmd: &'a str,
    pub headers: Headers,
    pub body: &'a Value,
}

/// An acknowledgement: `{headers: {req_id}, errcode, errmsg}`, no `cmd`.
#[derive(Debug, Serialize)]
pub struct Ack {
    pub headers: Headers,
    pub errcode: i64,
    pub errmsg: String,
}

impl Ack {
    /// The acknowledgement as a text frame.
    pub fn text(req_id: &str, errcode: i64, errmsg: &str) -> String {
        serde_json::to_string(&Ack {
            headers: Headers {
                req_id: req_id.to_owned(),
            },
            errcode,
            errmsg: errmsg.to_owned(),
        })
        .expect("acks serialize")
    }
}

/// `aibot_subscribe` body.
#[derive(Debug, Deserialize)]
pub struct SubscribeBody {
    #[serde(default)]
    pub bot_id: String,
    #[serde(default)]
    pub secret: String,
}

/// `stream` of a reply (§5.1).
#[derive(Debug, Clone, Deserialize)]
pub struct StreamReply {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub finish: bool,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub msg_item: Vec<Value>,
    #[serde(default)]
    pub feedback: Option<Feedback>,
}

/// `feedback` of a reply.
#[derive(Debug, Clone, Deserialize)]
pub struct Feedback {
    #[serde(default)]
    pub id: String,
}

/// `{content}` of text and markdown bodies.
#[derive(Debug, Clone, Deserialize)]
pub struct Content {
    #[serde(default)]
    pub content: String,
}

/// `{media_id}` of media bodies.
#[derive(Debug, Clone, Deserialize)]
pub struct Media {
    #[serde(default)]
    pub media_id: String,
}

/// A reply or proactive message body, by `msgtype` (§5, §6).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "msgtype", rename_all = "snake_case")]
pub enum ReplyBody {
    Stream {
        stream: StreamReply,
    },
    StreamWithTemplateCard {
        stream: StreamReply,
        #[serde(default)]
        template_card: Option<Value>,
    },
    TemplateCard {
        template_card: Value,
    },
    Text {
        text: Content,
    },
    Markdown {
        markdown: Content,
    },
    File {
        file: Media,
    },
    Image {
        image: Media,
    },
    Voice {
        voice: Media,
    },
    Video {
        video: Media,
    },
}

impl ReplyBody {
    /// The `msgtype` string.
    pub fn msgtype(&self) -> &'static str {
        match self {
            Self::Stream { .. } => "stream",
            Self::StreamWithTemplateCard { .. } => "stream_with_template_card",
            Self::TemplateCard { .. } => "template_card",
            Self::Text { .. } => "text",
            Self::Markdown { .. } => "markdown",
            Self::File { .. } => "file",
            Self::Image { .. } => "image",
            Self::Voice { .. } => "voice",
            Self::Video { .. } => "video",
        }
    }

    /// The stream part, if the body has one.
    pub fn stream(&self) -> Option<&StreamReply> {
        match self {
            Self::Stream { stream } | Self::StreamWithTemplateCard { stream, .. } => Some(stream),
            _ => None,
        }
    }

    /// What a conversation shows for a non-stream body: the text, or the card or media as JSON.
    pub fn shown(&self) -> String {
        match self {
            Self::Stream { stream } | Self::StreamWithTemplateCard { stream, .. } => {
                stream.content.clone().unwrap_or_default()
            }
            Self::TemplateCard { template_card } => template_card.to_string(),
            Self::Text { text } => text.content.clone(),
            Self::Markdown { markdown } => markdown.content.clone(),
            Self::File { file: m } | Self::Image { image: m } | Self::Voice { voice: m } | Self::Video { video: m } => {
                format!("media_id {}", m.media_id)
            }
        }
    }
}

/// `aibot_respond_update_msg` body: `{response_type: "update_template_card", userids?, template_card}`.
#[derive(Debug, Deserialize)]
pub struct UpdateCardBody {
    #[serde(default)]
    pub response_type: String,
    #[serde(default)]
    pub template_card: Option<Value>,
}

/// A URL-mode push body: `{"encrypt": "…"}` (§1.2).
#[derive(Debug, Serialize, Deserialize)]
pub struct EncryptedBody {
    pub encrypt: String,
}

/// A passive reply (§1.2): `timestamp` may be a string (official sample) or a number.
#[derive(Debug, Deserialize)]
pub struct PassiveReply {
    pub encrypt: String,
    pub msgsignature: String,
    pub timestamp: Value,
    pub nonce: String,
}

impl PassiveReply {
    /// `timestamp` as the string that was signed.
    pub fn timestamp(&self) -> Option<String> {
        match &self.timestamp {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}
