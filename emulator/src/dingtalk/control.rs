//! The emulator's own control surface, under `/_emulator`: simulated users posting messages, fault
//! injection, read-back of conversations and cards (final text and full update history), a change feed to
//! await, and the HTML page. None of it is part of the DingTalk protocol.
//!
//! | Route | What |
//! |---|---|
//! | `GET /_emulator` | the page (conversations and cards, refreshed as they change) |
//! | `GET /_emulator/api/state` | [`StateView`]: version, stats, faults, connections, conversations with cards |
//! | `GET /_emulator/api/conversations/{id}` | one [`ConversationView`] |
//! | `GET /_emulator/api/cards/{outTrackId}` | one [`Card`] |
//! | `POST /_emulator/api/messages` | [`UserMessage`] → [`PostedMessage`] |
//! | `POST /_emulator/api/faults` | [`FaultCommand`] → `{"affected": n}` |
//! | `GET /_emulator/api/wait?after=V&timeout_ms=T` | returns `{"version"}` once the version passes V (or T ms pass) |

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::stream::disconnect;
use super::world::{
    hex, now_ms, Card, ChatEntry, Conversation, ConversationKind, Faults, FractionFault, Outbound, Shared, Stats,
    Webhook, World,
};
use super::EmulatorError;
use crate::control::WaitQuery;

/// A simulated user's message.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserMessage {
    /// `single` (1:1 with the robot) or `group`.
    pub conversation_type: ConversationKind,
    /// The group's id (required for groups; 1:1 chats get one per user).
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// The group's title (default: its id).
    #[serde(default)]
    pub conversation_title: Option<String>,
    /// The sender's staff id (`senderStaffId`).
    pub user_id: String,
    /// The sender's display name (default: the staff id).
    #[serde(default)]
    pub nick: Option<String>,
    pub text: String,
    /// The message @-mentions the robot (always true in effect for 1:1 chats).
    #[serde(default)]
    pub at_bot: bool,
    /// The sender is an external member, or the robot is not published yet: the callback's
    /// `senderStaffId` is empty (protocol notes §3). `userId` still tells simulated users apart.
    #[serde(default)]
    pub external: bool,
    /// The callback's `senderUnionId`; absent when `None`. A 1:1 card may address it (`userIdType` 2).
    #[serde(default)]
    pub union_id: Option<String>,
}

impl UserMessage {
    /// `text` from `user` in their 1:1 chat with the robot.
    pub fn single(user: &str, text: &str) -> Self {
        Self {
            conversation_type: ConversationKind::Single,
            conversation_id: None,
            conversation_title: None,
            user_id: user.to_owned(),
            nick: None,
            text: text.to_owned(),
            at_bot: false,
            external: false,
            union_id: None,
        }
    }

    /// `text` from `user` in the group `group`, @-mentioning the robot when `at_bot`.
    pub fn group(group: &str, user: &str, text: &str, at_bot: bool) -> Self {
        Self {
            conversation_type: ConversationKind::Group,
            conversation_id: Some(group.to_owned()),
            at_bot,
            ..Self::single(user, text)
        }
    }
}

/// What happened to a posted message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PostedMessage {
    pub conversation_id: String,
    /// `data.msgId` of the callback.
    pub msg_id: String,
    /// `headers.messageId` of the push.
    pub message_id: String,
    /// Whether the platform pushes it to the robot (groups: only when @-mentioned, unless configured).
    pub pushed: bool,
}

/// A fault to inject, as `{"kind": …}` JSON.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultCommand {
    /// Send a SYSTEM `disconnect` on every live connection (or only `connection`).
    Disconnect {
        #[serde(default)]
        connection: Option<u64>,
        #[serde(default)]
        reason: Option<String>,
    },
    /// Turn live connections (or only `connection`) into zombies: WebSocket pings still get pongs, but no
    /// frame is delivered on them any more. New connections are healthy.
    Zombie {
        #[serde(default)]
        connection: Option<u64>,
    },
    /// Silence live connections (or only `connection`), as a network path that died without a FIN: the
    /// emulator stops reading and writing them, so nothing arrives and no WebSocket ping gets a pong.
    /// New connections are healthy.
    Silence {
        #[serde(default)]
        connection: Option<u64>,
    },
    /// Fail `fraction` of card streaming and card update calls with `status` (429 `system.busy`, or 403
    /// `QpsLimitForAppkeyAndApi`). A fraction of 0 switches it off.
    CardUpdateFailures {
        fraction: f64,
        #[serde(default = "default_busy")]
        status: u16,
    },
    /// Fail `fraction` of card data updates (`PUT /v1.0/card/instances`, e.g. `flowStatus`) only, with
    /// `status` as [`FaultCommand::CardUpdateFailures`] does; streaming still works.
    CardDataUpdateFailures {
        fraction: f64,
        #[serde(default = "default_busy")]
        status: u16,
    },
    /// Answer `fraction` of card deliveries with `success: false` in an HTTP 200.
    DeliveryFailures { fraction: f64 },
    /// Push `fraction` of CALLBACKs twice at once, with the same `headers.messageId` and `data` (the
    /// second copy on another live connection when there is one). A fraction of 0 switches it off.
    DuplicatePushes { fraction: f64 },
    /// Expire every access token now.
    ExpireTokens,
    /// Delay every OpenAPI answer by `millis`.
    Slow { millis: u64 },
    /// Withdraw a permission scope (`Card.Streaming.Write`, `Card.Instance.Write`, `qyapi_robot_sendmsg`).
    RevokePermission { permission: String },
    /// Give a withdrawn permission back.
    GrantPermission { permission: String },
    /// Expire every sessionWebhook now.
    ExpireWebhooks,
    /// Switch every fault off (does not revive zombies).
    Clear,
}

/// A fault refusing `fraction` of calls with `status` (403 or 429); `None` for a fraction of 0.
fn throttle_fault(fraction: f64, status: u16) -> Result<Option<FractionFault>, EmulatorError> {
    if !(0.0..=1.0).contains(&fraction) || !matches!(status, 403 | 429) {
        return Err(EmulatorError::InvalidRequest(
            "`fraction` must be in 0..=1 and `status` 403 or 429".to_owned(),
        ));
    }
    Ok((fraction > 0.0).then_some(FractionFault {
        fraction,
        status,
        acc: 0.0,
    }))
}

fn default_busy() -> u16 {
    429
}

/// A conversation with its cards.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationView {
    #[serde(flatten)]
    pub conversation: Conversation,
    /// Cards delivered here, in order, each with its final text and update history.
    pub cards: Vec<Card>,
}

/// One live Stream connection.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionView {
    pub id: u64,
    pub zombie: bool,
    pub silent: bool,
    pub disconnecting: bool,
    pub opened_ms: u64,
    pub ua: Option<String>,
    pub topics: Vec<String>,
}

/// Everything the page shows.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateView {
    pub version: u64,
    pub client_id: String,
    pub stats: Stats,
    pub faults: Faults,
    pub connections: Vec<ConnectionView>,
    pub conversations: Vec<ConversationView>,
}

impl World {
    /// A conversation and its cards.
    pub fn conversation_view(&self, id: &str) -> Option<ConversationView> {
        self.conversation(id).map(|c| ConversationView {
            conversation: c.clone(),
            cards: self.cards_in(id),
        })
    }

    /// Every conversation with its cards, in creation order.
    pub fn conversation_views(&self) -> Vec<ConversationView> {
        self.conversations
            .iter()
            .filter_map(|c| self.conversation_view(&c.conversation_id))
            .collect()
    }

    pub(crate) fn state_view(&self, version: u64, client_id: &str) -> StateView {
        StateView {
            version,
            client_id: client_id.to_owned(),
            stats: self.stats(),
            faults: self.faults.clone(),
            connections: self
                .connections
                .iter()
                .map(|(id, c)| ConnectionView {
                    id: *id,
                    zombie: c.zombie,
                    silent: c.silent,
                    disconnecting: c.disconnecting,
                    opened_ms: c.opened_ms,
                    ua: c.ua.clone(),
                    topics: c
                        .subscriptions
                        .iter()
                        .map(|s| format!("{}:{}", s.kind, s.topic))
                        .collect(),
                })
                .collect(),
            conversations: self.conversation_views(),
        }
    }
}

impl Shared {
    /// Post a simulated user's message and queue its callback when the platform would push it.
    pub(crate) fn post_message(&self, message: UserMessage) -> Result<PostedMessage, EmulatorError> {
        if message.user_id.trim().is_empty() {
            return Err(EmulatorError::InvalidRequest("`userId` must not be empty".to_owned()));
        }
        if message.text.is_empty() {
            return Err(EmulatorError::InvalidRequest("`text` must not be empty".to_owned()));
        }
        let addr = self.addr;
        let posted = self.with(|world, config| {
            let nick = message.nick.clone().unwrap_or_else(|| message.user_id.clone());
            let (conversation_id, title) = match message.conversation_type {
                ConversationKind::Single => {
                    let c = world.single_conversation(&message.user_id, &nick);
                    if message.union_id.is_some() {
                        c.union_id = message.union_id.clone();
                    }
                    (c.conversation_id.clone(), String::new())
                }
                ConversationKind::Group => {
                    let Some(id) = message.conversation_id.clone().filter(|id| !id.is_empty()) else {
                        return Err(EmulatorError::InvalidRequest(
                            "a group message needs `conversationId`".to_owned(),
                        ));
                    };
                    let title = message.conversation_title.clone().unwrap_or_else(|| id.clone());
                    let c = world.group_conversation(&id, &title);
                    (c.conversation_id.clone(), c.title.clone())
                }
            };
            let single = message.conversation_type == ConversationKind::Single;
            let pushed = single || message.at_bot || config.deliver_unmentioned_group_messages;
            let msg_id = format!("msg{}==", hex(22));
            let message_id = format!("{}_{}_{}_{}", hex(8), hex(3), hex(11), hex(5));
            let session = hex(32);
            let expires_ms = now_ms() + config.session_webhook_ttl.as_millis() as u64;
            let chatbot_user_id = format!("$:LWCP_v1:$emu-bot-{}", config.client_id);
            // In groups the @mention is stripped from the text and a leading space remains (§3).
            let content = if !single && message.at_bot {
                format!(" {}", message.text)
            } else {
                message.text.clone()
            };
            let mut data = json!({
                "conversationId": conversation_id,
                "conversationType": message.conversation_type.wire(),
                "chatbotCorpId": config.corp_id,
                "chatbotUserId": chatbot_user_id,
                "robotCode": config.client_id,
                "msgId": msg_id,
                "msgtype": "text",
                "text": {"content": content},
                "createAt": now_ms(),
                "senderId": format!("$:LWCP_v1:$emu-{}", message.user_id),
                "senderNick": nick,
                "senderStaffId": if message.external { "" } else { message.user_id.as_str() },
                "senderCorpId": config.corp_id,
                "senderPlatform": "Win",
                "isAdmin": false,
                "isInAtList": single || message.at_bot,
                "sessionWebhook": format!("http://{addr}/robot/sendBySession?session={session}"),
                "sessionWebhookExpiredTime": expires_ms,
            });
            if let Some(union_id) = &message.union_id {
                data["senderUnionId"] = json!(union_id);
            }
            if !single {
                data["conversationTitle"] = json!(title);
                if message.at_bot {
                    data["atUsers"] = json!([{"dingtalkId": chatbot_user_id}]);
                }
            }
            world.webhooks.insert(
                session,
                Webhook {
                    conversation_id: conversation_id.clone(),
                    expires_ms,
                },
            );
            let conversation = world.conversation_mut(&conversation_id).expect("created above");
            conversation.messages.push(ChatEntry::User {
                msg_id: msg_id.clone(),
                message_id: message_id.clone(),
                sender_staff_id: if message.external {
                    String::new()
                } else {
                    message.user_id.clone()
                },
                sender_nick: nick,
                text: message.text.clone(),
                at_bot: message.at_bot,
                pushed,
                at_ms: now_ms(),
            });
            if pushed {
                world.queue_callback(message_id.clone(), data.to_string(), &hex(32), &config.client_id);
            }
            Ok(PostedMessage {
                conversation_id,
                msg_id,
                message_id,
                pushed,
            })
        })?;
        self.dispatch.notify_one();
        Ok(posted)
    }

    /// Apply a fault command; returns how many connections (or 1 for global switches) it touched.
    pub(crate) fn apply_fault(&self, command: FaultCommand) -> Result<usize, EmulatorError> {
        tracing::info!(?command, "fault injected");
        let fraction_ok = |f: f64| (0.0..=1.0).contains(&f);
        self.with(|world, config| match command {
            FaultCommand::Disconnect { connection, reason } => {
                let ids: Vec<u64> = world
                    .connections
                    .keys()
                    .copied()
                    .filter(|id| connection.is_none_or(|c| c == *id))
                    .collect();
                let reason = reason.unwrap_or_else(|| "connection is expired".to_owned());
                Ok(ids
                    .into_iter()
                    .filter(|id| disconnect(world, config, *id, &reason))
                    .count())
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
            FaultCommand::CardUpdateFailures { fraction, status } => {
                world.faults.card_update_failures = throttle_fault(fraction, status)?;
                Ok(1)
            }
            FaultCommand::CardDataUpdateFailures { fraction, status } => {
                world.faults.card_data_update_failures = throttle_fault(fraction, status)?;
                Ok(1)
            }
            FaultCommand::DeliveryFailures { fraction } => {
                if !fraction_ok(fraction) {
                    return Err(EmulatorError::InvalidRequest("`fraction` must be in 0..=1".to_owned()));
                }
                world.faults.delivery_failures = (fraction > 0.0).then_some(FractionFault {
                    fraction,
                    status: 200,
                    acc: 0.0,
                });
                Ok(1)
            }
            FaultCommand::DuplicatePushes { fraction } => {
                if !fraction_ok(fraction) {
                    return Err(EmulatorError::InvalidRequest("`fraction` must be in 0..=1".to_owned()));
                }
                world.faults.duplicate_pushes = (fraction > 0.0).then_some(FractionFault {
                    fraction,
                    status: 200,
                    acc: 0.0,
                });
                Ok(1)
            }
            FaultCommand::ExpireTokens => {
                let n = world.tokens.len();
                world.tokens.clear();
                Ok(n)
            }
            FaultCommand::Slow { millis } => {
                world.faults.slow_ms = millis;
                Ok(1)
            }
            FaultCommand::RevokePermission { permission } => {
                if !world.faults.revoked_permissions.contains(&permission) {
                    world.faults.revoked_permissions.push(permission);
                }
                Ok(1)
            }
            FaultCommand::GrantPermission { permission } => {
                world.faults.revoked_permissions.retain(|p| *p != permission);
                Ok(1)
            }
            FaultCommand::ExpireWebhooks => {
                for hook in world.webhooks.values_mut() {
                    hook.expires_ms = 0;
                }
                Ok(world.webhooks.len())
            }
            FaultCommand::Clear => {
                world.faults = Faults::default();
                Ok(1)
            }
        })
    }
}

/// `GET /_emulator`.
pub(crate) async fn page() -> Response {
    crate::control::page(include_str!("page.html"))
}

/// `GET /_emulator/api/state`.
pub(crate) async fn state(State(shared): State<Arc<Shared>>) -> Json<StateView> {
    let version = shared.version();
    Json(shared.read(|world| world.state_view(version, &shared.config.client_id)))
}

/// `GET /_emulator/api/conversations/{id}`.
pub(crate) async fn conversation(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<ConversationView>, EmulatorError> {
    crate::control::found(shared.read(|world| world.conversation_view(&id)), || {
        format!("conversation {id}")
    })
}

/// `GET /_emulator/api/cards/{outTrackId}`.
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
