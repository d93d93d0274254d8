//! [`DingTalk`]: the DingTalk adapter of the IM core. Messages arrive over Stream mode (`stream`); a card
//! is an AI card (`createAndDeliver`, streamed with full snapshots through `PUT /v1.0/card/streaming`,
//! its `flowStatus` set once finished: "3" finished, "5" failed, as the official SDK's AI card does);
//! plain text is markdown through the message's sessionWebhook, or the robot send API once the webhook has
//! expired or while the platform throttles the robot's webhook messages (errcode 130101: then webhooks are
//! left alone for [`WEBHOOK_PAUSE`]).
//!
//! Guids: intermediate updates use `{outTrackId}-{attempt}-{seq}`; the final frame always uses
//! `{outTrackId}-final` (or `-error` for a card given up), so a finish retried after a crash is applied
//! once by the platform. A 1:1 sender with neither a staff id nor a unionId cannot get a card: the answer
//! goes out as markdown at once.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::time::{Duration, Instant};

use super::api::{CardCreation, DingTalkError, OpenApi};
use super::config::DingTalkConfig;
use super::message::{Addressee, BotMessage, ConversationType, TextContent};
use super::stream;
use super::wire::FlowStatus;
use crate::im::adapter::{Adapter, CardRef, CardState, ChatKind, Ending, Envelope, Inbox, Opened, Update};
use crate::im::platform_config::ConfigError;
use crate::im::retry::{CallFailure, DeliveryError, PlatformError, Retrier};
use crate::im::settings::Settings;
use crate::im::start::Platform;
use crate::platform::PlatformHealth;

/// How long sessionWebhooks are left alone after the platform throttled the robot on them: it allows 20
/// messages a minute and then refuses for 10 minutes (protocol notes §7.1). The robot send API carries
/// the fallback meanwhile.
pub const WEBHOOK_PAUSE: Duration = Duration::from_secs(10 * 60);

/// Whether the robot's sessionWebhook messages are throttled, as last seen.
#[derive(Default)]
pub struct WebhookPause {
    until: Mutex<Option<Instant>>,
}

impl WebhookPause {
    /// The platform throttled a sessionWebhook message: leave them alone for [`WEBHOOK_PAUSE`].
    pub fn start(&self) {
        *self.until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + WEBHOOK_PAUSE);
    }

    /// Whether sessionWebhooks are still being left alone.
    pub fn active(&self) -> bool {
        self.until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }
}

impl PlatformError for DingTalkError {
    fn failure(&self) -> CallFailure {
        match self {
            Self::Throttled { .. } => CallFailure::Throttled,
            Self::Http { .. } | Self::Platform { status: 500..=599, .. } => CallFailure::Transient,
            _ => CallFailure::Final,
        }
    }

    fn may_pass_later(&self) -> bool {
        self.is_transient()
    }
}

/// The DingTalk adapter: one robot's OpenAPI client and settings.
pub struct DingTalk {
    api: OpenApi,
    settings: Settings,
    /// Set while the platform throttles the robot's sessionWebhook messages.
    webhook_pause: WebhookPause,
}

impl DingTalk {
    /// The OpenAPI client.
    pub fn api(&self) -> &OpenApi {
        &self.api
    }
}

impl Platform for DingTalk {
    type Config = DingTalkConfig;

    fn validate(config: &DingTalkConfig) -> Result<(), ConfigError> {
        config.validate()
    }

    fn build(config: DingTalkConfig) -> Result<Self, DingTalkError> {
        let settings = config.settings();
        Ok(Self {
            api: OpenApi::new(config)?,
            settings,
            webhook_pause: WebhookPause::default(),
        })
    }
}

impl Adapter for DingTalk {
    type Message = BotMessage;
    type Error = DingTalkError;

    const PLATFORM: &'static str = "dingtalk";

    fn account(&self) -> &str {
        self.api.config().robot()
    }

    fn settings(&self) -> &Settings {
        &self.settings
    }

    fn health(&self) -> &Arc<PlatformHealth> {
        self.api.health()
    }

    fn envelope(&self, message: &BotMessage) -> Envelope {
        let chat = match message.conversation_type {
            ConversationType::Single => ChatKind::Direct,
            ConversationType::Group => ChatKind::Group,
        };
        let unmentioned = chat == ChatKind::Group && !message.is_in_at_list;
        Envelope {
            id: message.msg_id.clone(),
            conversation: message.conversation_id.clone(),
            chat,
            sender: message.sender().to_owned(),
            sender_nick: message.sender_nick.clone(),
            text: message.question(),
            addressed: !(self.api.config().require_mention_in_groups && unmentioned),
        }
    }

    fn rebuild(&self, envelope: &Envelope) -> BotMessage {
        BotMessage {
            conversation_id: envelope.conversation.clone(),
            conversation_type: match envelope.chat {
                ChatKind::Direct => ConversationType::Single,
                ChatKind::Group => ConversationType::Group,
            },
            msg_id: envelope.id.clone(),
            msgtype: "text".to_owned(),
            text: Some(TextContent {
                content: envelope.text.clone(),
            }),
            robot_code: Some(self.account().to_owned()),
            sender_staff_id: envelope.sender.clone(),
            sender_id: envelope.sender.clone(),
            sender_union_id: None,
            sender_nick: envelope.sender_nick.clone(),
            is_in_at_list: envelope.addressed,
            session_webhook: None,
            session_webhook_expired_time: None,
        }
    }

    async fn receive(self: Arc<Self>, inbox: Inbox<BotMessage>, shutdown: watch::Receiver<bool>) {
        stream::run(&self.api, inbox, shutdown).await
    }

    fn no_card(&self, message: &BotMessage) -> Option<DingTalkError> {
        (message.conversation_type == ConversationType::Single && message.addressee() == Addressee::Unknown).then_some(
            DingTalkError::NoAddressee {
                api: "card/instances/createAndDeliver",
            },
        )
    }

    async fn open_card(&self, message: &BotMessage, card: &CardRef) -> Result<Opened, DingTalkError> {
        Ok(match self.api.create_and_deliver(&card.id, message).await? {
            CardCreation::Created => Opened::Created,
            CardCreation::AlreadyExisted => Opened::AlreadyExisted,
        })
    }

    async fn update_card(&self, card: &CardRef, update: Update<'_>) -> Result<(), DingTalkError> {
        let guid = format!("{}-{}-{}", card.id, card.attempt, update.seq);
        self.api.stream(&card.id, &guid, update.content, false, false).await
    }

    async fn finish_card(&self, card: &CardRef, content: &str, ending: Ending) -> Result<(), DingTalkError> {
        let guid = match ending {
            Ending::Abandoned => format!("{}-error", card.id),
            Ending::Finished | Ending::Failed => format!("{}-final", card.id),
        };
        self.api
            .stream(&card.id, &guid, content, true, ending != Ending::Finished)
            .await
    }

    async fn close_card(&self, card: &CardRef, state: CardState) -> Result<(), DingTalkError> {
        let status = match state {
            CardState::Finished => FlowStatus::Finished,
            CardState::Failed => FlowStatus::Failed,
        };
        self.api.set_flow_status(&card.id, status).await
    }

    /// Markdown through the sessionWebhook while it is valid and not throttled, else the robot send API
    /// (its throttles retried under the budget).
    async fn send_text(
        &self,
        message: &BotMessage,
        text: &str,
        retry: Retrier<'_>,
    ) -> Result<&'static str, DeliveryError<DingTalkError>> {
        let title: String = message.question().chars().take(20).collect();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let webhook_valid = message.session_webhook_expired_time.is_some_and(|t| t > now_ms + 5_000);
        if let (Some(webhook), true) = (&message.session_webhook, webhook_valid) {
            if self.webhook_pause.active() {
                tracing::info!("the robot's sessionWebhook messages are throttled; using the robot send API");
            } else {
                match self
                    .api
                    .webhook_markdown(webhook, &title, text, &message.sender_staff_id)
                    .await
                {
                    Ok(()) => return Ok("sessionWebhook"),
                    Err(err) if err.is_throttle() => {
                        self.webhook_pause.start();
                        tracing::warn!(cause = %err, pause_secs = WEBHOOK_PAUSE.as_secs(), "the platform throttles the robot's sessionWebhook messages; using the robot send API meanwhile");
                    }
                    Err(err) => tracing::warn!(cause = %err, "sessionWebhook failed; trying the robot send API"),
                }
            }
        }
        retry.run(|| self.api.robot_markdown(message, &title, text)).await?;
        Ok("robot send API")
    }

    async fn escalate(&self, to: &str, summary: &str) -> Result<(), DingTalkError> {
        self.api.robot_markdown_to(to, "Escalation", summary).await
    }
}
