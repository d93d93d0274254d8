//! [`World`]: everything the emulated platform knows — tickets, tokens, live connections, unanswered
//! events, users, chats, card entities, faults and counters. It lives behind one lock in [`Shared`], and
//! [`World::tick`] is the platform's clock: pushes that fall due, responses that never came, streaming
//! windows that end.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};

use super::card::Card;
use super::config::EmulatorConfig;
use super::wire::{header, Frame, Header, METHOD_DATA};
use crate::fault::FractionFault;
use crate::ids::{hex, now_ms, uuid_like};
use crate::watched::Watched;

/// State shared by the HTTP handlers, the WebSocket connections and the clock.
pub(crate) struct Shared {
    pub config: EmulatorConfig,
    /// Where the emulator listens; base of the WebSocket URL discovery hands out.
    pub addr: SocketAddr,
    pub state: Watched<World>,
    /// The bot's `open_id` and `union_id`, as @-mentions of it carry them.
    pub bot_open_id: String,
    pub bot_union_id: String,
    /// Wakes the clock: an event was posted, a connection opened, a response arrived, streaming began.
    pub wake: Notify,
}

impl Shared {
    pub fn new(config: EmulatorConfig, addr: SocketAddr) -> Arc<Self> {
        let world = World {
            scopes: config.scopes.clone(),
            ..World::default()
        };
        Arc::new(Self {
            config,
            addr,
            state: Watched::new(world),
            bot_open_id: format!("ou_{}", hex(32)),
            bot_union_id: format!("on_{}", hex(32)),
            wake: Notify::new(),
        })
    }

    /// Run `f` on the world, then tell observers something may have changed.
    pub fn with<T>(&self, f: impl FnOnce(&mut World, &EmulatorConfig) -> T) -> T {
        self.state.with(|world| f(world, &self.config))
    }

    /// Read the world without signalling a change.
    pub fn read<T>(&self, f: impl FnOnce(&World) -> T) -> T {
        self.state.read(f)
    }
}

/// What the writer half of one WebSocket is told to do.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// Send this encoded data frame (dropped silently on a zombie connection).
    Data(Vec<u8>),
    /// Send this encoded control frame (a pong; zombies still answer pings).
    Control(Vec<u8>),
    /// Close the WebSocket now.
    Close,
    /// Go silent: stop reading the socket (no pong answers a ping) and stop writing to it.
    Silence,
}

/// One live long connection.
pub(crate) struct Connection {
    /// `device_id` of the URL it was opened with (the SDKs' connection id).
    pub device_id: String,
    /// `service_id` of its URL: every frame the client sends must carry it.
    pub service_id: i32,
    /// The connection's writer. Unbounded: its backlog is bounded by the pending pushes and pongs.
    pub tx: mpsc::UnboundedSender<Outbound>,
    /// Pongs still answer pings, but data frames vanish (a half-open path the platform does not notice).
    pub zombie: bool,
    /// Nothing passes either way: the network path died without a FIN. Pushes go here only while it is
    /// the only connection.
    pub silent: bool,
    pub opened_ms: u64,
    pub pings: u64,
}

/// Where an unanswered event stands.
#[derive(Debug, Clone)]
pub(crate) enum PushState {
    /// Push at this instant (or once a connection opens).
    Due(Instant),
    /// Pushed as `frame_message_id`; failed if no 200 response by `deadline`.
    Awaiting {
        frame_message_id: String,
        deadline: Instant,
    },
}

/// An event the platform has to deliver until a client answers it with `code` 200.
pub(crate) struct PendingEvent {
    pub event_id: String,
    /// The event JSON (§4).
    pub payload: String,
    /// Pushes so far.
    pub attempts: u32,
    pub state: PushState,
}

/// Counters of the long-connection side and the OpenAPI, for tests and the page.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub discoveries: u64,
    pub discoveries_refused: u64,
    pub connections_opened: u64,
    /// Open connections, silent ones not counted.
    pub live_connections: usize,
    pub handshakes_refused: u64,
    pub pings: u64,
    pub pongs: u64,
    /// Frames whose `service` was not the connection's `service_id`.
    pub bad_service_frames: u64,
    /// Binary messages that were not `pbbp2` frames.
    pub undecodable_frames: u64,
    pub events_pushed: u64,
    pub redeliveries: u64,
    /// Pushes sent a second time at once by the duplicate-push fault (counted in `events_pushed` too).
    pub duplicate_pushes: u64,
    pub events_acked: u64,
    /// Responses with a `code` other than 200.
    pub push_failures: u64,
    /// Pushes with no response within the response timeout.
    pub push_timeouts: u64,
    pub events_abandoned: u64,
    pub unacked: usize,
    pub tokens_issued: u64,
    pub messages_sent: u64,
    pub cards_created: u64,
    /// OpenAPI calls refused (any error envelope).
    pub openapi_rejections: u64,
    /// Calls refused with 429 / 99991400.
    pub rate_limited: u64,
}

/// A 1:1 chat with the bot, or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatType {
    P2p,
    Group,
}

impl ChatType {
    /// `message.chat_type` of the event.
    pub fn wire(self) -> &'static str {
        match self {
            Self::P2p => "p2p",
            Self::Group => "group",
        }
    }
}

/// A simulated user and the ids the platform gives them.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub user_id: String,
    pub open_id: String,
    pub union_id: String,
    pub name: String,
}

/// One chat, as the control API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Chat {
    pub chat_id: String,
    pub chat_type: ChatType,
    pub name: String,
    /// The user of a 1:1 chat.
    pub user_id: Option<String>,
    pub messages: Vec<ChatEntry>,
}

/// One message in a chat.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ChatEntry {
    /// A simulated user wrote this.
    #[serde(rename_all = "camelCase")]
    User {
        message_id: String,
        event_id: String,
        user_id: String,
        name: String,
        text: String,
        mentions_bot: bool,
        pushed: bool,
        at_ms: u64,
    },
    /// The bot sent this (see the card store for a card entity's content).
    #[serde(rename_all = "camelCase")]
    Bot {
        message_id: String,
        msg_type: String,
        /// The message's `content` JSON string as sent.
        content: String,
        /// The text a reader sees: `text` of a text message, empty for cards.
        text: String,
        /// The message this one replies to.
        reply_to: Option<String>,
        /// The card entity this message shows.
        card_id: Option<String>,
        at_ms: u64,
    },
}

/// Faults currently switched on.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Faults {
    /// Refuses a fraction of IM and CardKit calls with 429 / 99991400.
    pub rate_limit_storm: Option<FractionFault>,
    /// Pushes a fraction of events twice at once (the copy on another connection when there is one).
    pub duplicate_pushes: Option<FractionFault>,
    /// Every OpenAPI and discovery answer waits this long first.
    pub slow_ms: u64,
    /// The next discovery calls answer with this `code` (1 busy, 1000040343 internal, others fatal).
    pub discovery_error: Option<CountedFault>,
    /// The next WebSocket handshakes are refused with this `Handshake-Status` (and auth code).
    pub handshake_refusal: Option<CountedFault>,
}

/// A fault that hits the next `remaining` calls with `code` (and `auth_code`, for handshakes).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CountedFault {
    pub code: i64,
    pub auth_code: Option<i64>,
    pub remaining: u32,
}

/// Sliding windows of one API's admitted calls.
#[derive(Debug, Default)]
pub(crate) struct Quota {
    pub short: VecDeque<Instant>,
    pub minute: VecDeque<Instant>,
}

/// Everything the emulated platform knows.
#[derive(Default)]
pub struct World {
    /// Discovery tickets: ticket → (expiry, device_id, service_id).
    pub(crate) tickets: HashMap<String, (Instant, String, i32)>,
    /// Tenant tokens → expiry.
    pub(crate) tokens: HashMap<String, Instant>,
    pub(crate) connections: BTreeMap<u64, Connection>,
    pub(crate) next_connection: u64,
    /// Unanswered events by event_id, in posting order.
    pub(crate) pending: BTreeMap<u64, PendingEvent>,
    pub(crate) next_pending: u64,
    /// Frame `message_id` of each push → key in `pending`.
    pub(crate) pushes: HashMap<String, u64>,
    pub(crate) next_seq_id: u64,
    pub(crate) users: BTreeMap<String, User>,
    pub(crate) chats: Vec<Chat>,
    /// Message id → chat id, for replies.
    pub(crate) message_chats: HashMap<String, String>,
    /// Send/reply `uuid` → (first use, message id): a uuid sends at most once an hour.
    pub(crate) message_uuids: HashMap<String, (Instant, String)>,
    pub(crate) cards: HashMap<String, Card>,
    /// Card ids in creation order.
    pub(crate) card_order: Vec<String>,
    pub(crate) scopes: Vec<String>,
    pub(crate) faults: Faults,
    pub(crate) stats: Stats,
    pub(crate) quotas: HashMap<&'static str, Quota>,
}

impl World {
    /// The chat with this id.
    pub fn chat(&self, id: &str) -> Option<&Chat> {
        self.chats.iter().find(|c| c.chat_id == id)
    }

    pub(crate) fn chat_mut(&mut self, id: &str) -> Option<&mut Chat> {
        self.chats.iter_mut().find(|c| c.chat_id == id)
    }

    /// Ids of every chat, in creation order.
    pub fn chat_ids(&self) -> Vec<String> {
        self.chats.iter().map(|c| c.chat_id.clone()).collect()
    }

    /// The card entity `card_id`.
    pub fn card(&self, card_id: &str) -> Option<&Card> {
        self.cards.get(card_id)
    }

    /// Every card entity, in creation order.
    pub fn cards(&self) -> Vec<&Card> {
        self.card_order.iter().filter_map(|id| self.cards.get(id)).collect()
    }

    /// Cards sent into `chat_id`, in sending order.
    pub fn cards_in(&self, chat_id: &str) -> Vec<Card> {
        let Some(chat) = self.chat(chat_id) else {
            return Vec::new();
        };
        chat.messages
            .iter()
            .filter_map(|m| match m {
                ChatEntry::Bot { card_id: Some(id), .. } => self.cards.get(id).cloned(),
                _ => None,
            })
            .collect()
    }

    /// The simulated user `user_id`, created on first use.
    pub(crate) fn user(&mut self, user_id: &str, name: Option<&str>) -> User {
        let user = self.users.entry(user_id.to_owned()).or_insert_with(|| User {
            user_id: user_id.to_owned(),
            open_id: format!("ou_{}", hex(32)),
            union_id: format!("on_{}", hex(32)),
            name: user_id.to_owned(),
        });
        if let Some(name) = name {
            user.name = name.to_owned();
        }
        user.clone()
    }

    /// The user whose `open_id`, `union_id` or `user_id` (per `id_type`) is `id`.
    pub(crate) fn find_user(&self, id_type: &str, id: &str) -> Option<&User> {
        self.users.values().find(|u| match id_type {
            "open_id" => u.open_id == id,
            "union_id" => u.union_id == id,
            "user_id" => u.user_id == id,
            _ => false,
        })
    }

    /// The 1:1 chat of `user_id`, created on first use.
    pub(crate) fn p2p_chat(&mut self, user: &User) -> &mut Chat {
        let idx = match self
            .chats
            .iter()
            .position(|c| c.chat_type == ChatType::P2p && c.user_id.as_deref() == Some(user.user_id.as_str()))
        {
            Some(idx) => idx,
            None => {
                self.chats.push(Chat {
                    chat_id: format!("oc_{}", hex(32)),
                    chat_type: ChatType::P2p,
                    name: user.name.clone(),
                    user_id: Some(user.user_id.clone()),
                    messages: Vec::new(),
                });
                self.chats.len() - 1
            }
        };
        &mut self.chats[idx]
    }

    /// The group `chat_id`, created on first use with `name`.
    pub(crate) fn group_chat(&mut self, chat_id: &str, name: &str) -> &mut Chat {
        let idx = match self.chats.iter().position(|c| c.chat_id == chat_id) {
            Some(idx) => idx,
            None => {
                self.chats.push(Chat {
                    chat_id: chat_id.to_owned(),
                    chat_type: ChatType::Group,
                    name: name.to_owned(),
                    user_id: None,
                    messages: Vec::new(),
                });
                self.chats.len() - 1
            }
        };
        &mut self.chats[idx]
    }

    /// Counters with the live gauges filled in.
    pub fn stats(&self) -> Stats {
        let mut stats = self.stats.clone();
        stats.live_connections = self.connections.values().filter(|c| !c.silent).count();
        stats.unacked = self.pending.len();
        stats
    }

    /// Queue an event for delivery.
    pub(crate) fn queue_event(&mut self, event_id: String, payload: String) {
        let key = self.next_pending;
        self.next_pending += 1;
        self.pending.insert(
            key,
            PendingEvent {
                event_id,
                payload,
                attempts: 0,
                state: PushState::Due(Instant::now()),
            },
        );
    }

    /// A client answered the push `frame_message_id` with `code`.
    pub(crate) fn on_response(&mut self, config: &EmulatorConfig, frame_message_id: &str, code: i64, now: Instant) {
        let Some(key) = self.pushes.remove(frame_message_id) else {
            tracing::debug!(%frame_message_id, "a response to no pending push (answered already, or a copy)");
            return;
        };
        let Some(pending) = self.pending.get_mut(&key) else {
            return;
        };
        let awaited =
            matches!(&pending.state, PushState::Awaiting { frame_message_id: f, .. } if f == frame_message_id);
        if code == 200 {
            tracing::debug!(event_id = %pending.event_id, "event answered");
            self.pending.remove(&key);
            self.pushes.retain(|_, k| *k != key);
            self.stats.events_acked += 1;
        } else if awaited {
            tracing::info!(event_id = %pending.event_id, code, "event answered with a failure; will retry");
            self.stats.push_failures += 1;
            self.schedule_retry(config, key, now);
        }
    }

    /// A push of `key` failed: retry after the next interval, or give up after the last one.
    fn schedule_retry(&mut self, config: &EmulatorConfig, key: u64, now: Instant) {
        let Some(pending) = self.pending.get_mut(&key) else {
            return;
        };
        match config.retry_intervals.get(pending.attempts as usize - 1) {
            Some(wait) => pending.state = PushState::Due(now + *wait),
            None => {
                tracing::warn!(event_id = %pending.event_id, attempts = pending.attempts, "giving up on an event never answered");
                self.pending.remove(&key);
                self.pushes.retain(|_, k| *k != key);
                self.stats.events_abandoned += 1;
            }
        }
    }

    /// Advance the platform's clock to `now`: fail pushes past their response deadline, push due events,
    /// close streaming windows that ended. Returns when something next falls due.
    pub(crate) fn tick(&mut self, config: &EmulatorConfig, now: Instant) -> Option<Instant> {
        let timed_out: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| matches!(p.state, PushState::Awaiting { deadline, .. } if deadline <= now))
            .map(|(key, _)| *key)
            .collect();
        for key in timed_out {
            if let Some(PushState::Awaiting { frame_message_id, .. }) = self.pending.get(&key).map(|p| p.state.clone())
            {
                self.pushes.remove(&frame_message_id);
            }
            self.stats.push_timeouts += 1;
            self.schedule_retry(config, key, now);
        }
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| matches!(p.state, PushState::Due(at) if at <= now))
            .map(|(key, _)| *key)
            .collect();
        for key in due {
            self.push(config, key, now);
        }
        for card in self.cards.values_mut() {
            card.close_expired_streaming(config, now);
        }
        let mut next: Option<Instant> = None;
        let mut consider = |at: Instant| next = Some(next.map_or(at, |n: Instant| n.min(at)));
        let connected = !self.connections.is_empty();
        for pending in self.pending.values() {
            match pending.state {
                PushState::Awaiting { deadline, .. } => consider(deadline),
                PushState::Due(at) if connected => consider(at),
                PushState::Due(_) => {}
            }
        }
        for card in self.cards.values() {
            if let Some(at) = card.streaming_ends(config) {
                consider(at);
            }
        }
        next
    }

    /// Push pending event `key` to one connection of the app, chosen at random (cluster mode).
    fn push(&mut self, config: &EmulatorConfig, key: u64, now: Instant) {
        // A silent connection gets pushes (which vanish) only while no other is open.
        let ids: Vec<u64> = {
            let open: Vec<(&u64, &Connection)> = self.connections.iter().collect();
            let audible = open.iter().any(|(_, c)| !c.silent);
            open.into_iter()
                .filter(|(_, c)| !audible || !c.silent)
                .map(|(id, _)| *id)
                .collect()
        };
        if ids.is_empty() {
            return;
        }
        let pick = ids[rand::rng().random_range(0..ids.len())];
        let Some(pending) = self.pending.get(&key) else {
            return;
        };
        let payload = pending.payload.clone();
        let frame_message_id = uuid_like();
        if !self.send_event(config, pick, &frame_message_id, &payload) {
            return;
        }
        self.pushes.insert(frame_message_id.clone(), key);
        let pending = self.pending.get_mut(&key).expect("checked above");
        pending.attempts += 1;
        pending.state = PushState::Awaiting {
            frame_message_id,
            deadline: now + config.response_timeout,
        };
        let (event_id, attempts) = (pending.event_id.clone(), pending.attempts);
        self.stats.events_pushed += 1;
        if attempts > 1 {
            self.stats.redeliveries += 1;
            tracing::info!(%event_id, attempt = attempts, "pushing an unanswered event again");
        }
        if self.faults.duplicate_pushes.as_mut().is_some_and(|f| f.hit()) {
            // The copy goes to the next connection, which is the same one when it is alone.
            let position = ids.iter().position(|id| *id == pick).unwrap_or(0);
            let copy = ids[(position + 1) % ids.len()];
            let copy_id = uuid_like();
            if self.send_event(config, copy, &copy_id, &payload) {
                self.pushes.insert(copy_id, key);
                self.stats.events_pushed += 1;
                self.stats.duplicate_pushes += 1;
                tracing::info!(%event_id, "pushing an event twice (injected duplicate)");
            }
        }
    }

    /// Send `payload` as data frames (fragments when configured) on connection `id`.
    fn send_event(&mut self, config: &EmulatorConfig, id: u64, frame_message_id: &str, payload: &str) -> bool {
        let Some(connection) = self.connections.get(&id) else {
            return false;
        };
        let bytes = payload.as_bytes();
        let chunks: Vec<&[u8]> = match config.fragment_bytes {
            Some(size) if size > 0 && bytes.len() > size => bytes.chunks(size).collect(),
            _ => vec![bytes],
        };
        let trace_id = hex(32);
        let sum = chunks.len().to_string();
        for (seq, chunk) in chunks.into_iter().enumerate() {
            self.next_seq_id += 1;
            let headers = [
                (header::TYPE, "event"),
                (header::MESSAGE_ID, frame_message_id),
                (header::SUM, sum.as_str()),
                (header::SEQ, &seq.to_string()),
                (header::TRACE_ID, trace_id.as_str()),
            ]
            .into_iter()
            .map(|(key, value)| Header {
                key: key.to_owned(),
                value: value.to_owned(),
            })
            .collect();
            let frame = Frame {
                seq_id: self.next_seq_id,
                // Below 2^53: the Node SDK decodes 64-bit fields into JavaScript numbers.
                log_id: rand::rng().random_range(1..(1u64 << 53)),
                service: connection.service_id,
                method: METHOD_DATA,
                headers,
                payload_encoding: None,
                payload_type: None,
                payload: Some(chunk.to_vec()),
                log_id_new: Some(format!("{}_{}", hex(16), now_ms())),
            };
            if connection
                .tx
                .send(Outbound::Data(prost::Message::encode_to_vec(&frame)))
                .is_err()
            {
                return false;
            }
        }
        true
    }

    /// Issue a tenant token: the current one while more than the refresh window is left, else a new one
    /// (the old one stays valid until it expires). Returns the token and its seconds left.
    pub(crate) fn issue_token(&mut self, config: &EmulatorConfig, now: Instant) -> (String, u64) {
        self.tokens.retain(|_, expiry| *expiry > now);
        let current = self
            .tokens
            .iter()
            .max_by_key(|(_, expiry)| **expiry)
            .filter(|(_, expiry)| expiry.saturating_duration_since(now) > config.token_refresh_window)
            .map(|(token, expiry)| (token.clone(), *expiry));
        let (token, expiry) = current.unwrap_or_else(|| {
            self.stats.tokens_issued += 1;
            let token = format!("t-{}", hex(40));
            let expiry = now + config.token_ttl;
            self.tokens.insert(token.clone(), expiry);
            (token, expiry)
        });
        let left = expiry.saturating_duration_since(now);
        // Round up, so a token with 0.4 s left is not announced as already expired.
        (token, left.as_secs() + u64::from(left.subsec_nanos() > 0))
    }

    /// Whether `window` already holds `limit` calls of the last `length` (dropping older ones): the seconds
    /// until it frees a slot, or `None` when the next call may pass. A `limit` of 0 is no limit.
    pub(crate) fn window_full(
        window: &mut VecDeque<Instant>,
        limit: u32,
        length: Duration,
        now: Instant,
    ) -> Option<u64> {
        if limit == 0 {
            return None;
        }
        while window
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= length)
        {
            window.pop_front();
        }
        if window.len() < limit as usize {
            return None;
        }
        let oldest = *window.front().expect("the window is full");
        let reset = (oldest + length).saturating_duration_since(now);
        Some((reset.as_secs() + u64::from(reset.subsec_nanos() > 0)).max(1))
    }
}
