//! [`World`]: everything the emulated platform knows — tickets, tokens, live connections, un-ACKed pushes,
//! conversations, cards, faults and counters. It lives behind one lock in [`Shared`] (`crate::state::Watched`):
//! no lock is ever held across an `.await`, and every change bumps a version so observers await changes
//! instead of polling.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};

use super::config::EmulatorConfig;
use super::wire::{Frame, Subscription, TOPIC_BOT_MESSAGE};
use crate::state::Watched;

/// State shared by the HTTP handlers, the WebSocket connections and the dispatcher.
pub(crate) struct Shared {
    pub config: EmulatorConfig,
    /// Where the emulator listens; base of the WebSocket endpoint and sessionWebhook URLs.
    pub addr: std::net::SocketAddr,
    /// The world, with the change counter the control API and tests await.
    pub state: Watched<World>,
    /// Wakes the dispatcher: a message was posted, a connection opened, or an ACK arrived.
    pub dispatch: Notify,
}

impl Shared {
    pub fn new(config: EmulatorConfig, addr: std::net::SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            state: Watched::new(World::default()),
            config,
            addr,
            dispatch: Notify::new(),
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

pub(crate) use crate::ids::{hex, now_ms};

/// A UUID-shaped random id (`8-4-4-4-12` hex), as the platform's `requestid` and tickets look.
pub fn uuid_like() -> String {
    format!("{}-{}-{}-{}-{}", hex(8), hex(4), hex(4), hex(4), hex(12))
}

/// What the writer half of one WebSocket is told to do.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// Send this JSON text frame (dropped silently if the connection is a zombie).
    Text(String),
    /// Drop the TCP connection after this long.
    CloseAfter(Duration),
    /// Go silent: stop reading the socket (so no pong answers a ping) and stop writing to it.
    Silence,
}

/// One live Stream connection.
pub(crate) struct Connection {
    pub subscriptions: Vec<Subscription>,
    /// The connection's writer. Unbounded: its backlog is bounded by the pending pushes and pings.
    pub tx: mpsc::UnboundedSender<Outbound>,
    /// Pings are answered at the WebSocket level, but no frame is delivered (a half-open socket).
    pub zombie: bool,
    /// Nothing passes either way, not even WebSocket pongs: the network path died without a FIN or RST.
    /// Pushes sent here vanish while it is the only connection; once another is open the platform pushes
    /// there (as its own TCP keepalive would eventually tell it the old peer is gone).
    pub silent: bool,
    /// A `disconnect` frame was sent: nothing more is delivered here.
    pub disconnecting: bool,
    pub opened_ms: u64,
    pub ua: Option<String>,
}

impl Connection {
    fn subscribed(&self, kind: &str, topic: &str) -> bool {
        self.subscriptions
            .iter()
            .any(|s| s.kind == kind && (s.topic == topic || (kind == "EVENT" && s.topic == "*")))
    }
}

/// A CALLBACK pushed (or waiting to be pushed) and not yet ACKed.
pub(crate) struct PendingPush {
    pub frame: Frame,
    pub topic: String,
    /// Pushes so far.
    pub attempts: u32,
    /// When to push (again).
    pub due: Instant,
}

/// Counters of the Stream side, for tests and the page.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub connections_opened: u64,
    /// Open connections, silent ones not counted.
    pub live_connections: usize,
    pub tickets_refused: u64,
    pub callbacks_pushed: u64,
    pub redeliveries: u64,
    /// Pushes sent a second time at once by the duplicate-push fault (counted in `callbacks_pushed` too).
    pub duplicate_pushes: u64,
    pub callbacks_acked: u64,
    pub callbacks_abandoned: u64,
    pub pings_sent: u64,
    pub pings_acked: u64,
    /// WebSocket-level pings received from clients (each answered with a pong by a non-silent socket).
    pub ws_pings_received: u64,
    pub bad_ping_acks: u64,
    pub disconnects_sent: u64,
    pub tokens_issued: u64,
    /// OpenAPI calls refused for their parameters (HTTP 400 `param.*` and `invalidParameter.*`).
    pub bad_requests: u64,
    /// sessionWebhook messages refused because the robot was over its per-minute limit.
    pub webhooks_throttled: u64,
    pub openapi_rejections: u64,
    pub unacked: usize,
}

/// A 1:1 chat with the robot, or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConversationKind {
    Single,
    Group,
}

impl ConversationKind {
    /// The callback's `conversationType` string.
    pub fn wire(self) -> &'static str {
        match self {
            Self::Single => "1",
            Self::Group => "2",
        }
    }
}

/// One conversation, as the control API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    pub conversation_id: String,
    pub kind: ConversationKind,
    pub title: String,
    /// Staff id of the user, for 1:1 chats.
    pub user_id: Option<String>,
    /// The user's unionId, for 1:1 chats whose messages carried one (cards may address it with
    /// `userIdType` 2).
    pub union_id: Option<String>,
    pub messages: Vec<ChatEntry>,
}

/// One line of a conversation.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ChatEntry {
    /// A simulated user wrote this.
    #[serde(rename_all = "camelCase")]
    User {
        msg_id: String,
        message_id: String,
        sender_staff_id: String,
        sender_nick: String,
        text: String,
        at_bot: bool,
        pushed: bool,
        at_ms: u64,
    },
    /// The robot delivered this card (see the card store for its content).
    #[serde(rename_all = "camelCase")]
    Card { out_track_id: String, at_ms: u64 },
    /// The robot sent a plain message through the sessionWebhook or a robot send API.
    #[serde(rename_all = "camelCase")]
    Robot {
        via: String,
        msgtype: String,
        title: Option<String>,
        text: String,
        at_ms: u64,
    },
}

/// Lifecycle of an AI card (§6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CardStatus {
    Created,
    Processing,
    Inputting,
    Finished,
    Failed,
}

/// One accepted change to a card.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CardUpdate {
    pub at_ms: u64,
    /// `createAndDeliver`, `create`, `deliver`, `streaming` or `update`.
    pub api: String,
    pub guid: Option<String>,
    pub key: Option<String>,
    pub content: Option<String>,
    pub is_full: Option<bool>,
    pub is_finalize: Option<bool>,
    pub is_error: Option<bool>,
    pub status_after: CardStatus,
}

/// One card instance, keyed by `outTrackId`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Card {
    pub out_track_id: String,
    pub card_template_id: String,
    pub conversation_ids: Vec<String>,
    pub status: CardStatus,
    pub card_param_map: BTreeMap<String, String>,
    /// The AI-card state variable `flowStatus` as last written ("1" processing, "2" inputting, "3" finished,
    /// "5" failed), if the card has one.
    pub flow_status: Option<String>,
    /// The variable last written by streaming, if any.
    pub stream_key: Option<String>,
    /// What the card shows: the streamed variable, else `content`/`msgContent`.
    pub text: String,
    pub updates: Vec<CardUpdate>,
    /// Calls on this card refused by an injected fault or a limit (not applied).
    pub rejected_calls: u32,
    #[serde(skip)]
    pub guids: HashSet<String>,
}

impl Card {
    /// Recompute `text` after a change.
    pub fn refresh_text(&mut self) {
        let key = self.stream_key.clone();
        let value = key
            .and_then(|k| self.card_param_map.get(&k).cloned())
            .or_else(|| self.card_param_map.get("content").cloned())
            .or_else(|| self.card_param_map.get("msgContent").cloned());
        self.text = value.unwrap_or_default();
        self.flow_status = self.card_param_map.get("flowStatus").cloned();
        // The SDK's AI-card convention: `flowStatus` "3" finished, "5" failed, "2" inputting.
        match self.card_param_map.get("flowStatus").map(String::as_str) {
            Some("3") => self.status = CardStatus::Finished,
            Some("5") => self.status = CardStatus::Failed,
            Some("2") if self.status == CardStatus::Processing => self.status = CardStatus::Inputting,
            _ => {}
        }
    }
}

/// A sessionWebhook handed out with a callback.
pub(crate) struct Webhook {
    pub conversation_id: String,
    pub expires_ms: u64,
}

/// A fault that fails a fraction of calls (`crate::fault::FractionFault`, deterministic), with the HTTP
/// status a failed call gets.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FractionFault {
    #[serde(flatten)]
    pub fault: crate::fault::FractionFault,
    /// 429 (`system.busy`) or 403 (`Forbidden.AccessDenied.QpsLimitForAppkeyAndApi`) for card updates;
    /// 200 for faults that refuse no call (failed deliveries, duplicate pushes).
    pub status: u16,
}

impl FractionFault {
    /// A fault failing `fraction` of calls with `status`; `None` for 0; an error outside `0..=1`.
    pub(crate) fn new(fraction: f64, status: u16) -> Result<Option<Self>, String> {
        Ok(crate::fault::FractionFault::new(fraction)?.map(|fault| Self { fault, status }))
    }

    /// Whether this call fails.
    pub fn hit(&mut self) -> bool {
        self.fault.hit()
    }
}

/// Faults currently switched on.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Faults {
    /// Fails a fraction of `PUT /v1.0/card/streaming` and `PUT /v1.0/card/instances` calls.
    pub card_update_failures: Option<FractionFault>,
    /// Answers a fraction of deliveries with `deliverResults[].success = false` (HTTP 200).
    pub delivery_failures: Option<FractionFault>,
    /// Pushes a fraction of CALLBACKs twice at once (same `messageId` and `data`), the second copy on
    /// another live connection when there is one, as the platform's redelivery can.
    pub duplicate_pushes: Option<FractionFault>,
    /// Every OpenAPI answer waits this long first.
    pub slow_ms: u64,
    /// Permissions the app no longer has (403 `AccessTokenPermissionDenied`).
    pub revoked_permissions: Vec<String>,
}

/// Everything the emulated platform knows.
#[derive(Default)]
pub struct World {
    pub(crate) tickets: HashMap<String, (Instant, Vec<Subscription>, Option<String>)>,
    pub(crate) tokens: HashMap<String, Instant>,
    pub(crate) connections: BTreeMap<u64, Connection>,
    pub(crate) next_connection: u64,
    pub(crate) pending: HashMap<String, PendingPush>,
    pub(crate) ping_opaque: HashMap<String, String>,
    pub(crate) conversations: Vec<Conversation>,
    pub(crate) cards: HashMap<String, Card>,
    pub(crate) webhooks: HashMap<String, Webhook>,
    pub(crate) faults: Faults,
    pub(crate) stats: Stats,
    /// Calls per (API, epoch second), for the QPS limit.
    pub(crate) qps: HashMap<&'static str, (u64, u32)>,
    /// When the robot's sessionWebhook messages of the last minute were sent, for the per-minute limit.
    pub(crate) webhook_sends: VecDeque<Instant>,
    /// The robot is throttled on sessionWebhooks until then.
    pub(crate) webhook_throttled_until: Option<Instant>,
}

impl World {
    /// The conversation with this id.
    pub fn conversation(&self, id: &str) -> Option<&Conversation> {
        self.conversations.iter().find(|c| c.conversation_id == id)
    }

    /// Ids of every conversation, in creation order.
    pub fn conversation_ids(&self) -> Vec<String> {
        self.conversations.iter().map(|c| c.conversation_id.clone()).collect()
    }

    pub(crate) fn conversation_mut(&mut self, id: &str) -> Option<&mut Conversation> {
        self.conversations.iter_mut().find(|c| c.conversation_id == id)
    }

    /// The 1:1 conversation of `user_id`, created on first use.
    pub(crate) fn single_conversation(&mut self, user_id: &str, nick: &str) -> &mut Conversation {
        let idx = match self
            .conversations
            .iter()
            .position(|c| c.kind == ConversationKind::Single && c.user_id.as_deref() == Some(user_id))
        {
            Some(idx) => idx,
            None => {
                self.conversations.push(Conversation {
                    conversation_id: format!("cid{}", hex(20)),
                    kind: ConversationKind::Single,
                    title: nick.to_owned(),
                    user_id: Some(user_id.to_owned()),
                    union_id: None,
                    messages: Vec::new(),
                });
                self.conversations.len() - 1
            }
        };
        &mut self.conversations[idx]
    }

    /// The id of the 1:1 conversation of the user whose messages carried `union_id`.
    pub(crate) fn union_conversation(&self, union_id: &str) -> Option<String> {
        self.conversations
            .iter()
            .find(|c| c.kind == ConversationKind::Single && c.union_id.as_deref() == Some(union_id))
            .map(|c| c.conversation_id.clone())
    }

    /// The group `id`, created on first use with `title`.
    pub(crate) fn group_conversation(&mut self, id: &str, title: &str) -> &mut Conversation {
        let idx = match self.conversations.iter().position(|c| c.conversation_id == id) {
            Some(idx) => idx,
            None => {
                self.conversations.push(Conversation {
                    conversation_id: id.to_owned(),
                    kind: ConversationKind::Group,
                    title: title.to_owned(),
                    user_id: None,
                    union_id: None,
                    messages: Vec::new(),
                });
                self.conversations.len() - 1
            }
        };
        &mut self.conversations[idx]
    }

    /// Counters with the live gauges filled in.
    pub fn stats(&self) -> Stats {
        let mut stats = self.stats.clone();
        stats.live_connections = self.connections.values().filter(|c| !c.silent).count();
        stats.unacked = self.pending.len();
        stats
    }

    /// Count one robot message sent through a sessionWebhook at `now` against the per-minute limit;
    /// `false` when the robot is (now) throttled and the message is refused.
    pub(crate) fn admit_webhook_message(&mut self, config: &EmulatorConfig, now: Instant) -> bool {
        let limit = config.webhook_messages_per_minute as usize;
        if limit == 0 {
            return true;
        }
        let throttled = self.webhook_throttled_until.is_some_and(|until| until > now);
        if !throttled {
            let window_start = now.checked_sub(Duration::from_secs(60));
            while self
                .webhook_sends
                .front()
                .is_some_and(|sent| window_start.is_some_and(|start| *sent <= start))
            {
                self.webhook_sends.pop_front();
            }
            if self.webhook_sends.len() < limit {
                self.webhook_sends.push_back(now);
                return true;
            }
            self.webhook_sends.clear();
            self.webhook_throttled_until = Some(now + config.webhook_throttle);
            tracing::info!(
                limit,
                throttle_secs = config.webhook_throttle.as_secs(),
                "robot over its sessionWebhook limit; throttled"
            );
        }
        self.stats.webhooks_throttled += 1;
        false
    }

    /// The card `out_track_id`.
    pub fn card(&self, out_track_id: &str) -> Option<&Card> {
        self.cards.get(out_track_id)
    }

    /// Cards delivered into `conversation_id`, in delivery order.
    pub fn cards_in(&self, conversation_id: &str) -> Vec<Card> {
        let Some(conversation) = self.conversation(conversation_id) else {
            return Vec::new();
        };
        conversation
            .messages
            .iter()
            .filter_map(|m| match m {
                ChatEntry::Card { out_track_id, .. } => self.cards.get(out_track_id).cloned(),
                _ => None,
            })
            .collect()
    }

    /// Push every due CALLBACK to a random live connection subscribed to its topic; returns when the next
    /// one falls due.
    pub(crate) fn dispatch_due(&mut self, now: Instant, config: &EmulatorConfig) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut abandoned = Vec::new();
        let ids: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.due <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let pending = self.pending.get_mut(&id).expect("id was just listed");
            if pending.attempts > config.max_redeliveries {
                abandoned.push(id);
                continue;
            }
            let open: Vec<&Connection> = self
                .connections
                .values()
                .filter(|c| !c.disconnecting && c.subscribed("CALLBACK", &pending.topic))
                .collect();
            // A silent connection gets pushes (which vanish) only while no other is open.
            let targets: Vec<&Connection> = if open.iter().any(|c| !c.silent) {
                open.into_iter().filter(|c| !c.silent).collect()
            } else {
                open
            };
            if targets.is_empty() {
                // Waits for a connection; opening one wakes the dispatcher.
                continue;
            }
            let pick = rand::rng().random_range(0..targets.len());
            let text = serde_json::to_string(&pending.frame).expect("frames serialize");
            if targets[pick].tx.send(Outbound::Text(text.clone())).is_err() {
                continue;
            }
            pending.attempts += 1;
            pending.due = now + config.redelivery_after;
            self.stats.callbacks_pushed += 1;
            if self.faults.duplicate_pushes.as_mut().is_some_and(|f| f.hit()) {
                // The copy goes to the next live connection, which is the same one when it is alone.
                let copy = targets[(pick + 1) % targets.len()];
                if copy.tx.send(Outbound::Text(text)).is_ok() {
                    self.stats.callbacks_pushed += 1;
                    self.stats.duplicate_pushes += 1;
                    tracing::info!(message_id = %id, "pushing a callback twice (injected duplicate)");
                }
            }
            if pending.attempts > 1 {
                self.stats.redeliveries += 1;
                tracing::info!(message_id = %id, attempt = pending.attempts, "redelivering an un-ACKed callback");
            }
        }
        for id in abandoned {
            self.pending.remove(&id);
            self.stats.callbacks_abandoned += 1;
            tracing::warn!(message_id = %id, "giving up on a callback that was never ACKed");
        }
        for pending in self.pending.values() {
            if self
                .connections
                .values()
                .any(|c| !c.disconnecting && c.subscribed("CALLBACK", &pending.topic))
            {
                next = Some(next.map_or(pending.due, |n| n.min(pending.due)));
            }
        }
        next
    }

    /// Queue a bot-message CALLBACK for delivery.
    pub(crate) fn queue_callback(&mut self, message_id: String, data: String, connection_hint: &str, app_id: &str) {
        let mut headers = BTreeMap::new();
        headers.insert("appId".to_owned(), app_id.to_owned());
        headers.insert("connectionId".to_owned(), connection_hint.to_owned());
        headers.insert("contentType".to_owned(), "application/json".to_owned());
        headers.insert("messageId".to_owned(), message_id.clone());
        headers.insert("time".to_owned(), now_ms().to_string());
        headers.insert("topic".to_owned(), TOPIC_BOT_MESSAGE.to_owned());
        let frame = Frame {
            spec_version: "1.0".to_owned(),
            kind: "CALLBACK".to_owned(),
            headers,
            data,
        };
        self.pending.insert(
            message_id,
            PendingPush {
                frame,
                topic: TOPIC_BOT_MESSAGE.to_owned(),
                attempts: 0,
                due: Instant::now(),
            },
        );
    }
}

/// A SYSTEM frame (`ping` or `disconnect`) with a fresh messageId.
pub(crate) fn system_frame(topic: &str, data: serde_json::Value) -> (String, Frame) {
    let message_id = format!("{}_{}_{}_{}", hex(8), hex(3), hex(11), hex(5));
    let mut headers = BTreeMap::new();
    headers.insert("contentType".to_owned(), "application/json".to_owned());
    headers.insert("messageId".to_owned(), message_id.clone());
    headers.insert("time".to_owned(), now_ms().to_string());
    headers.insert("topic".to_owned(), topic.to_owned());
    (
        message_id,
        Frame {
            spec_version: "1.0".to_owned(),
            kind: "SYSTEM".to_owned(),
            headers,
            data: data.to_string(),
        },
    )
}
