//! [`World`]: everything the emulated WeCom knows — long connections, messages and events with their
//! `req_id`s, streams with their update history, conversations, `response_url` codes, faults and
//! counters. It lives behind one lock ([`Watched`]) in [`Shared`]; every change bumps a version that
//! observers await.
//!
//! A message's life: posted by a simulated user (`queued`, or `held`/`refused` over the user's in-flight
//! limit) → pushed on the long connection or POSTed to the callback URL (`pushed`) → `answered` when a
//! stream finishes (or a card, media or `response_url` reply comes), `no_reply` when the robot passively
//! answers with nothing, or `expired` when [`EmulatorConfig::stream_ttl`] passes first. Only `queued` and
//! `pushed` messages count against the user's in-flight limit.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, Notify};

use super::config::{EmulatorConfig, InFlightOverflow, StreamExpiry};
use super::crypto::MsgCrypt;
use super::wire::{cmd, Headers, Push, ReplyBody, StreamReply};
use crate::fault::FractionFault;
use crate::ids::{hex, now_ms};
use crate::watched::Watched;

/// State shared by the HTTP handlers, the WebSocket connections and the driver.
pub(crate) struct Shared {
    pub config: EmulatorConfig,
    pub crypto: MsgCrypt,
    /// Where the emulator listens; base of `response_url`s.
    pub addr: SocketAddr,
    pub state: Watched<World>,
    /// Wakes the driver: a message was posted, a connection subscribed, a stream or the mode changed.
    pub wake: Notify,
    /// The URL-mode client. It ignores proxy variables: callback URLs are local.
    pub http: reqwest::Client,
}

impl Shared {
    /// Run `f` on the world, then tell observers something may have changed.
    pub fn with<T>(&self, f: impl FnOnce(&mut World, &EmulatorConfig) -> T) -> T {
        self.state.with(|world| f(world, &self.config))
    }

    /// Read the world without signalling a change.
    pub fn read<T>(&self, f: impl FnOnce(&World) -> T) -> T {
        self.state.read(f)
    }
}

/// A 1:1 chat with the robot, or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatType {
    Single,
    Group,
}

impl ChatType {
    /// The body's `chattype`.
    pub fn wire(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Group => "group",
        }
    }
}

/// How a message reached the robot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    LongConnection,
    Callback,
}

/// Where a message stands (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageState {
    /// A group message that does not @-mention the robot: never pushed.
    NotForRobot,
    /// Waiting for a connection (or a callback URL) to push it to.
    Queued,
    /// Over the user's in-flight limit, waiting for a slot.
    Held,
    /// Over the user's in-flight limit and refused.
    Refused,
    /// Pushed, awaiting its reply.
    Pushed,
    Answered,
    /// The robot's passive reply was empty.
    NoReply,
    Expired,
}

impl MessageState {
    /// Whether the message counts against its user's in-flight limit.
    pub fn in_flight(self) -> bool {
        matches!(self, Self::Queued | Self::Pushed)
    }
}

/// A reply the platform refused.
#[derive(Debug, Clone, Serialize)]
pub struct ReplyError {
    pub at_ms: u64,
    pub via: Via,
    pub errcode: i64,
    pub errmsg: String,
}

/// One user message or event.
#[derive(Debug, Clone, Serialize)]
pub struct MessageRecord {
    pub msgid: String,
    /// The conversation: the user's id for 1:1 chats, the group's `chatid` otherwise.
    pub chatid: String,
    pub chattype: ChatType,
    pub userid: String,
    /// `text`, or `event`.
    pub msgtype: String,
    /// The text as the user typed it (without the group @mention).
    pub text: String,
    /// The `eventtype` of an event.
    pub eventtype: Option<String>,
    pub state: MessageState,
    pub created_ms: u64,
    pub transport: Option<Transport>,
    /// Pushes so far (redeliveries and duplicates included).
    pub pushes: u32,
    /// The `req_id` of every long-connection push.
    pub req_ids: Vec<String>,
    /// Streams the robot opened for it.
    pub stream_ids: Vec<String>,
    pub response_url: String,
    /// Replies refused for it, newest last (the last 50).
    pub errors: Vec<ReplyError>,
    /// The body as pushed, the same on every redelivery.
    pub body: Value,
    /// When the platform accepted it (posted, or let out of the hold): the stream lifetime counts from here.
    #[serde(skip)]
    pub(crate) sent_at: Instant,
}

impl MessageRecord {
    pub(crate) fn is_event(&self) -> bool {
        self.eventtype.is_some()
    }

    pub(crate) fn refuse(&mut self, via: Via, refusal: &Refusal) {
        if self.errors.len() >= 50 {
            self.errors.remove(0);
        }
        self.errors.push(ReplyError {
            at_ms: now_ms(),
            via,
            errcode: refusal.errcode,
            errmsg: refusal.errmsg.clone(),
        });
    }
}

/// Where a stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamStatus {
    Open,
    Finished,
    Expired,
}

/// How a reply arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// `aibot_respond_msg` (and the welcome/update commands) on the long connection.
    RespondMsg,
    /// The HTTP answer to a message callback (URL mode).
    PassiveReply,
    /// The HTTP answer to a stream refresh callback (URL mode).
    RefreshReply,
    /// `aibot_send_msg`.
    SendMsg,
    /// A POST to the message's `response_url`.
    ResponseUrl,
}

/// One update of a stream, accepted or not.
#[derive(Debug, Clone, Serialize)]
pub struct StreamUpdate {
    pub at_ms: u64,
    pub via: Via,
    pub content: String,
    pub finish: bool,
    /// 0 when accepted.
    pub errcode: i64,
    pub errmsg: String,
}

/// One streamed answer, keyed by the robot's `stream.id`.
#[derive(Debug, Clone, Serialize)]
pub struct StreamRecord {
    pub id: String,
    pub msgid: String,
    pub transport: Transport,
    /// The latest accepted snapshot.
    pub content: String,
    pub finish: bool,
    pub status: StreamStatus,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Every update received, accepted or not.
    pub updates_total: u64,
    /// The last [`EmulatorConfig::max_stream_history`] updates, oldest first.
    pub updates: VecDeque<StreamUpdate>,
    pub feedback_id: Option<String>,
    /// Images of the final frame.
    pub msg_items: usize,
    /// Refresh callbacks POSTed for it (URL mode).
    pub refreshes: u64,
    #[serde(skip)]
    pub(crate) last_update: Instant,
    /// URL mode: when to POST the next refresh; `None` while one is out or once the stream is closed.
    #[serde(skip)]
    pub(crate) next_refresh: Option<Instant>,
}

/// One conversation, as the control API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Conversation {
    pub chatid: String,
    pub chattype: ChatType,
    pub entries: Vec<ChatEntry>,
}

/// One line of a conversation.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChatEntry {
    /// A simulated user wrote this.
    User {
        msgid: String,
        userid: String,
        text: String,
        at_ms: u64,
    },
    /// A simulated user caused this event.
    Event {
        msgid: String,
        userid: String,
        eventtype: String,
        at_ms: u64,
    },
    /// The robot opened this stream (its content is in the stream store).
    Stream {
        stream_id: String,
        msgid: String,
        at_ms: u64,
    },
    /// The robot sent something other than a stream.
    Robot {
        via: Via,
        msgtype: String,
        content: String,
        msgid: Option<String>,
        at_ms: u64,
    },
}

/// What the writer half of one WebSocket is told to do.
#[derive(Debug)]
pub(crate) enum Outbound {
    Text(String),
    Close,
    /// Stop reading and writing (a path that died without a FIN).
    Silence,
}

/// One live long connection.
pub(crate) struct Connection {
    /// The connection's writer, bounded by [`EmulatorConfig::outbound_queue`].
    pub tx: mpsc::Sender<Outbound>,
    /// Closes the connection at once (used when its writer queue is full).
    pub close: Arc<Notify>,
    pub subscribed: bool,
    /// Frames to it vanish (WebSocket pings are still answered).
    pub zombie: bool,
    pub silent: bool,
    pub opened_ms: u64,
}

impl Connection {
    /// Queue a frame; a connection whose queue is full is closed (it is not reading).
    pub fn send(&self, out: Outbound) -> bool {
        match self.tx.try_send(out) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!("a long connection fell too far behind; closing it");
                self.close.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// A `response_url` code.
pub(crate) struct ResponseCode {
    pub msgid: String,
    pub issued: Instant,
    pub used: bool,
}

/// `aibot_respond_msg` failures injected by [`FaultCommand::ReplyFailures`](super::FaultCommand).
#[derive(Debug, Clone, Serialize)]
pub struct ReplyFailures {
    #[serde(flatten)]
    pub fault: FractionFault,
    pub errcode: i64,
}

/// Faults currently switched on.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Faults {
    /// Refuses a fraction of `aibot_respond_msg` calls with an errcode.
    pub reply_failures: Option<ReplyFailures>,
    /// Pushes a fraction of messages twice at once (same `req_id` and body).
    pub duplicate_pushes: Option<FractionFault>,
    /// `ping` requests go unanswered.
    pub drop_ping_acks: bool,
    /// Every acknowledgement of a reply or send waits this long first.
    pub slow_ms: u64,
}

/// Counters, for tests and the page.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    pub connections_opened: u64,
    pub live_connections: usize,
    pub connections_refused: u64,
    pub subscribes_ok: u64,
    pub subscribes_refused: u64,
    /// Older connections replaced by a newer one (each got a `disconnected_event`).
    pub takeovers: u64,
    pub pings_acked: u64,
    pub pushes: u64,
    pub event_pushes: u64,
    pub redeliveries: u64,
    pub duplicate_pushes: u64,
    pub replies_accepted: u64,
    pub replies_refused: u64,
    pub unknown_req_ids: u64,
    pub sends: u64,
    pub callback_posts: u64,
    pub callback_failures: u64,
    pub refreshes: u64,
    pub verifications_ok: u64,
    pub verifications_failed: u64,
    pub response_urls_used: u64,
    pub response_urls_refused: u64,
    pub in_flight_refused: u64,
    pub streams_expired: u64,
    pub messages_expired: u64,
}

/// A refused reply: the errcode and errmsg the platform answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub errcode: i64,
    pub errmsg: String,
}

impl Refusal {
    pub fn new(errcode: i64, errmsg: impl Into<String>) -> Self {
        Self {
            errcode,
            errmsg: errmsg.into(),
        }
    }
}

/// A URL-mode POST the driver starts outside the lock.
#[derive(Debug)]
pub(crate) enum Job {
    /// A message or event callback; `attempt` 0 is the first.
    Push { msgid: String, body: String, attempt: u32 },
    /// A stream refresh callback.
    Refresh { stream_id: String, body: String },
}

/// What one driver tick leaves to do.
pub(crate) struct Tick {
    pub jobs: Vec<(String, Job)>,
    /// When something next falls due.
    pub next: Option<Instant>,
}

/// Everything the emulated platform knows.
#[derive(Default)]
pub struct World {
    pub(crate) connections: BTreeMap<u64, Connection>,
    pub(crate) next_connection: u64,
    /// The subscribed connection that holds the robot (one per robot).
    pub(crate) active: Option<u64>,
    pub(crate) messages: Vec<MessageRecord>,
    pub(crate) message_index: HashMap<String, usize>,
    /// `req_id` of every push → its msgid.
    pub(crate) req_ids: HashMap<String, String>,
    pub(crate) streams: BTreeMap<String, StreamRecord>,
    pub(crate) conversations: Vec<Conversation>,
    pub(crate) response_codes: HashMap<String, ResponseCode>,
    /// URL mode when set.
    pub(crate) callback_url: Option<String>,
    /// Failed URL-mode message callbacks to try again: (due, msgid, attempt).
    pub(crate) retries: Vec<(Instant, String, u32)>,
    /// Messages to POST again at once (redelivery on command, URL mode).
    pub(crate) redeliver_now: Vec<String>,
    pub(crate) faults: Faults,
    pub(crate) stats: Stats,
}

impl World {
    /// The message or event `msgid`.
    pub fn message(&self, msgid: &str) -> Option<&MessageRecord> {
        self.message_index.get(msgid).map(|i| &self.messages[*i])
    }

    pub(crate) fn message_mut(&mut self, msgid: &str) -> Option<&mut MessageRecord> {
        self.message_index.get(msgid).map(|i| &mut self.messages[*i])
    }

    /// Every message and event, in posting order.
    pub fn messages(&self) -> &[MessageRecord] {
        &self.messages
    }

    /// The stream `id`.
    pub fn stream(&self, id: &str) -> Option<&StreamRecord> {
        self.streams.get(id)
    }

    /// The conversation `chatid`.
    pub fn conversation(&self, chatid: &str) -> Option<&Conversation> {
        self.conversations.iter().find(|c| c.chatid == chatid)
    }

    /// The callback URL while in URL mode.
    pub fn callback_url(&self) -> Option<&str> {
        self.callback_url.as_deref()
    }

    /// Counters with the live gauges filled in.
    pub fn stats(&self) -> Stats {
        let mut stats = self.stats.clone();
        stats.live_connections = self.connections.values().filter(|c| !c.silent).count();
        stats
    }

    /// Whether a subscribed connection holds the robot.
    pub fn subscribed(&self) -> bool {
        self.active.is_some()
    }

    /// The conversation `chatid`, created on first use; an error when it exists with another type.
    pub(crate) fn conversation_entry(&mut self, chatid: &str, chattype: ChatType) -> Result<&mut Conversation, String> {
        let idx = match self.conversations.iter().position(|c| c.chatid == chatid) {
            Some(idx) if self.conversations[idx].chattype != chattype => {
                return Err(format!(
                    "`{chatid}` is already a {} chat",
                    self.conversations[idx].chattype.wire()
                ))
            }
            Some(idx) => idx,
            None => {
                self.conversations.push(Conversation {
                    chatid: chatid.to_owned(),
                    chattype,
                    entries: Vec::new(),
                });
                self.conversations.len() - 1
            }
        };
        Ok(&mut self.conversations[idx])
    }

    fn note(&mut self, chatid: &str, entry: ChatEntry) {
        if let Some(c) = self.conversations.iter_mut().find(|c| c.chatid == chatid) {
            c.entries.push(entry);
        }
    }

    /// Messages of `userid` awaiting a reply.
    fn in_flight(&self, userid: &str) -> usize {
        self.messages
            .iter()
            .filter(|m| !m.is_event() && m.userid == userid && m.state.in_flight())
            .count()
    }

    /// Whether a new message of `userid` may go out now.
    pub(crate) fn has_slot(&self, config: &EmulatorConfig, userid: &str) -> bool {
        config.max_in_flight_per_user == 0 || self.in_flight(userid) < config.max_in_flight_per_user
    }

    /// The state a new message of `userid` starts in.
    pub(crate) fn admission(&self, config: &EmulatorConfig, userid: &str) -> MessageState {
        if self.has_slot(config, userid) {
            MessageState::Queued
        } else {
            match config.in_flight_overflow {
                InFlightOverflow::Refuse => MessageState::Refused,
                InFlightOverflow::Hold => MessageState::Held,
            }
        }
    }

    /// Record a new message (already built) and its conversation line.
    pub(crate) fn insert_message(&mut self, record: MessageRecord, code: String) {
        let entry = match &record.eventtype {
            Some(eventtype) => ChatEntry::Event {
                msgid: record.msgid.clone(),
                userid: record.userid.clone(),
                eventtype: eventtype.clone(),
                at_ms: record.created_ms,
            },
            None => ChatEntry::User {
                msgid: record.msgid.clone(),
                userid: record.userid.clone(),
                text: record.text.clone(),
                at_ms: record.created_ms,
            },
        };
        let chatid = record.chatid.clone();
        if record.state == MessageState::Refused {
            self.stats.in_flight_refused += 1;
        }
        self.response_codes.insert(
            code,
            ResponseCode {
                msgid: record.msgid.clone(),
                issued: Instant::now(),
                used: false,
            },
        );
        self.message_index.insert(record.msgid.clone(), self.messages.len());
        self.messages.push(record);
        self.note(&chatid, entry);
    }

    /// Push message `idx` on the active long connection; false when there is none to push to.
    fn push_long(&mut self, idx: usize) -> bool {
        let Some(connection) = self.active.and_then(|id| self.connections.get(&id)) else {
            return false;
        };
        let message = &self.messages[idx];
        let req_id = format!(
            "{}_{}_{}",
            if message.is_event() { "event" } else { "msg" },
            now_ms(),
            hex(8)
        );
        let push = Push {
            cmd: if message.is_event() {
                cmd::EVENT_CALLBACK
            } else {
                cmd::MSG_CALLBACK
            },
            headers: Headers { req_id: req_id.clone() },
            body: &message.body,
        };
        let text = serde_json::to_string(&push).expect("pushes serialize");
        if !connection.send(Outbound::Text(text.clone())) {
            return false;
        }
        let duplicate = self.faults.duplicate_pushes.as_mut().is_some_and(|f| f.hit());
        if duplicate && connection.send(Outbound::Text(text)) {
            self.stats.duplicate_pushes += 1;
            tracing::info!(%req_id, "pushing a message twice (injected duplicate)");
        }
        let message = &mut self.messages[idx];
        message.req_ids.push(req_id.clone());
        message.pushes += 1;
        message.transport = Some(Transport::LongConnection);
        if message.is_event() {
            self.stats.event_pushes += 1;
        } else {
            self.stats.pushes += 1;
        }
        self.req_ids.insert(req_id, message.msgid.clone());
        true
    }

    /// A URL-mode push of message `idx`.
    fn push_callback(&mut self, idx: usize, attempt: u32) -> Job {
        let message = &mut self.messages[idx];
        message.pushes += 1;
        message.transport = Some(Transport::Callback);
        if message.is_event() {
            self.stats.event_pushes += 1;
        } else {
            self.stats.pushes += 1;
        }
        Job::Push {
            msgid: message.msgid.clone(),
            body: message.body.to_string(),
            attempt,
        }
    }

    /// Push message `msgid` again now, with the same body (redelivery on command).
    pub(crate) fn redeliver(&mut self, msgid: &str) -> Result<(), String> {
        let idx = *self
            .message_index
            .get(msgid)
            .ok_or_else(|| format!("no message {msgid}"))?;
        if self.messages[idx].pushes == 0 {
            return Err(format!("message {msgid} was never pushed"));
        }
        if self.callback_url.is_some() {
            self.redeliver_now.push(msgid.to_owned());
        } else if !self.push_long(idx) {
            return Err("no subscribed long connection to push to".to_owned());
        }
        self.stats.redeliveries += 1;
        Ok(())
    }

    /// When stream `stream` expires.
    fn stream_deadline(&self, stream: &StreamRecord, config: &EmulatorConfig) -> Instant {
        let sent_at = self.message(&stream.msgid).map_or(stream.last_update, |m| m.sent_at);
        match (stream.transport, config.stream_expiry) {
            (Transport::LongConnection, StreamExpiry::Inactivity) => stream.last_update + config.stream_ttl,
            _ => sent_at + config.stream_ttl,
        }
    }

    /// When message `m` (in flight, with no open stream) expires.
    fn message_deadline(m: &MessageRecord, config: &EmulatorConfig) -> Instant {
        if m.is_event() {
            m.sent_at + config.event_reply_window
        } else {
            m.sent_at + config.stream_ttl
        }
    }

    fn has_open_stream(&self, msgid: &str) -> bool {
        self.message(msgid).is_some_and(|m| {
            m.stream_ids
                .iter()
                .any(|id| self.streams.get(id).is_some_and(|s| s.status == StreamStatus::Open))
        })
    }

    /// Expire streams and messages whose time is up.
    pub(crate) fn expire(&mut self, now: Instant, config: &EmulatorConfig) {
        let due: Vec<String> = self
            .streams
            .values()
            .filter(|s| s.status == StreamStatus::Open && self.stream_deadline(s, config) <= now)
            .map(|s| s.id.clone())
            .collect();
        for id in due {
            let stream = self.streams.get_mut(&id).expect("listed above");
            stream.status = StreamStatus::Expired;
            stream.next_refresh = None;
            self.stats.streams_expired += 1;
            tracing::info!(stream = %id, "stream expired");
        }
        let due: Vec<usize> = (0..self.messages.len())
            .filter(|i| {
                let m = &self.messages[*i];
                m.state.in_flight() && !self.has_open_stream(&m.msgid) && Self::message_deadline(m, config) <= now
            })
            .collect();
        for idx in due {
            self.messages[idx].state = MessageState::Expired;
            self.stats.messages_expired += 1;
        }
    }

    /// Expire what is due, let held messages out, push queued ones, and collect the URL-mode POSTs due.
    pub(crate) fn tick(&mut self, now: Instant, config: &EmulatorConfig) -> Tick {
        self.expire(now, config);
        let mut jobs = Vec::new();
        // Held messages go out, oldest first, as their users' slots free up.
        for idx in 0..self.messages.len() {
            if self.messages[idx].state == MessageState::Held {
                let userid = self.messages[idx].userid.clone();
                if self.has_slot(config, &userid) {
                    let m = &mut self.messages[idx];
                    m.state = MessageState::Queued;
                    m.sent_at = now;
                }
            }
        }
        for idx in 0..self.messages.len() {
            if self.messages[idx].state != MessageState::Queued {
                continue;
            }
            if let Some(url) = self.callback_url.clone() {
                let job = self.push_callback(idx, 0);
                self.messages[idx].state = MessageState::Pushed;
                jobs.push((url, job));
            } else if self.push_long(idx) {
                self.messages[idx].state = MessageState::Pushed;
            }
        }
        if let Some(url) = self.callback_url.clone() {
            let (due, later): (Vec<_>, Vec<_>) = self.retries.drain(..).partition(|(at, _, _)| *at <= now);
            self.retries = later;
            for msgid in std::mem::take(&mut self.redeliver_now) {
                if let Some(idx) = self.message_index.get(&msgid).copied() {
                    jobs.push((url.clone(), self.push_callback(idx, 0)));
                }
            }
            for (_, msgid, attempt) in due {
                if let Some(idx) = self.message_index.get(&msgid).copied() {
                    if self.messages[idx].state == MessageState::Pushed {
                        jobs.push((url.clone(), self.push_callback(idx, attempt)));
                    }
                }
            }
            let refresh: Vec<String> = self
                .streams
                .values()
                .filter(|s| s.status == StreamStatus::Open && s.next_refresh.is_some_and(|at| at <= now))
                .map(|s| s.id.clone())
                .collect();
            for id in refresh {
                let stream = self.streams.get_mut(&id).expect("listed above");
                stream.next_refresh = None;
                stream.refreshes += 1;
                self.stats.refreshes += 1;
                let msgid = stream.msgid.clone();
                if let Some(body) = self.message(&msgid).map(|m| refresh_body(m, &id)) {
                    jobs.push((url.clone(), Job::Refresh { stream_id: id, body }));
                }
            }
        }
        Tick {
            jobs,
            next: self.next_deadline(config),
        }
    }

    fn next_deadline(&self, config: &EmulatorConfig) -> Option<Instant> {
        let streams = self
            .streams
            .values()
            .filter(|s| s.status == StreamStatus::Open)
            .flat_map(|s| [Some(self.stream_deadline(s, config)), s.next_refresh])
            .flatten();
        let messages = self
            .messages
            .iter()
            .filter(|m| m.state.in_flight() && !self.has_open_stream(&m.msgid))
            .map(|m| Self::message_deadline(m, config));
        let retries = self.retries.iter().map(|(at, _, _)| *at);
        streams.chain(messages).chain(retries).min()
    }

    /// Apply a reply to message `msgid`: a stream snapshot, a card, media or text.
    pub(crate) fn apply_reply(
        &mut self,
        config: &EmulatorConfig,
        msgid: &str,
        body: &ReplyBody,
        via: Via,
        now: Instant,
    ) -> Result<(), Refusal> {
        self.expire(now, config);
        let codes = &config.errcodes;
        let Some(message) = self.message(msgid) else {
            return Err(Refusal::new(codes.unknown_req_id, "invalid req_id"));
        };
        let (chatid, is_event) = (message.chatid.clone(), message.is_event());
        let outcome = match body.stream() {
            Some(stream) if !is_event => self.apply_stream(config, msgid, stream, via, now),
            _ => self.apply_other(config, msgid, body, via),
        };
        match &outcome {
            Ok(()) => self.stats.replies_accepted += 1,
            Err(refusal) => {
                self.stats.replies_refused += 1;
                if let Some(m) = self.message_mut(msgid) {
                    m.refuse(via, refusal);
                }
                tracing::info!(%msgid, %chatid, errcode = refusal.errcode, errmsg = %refusal.errmsg, "reply refused");
            }
        }
        outcome
    }

    fn apply_other(&mut self, config: &EmulatorConfig, msgid: &str, body: &ReplyBody, via: Via) -> Result<(), Refusal> {
        let codes = &config.errcodes;
        let message = self.message(msgid).expect("checked by the caller");
        let allowed = match (message.eventtype.as_deref(), body) {
            (Some("enter_chat"), ReplyBody::Text { .. } | ReplyBody::TemplateCard { .. }) => true,
            (Some("template_card_event"), ReplyBody::TemplateCard { .. }) => true,
            (Some(_), _) => false,
            (None, ReplyBody::Text { .. } | ReplyBody::Markdown { .. }) => false,
            (None, _) => true,
        };
        if !allowed {
            return Err(Refusal::new(
                codes.invalid_request,
                format!("msgtype {} is not a reply to this {}", body.msgtype(), message.msgtype),
            ));
        }
        if message.state == MessageState::Expired {
            return Err(Refusal::new(codes.stream_expired, "reply window expired"));
        }
        if let ReplyBody::Text { text } = body {
            if text.content.len() > config.max_content_bytes {
                return Err(too_long(config, text.content.len()));
            }
        }
        let chatid = message.chatid.clone();
        let m = self.message_mut(msgid).expect("checked by the caller");
        if m.state.in_flight() {
            m.state = MessageState::Answered;
        }
        self.record_robot(&chatid, via, body, Some(msgid.to_owned()));
        Ok(())
    }

    /// A conversation line for something the robot sent other than a stream.
    pub(crate) fn record_robot(&mut self, chatid: &str, via: Via, body: &ReplyBody, msgid: Option<String>) {
        self.note(
            chatid,
            ChatEntry::Robot {
                via,
                msgtype: body.msgtype().to_owned(),
                content: body.shown(),
                msgid,
                at_ms: now_ms(),
            },
        );
    }

    fn apply_stream(
        &mut self,
        config: &EmulatorConfig,
        msgid: &str,
        reply: &StreamReply,
        via: Via,
        now: Instant,
    ) -> Result<(), Refusal> {
        let codes = &config.errcodes;
        let id = reply.id.trim();
        if id.is_empty() {
            return Err(Refusal::new(codes.invalid_request, "stream.id is required"));
        }
        let content = reply.content.clone().unwrap_or_default();
        let update = |errcode: i64, errmsg: &str| StreamUpdate {
            at_ms: now_ms(),
            via,
            content: content.clone(),
            finish: reply.finish,
            errcode,
            errmsg: errmsg.to_owned(),
        };
        let refusal = if content.len() > config.max_content_bytes {
            Some(too_long(config, content.len()))
        } else if !reply.msg_item.is_empty() && !reply.finish {
            Some(Refusal::new(
                codes.invalid_request,
                "stream.msg_item is allowed only with finish",
            ))
        } else if reply.msg_item.len() > 10 {
            Some(Refusal::new(
                codes.invalid_request,
                "stream.msg_item holds at most 10 images",
            ))
        } else {
            None
        };
        let history = config.max_stream_history;
        if let Some(stream) = self.streams.get_mut(id) {
            if stream.msgid != msgid {
                return Err(Refusal::new(
                    codes.invalid_request,
                    format!("stream.id {id} belongs to another message"),
                ));
            }
            let refusal = refusal.or_else(|| {
                (stream.status != StreamStatus::Open)
                    .then(|| Refusal::new(codes.stream_expired, "stream message update expired"))
            });
            stream.updates_total += 1;
            if stream.updates.len() >= history.max(1) {
                stream.updates.pop_front();
            }
            if let Some(refusal) = refusal {
                let silently = refusal.errcode == codes.stream_expired && !config.refuse_expired_updates;
                stream.updates.push_back(update(
                    refusal.errcode,
                    if silently {
                        "dropped (expired, acknowledged)"
                    } else {
                        &refusal.errmsg
                    },
                ));
                return if silently { Ok(()) } else { Err(refusal) };
            }
            stream.updates.push_back(update(0, "ok"));
            stream.content = content;
            stream.updated_ms = now_ms();
            stream.last_update = now;
            if let Some(feedback) = &reply.feedback {
                stream.feedback_id = Some(feedback.id.clone());
            }
            if reply.finish {
                stream.finish = true;
                stream.status = StreamStatus::Finished;
                stream.msg_items = reply.msg_item.len();
                stream.next_refresh = None;
                if let Some(m) = self.message_mut(msgid) {
                    if m.state.in_flight() {
                        m.state = MessageState::Answered;
                    }
                }
            }
            return Ok(());
        }
        // A new stream: the message must still be awaiting its reply.
        if let Some(refusal) = refusal {
            return Err(refusal);
        }
        if via == Via::RefreshReply {
            return Err(Refusal::new(
                codes.invalid_request,
                "a refresh must answer its own stream.id",
            ));
        }
        let message = self.message(msgid).expect("checked by the caller");
        if !message.state.in_flight() && message.state != MessageState::Answered {
            return Err(Refusal::new(codes.stream_expired, "stream message update expired"));
        }
        let (chatid, transport) = (
            message.chatid.clone(),
            message.transport.unwrap_or(Transport::LongConnection),
        );
        let status = if reply.finish {
            StreamStatus::Finished
        } else {
            StreamStatus::Open
        };
        let mut updates = VecDeque::new();
        updates.push_back(update(0, "ok"));
        self.streams.insert(
            id.to_owned(),
            StreamRecord {
                id: id.to_owned(),
                msgid: msgid.to_owned(),
                transport,
                content,
                finish: reply.finish,
                status,
                created_ms: now_ms(),
                updated_ms: now_ms(),
                updates_total: 1,
                updates,
                feedback_id: reply.feedback.as_ref().map(|f| f.id.clone()),
                msg_items: reply.msg_item.len(),
                refreshes: 0,
                last_update: now,
                next_refresh: (transport == Transport::Callback && !reply.finish)
                    .then(|| now + config.refresh_interval),
            },
        );
        let m = self.message_mut(msgid).expect("checked by the caller");
        m.stream_ids.push(id.to_owned());
        if reply.finish && m.state.in_flight() {
            m.state = MessageState::Answered;
        }
        self.note(
            &chatid,
            ChatEntry::Stream {
                stream_id: id.to_owned(),
                msgid: msgid.to_owned(),
                at_ms: now_ms(),
            },
        );
        Ok(())
    }

    /// A `req_id`-addressed long-connection reply (`aibot_respond_msg` and the welcome/update commands).
    pub(crate) fn respond(
        &mut self,
        config: &EmulatorConfig,
        req_id: &str,
        body: &ReplyBody,
        now: Instant,
    ) -> Result<(), Refusal> {
        let Some(msgid) = self.req_ids.get(req_id).cloned() else {
            self.stats.unknown_req_ids += 1;
            self.stats.replies_refused += 1;
            return Err(Refusal::new(config.errcodes.unknown_req_id, "invalid req_id"));
        };
        if let Some(failures) = self.faults.reply_failures.as_mut() {
            if failures.fault.hit() {
                let refusal = Refusal::new(failures.errcode, "injected failure");
                self.stats.replies_refused += 1;
                if let Some(m) = self.message_mut(&msgid) {
                    m.refuse(Via::RespondMsg, &refusal);
                }
                return Err(refusal);
            }
        }
        self.apply_reply(config, &msgid, body, Via::RespondMsg, now)
    }

    /// `aibot_send_msg`: a proactive message into a known conversation.
    pub(crate) fn send_msg(&mut self, config: &EmulatorConfig, body: &Value) -> Result<(), Refusal> {
        let codes = &config.errcodes;
        let chatid = body
            .get("chatid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if chatid.is_empty() {
            return Err(Refusal::new(codes.invalid_request, "chatid is required"));
        }
        if self.conversation(&chatid).is_none() {
            return Err(Refusal::new(codes.invalid_request, format!("unknown chatid {chatid}")));
        }
        let reply: ReplyBody = serde_json::from_value(body.clone())
            .map_err(|err| Refusal::new(codes.invalid_request, format!("invalid body: {err}")))?;
        let content = match &reply {
            ReplyBody::Markdown { markdown } => markdown.content.clone(),
            ReplyBody::TemplateCard { .. }
            | ReplyBody::File { .. }
            | ReplyBody::Image { .. }
            | ReplyBody::Voice { .. }
            | ReplyBody::Video { .. } => reply.shown(),
            other => {
                return Err(Refusal::new(
                    codes.invalid_request,
                    format!("msgtype {} cannot be sent proactively", other.msgtype()),
                ))
            }
        };
        if content.len() > config.max_content_bytes {
            return Err(too_long(config, content.len()));
        }
        self.stats.sends += 1;
        self.note(
            &chatid,
            ChatEntry::Robot {
                via: Via::SendMsg,
                msgtype: reply.msgtype().to_owned(),
                content,
                msgid: None,
                at_ms: now_ms(),
            },
        );
        Ok(())
    }

    /// A POST to a `response_url`.
    pub(crate) fn use_response_url(
        &mut self,
        config: &EmulatorConfig,
        code: &str,
        body: &Value,
        now: Instant,
    ) -> Result<(), Refusal> {
        let invalid = config.errcodes.response_url_invalid;
        let refused = |world: &mut World, errmsg: &str| -> Result<(), Refusal> {
            world.stats.response_urls_refused += 1;
            Err(Refusal::new(invalid, errmsg))
        };
        let Some(entry) = self.response_codes.get_mut(code) else {
            return refused(self, "invalid response_code");
        };
        if entry.used {
            return refused(self, "response_code already used");
        }
        if now.duration_since(entry.issued) > config.response_url_ttl {
            return refused(self, "response_code expired");
        }
        let msgid = entry.msgid.clone();
        let reply: ReplyBody = match serde_json::from_value(body.clone()) {
            Ok(reply) => reply,
            Err(err) => {
                return Err(Refusal::new(
                    config.errcodes.invalid_request,
                    format!("invalid body: {err}"),
                ))
            }
        };
        let message = self.message(&msgid).expect("codes are issued with their message");
        let (chatid, chattype) = (message.chatid.clone(), message.chattype);
        let content = match &reply {
            ReplyBody::Markdown { markdown } => markdown.content.clone(),
            ReplyBody::TemplateCard { .. } if chattype == ChatType::Single => reply.shown(),
            ReplyBody::Stream { stream } if config.response_url_accepts_stream => {
                stream.content.clone().unwrap_or_default()
            }
            other => {
                return Err(Refusal::new(
                    config.errcodes.invalid_request,
                    format!("msgtype {} is not accepted on a response_url here", other.msgtype()),
                ))
            }
        };
        if content.len() > config.max_content_bytes {
            return Err(too_long(config, content.len()));
        }
        self.response_codes.get_mut(code).expect("found above").used = true;
        self.stats.response_urls_used += 1;
        if let Some(m) = self.message_mut(&msgid) {
            if m.state.in_flight() {
                m.state = MessageState::Answered;
            }
        }
        self.note(
            &chatid,
            ChatEntry::Robot {
                via: Via::ResponseUrl,
                msgtype: reply.msgtype().to_owned(),
                content,
                msgid: Some(msgid),
                at_ms: now_ms(),
            },
        );
        Ok(())
    }
}

fn too_long(config: &EmulatorConfig, len: usize) -> Refusal {
    Refusal::new(
        config.errcodes.content_too_long,
        format!("content is {len} bytes, over the limit of {}", config.max_content_bytes),
    )
}

/// The body of a stream refresh callback (§1.3) for `stream_id` of message `m`.
fn refresh_body(m: &MessageRecord, stream_id: &str) -> String {
    let mut body = serde_json::json!({
        "msgid": format!("{}{}", hex(16), now_ms()),
        "aibotid": m.body["aibotid"],
        "chattype": m.chattype.wire(),
        "from": {"userid": m.userid},
        "msgtype": "stream",
        "stream": {"id": stream_id},
    });
    if m.chattype == ChatType::Group {
        body["chatid"] = Value::String(m.chatid.clone());
    }
    body.to_string()
}
