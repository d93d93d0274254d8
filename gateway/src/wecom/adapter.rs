//! [`WeCom`]: the WeCom adapter of the IM core. A card is a WeCom stream (`stream.id` = the card id): the
//! core's updates are full snapshots, its final frame the snapshot with `finish: true`. Both transports
//! share everything here (the stream table, the deadline, the errors); they differ only in how a snapshot
//! reaches the platform:
//! - long connection (`longconn`): `aibot_respond_msg` frames with the push's `req_id`, each acknowledged;
//!   plain text through `aibot_send_msg` (or the message's `response_url` while the socket is down);
//! - URL mode (`callback`): the snapshot waits in the stream table until WeCom's next refresh callback
//!   collects it; plain text through the message's `response_url`.
//!
//! A stream is written only until the message's deadline ([`WeComConfig::stream_deadline_secs`] after the
//! user sent it; the platform stops at 6 minutes): past it stream calls fail at once and the core sends
//! the rest of the answer as a message. A stream finished once is not finished again: a repeated finish
//! the platform refuses as expired (846608) counts as done when this process sent the finish before, or
//! when an earlier run may have (a resumed answer within the deadline).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::callback::{Callback, Served};
use super::config::{Mode, WeComConfig};
use super::longconn::{self, Link};
use super::message::{cmd, markdown_body, req_id, WeComMessage};
use super::streams::Streams;
pub use super::streams::{WeComError, CONFLICT, STREAM_EXPIRED, UNKNOWN_REQ_ID};
use crate::db::now_ms;
use crate::im::adapter::{Adapter, CardRef, CardState, ChatKind, Ending, Envelope, Inbox, Opened, Update};
use crate::im::platform_config::ConfigError;
use crate::im::retry::{DeliveryError, Retrier};
use crate::im::settings::Settings;
use crate::im::start::Platform;
use crate::platform::PlatformHealth;

/// The transport's half of the adapter.
pub(crate) enum Transport {
    LongConnection(Link),
    Callback(Arc<Callback>),
}

/// The WeCom adapter: one robot's transport, its streams and settings.
pub struct WeCom {
    pub(crate) config: WeComConfig,
    settings: Settings,
    pub(crate) health: Arc<PlatformHealth>,
    pub(crate) streams: Arc<Streams>,
    pub(crate) transport: Transport,
    http: reqwest::Client,
}

impl WeCom {
    /// URL mode's callback handler state (mounted at `/im/wecom/callback`); `None` on the long connection.
    pub fn callback(&self) -> Option<Arc<Callback>> {
        match &self.transport {
            Transport::Callback(callback) => Some(callback.clone()),
            Transport::LongConnection(_) => None,
        }
    }

    pub(crate) fn deadline(&self) -> Duration {
        Duration::from_secs(self.config.stream_deadline_secs)
    }

    /// The stream `id`'s message and lock, once it is known and its deadline has not passed.
    fn target(&self, id: &str) -> Result<(Arc<WeComMessage>, Arc<tokio::sync::Mutex<()>>), WeComError> {
        self.streams.with(|table| match table.get(id) {
            None => Err(WeComError::UnknownStream(id.to_owned())),
            Some(t) if now_ms() > t.deadline_ms => Err(WeComError::PastDeadline),
            Some(t) => Ok((t.message.clone(), t.lock.clone())),
        })
    }

    /// Send snapshot `content` of stream `id` (finished when `finish`) by the transport.
    async fn snapshot(&self, id: &str, content: &str, finish: bool) -> Result<(), WeComError> {
        let (message, lock) = self.target(id)?;
        let _order = lock.lock().await;
        self.streams.with(|table| {
            if let Some(t) = table.get_mut(id) {
                t.content = content.to_owned();
                t.finish |= finish;
                t.last_sent = Instant::now();
            }
        });
        match &self.transport {
            Transport::LongConnection(link) => {
                let req_id = message
                    .req_id
                    .as_deref()
                    .ok_or(WeComError::UnknownStream(id.to_owned()))?;
                let body = super::message::stream_body(id, content, finish);
                let sent = link.request(cmd::RESPOND_MSG, req_id.to_owned(), Some(body)).await;
                // A finish that went out may have been applied even when its acknowledgement was lost.
                if finish && !matches!(sent, Err(WeComError::NotConnected(_))) {
                    self.streams
                        .with(|table| table.get_mut(id).map(|t| t.finish_sent = true));
                }
                sent
            }
            Transport::Callback(callback) => {
                if finish {
                    callback
                        .await_collected(&self.streams, id, self.settings.retry_bound)
                        .await
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Repeat the last snapshot of every open stream idle for [`WeComConfig::keepalive_secs`] (long
    /// connection), until `shutdown` turns true.
    pub(crate) async fn keep_streams_alive(&self, mut shutdown: watch::Receiver<bool>) {
        let every = self.config.keepalive();
        let tick = (every / 6).max(Duration::from_millis(200));
        loop {
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                _ = shutdown.changed() => return,
            }
            let now = now_ms();
            let idle: Vec<(String, String)> = self.streams.with(|table| {
                table
                    .iter()
                    .filter(|(_, t)| !t.finish && t.deadline_ms > now && t.last_sent.elapsed() >= every)
                    .map(|(id, t)| (id.clone(), t.content.clone()))
                    .collect()
            });
            for (id, content) in idle {
                match self.snapshot(&id, &content, false).await {
                    Ok(()) => tracing::debug!(stream = %id, "idle stream kept alive"),
                    Err(err) => tracing::info!(stream = %id, cause = %err, "cannot keep an idle stream alive"),
                }
            }
        }
    }

    /// POST `text` as markdown to the message's one-shot `response_url`.
    async fn post_response_url(&self, message: &WeComMessage, text: &str) -> Result<(), WeComError> {
        let url = message
            .response_url
            .as_deref()
            .filter(|u| !u.is_empty())
            .ok_or(WeComError::Unsupported("the message has no response_url"))?;
        let response = self
            .http
            .post(url)
            .json(&markdown_body(None, text))
            .send()
            .await
            .map_err(|err| WeComError::Http(err.to_string()))?;
        if !response.status().is_success() {
            return Err(WeComError::Http(format!("HTTP {}", response.status())));
        }
        let answer: serde_json::Value = response.json().await.map_err(|err| WeComError::Http(err.to_string()))?;
        match answer.get("errcode").and_then(serde_json::Value::as_i64).unwrap_or(0) {
            0 => Ok(()),
            errcode => Err(WeComError::Platform {
                call: "response_url",
                errcode,
                errmsg: answer["errmsg"].as_str().unwrap_or_default().to_owned(),
            }),
        }
    }

    /// As much of `text` as one message takes (a `response_url` is used once).
    fn first_piece(&self, text: &str) -> String {
        let (max, tables) = (self.settings.cards.max_bytes, self.settings.cards.max_tables);
        crate::im::split::card_end(text, 0, max, tables).map_or_else(
            || text.to_owned(),
            |end| crate::im::split::card_text(text, 0, Some(end), max),
        )
    }

    /// Cut `text` into messages of at most the snapshot limit.
    fn pieces(&self, text: &str) -> Vec<String> {
        let (max, tables) = (self.settings.cards.max_bytes, self.settings.cards.max_tables);
        let (mut pieces, mut start) = (Vec::new(), 0);
        while let Some(end) = crate::im::split::card_end(text, start, max, tables) {
            pieces.push(crate::im::split::card_text(text, start, Some(end), max));
            start = end;
        }
        let rest = crate::im::split::card_text(text, start, None, max);
        if !rest.trim().is_empty() || pieces.is_empty() {
            pieces.push(rest);
        }
        pieces
    }
}

impl Platform for WeCom {
    type Config = WeComConfig;

    fn validate(config: &WeComConfig) -> Result<(), ConfigError> {
        config.validate()
    }

    fn build(config: WeComConfig) -> Result<Self, WeComError> {
        let (transport, base) = match config.mode {
            Mode::LongConnection => (
                Transport::LongConnection(Link::new(config.ack_timeout())),
                config.ws_url.clone(),
            ),
            Mode::Callback => (
                Transport::Callback(Arc::new(
                    Callback::new(&config).map_err(|_| WeComError::Unsupported("invalid encoding_aes_key"))?,
                )),
                super::callback::PATH.to_owned(),
            ),
        };
        let http =
            crate::im::token::http_client(config.http_timeout_secs).map_err(|err| WeComError::Http(err.to_string()))?;
        Ok(Self {
            settings: config.settings(),
            health: Arc::new(PlatformHealth::new("wecom", base)),
            streams: Arc::new(Streams::default()),
            transport,
            http,
            config,
        })
    }
}

impl Adapter for WeCom {
    type Message = WeComMessage;
    type Error = WeComError;

    const PLATFORM: &'static str = "wecom";

    fn account(&self) -> &str {
        &self.config.bot_id
    }

    fn settings(&self) -> &Settings {
        &self.settings
    }

    fn health(&self) -> &Arc<PlatformHealth> {
        &self.health
    }

    fn envelope(&self, message: &WeComMessage) -> Envelope {
        Envelope {
            id: message.msgid.clone(),
            conversation: message.conversation().to_owned(),
            chat: if message.is_group() {
                ChatKind::Group
            } else {
                ChatKind::Direct
            },
            sender: message.from.userid.clone(),
            sender_nick: message.from.userid.clone(),
            text: message.question(),
            // WeCom pushes only group messages that @-mention the robot.
            addressed: true,
        }
    }

    fn rebuild(&self, envelope: &Envelope) -> WeComMessage {
        let group = envelope.chat == ChatKind::Group;
        WeComMessage {
            msgid: envelope.id.clone(),
            aibotid: self.config.bot_id.clone(),
            chatid: group.then(|| envelope.conversation.clone()),
            chattype: if group { "group" } else { "single" }.to_owned(),
            from: super::message::Sender {
                userid: envelope.sender.clone(),
            },
            create_time: None,
            response_url: None,
            msgtype: "text".to_owned(),
            text: Some(super::message::Content {
                content: envelope.text.clone(),
            }),
            voice: None,
            mixed: None,
            req_id: None,
            received_ms: now_ms(),
        }
    }

    /// A resumed answer streams into the stream an earlier run opened.
    fn resuming(&self, message: &WeComMessage) {
        self.streams.register(
            &crate::im::outbox::card_id(self.account(), &message.msgid),
            message,
            self.deadline(),
        );
    }

    async fn receive(self: Arc<Self>, inbox: Inbox<WeComMessage>, shutdown: watch::Receiver<bool>) {
        match &self.transport {
            Transport::LongConnection(_) => {
                let keepalive = {
                    let (adapter, shutdown) = (self.clone(), shutdown.clone());
                    tokio::spawn(async move { adapter.keep_streams_alive(shutdown).await })
                };
                if let Transport::LongConnection(link) = &self.transport {
                    longconn::run(link, &self.config, &self.health, inbox, shutdown).await;
                }
                let _ = keepalive.await;
            }
            Transport::Callback(callback) => {
                let served = Served {
                    streams: self.streams.clone(),
                    account: self.config.bot_id.clone(),
                    deadline: self.deadline(),
                };
                callback
                    .clone()
                    .serve(served, self.health.clone(), inbox, shutdown)
                    .await
            }
        }
    }

    fn no_card(&self, message: &WeComMessage) -> Option<WeComError> {
        (now_ms() > message.sent_ms() + self.deadline().as_millis() as i64).then_some(WeComError::PastDeadline)
    }

    async fn open_card(&self, message: &WeComMessage, card: &CardRef) -> Result<Opened, WeComError> {
        self.streams.register(&card.id, message, self.deadline());
        match &self.transport {
            // The official plugin's placeholder: a "thinking" block until the answer's first words.
            Transport::LongConnection(_) => self.snapshot(&card.id, "<think></think>", false).await?,
            // The passive reply to the message opened the first stream; a second cannot be opened.
            Transport::Callback(_) if card.number > 1 => {
                return Err(WeComError::Unsupported("URL mode answers a message with one stream"))
            }
            Transport::Callback(_) => self.target(&card.id).map(|_| ())?,
        }
        Ok(Opened::Created)
    }

    async fn update_card(&self, card: &CardRef, update: Update<'_>) -> Result<(), WeComError> {
        self.snapshot(&card.id, update.content, false).await
    }

    async fn finish_card(&self, card: &CardRef, content: &str, ending: Ending) -> Result<(), WeComError> {
        let sent_before = self.streams.with(|table| table.get(&card.id).map(|t| t.finish_sent));
        if sent_before.is_none() && ending == Ending::Abandoned {
            // A stream this process never knew (an owed mark after a restart): the answer went out as a
            // message, and the stream ends at its deadline by itself.
            return Ok(());
        }
        match self.snapshot(&card.id, content, true).await {
            Err(WeComError::Platform { errcode, .. })
                if errcode == STREAM_EXPIRED && (sent_before == Some(true) || card.attempt > 1) =>
            {
                tracing::info!(stream = %card.id, "the stream was finished before; not finishing it again");
                self.streams
                    .with(|table| table.get_mut(&card.id).map(|t| t.finish_sent = true));
                Ok(())
            }
            Err(WeComError::PastDeadline | WeComError::Platform { .. }) if ending == Ending::Abandoned => Ok(()),
            other => other,
        }
    }

    async fn close_card(&self, card: &CardRef, _state: CardState) -> Result<(), WeComError> {
        // The final frame says it all; the stream is forgotten.
        self.streams.with(|table| table.remove(&card.id));
        Ok(())
    }

    /// Long connection: `aibot_send_msg` markdown (cut at the snapshot limit), else the `response_url`;
    /// URL mode: the `response_url` (one use: the text is cut to one message).
    async fn send_text(
        &self,
        message: &WeComMessage,
        text: &str,
        retry: Retrier<'_>,
    ) -> Result<&'static str, DeliveryError<WeComError>> {
        match &self.transport {
            Transport::LongConnection(link) => {
                let mut pieces = 0;
                for piece in self.pieces(text) {
                    let body = markdown_body(Some(message.conversation()), &piece);
                    let sent = retry
                        .run(|| link.request(cmd::SEND_MSG, req_id(cmd::SEND_MSG), Some(body.clone())))
                        .await;
                    match sent {
                        Ok(()) => pieces += 1,
                        // Nothing went out yet, and the message has a response_url: the text goes there.
                        Err(err) if pieces == 0 && message.response_url.is_some() => {
                            tracing::warn!(cause = %err, "aibot_send_msg failed; using the message's response_url");
                            let text = self.first_piece(text);
                            retry.run(|| self.post_response_url(message, &text)).await?;
                            return Ok("response_url");
                        }
                        Err(err) => return Err(err),
                    }
                }
                Ok(cmd::SEND_MSG)
            }
            Transport::Callback(_) => {
                let text = self.first_piece(text);
                retry.run(|| self.post_response_url(message, &text)).await?;
                Ok("response_url")
            }
        }
    }

    async fn escalate(&self, to: &str, summary: &str) -> Result<(), WeComError> {
        match &self.transport {
            Transport::LongConnection(link) => {
                link.request(
                    cmd::SEND_MSG,
                    req_id(cmd::SEND_MSG),
                    Some(markdown_body(Some(to), summary)),
                )
                .await
            }
            Transport::Callback(_) => Err(WeComError::Unsupported(
                "URL mode cannot send a message outside a conversation",
            )),
        }
    }
}
