//! The emulator's own control surface, under `/_emulator`: simulated users posting messages and events,
//! redelivery, the callback URL (URL mode), fault injection, read-back of conversations, messages and
//! streams (final content and update history), a change feed to await, and the HTML page. None of it is
//! part of the WeCom protocol.
//!
//! | Route | What |
//! |---|---|
//! | `GET /_emulator` | the page |
//! | `GET /_emulator/api/state` | [`StateView`]: version, mode, stats, faults, connections, conversations, messages, streams |
//! | `GET /_emulator/api/conversations/{chatid}` | one [`Conversation`] |
//! | `GET /_emulator/api/messages/{msgid}` | one [`MessageRecord`] |
//! | `GET /_emulator/api/streams/{id}` | one [`StreamRecord`] with its update history |
//! | `POST /_emulator/api/messages` | [`UserMessage`] → [`PostedMessage`] |
//! | `POST /_emulator/api/events` | [`UserEvent`] → [`PostedMessage`] |
//! | `POST /_emulator/api/messages/{msgid}/redeliver` | push it again, same `msgid` and body |
//! | `POST /_emulator/api/callback` | `{"url": "http://…"}` verifies the URL and switches to URL mode; `{"url": null}` back |
//! | `POST /_emulator/api/faults` | [`FaultCommand`] → `{"affected": n}` |
//! | `GET /_emulator/api/wait?after=V&timeout_ms=T` | returns `{"version"}` once the version passes V (or T ms pass) |

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::callback::set_callback;
use super::world::{
    ChatType, Conversation, Faults, MessageRecord, MessageState, Outbound, ReplyFailures, Shared, Stats, StreamRecord,
    World,
};
use super::EmulatorError;
use crate::control::WaitQuery;
use crate::fault::FractionFault;
use crate::ids::{hex, now_ms};

/// A simulated user's text message.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct UserMessage {
    /// `single` (1:1 with the robot) or `group`.
    pub chattype: ChatType,
    /// The group's `chatid` (required for groups; a 1:1 chat is the user's id).
    #[serde(default)]
    pub chatid: Option<String>,
    /// The sender's `userid`.
    pub userid: String,
    pub text: String,
    /// The group message @-mentions the robot: only those are pushed (1:1 messages always are). Default true.
    #[serde(default = "yes")]
    pub at_bot: bool,
}

fn yes() -> bool {
    true
}

impl UserMessage {
    /// `text` from `user` in their 1:1 chat with the robot.
    pub fn single(user: &str, text: &str) -> Self {
        Self {
            chattype: ChatType::Single,
            chatid: None,
            userid: user.to_owned(),
            text: text.to_owned(),
            at_bot: true,
        }
    }

    /// `text` from `user` in group `chatid`, @-mentioning the robot.
    pub fn group(chatid: &str, user: &str, text: &str) -> Self {
        Self {
            chattype: ChatType::Group,
            chatid: Some(chatid.to_owned()),
            ..Self::single(user, text)
        }
    }
}

/// A simulated user's event (§4.3).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct UserEvent {
    /// `enter_chat`, `template_card_event` or `feedback_event`.
    pub eventtype: String,
    pub userid: String,
    /// `single` unless given.
    #[serde(default)]
    pub chattype: Option<ChatType>,
    #[serde(default)]
    pub chatid: Option<String>,
    /// Extra fields of `event` (`event_key`, `task_id`, feedback `id`, `type`…).
    #[serde(default)]
    pub fields: serde_json::Map<String, Value>,
}

/// What happened to a posted message or event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PostedMessage {
    pub msgid: String,
    pub chatid: String,
    /// `queued` (pushed as soon as the robot is reachable), `held`, `refused` or `not_for_robot`.
    pub state: String,
    pub response_url: String,
}

/// A fault to inject, as `{"kind": …}` JSON.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultCommand {
    /// Close every long connection (or only `connection`) without a notice.
    Disconnect {
        #[serde(default)]
        connection: Option<u64>,
    },
    /// Turn connections into zombies: WebSocket pings still get pongs, but no frame is delivered.
    Zombie {
        #[serde(default)]
        connection: Option<u64>,
    },
    /// Silence connections, as a path that died without a FIN: nothing is read or written, no pongs.
    Silence {
        #[serde(default)]
        connection: Option<u64>,
    },
    /// Refuse `fraction` of `aibot_respond_msg` calls with `errcode` (for example 6000, a conflict).
    ReplyFailures { fraction: f64, errcode: i64 },
    /// Push `fraction` of messages twice at once.
    DuplicatePushes { fraction: f64 },
    /// Leave `ping` requests unanswered (true) or answer them again (false).
    DropPingAcks { drop: bool },
    /// Delay every reply and send acknowledgement by `millis`.
    Slow { millis: u64 },
    /// Expire every open stream now.
    ExpireStreams,
    /// Expire every `response_url` now.
    ExpireResponseUrls,
    /// Switch every fault off (does not revive zombies).
    Clear,
}

/// One live long connection.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionView {
    pub id: u64,
    pub subscribed: bool,
    pub active: bool,
    pub zombie: bool,
    pub silent: bool,
    pub opened_ms: u64,
}

/// Everything the page shows.
#[derive(Debug, Clone, Serialize)]
pub struct StateView {
    pub version: u64,
    pub bot_id: String,
    /// `long_connection` or `callback`.
    pub mode: String,
    pub callback_url: Option<String>,
    pub stats: Stats,
    pub faults: Faults,
    pub connections: Vec<ConnectionView>,
    pub conversations: Vec<Conversation>,
    pub messages: Vec<MessageRecord>,
    pub streams: Vec<StreamRecord>,
}

impl World {
    pub(crate) fn state_view(&self, version: u64, bot_id: &str) -> StateView {
        StateView {
            version,
            bot_id: bot_id.to_owned(),
            mode: if self.callback_url.is_some() {
                "callback"
            } else {
                "long_connection"
            }
            .to_owned(),
            callback_url: self.callback_url.clone(),
            stats: self.stats(),
            faults: self.faults.clone(),
            connections: self
                .connections
                .iter()
                .map(|(id, c)| ConnectionView {
                    id: *id,
                    subscribed: c.subscribed,
                    active: self.active == Some(*id),
                    zombie: c.zombie,
                    silent: c.silent,
                    opened_ms: c.opened_ms,
                })
                .collect(),
            conversations: self.conversations.clone(),
            messages: self.messages.clone(),
            streams: self.streams.values().cloned().collect(),
        }
    }
}

/// What a new message or event is, before it is recorded.
struct Draft {
    chattype: ChatType,
    chatid: String,
    userid: String,
    text: String,
    eventtype: Option<String>,
    /// Pushed at all (a group message must @-mention the robot).
    for_robot: bool,
    /// The body's own part: `{"msgtype":"text","text":{…}}` or `{"msgtype":"event","event":{…}}`.
    content: serde_json::Map<String, Value>,
}

impl Shared {
    /// Post a simulated user's message; it is pushed when the platform would push it.
    pub(crate) fn post_message(&self, message: UserMessage) -> Result<PostedMessage, EmulatorError> {
        let text = message.text.clone();
        if text.is_empty() {
            return Err(EmulatorError::InvalidRequest("`text` must not be empty".to_owned()));
        }
        // In groups the text carries the @mention (§4.1).
        let shown = match message.chattype {
            ChatType::Group if message.at_bot => format!("@{} {text}", self.config.bot_name),
            _ => text.clone(),
        };
        let mut content = serde_json::Map::new();
        content.insert("msgtype".to_owned(), json!("text"));
        content.insert("text".to_owned(), json!({ "content": shown }));
        self.post(Draft {
            chattype: message.chattype,
            chatid: chat_of(message.chattype, message.chatid, &message.userid)?,
            userid: message.userid,
            text,
            eventtype: None,
            for_robot: message.chattype == ChatType::Single || message.at_bot,
            content,
        })
    }

    /// Post a simulated user's event.
    pub(crate) fn post_event(&self, event: UserEvent) -> Result<PostedMessage, EmulatorError> {
        if !matches!(
            event.eventtype.as_str(),
            "enter_chat" | "template_card_event" | "feedback_event"
        ) {
            return Err(EmulatorError::InvalidRequest(format!(
                "`eventtype` must be enter_chat, template_card_event or feedback_event, not {:?}",
                event.eventtype
            )));
        }
        let chattype = event.chattype.unwrap_or(ChatType::Single);
        let mut fields = event.fields;
        fields.insert("eventtype".to_owned(), json!(event.eventtype));
        let mut content = serde_json::Map::new();
        content.insert("msgtype".to_owned(), json!("event"));
        content.insert("event".to_owned(), Value::Object(fields));
        self.post(Draft {
            chattype,
            chatid: chat_of(chattype, event.chatid, &event.userid)?,
            userid: event.userid,
            text: event.eventtype.clone(),
            eventtype: Some(event.eventtype),
            for_robot: true,
            content,
        })
    }

    fn post(&self, draft: Draft) -> Result<PostedMessage, EmulatorError> {
        if draft.userid.trim().is_empty() {
            return Err(EmulatorError::InvalidRequest("`userid` must not be empty".to_owned()));
        }
        let addr = self.addr;
        let posted = self.with(|world, config| {
            if world.messages.len() >= config.max_messages {
                return Err(EmulatorError::InvalidRequest(format!(
                    "the emulator holds {} messages, its limit; restart it",
                    config.max_messages
                )));
            }
            world
                .conversation_entry(&draft.chatid, draft.chattype)
                .map_err(EmulatorError::InvalidRequest)?;
            let msgid = format!("{}{}", hex(24), now_ms() % 1000);
            let code = hex(32);
            let response_url = format!("http://{addr}/cgi-bin/aibot/response?response_code={code}");
            let mut body = serde_json::Map::new();
            body.insert("msgid".to_owned(), json!(msgid));
            body.insert("create_time".to_owned(), json!(now_ms() / 1000));
            body.insert("aibotid".to_owned(), json!(config.bot_id));
            if draft.chattype == ChatType::Group {
                body.insert("chatid".to_owned(), json!(draft.chatid));
            }
            body.insert("chattype".to_owned(), json!(draft.chattype.wire()));
            body.insert("from".to_owned(), json!({ "userid": draft.userid }));
            if draft.eventtype.is_none() {
                body.insert("response_url".to_owned(), json!(response_url));
            }
            body.extend(draft.content);
            let state = if !draft.for_robot {
                MessageState::NotForRobot
            } else if draft.eventtype.is_some() {
                MessageState::Queued
            } else {
                world.admission(config, &draft.userid)
            };
            world.insert_message(
                MessageRecord {
                    msgid: msgid.clone(),
                    chatid: draft.chatid.clone(),
                    chattype: draft.chattype,
                    userid: draft.userid,
                    msgtype: if draft.eventtype.is_some() { "event" } else { "text" }.to_owned(),
                    text: draft.text,
                    eventtype: draft.eventtype,
                    state,
                    created_ms: now_ms(),
                    transport: None,
                    pushes: 0,
                    req_ids: Vec::new(),
                    stream_ids: Vec::new(),
                    response_url: response_url.clone(),
                    errors: Vec::new(),
                    body: Value::Object(body),
                    sent_at: Instant::now(),
                },
                code,
            );
            Ok(PostedMessage {
                msgid,
                chatid: draft.chatid,
                state: serde_json::to_value(state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                response_url,
            })
        })?;
        self.wake.notify_one();
        Ok(posted)
    }

    /// Push message `msgid` again, with the same body.
    pub(crate) fn redeliver(&self, msgid: &str) -> Result<(), EmulatorError> {
        self.with(|world, _| world.redeliver(msgid))
            .map_err(EmulatorError::InvalidRequest)?;
        self.wake.notify_one();
        Ok(())
    }

    /// Apply a fault command; returns how many connections (or 1 for switches) it touched.
    pub(crate) fn apply_fault(&self, command: FaultCommand) -> Result<usize, EmulatorError> {
        tracing::info!(?command, "fault injected");
        let invalid = EmulatorError::InvalidRequest;
        let affected = self.with(|world, _| match command {
            FaultCommand::Disconnect { connection } => {
                let mut n = 0;
                for (id, c) in &world.connections {
                    if connection.is_none_or(|want| want == *id) {
                        c.close.notify_one();
                        n += 1;
                    }
                }
                Ok(n)
            }
            FaultCommand::Zombie { connection } => {
                let mut n = 0;
                for (id, c) in world.connections.iter_mut() {
                    if connection.is_none_or(|want| want == *id) && !c.zombie {
                        c.zombie = true;
                        n += 1;
                    }
                }
                Ok(n)
            }
            FaultCommand::Silence { connection } => {
                let mut n = 0;
                for (id, c) in world.connections.iter_mut() {
                    if connection.is_none_or(|want| want == *id) && !c.silent {
                        c.silent = true;
                        c.send(Outbound::Silence);
                        n += 1;
                    }
                }
                Ok(n)
            }
            FaultCommand::ReplyFailures { fraction, errcode } => {
                world.faults.reply_failures = FractionFault::checked(fraction, 200)
                    .map_err(invalid)?
                    .map(|fault| ReplyFailures { fault, errcode });
                Ok(1)
            }
            FaultCommand::DuplicatePushes { fraction } => {
                world.faults.duplicate_pushes = FractionFault::checked(fraction, 200).map_err(invalid)?;
                Ok(1)
            }
            FaultCommand::DropPingAcks { drop } => {
                world.faults.drop_ping_acks = drop;
                Ok(1)
            }
            FaultCommand::Slow { millis } => {
                world.faults.slow_ms = millis.min(60_000);
                Ok(1)
            }
            FaultCommand::ExpireStreams => {
                let mut n = 0;
                for stream in world.streams.values_mut() {
                    if stream.status == super::world::StreamStatus::Open {
                        stream.status = super::world::StreamStatus::Expired;
                        stream.next_refresh = None;
                        n += 1;
                    }
                }
                world.stats.streams_expired += n as u64;
                Ok(n)
            }
            FaultCommand::ExpireResponseUrls => {
                let past = Instant::now()
                    .checked_sub(Duration::from_secs(366 * 24 * 3600))
                    .unwrap_or_else(Instant::now);
                for code in world.response_codes.values_mut() {
                    code.issued = past;
                }
                Ok(world.response_codes.len())
            }
            FaultCommand::Clear => {
                world.faults = Faults::default();
                Ok(1)
            }
        })?;
        self.wake.notify_one();
        Ok(affected)
    }
}

/// The conversation of a message: the group's id, or the user's own id for a 1:1 chat.
fn chat_of(chattype: ChatType, chatid: Option<String>, userid: &str) -> Result<String, EmulatorError> {
    match chattype {
        ChatType::Single => Ok(userid.to_owned()),
        ChatType::Group => chatid
            .filter(|id| !id.trim().is_empty())
            .ok_or_else(|| EmulatorError::InvalidRequest("a group message needs `chatid`".to_owned())),
    }
}

/// `GET /_emulator`.
pub(crate) async fn page() -> Response {
    crate::control::page(include_str!("page.html"))
}

/// `GET /_emulator/api/state`.
pub(crate) async fn state(State(shared): State<Arc<Shared>>) -> Json<StateView> {
    let version = shared.state.version();
    Json(shared.read(|world| world.state_view(version, &shared.config.bot_id)))
}

/// `GET /_emulator/api/conversations/{chatid}`.
pub(crate) async fn conversation(
    State(shared): State<Arc<Shared>>,
    Path(chatid): Path<String>,
) -> Result<Json<Conversation>, EmulatorError> {
    crate::control::found(shared.read(|world| world.conversation(&chatid).cloned()), || {
        format!("conversation {chatid}")
    })
}

/// `GET /_emulator/api/messages/{msgid}`.
pub(crate) async fn message(
    State(shared): State<Arc<Shared>>,
    Path(msgid): Path<String>,
) -> Result<Json<MessageRecord>, EmulatorError> {
    crate::control::found(shared.read(|world| world.message(&msgid).cloned()), || {
        format!("message {msgid}")
    })
}

/// `GET /_emulator/api/streams/{id}`.
pub(crate) async fn stream(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<StreamRecord>, EmulatorError> {
    crate::control::found(shared.read(|world| world.stream(&id).cloned()), || {
        format!("stream {id}")
    })
}

/// `POST /_emulator/api/messages`.
pub(crate) async fn post_message(
    State(shared): State<Arc<Shared>>,
    Json(message): Json<UserMessage>,
) -> Result<Json<PostedMessage>, EmulatorError> {
    shared.post_message(message).map(Json)
}

/// `POST /_emulator/api/events`.
pub(crate) async fn post_event(
    State(shared): State<Arc<Shared>>,
    Json(event): Json<UserEvent>,
) -> Result<Json<PostedMessage>, EmulatorError> {
    shared.post_event(event).map(Json)
}

/// `POST /_emulator/api/messages/{msgid}/redeliver`.
pub(crate) async fn redeliver(
    State(shared): State<Arc<Shared>>,
    Path(msgid): Path<String>,
) -> Result<Json<Value>, EmulatorError> {
    shared.redeliver(&msgid).map(|()| Json(json!({"ok": true})))
}

/// Body of `POST /_emulator/api/callback`.
#[derive(Debug, Deserialize)]
pub(crate) struct CallbackRequest {
    #[serde(default)]
    url: Option<String>,
}

/// `POST /_emulator/api/callback`.
pub(crate) async fn callback(
    State(shared): State<Arc<Shared>>,
    Json(request): Json<CallbackRequest>,
) -> Result<Json<Value>, EmulatorError> {
    set_callback(&shared, request.url).await?;
    Ok(Json(json!({"ok": true})))
}

/// `POST /_emulator/api/faults`.
pub(crate) async fn fault(
    State(shared): State<Arc<Shared>>,
    Json(command): Json<FaultCommand>,
) -> Result<Json<Value>, EmulatorError> {
    shared.apply_fault(command).map(crate::control::affected)
}

/// `GET /_emulator/api/wait?after=V&timeout_ms=T`.
pub(crate) async fn wait(State(shared): State<Arc<Shared>>, Query(query): Query<WaitQuery>) -> Json<Value> {
    crate::control::wait(&shared.state, query).await
}

/// Query of the `response_url`.
#[derive(Debug, Deserialize)]
pub(crate) struct ResponseQuery {
    #[serde(default)]
    response_code: String,
}

/// `POST /cgi-bin/aibot/response?response_code=…` (§6.1): plain JSON, one use, one hour.
pub(crate) async fn response_url(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<ResponseQuery>,
    body: axum::body::Bytes,
) -> Json<Value> {
    let outcome = match serde_json::from_slice::<Value>(&body) {
        Ok(body) => {
            shared.with(|world, config| world.use_response_url(config, &query.response_code, &body, Instant::now()))
        }
        Err(err) => Err(super::world::Refusal::new(
            shared.config.errcodes.invalid_request,
            format!("invalid JSON body: {err}"),
        )),
    };
    shared.wake.notify_one();
    Json(match outcome {
        Ok(()) => json!({"errcode": 0, "errmsg": "ok"}),
        Err(refusal) => json!({"errcode": refusal.errcode, "errmsg": refusal.errmsg}),
    })
}
