//! The emulator's own control surface, under `/_emulator`: simulated users posting messages (1:1 and group,
//! @-mentions), fault injection, read-back of chats and card entities (with their element-content
//! history), a change feed to await, and the HTML page. None of it is part of the Feishu protocol.
//!
//! | Route | What |
//! |---|---|
//! | `GET /_emulator` | the page (chats and cards, refreshed as they change) |
//! | `GET /_emulator/api/state` | [`StateView`]: version, stats, faults, scopes, connections, chats with cards |
//! | `GET /_emulator/api/chats/{chat_id}` | one [`ChatView`] |
//! | `GET /_emulator/api/cards/{card_id}` | one [`Card`] |
//! | `POST /_emulator/api/messages` | [`UserMessage`] → [`PostedMessage`] |
//! | `POST /_emulator/api/faults` | [`FaultCommand`] → `{"affected": n}` |
//! | `GET /_emulator/api/wait?after=V&timeout_ms=T` | returns `{"version"}` once the version passes V (or T ms pass) |

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::card::Card;
use super::openapi::{SCOPE_GROUP_AT_EVENTS, SCOPE_P2P_EVENTS};
use super::world::{Chat, ChatEntry, ChatType, CountedFault, Faults, Outbound, Shared, Stats, User, World};
use super::EmulatorError;
use crate::control::WaitQuery;
use crate::fault::{valid_fraction, FractionFault};
use crate::ids::{hex, now_ms};

/// A simulated user's message.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserMessage {
    /// `p2p` (1:1 with the bot) or `group`.
    pub chat_type: ChatType,
    /// The group's `chat_id` (required for groups; 1:1 chats get one per user).
    #[serde(default)]
    pub chat_id: Option<String>,
    /// The group's name (default: its id).
    #[serde(default)]
    pub chat_name: Option<String>,
    /// The sender's `user_id`; their `open_id` and `union_id` are made up on first use.
    pub user_id: String,
    /// The sender's display name (default: the user id).
    #[serde(default)]
    pub name: Option<String>,
    pub text: String,
    /// The message @-mentions the bot (its text then starts with `@_user_1`).
    #[serde(default)]
    pub mention_bot: bool,
}

impl UserMessage {
    /// `text` from `user` in their 1:1 chat with the bot.
    pub fn p2p(user: &str, text: &str) -> Self {
        Self {
            chat_type: ChatType::P2p,
            chat_id: None,
            chat_name: None,
            user_id: user.to_owned(),
            name: None,
            text: text.to_owned(),
            mention_bot: false,
        }
    }

    /// `text` from `user` in the group `chat_id`, @-mentioning the bot when `mention_bot`.
    pub fn group(chat_id: &str, user: &str, text: &str, mention_bot: bool) -> Self {
        Self {
            chat_type: ChatType::Group,
            chat_id: Some(chat_id.to_owned()),
            mention_bot,
            ..Self::p2p(user, text)
        }
    }
}

/// What happened to a posted message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PostedMessage {
    pub chat_id: String,
    /// `event.message.message_id` (`om_…`), the dedupe key and the target of a reply.
    pub message_id: String,
    /// `header.event_id`.
    pub event_id: String,
    /// The sender's `open_id`.
    pub open_id: String,
    /// Whether the platform pushes it to the bot (groups: only when @-mentioned, unless configured).
    pub pushed: bool,
}

/// A fault to inject, as `{"kind": …}` JSON.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultCommand {
    /// Close live connections (or only `connection`) with a WebSocket close frame.
    Close {
        #[serde(default)]
        connection: Option<u64>,
    },
    /// Turn live connections (or only `connection`) into zombies: pings still get pongs, but pushed events
    /// vanish. New connections are healthy.
    Zombie {
        #[serde(default)]
        connection: Option<u64>,
    },
    /// Silence live connections (or only `connection`), as a path that died without a FIN: nothing is read
    /// or written any more, no pong answers a ping. New connections are healthy.
    Silence {
        #[serde(default)]
        connection: Option<u64>,
    },
    /// Refuse `fraction` of IM and CardKit calls with 429 / 99991400. A fraction of 0 switches it off.
    RateLimitStorm { fraction: f64 },
    /// Push `fraction` of events twice at once (the copy on another connection when there is one). A
    /// fraction of 0 switches it off.
    DuplicatePushes { fraction: f64 },
    /// Expire every tenant token now.
    ExpireTokens,
    /// Delay every OpenAPI and discovery answer by `millis`.
    Slow { millis: u64 },
    /// Withdraw a scope (`im:message:send_as_bot`, `cardkit:card:write`, `im:message.p2p_msg:readonly`,
    /// `im:message.group_at_msg:readonly`): calls needing it get 99991672, events needing it are not pushed.
    RevokeScope { scope: String },
    /// Give a scope back.
    GrantScope { scope: String },
    /// Answer the next `count` discovery calls with `code` (1 busy, 1000040343 internal: retried; others
    /// fatal).
    DiscoveryErrors { code: i64, count: u32 },
    /// Refuse the next `count` WebSocket handshakes with `Handshake-Status` `status` (514 or 403) and, for
    /// 514, `Handshake-Autherrcode` `auth_code` (1000040350, the connection limit, is fatal to the SDKs).
    RefuseHandshakes {
        status: u16,
        #[serde(default)]
        auth_code: Option<i64>,
        count: u32,
    },
    /// Switch every fault off (does not revive zombies or return scopes).
    Clear,
}

/// A chat with its cards.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatView {
    #[serde(flatten)]
    pub chat: Chat,
    /// Card entities sent here, in order, each with its text and history.
    pub cards: Vec<Card>,
}

/// One live long connection.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionView {
    pub id: u64,
    pub device_id: String,
    pub service_id: i32,
    pub zombie: bool,
    pub silent: bool,
    pub opened_ms: u64,
    pub pings: u64,
}

/// Everything the page shows.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateView {
    pub version: u64,
    pub app_id: String,
    pub stats: Stats,
    pub faults: Faults,
    pub scopes: Vec<String>,
    pub connections: Vec<ConnectionView>,
    pub users: Vec<User>,
    pub chats: Vec<ChatView>,
    /// Every card entity, sent or not.
    pub cards: Vec<Card>,
}

impl World {
    /// A chat and its cards.
    pub fn chat_view(&self, id: &str) -> Option<ChatView> {
        self.chat(id).map(|c| ChatView {
            chat: c.clone(),
            cards: self.cards_in(id),
        })
    }

    pub(crate) fn state_view(&self, version: u64, app_id: &str) -> StateView {
        StateView {
            version,
            app_id: app_id.to_owned(),
            stats: self.stats(),
            faults: self.faults.clone(),
            scopes: self.scopes.clone(),
            connections: self
                .connections
                .iter()
                .map(|(id, c)| ConnectionView {
                    id: *id,
                    device_id: c.device_id.clone(),
                    service_id: c.service_id,
                    zombie: c.zombie,
                    silent: c.silent,
                    opened_ms: c.opened_ms,
                    pings: c.pings,
                })
                .collect(),
            users: self.users.values().cloned().collect(),
            chats: self.chats.iter().filter_map(|c| self.chat_view(&c.chat_id)).collect(),
            cards: self.cards().into_iter().cloned().collect(),
        }
    }

    fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

impl Shared {
    /// Post a simulated user's message and queue its `im.message.receive_v1` event when the platform would
    /// push it.
    pub(crate) fn post_message(&self, message: UserMessage) -> Result<PostedMessage, EmulatorError> {
        if message.user_id.trim().is_empty() {
            return Err(EmulatorError::InvalidRequest("`userId` must not be empty".to_owned()));
        }
        if message.text.is_empty() {
            return Err(EmulatorError::InvalidRequest("`text` must not be empty".to_owned()));
        }
        let posted = self.with(|world, config| {
            let user = world.user(&message.user_id, message.name.as_deref());
            let chat_id = match message.chat_type {
                ChatType::P2p => world.p2p_chat(&user).chat_id.clone(),
                ChatType::Group => {
                    let Some(id) = message.chat_id.clone().filter(|id| !id.is_empty()) else {
                        return Err(EmulatorError::InvalidRequest(
                            "a group message needs `chatId`".to_owned(),
                        ));
                    };
                    let name = message.chat_name.clone().unwrap_or_else(|| id.clone());
                    let chat = world.group_chat(&id, &name);
                    if let Some(name) = &message.chat_name {
                        chat.name = name.clone();
                    }
                    chat.chat_id.clone()
                }
            };
            let p2p = message.chat_type == ChatType::P2p;
            let pushed = if p2p {
                world.has_scope(SCOPE_P2P_EVENTS)
            } else {
                (message.mention_bot && world.has_scope(SCOPE_GROUP_AT_EVENTS))
                    || config.deliver_unmentioned_group_messages
            };
            let message_id = format!("om_{}", hex(32));
            let event_id = hex(32);
            let now = now_ms().to_string();
            // An @-mention is a placeholder in the text, resolved through `mentions[].key`.
            let mention = message.mention_bot && !p2p;
            let text = if mention {
                format!("@_user_1 {}", message.text)
            } else {
                message.text.clone()
            };
            let mut event_message = json!({
                "message_id": message_id,
                "create_time": now,
                "update_time": now,
                "chat_id": chat_id,
                "chat_type": message.chat_type.wire(),
                "message_type": "text",
                "content": json!({"text": text}).to_string(),
            });
            if mention {
                event_message["mentions"] = json!([{
                    "key": "@_user_1",
                    "id": {"union_id": self.bot_union_id, "user_id": "", "open_id": self.bot_open_id},
                    "name": config.bot_name,
                    "tenant_key": config.tenant_key,
                    "mentioned_type": "bot",
                }]);
            }
            let event = json!({
                "schema": "2.0",
                "header": {
                    "event_id": event_id,
                    "event_type": "im.message.receive_v1",
                    "create_time": now,
                    "token": "",
                    "app_id": config.app_id,
                    "tenant_key": config.tenant_key,
                },
                "event": {
                    "sender": {
                        "sender_id": {"union_id": user.union_id, "user_id": user.user_id, "open_id": user.open_id},
                        "sender_type": "user",
                        "tenant_key": config.tenant_key,
                    },
                    "message": event_message,
                },
            });
            let chat = world.chat_mut(&chat_id).expect("created above");
            chat.messages.push(ChatEntry::User {
                message_id: message_id.clone(),
                event_id: event_id.clone(),
                user_id: user.user_id.clone(),
                name: user.name.clone(),
                text: message.text.clone(),
                mentions_bot: message.mention_bot,
                pushed,
                at_ms: now_ms(),
            });
            world.message_chats.insert(message_id.clone(), chat_id.clone());
            if pushed {
                world.queue_event(event_id.clone(), event.to_string());
            }
            Ok(PostedMessage {
                chat_id,
                message_id,
                event_id,
                open_id: user.open_id,
                pushed,
            })
        })?;
        self.wake.notify_one();
        Ok(posted)
    }

    /// Apply a fault command; returns how many connections (or 1 for global switches) it touched.
    pub(crate) fn apply_fault(&self, command: FaultCommand) -> Result<usize, EmulatorError> {
        tracing::info!(?command, "fault injected");
        let bad_fraction = || EmulatorError::InvalidRequest("`fraction` must be in 0..=1".to_owned());
        let affected = self.with(|world, _| match command {
            FaultCommand::Close { connection } => {
                let mut n = 0;
                for (id, c) in &world.connections {
                    if connection.is_none_or(|want| want == *id) && c.tx.send(Outbound::Close).is_ok() {
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
                        let _ = c.tx.send(Outbound::Silence);
                        n += 1;
                    }
                }
                Ok(n)
            }
            FaultCommand::RateLimitStorm { fraction } => {
                if !valid_fraction(fraction) {
                    return Err(bad_fraction());
                }
                world.faults.rate_limit_storm = FractionFault::new(fraction, 429);
                Ok(1)
            }
            FaultCommand::DuplicatePushes { fraction } => {
                if !valid_fraction(fraction) {
                    return Err(bad_fraction());
                }
                world.faults.duplicate_pushes = FractionFault::new(fraction, 200);
                Ok(1)
            }
            FaultCommand::ExpireTokens => {
                let n = world.tokens.len();
                world.tokens.clear();
                Ok(n)
            }
            FaultCommand::Slow { millis } => {
                world.faults.slow_ms = millis.min(60_000);
                Ok(1)
            }
            FaultCommand::RevokeScope { scope } => {
                let before = world.scopes.len();
                world.scopes.retain(|s| *s != scope);
                Ok(before - world.scopes.len())
            }
            FaultCommand::GrantScope { scope } => {
                if world.scopes.contains(&scope) {
                    return Ok(0);
                }
                world.scopes.push(scope);
                Ok(1)
            }
            FaultCommand::DiscoveryErrors { code, count } => {
                if code == 0 {
                    return Err(EmulatorError::InvalidRequest(
                        "`code` 0 is success, not a fault".to_owned(),
                    ));
                }
                world.faults.discovery_error = (count > 0).then_some(CountedFault {
                    code,
                    auth_code: None,
                    remaining: count,
                });
                Ok(1)
            }
            FaultCommand::RefuseHandshakes {
                status,
                auth_code,
                count,
            } => {
                if !matches!(status, 403 | 514) {
                    return Err(EmulatorError::InvalidRequest("`status` must be 403 or 514".to_owned()));
                }
                world.faults.handshake_refusal = (count > 0).then_some(CountedFault {
                    code: i64::from(status),
                    auth_code: auth_code.or((status == 514).then_some(1_000_040_351)),
                    remaining: count,
                });
                Ok(1)
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

/// `GET /_emulator`.
pub(crate) async fn page() -> Response {
    crate::control::page(include_str!("page.html"))
}

/// `GET /_emulator/api/state`.
pub(crate) async fn state(State(shared): State<Arc<Shared>>) -> Json<StateView> {
    let version = shared.state.version();
    Json(shared.read(|world| world.state_view(version, &shared.config.app_id)))
}

/// `GET /_emulator/api/chats/{chat_id}`.
pub(crate) async fn chat(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<ChatView>, EmulatorError> {
    crate::control::found(shared.read(|world| world.chat_view(&id)), || format!("chat {id}"))
}

/// `GET /_emulator/api/cards/{card_id}`.
pub(crate) async fn card(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Card>, EmulatorError> {
    crate::control::found(shared.read(|world| world.card(&id).cloned()), || format!("card {id}"))
}

/// `POST /_emulator/api/messages`.
pub(crate) async fn post_message(
    State(shared): State<Arc<Shared>>,
    Json(message): Json<UserMessage>,
) -> Result<Json<PostedMessage>, EmulatorError> {
    shared.post_message(message).map(Json)
}

/// `POST /_emulator/api/faults`.
pub(crate) async fn fault(
    State(shared): State<Arc<Shared>>,
    Json(command): Json<FaultCommand>,
) -> Result<Json<serde_json::Value>, EmulatorError> {
    shared.apply_fault(command).map(crate::control::affected)
}

/// `GET /_emulator/api/wait?after=V&timeout_ms=T`.
pub(crate) async fn wait(State(shared): State<Arc<Shared>>, Query(query): Query<WaitQuery>) -> Json<serde_json::Value> {
    crate::control::wait(&shared.state, query).await
}
