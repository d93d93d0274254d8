//! Events as they arrive (§4): the 2.0 envelope, and `im.message.receive_v1` turned into the
//! [`FeishuMessage`] the outbox keeps.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The event type of a received message.
pub const RECEIVE_MESSAGE: &str = "im.message.receive_v1";

/// A received message, as the connector keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeishuMessage {
    /// `event.message.message_id` (`om_…`): the dedupe key and what answers reply to.
    pub message_id: String,
    /// `header.event_id`.
    #[serde(default)]
    pub event_id: String,
    /// `oc_…`.
    pub chat_id: String,
    /// The chat is a group (else 1:1).
    pub group: bool,
    /// The sender's `open_id`.
    pub sender: String,
    /// The text with @-mention placeholders resolved (the bot's removed), trimmed.
    pub text: String,
    /// The message @-mentions a bot.
    pub mentions_bot: bool,
}

/// What one event frame carried.
#[derive(Debug)]
pub enum Event {
    /// A message from a user.
    Message(FeishuMessage),
    /// Another event, or a message hearth does not answer (from a bot, not text).
    Other { kind: String },
}

/// Why an event could not be read.
#[derive(Debug, thiserror::Error)]
#[error("unreadable event: {0}")]
pub struct BadEvent(String);

impl Event {
    /// Parse an event payload (§4.1, §4.2).
    pub fn parse(payload: &[u8]) -> Result<Self, BadEvent> {
        let event: Value = serde_json::from_slice(payload).map_err(|e| BadEvent(e.to_string()))?;
        let kind = event
            .pointer("/header/event_type")
            .and_then(Value::as_str)
            .ok_or_else(|| BadEvent("header.event_type is missing".to_owned()))?;
        let sender_type = event.pointer("/event/sender/sender_type").and_then(Value::as_str);
        if kind != RECEIVE_MESSAGE || sender_type == Some("bot") || sender_type == Some("app") {
            return Ok(Self::Other { kind: kind.to_owned() });
        }
        let text = |pointer: &str| event.pointer(pointer).and_then(Value::as_str).unwrap_or_default();
        let message_id = text("/event/message/message_id");
        if message_id.is_empty() {
            return Err(BadEvent("event.message.message_id is missing".to_owned()));
        }
        let content: Value = serde_json::from_str(text("/event/message/content")).unwrap_or(Value::Null);
        let mentions = event
            .pointer("/event/message/mentions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut body = match text("/event/message/message_type") {
            "text" => content
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            "post" => post_text(&content),
            _ => String::new(),
        };
        let mut mentions_bot = false;
        for mention in &mentions {
            let key = mention.get("key").and_then(Value::as_str).unwrap_or_default();
            if key.is_empty() {
                continue;
            }
            let is_bot = mention.get("mentioned_type").and_then(Value::as_str) == Some("bot");
            mentions_bot |= is_bot;
            let name = mention.get("name").and_then(Value::as_str).unwrap_or_default();
            body = body.replace(key, &if is_bot { String::new() } else { format!("@{name}") });
        }
        let sender = ["open_id", "union_id", "user_id"]
            .iter()
            .map(|id| text(&format!("/event/sender/sender_id/{id}")))
            .find(|id| !id.is_empty())
            .unwrap_or_default();
        Ok(Self::Message(FeishuMessage {
            message_id: message_id.to_owned(),
            event_id: text("/header/event_id").to_owned(),
            chat_id: text("/event/message/chat_id").to_owned(),
            group: text("/event/message/chat_type") != "p2p",
            sender: sender.to_owned(),
            text: body.trim().to_owned(),
            mentions_bot,
        }))
    }
}

/// The text of a `post` (rich text) message: its `text` runs, line by line.
fn post_text(content: &Value) -> String {
    let post = content.get("content").or_else(|| {
        content
            .as_object()
            .and_then(|o| o.values().find_map(|v| v.get("content")))
    });
    let Some(lines) = post.and_then(Value::as_array) else {
        return String::new();
    };
    lines
        .iter()
        .filter_map(Value::as_array)
        .map(|runs| {
            runs.iter()
                .filter_map(|run| run.get("text").and_then(Value::as_str))
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(chat_type: &str, text: &str, mentions: Value) -> Vec<u8> {
        json!({
            "schema": "2.0",
            "header": {"event_id": "e1", "event_type": RECEIVE_MESSAGE},
            "event": {
                "sender": {"sender_id": {"open_id": "ou_1"}, "sender_type": "user"},
                "message": {
                    "message_id": "om_1", "chat_id": "oc_1", "chat_type": chat_type,
                    "message_type": "text", "content": json!({"text": text}).to_string(), "mentions": mentions,
                },
            },
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn mentions_are_resolved_and_the_bot_is_dropped() {
        let mentions = json!([
            {"key": "@_user_1", "mentioned_type": "bot", "name": "hearth"},
            {"key": "@_user_2", "mentioned_type": "user", "name": "Bo"},
        ]);
        let Event::Message(message) = Event::parse(&event("group", "@_user_1 ask @_user_2 why", mentions)).unwrap()
        else {
            panic!("a message")
        };
        assert_eq!(message.text, "ask @Bo why");
        assert!(message.group && message.mentions_bot);
        assert_eq!((message.sender.as_str(), message.event_id.as_str()), ("ou_1", "e1"));
        let Event::Message(direct) = Event::parse(&event("p2p", "hi", Value::Null)).unwrap() else {
            panic!("a message")
        };
        assert!(!direct.group && !direct.mentions_bot);
        assert!(Event::parse(b"{}").is_err());
        assert!(Event::parse(b"not json").is_err());
    }
}
