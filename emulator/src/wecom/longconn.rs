//! The long connection (§2): the WebSocket at `/` (the SDK's `wsUrl`, `wss://openws.work.weixin.qq.com`
//! on the real platform), `aibot_subscribe`, `ping`, replies and proactive sends, each request
//! acknowledged with its own `req_id`, and one active connection per robot: a newer subscription gets the
//! older connection an `aibot_event_callback` with `disconnected_event`, then closes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};
use tracing::Instrument;

use super::wire::{cmd, Ack, ClientFrame, Headers, Push, ReplyBody, SubscribeBody, UpdateCardBody};
use super::world::{Connection, Outbound, Refusal, Shared, Via, World};
use super::EmulatorConfig;
use crate::ids::{hex, now_ms};

/// How long a server-initiated close waits for the peer's answering close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// `GET /`: upgrade to a long connection, unless [`EmulatorConfig::max_connections`] are open.
pub(crate) async fn connect(State(shared): State<Arc<Shared>>, upgrade: WebSocketUpgrade) -> Response {
    let full = shared.with(|world, config| {
        let full = world.connections.len() >= config.max_connections;
        if full {
            world.stats.connections_refused += 1;
        }
        full
    });
    if full {
        tracing::warn!("refusing a long connection: too many open");
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    }
    let max = shared.config.max_frame_bytes;
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| run_connection(shared, socket))
}

async fn run_connection(shared: Arc<Shared>, socket: WebSocket) {
    let (tx, rx) = mpsc::channel(shared.config.outbound_queue.max(1));
    let close = Arc::new(Notify::new());
    let id = shared.with(|world, _| {
        let id = world.next_connection;
        world.next_connection += 1;
        world.stats.connections_opened += 1;
        world.connections.insert(
            id,
            Connection {
                tx,
                close: close.clone(),
                subscribed: false,
                zombie: false,
                silent: false,
                opened_ms: now_ms(),
            },
        );
        id
    });
    let span = tracing::info_span!("wecom_connection", connection = id);
    connection_loop(&shared, id, socket, rx, &close)
        .instrument(span.clone())
        .await;
    shared.with(|world, _| {
        world.connections.remove(&id);
        if world.active == Some(id) {
            world.active = None;
        }
    });
    span.in_scope(|| tracing::info!("connection closed"));
}

async fn connection_loop(
    shared: &Arc<Shared>,
    id: u64,
    socket: WebSocket,
    mut rx: mpsc::Receiver<Outbound>,
    close: &Notify,
) {
    tracing::info!("connection open");
    let (mut sink, mut stream) = socket.split();
    let mut silent = false;
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Outbound::Text(_)) if silent => {}
                Some(Outbound::Text(text)) => {
                    let zombie = shared.read(|world| world.connections.get(&id).is_none_or(|c| c.zombie));
                    if !zombie && sink.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Some(Outbound::Close) => {
                    let normal = CloseFrame { code: close_code::NORMAL, reason: "".into() };
                    let _ = sink.send(Message::Close(Some(normal))).await;
                    // Let the peer answer the close, so it sees a clean one rather than a reset.
                    let answered = async {
                        while let Some(Ok(message)) = stream.next().await {
                            if matches!(message, Message::Close(_)) {
                                break;
                            }
                        }
                    };
                    let _ = tokio::time::timeout(CLOSE_GRACE, answered).await;
                    break;
                }
                Some(Outbound::Silence) => silent = true,
                None => break,
            },
            message = stream.next(), if !silent => match message {
                Some(Ok(Message::Text(text))) => {
                    let answer = on_frame(shared, id, text.as_str());
                    if let Some(delay) = answer.delay {
                        tokio::time::sleep(delay).await;
                    }
                    let zombie = shared.read(|world| world.connections.get(&id).is_none_or(|c| c.zombie));
                    if let Some(ack) = answer.ack.filter(|_| !zombie) {
                        if sink.send(Message::Text(ack.into())).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    tracing::info!("ignoring a binary frame: the protocol is JSON text frames");
                }
                Some(Ok(Message::Close(_))) => {
                    // The library queued the answering close frame; send it before dropping the socket.
                    let _ = sink.flush().await;
                    break;
                }
                None => break,
                Some(Err(err)) => {
                    tracing::info!(cause = %err, "connection failed");
                    break;
                }
                // WebSocket pings are answered with pongs by the library.
                Some(Ok(_)) => {}
            },
            () = close.notified() => break,
        }
    }
}

/// What answers one client frame.
struct Answer {
    ack: Option<String>,
    /// The injected `slow` delay before the acknowledgement.
    delay: Option<Duration>,
}

impl Answer {
    fn ack(req_id: &str, outcome: Result<(), Refusal>) -> Self {
        let ack = match outcome {
            Ok(()) => Ack::text(req_id, 0, "ok"),
            Err(refusal) => Ack::text(req_id, refusal.errcode, &refusal.errmsg),
        };
        Self {
            ack: Some(ack),
            delay: None,
        }
    }
}

/// Handle one client frame; returns its acknowledgement.
fn on_frame(shared: &Shared, id: u64, text: &str) -> Answer {
    let invalid = shared.config.errcodes.invalid_request;
    let frame: ClientFrame = match serde_json::from_str(text) {
        Ok(frame) => frame,
        Err(err) => {
            tracing::warn!(cause = %err, "a frame that is not a JSON request");
            return Answer::ack("", Err(Refusal::new(invalid, format!("invalid JSON frame: {err}"))));
        }
    };
    let req_id = frame.headers.req_id.clone();
    let Some(command) = frame.cmd.clone() else {
        return Answer::ack(&req_id, Err(Refusal::new(invalid, "cmd is required")));
    };
    if req_id.is_empty() {
        return Answer::ack("", Err(Refusal::new(invalid, "headers.req_id is required")));
    }
    if command == cmd::SUBSCRIBE {
        return Answer::ack(&req_id, subscribe(shared, id, frame.body.as_ref()));
    }
    let subscribed = shared.read(|world| world.connections.get(&id).is_some_and(|c| c.subscribed));
    if !subscribed {
        let code = shared.config.errcodes.not_subscribed;
        return Answer::ack(&req_id, Err(Refusal::new(code, "aibot_subscribe first")));
    }
    let body = frame.body.unwrap_or(Value::Null);
    let now = Instant::now();
    let slow = shared.read(|world| world.faults.slow_ms);
    let outcome = match command.as_str() {
        cmd::PING => {
            let dropped = shared.with(|world, _| {
                if !world.faults.drop_ping_acks {
                    world.stats.pings_acked += 1;
                }
                world.faults.drop_ping_acks
            });
            if dropped {
                return Answer { ack: None, delay: None };
            }
            Ok(())
        }
        cmd::RESPOND_MSG => match parse_reply(shared, &body) {
            Ok(reply) => shared.with(|world, config| {
                let outcome = world.respond(config, &req_id, &reply, now);
                if outcome.is_ok() && reply.stream().is_some_and(|s| s.finish) {
                    tracing::debug!(%req_id, "stream finished");
                }
                outcome
            }),
            Err(refusal) => Err(refusal),
        },
        cmd::RESPOND_WELCOME => match parse_reply(shared, &body) {
            Ok(reply) => shared.with(|world, config| event_reply(world, config, &req_id, "enter_chat", &reply, now)),
            Err(refusal) => Err(refusal),
        },
        cmd::RESPOND_UPDATE => match serde_json::from_value::<UpdateCardBody>(body) {
            Ok(update) if update.response_type == "update_template_card" && update.template_card.is_some() => {
                let card = ReplyBody::TemplateCard {
                    template_card: update.template_card.unwrap_or_default(),
                };
                shared.with(|world, config| event_reply(world, config, &req_id, "template_card_event", &card, now))
            }
            _ => Err(Refusal::new(
                invalid,
                "body must be {response_type: \"update_template_card\", template_card}",
            )),
        },
        cmd::SEND_MSG => shared.with(|world, config| world.send_msg(config, &body)),
        other if other.starts_with(cmd::UPLOAD_PREFIX) => {
            Err(Refusal::new(invalid, format!("{other} is not emulated")))
        }
        other => Err(Refusal::new(invalid, format!("unknown cmd {other}"))),
    };
    if outcome.is_ok() {
        shared.wake.notify_one();
    }
    let mut answer = Answer::ack(&req_id, outcome);
    if slow > 0 && command != cmd::PING {
        answer.delay = Some(Duration::from_millis(slow));
    }
    answer
}

fn parse_reply(shared: &Shared, body: &Value) -> Result<ReplyBody, Refusal> {
    serde_json::from_value(body.clone())
        .map_err(|err| Refusal::new(shared.config.errcodes.invalid_request, format!("invalid body: {err}")))
}

/// A welcome or card-update reply: its `req_id` must be that of an event of `eventtype`.
fn event_reply(
    world: &mut World,
    config: &EmulatorConfig,
    req_id: &str,
    eventtype: &str,
    reply: &ReplyBody,
    now: Instant,
) -> Result<(), Refusal> {
    let msgid = world.req_ids.get(req_id).cloned();
    let matches = msgid
        .as_deref()
        .and_then(|msgid| world.message(msgid))
        .is_some_and(|m| m.eventtype.as_deref() == Some(eventtype));
    match msgid {
        Some(msgid) if matches => world.apply_reply(config, &msgid, reply, Via::RespondMsg, now),
        _ => {
            world.stats.unknown_req_ids += 1;
            world.stats.replies_refused += 1;
            Err(Refusal::new(config.errcodes.unknown_req_id, "invalid req_id"))
        }
    }
}

/// `aibot_subscribe`: check the credentials; the connection takes the robot over from any older one.
fn subscribe(shared: &Shared, id: u64, body: Option<&Value>) -> Result<(), Refusal> {
    let credentials: Option<SubscribeBody> = body.and_then(|b| serde_json::from_value(b.clone()).ok());
    let config = &shared.config;
    let valid = credentials
        .as_ref()
        .is_some_and(|c| c.bot_id == config.bot_id && c.secret == config.secret);
    let outcome = shared.with(|world, config| {
        if !valid {
            world.stats.subscribes_refused += 1;
            tracing::info!("refusing aibot_subscribe: invalid bot_id or secret");
            return Err(Refusal::new(config.errcodes.auth_failed, "invalid bot_id or secret"));
        }
        if let Some(old) = world.active.filter(|old| *old != id) {
            take_over(world, config, old);
        }
        if let Some(connection) = world.connections.get_mut(&id) {
            connection.subscribed = true;
        }
        world.active = Some(id);
        world.stats.subscribes_ok += 1;
        Ok(())
    });
    if outcome.is_ok() {
        tracing::info!("subscribed");
        // Queued messages go out on this connection.
        shared.wake.notify_one();
    }
    outcome
}

/// Tell connection `old` it was replaced (`disconnected_event`), then close it.
fn take_over(world: &mut World, config: &EmulatorConfig, old: u64) {
    let Some(connection) = world.connections.get_mut(&old) else {
        return;
    };
    connection.subscribed = false;
    let body = json!({
        "msgid": format!("{}{}", hex(16), now_ms()),
        "create_time": now_ms() / 1000,
        "aibotid": config.bot_id,
        "from": {"userid": ""},
        "msgtype": "event",
        "event": {"eventtype": "disconnected_event"},
    });
    let push = Push {
        cmd: cmd::EVENT_CALLBACK,
        headers: Headers {
            req_id: format!("event_{}_{}", now_ms(), hex(8)),
        },
        body: &body,
    };
    let text = serde_json::to_string(&push).expect("pushes serialize");
    if connection.send(Outbound::Text(text)) {
        connection.send(Outbound::Close);
    }
    world.stats.takeovers += 1;
    tracing::info!(
        connection = old,
        "a newer connection took the robot over; closing the older one"
    );
}
