//! [`Feishu`]: the Feishu (Lark) adapter of the IM core. Messages arrive over the long connection
//! (`longconn`); a card is a CardKit card entity with one markdown element, created in streaming mode and
//! sent as a reply to the message; it is streamed with the full text so far (`content`), and finished with
//! one full update that turns streaming mode off and sets the chat-list summary, so a finish retried after
//! a crash, or after the platform closed streaming mode, lands the same card again. Plain text (the
//! fallback) is a text reply to the message.
//!
//! Every call on a card runs under that card's lock with the next value of its sequence counter
//! ([`CardBook`]). The IM core paces, coalesces and retries the calls under the connector's delivery budget
//! and rolls a long answer over into a new card before the card's JSON nears 30 KB (200860) or its streaming
//! window ends.

use std::sync::Arc;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::api::{FeishuError, OpenApi, SCOPE_CARDKIT, SCOPE_SEND};
use super::cards::{CardBook, CardSlot};
use super::config::FeishuConfig;
use super::longconn;
use super::message::FeishuMessage;
use crate::db::DbError;
use crate::im::adapter::{Adapter, CardRef, CardState, ChatKind, Ending, Envelope, Inbox, Opened, Update};
use crate::im::platform_config::ConfigError;
use crate::im::retry::{CallFailure, DeliveryError, PlatformError, Retrier};
use crate::im::settings::Settings;
use crate::im::start::Platform;
use crate::platform::PlatformHealth;

/// The card's one streamed element.
pub const ELEMENT: &str = "md_answer";
/// Most characters of a finished card's chat-list summary.
const SUMMARY_CHARS: usize = 60;

impl PlatformError for FeishuError {
    fn failure(&self) -> CallFailure {
        match self {
            Self::Throttled { .. } => CallFailure::Throttled,
            // 300317 (sequence) and 300120 (internal) pass with the next, higher sequence.
            Self::Http { .. } | Self::InvalidToken { .. } => CallFailure::Transient,
            Self::Platform { status, code, .. } if *status >= 500 || [300_317, 300_120].contains(code) => {
                CallFailure::Transient
            }
            _ => CallFailure::Final,
        }
    }

    fn may_pass_later(&self) -> bool {
        matches!(self, Self::ScopeRefused { .. }) || self.failure() != CallFailure::Final
    }
}

impl From<DbError> for FeishuError {
    fn from(err: DbError) -> Self {
        Self::Unexpected {
            api: "card book",
            detail: err.to_string(),
        }
    }
}

/// The Feishu adapter: one app's OpenAPI client, its cards and settings.
pub struct Feishu {
    api: OpenApi,
    cards: CardBook,
    settings: Settings,
}

impl Feishu {
    /// The OpenAPI client.
    pub fn api(&self) -> &OpenApi {
        &self.api
    }

    /// Card JSON 2.0 with `text` in its one element.
    fn card_json(&self, text: &str, streaming: bool, summary: &str) -> String {
        json!({
            "schema": "2.0",
            "config": {
                "update_multi": true,
                "streaming_mode": streaming,
                "summary": {"content": summary},
                "streaming_config": {
                    "print_frequency_ms": {"default": 30},
                    "print_step": {"default": 2},
                    "print_strategy": "fast",
                },
            },
            "body": {"elements": [{"tag": "markdown", "content": text, "element_id": ELEMENT}]},
        })
        .to_string()
    }

    fn placeholder(&self) -> &str {
        &self.api.config().card_placeholder
    }

    /// The platform id of an opened card.
    fn card_id(card: &CardRef, slot: &CardSlot) -> Result<String, FeishuError> {
        slot.card_id.clone().ok_or_else(|| FeishuError::Unexpected {
            api: "cardkit",
            detail: format!("card {} was never created", card.id),
        })
    }

    /// `PUT …/elements/md_answer/content` with the card's next sequence.
    async fn stream(&self, card: &CardRef, slot: &mut CardSlot, content: &str) -> Result<(), FeishuError> {
        let card_id = Self::card_id(card, slot)?;
        let sequence = self.cards.next_sequence(&card.id, slot).await?;
        let body = json!({"content": content, "sequence": sequence});
        let path = format!("/open-apis/cardkit/v1/cards/{card_id}/elements/{ELEMENT}/content");
        self.api
            .call("cardkit/card_element/content", Method::PUT, &path, &body, SCOPE_CARDKIT)
            .await
            .map(drop)
    }

    /// `PATCH …/settings` turning streaming mode back on (the platform closed it).
    async fn reopen(&self, card: &CardRef, slot: &mut CardSlot) -> Result<(), FeishuError> {
        let card_id = Self::card_id(card, slot)?;
        let sequence = self.cards.next_sequence(&card.id, slot).await?;
        let settings = json!({"config": {"streaming_mode": true}}).to_string();
        let body = json!({"settings": settings, "sequence": sequence});
        let path = format!("/open-apis/cardkit/v1/cards/{card_id}/settings");
        self.api
            .call("cardkit/card/settings", Method::PATCH, &path, &body, SCOPE_CARDKIT)
            .await
            .map(drop)
    }

    /// A text reply to `message`; `uuid` makes a repeat of the same reply a no-op.
    async fn reply_text(&self, message: &FeishuMessage, text: &str, uuid: &str) -> Result<(), FeishuError> {
        let body = json!({
            "msg_type": "text",
            "content": json!({"text": text}).to_string(),
            "uuid": uuid,
        });
        let path = format!("/open-apis/im/v1/messages/{}/reply", message.message_id);
        self.api
            .call("im/message/reply", Method::POST, &path, &body, SCOPE_SEND)
            .await
            .map(drop)
    }
}

/// A reply `uuid` (at most 50 characters) for `parts`.
fn uuid(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(parts.join("\n").as_bytes());
    digest.iter().take(20).map(|b| format!("{b:02x}")).collect()
}

/// The chat-list summary of a finished card: its first line, shortened.
fn summary(content: &str) -> String {
    let line = content.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("…");
    let mut summary: String = line.chars().take(SUMMARY_CHARS).collect();
    if line.chars().count() > SUMMARY_CHARS {
        summary.push('…');
    }
    summary
}

impl Platform for Feishu {
    type Config = FeishuConfig;

    fn validate(config: &FeishuConfig) -> Result<(), ConfigError> {
        config.validate()
    }

    fn build(config: FeishuConfig) -> Result<Self, FeishuError> {
        let settings = config.settings();
        let book = config.card_book.clone();
        let cards = CardBook::open(&book.unwrap_or_else(|| super::cards::book_path(&config.database)))?;
        Ok(Self {
            api: OpenApi::new(config)?,
            cards,
            settings,
        })
    }
}

impl Adapter for Feishu {
    type Message = FeishuMessage;
    type Error = FeishuError;

    const PLATFORM: &'static str = "feishu";

    fn account(&self) -> &str {
        &self.api.config().app_id
    }

    fn settings(&self) -> &Settings {
        &self.settings
    }

    fn health(&self) -> &Arc<PlatformHealth> {
        self.api.health()
    }

    fn envelope(&self, message: &FeishuMessage) -> Envelope {
        let chat = if message.group {
            ChatKind::Group
        } else {
            ChatKind::Direct
        };
        let unmentioned = message.group && !message.mentions_bot;
        Envelope {
            id: message.message_id.clone(),
            conversation: message.chat_id.clone(),
            chat,
            sender: message.sender.clone(),
            sender_nick: message.sender.clone(),
            text: message.text.clone(),
            addressed: !(self.api.config().require_mention_in_groups && unmentioned),
        }
    }

    fn rebuild(&self, envelope: &Envelope) -> FeishuMessage {
        FeishuMessage {
            message_id: envelope.id.clone(),
            event_id: String::new(),
            chat_id: envelope.conversation.clone(),
            group: envelope.chat == ChatKind::Group,
            sender: envelope.sender.clone(),
            text: envelope.text.clone(),
            mentions_bot: envelope.addressed,
        }
    }

    async fn receive(self: Arc<Self>, inbox: Inbox<FeishuMessage>, shutdown: watch::Receiver<bool>) {
        longconn::run(&self.api, inbox, shutdown).await
    }

    fn no_card(&self, _message: &FeishuMessage) -> Option<FeishuError> {
        None
    }

    /// Create the entity (unless an earlier run did) and send it as a reply; the reply's `uuid` is the
    /// card's, so a send repeated after a crash is delivered once.
    async fn open_card(&self, message: &FeishuMessage, card: &CardRef) -> Result<Opened, FeishuError> {
        let mut slot = self.cards.lock(&card.id).await?;
        if slot.message_id.is_some() {
            return Ok(Opened::AlreadyExisted);
        }
        if slot.card_id.is_none() {
            let data = self.card_json(self.placeholder(), true, self.placeholder());
            let body = json!({"type": "card_json", "data": data});
            let answer = self
                .api
                .call(
                    "cardkit/card/create",
                    Method::POST,
                    "/open-apis/cardkit/v1/cards",
                    &body,
                    SCOPE_CARDKIT,
                )
                .await?;
            let card_id = answer
                .pointer("/data/card_id")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty())
                .ok_or_else(|| FeishuError::Unexpected {
                    api: "cardkit/card/create",
                    detail: "data.card_id missing".to_owned(),
                })?;
            self.cards.created(&card.id, &mut slot, card_id).await?;
        }
        let card_id = Self::card_id(card, &slot)?;
        let body = json!({
            "msg_type": "interactive",
            "content": json!({"type": "card", "data": {"card_id": card_id}}).to_string(),
            "uuid": uuid(&[&card.id, &card_id]),
        });
        let path = format!("/open-apis/im/v1/messages/{}/reply", message.message_id);
        let answer = self
            .api
            .call("im/message/reply", Method::POST, &path, &body, SCOPE_SEND)
            .await?;
        let message_id = answer
            .pointer("/data/message_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        self.cards.sent(&card.id, &mut slot, message_id).await?;
        Ok(Opened::Created)
    }

    /// The full text so far; a card whose streaming mode the platform closed is reopened and the text sent
    /// again, once.
    async fn update_card(&self, card: &CardRef, update: Update<'_>) -> Result<(), FeishuError> {
        let content = if update.content.trim().is_empty() {
            self.placeholder()
        } else {
            update.content
        };
        let mut slot = self.cards.lock(&card.id).await?;
        match self.stream(card, &mut slot, content).await {
            Err(FeishuError::StreamingClosed { code, .. }) => {
                tracing::info!(
                    card = card.id,
                    code,
                    "the platform closed the card's streaming mode; reopening it"
                );
                self.reopen(card, &mut slot).await?;
                self.stream(card, &mut slot, content).await
            }
            other => other,
        }
    }

    /// One full update: the whole content, streaming mode off, the summary set.
    async fn finish_card(&self, card: &CardRef, content: &str, ending: Ending) -> Result<(), FeishuError> {
        let mut slot = self.cards.lock(&card.id).await?;
        let card_id = Self::card_id(card, &slot)?;
        let sequence = self.cards.next_sequence(&card.id, &mut slot).await?;
        let content = if content.trim().is_empty() {
            self.placeholder()
        } else {
            content
        };
        let data = self.card_json(content, false, &summary(content));
        let body = json!({"card": {"type": "card_json", "data": data}, "sequence": sequence});
        let path = format!("/open-apis/cardkit/v1/cards/{card_id}");
        self.api
            .call("cardkit/card/update", Method::PUT, &path, &body, SCOPE_CARDKIT)
            .await?;
        tracing::debug!(card = card.id, ?ending, "card finished");
        drop(slot);
        self.cards.release(&card.id);
        Ok(())
    }

    /// The finished card says it all (streaming mode is off).
    async fn close_card(&self, _card: &CardRef, _state: CardState) -> Result<(), FeishuError> {
        Ok(())
    }

    async fn send_text(
        &self,
        message: &FeishuMessage,
        text: &str,
        retry: Retrier<'_>,
    ) -> Result<&'static str, DeliveryError<FeishuError>> {
        let uuid = uuid(&[&message.message_id, text]);
        retry.run(|| self.reply_text(message, text, &uuid)).await?;
        Ok("text reply")
    }

    async fn escalate(&self, to: &str, summary: &str) -> Result<(), FeishuError> {
        let body = json!({
            "receive_id": to,
            "msg_type": "text",
            "content": json!({"text": summary}).to_string(),
        });
        self.api
            .call(
                "im/message/create",
                Method::POST,
                "/open-apis/im/v1/messages?receive_id_type=open_id",
                &body,
                SCOPE_SEND,
            )
            .await
            .map(drop)
    }
}
