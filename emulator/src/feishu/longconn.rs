//! The long connection (§1.2–§3): the ticket-checked WebSocket at `/ws/v2`, refusals with the
//! `Handshake-*` headers, control ping/pong, data frames carrying events and the client's response frames,
//! and the clock task that pushes due events, notices missing responses and ends streaming windows.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::wire::{header, Frame, ResponsePayload, WireClientConfig, METHOD_CONTROL, METHOD_DATA};
use super::world::{Connection, Outbound, Shared};
use crate::ids::now_ms;
use crate::watched::timer;

/// `Handshake-Status` of an authentication failure.
pub const HANDSHAKE_AUTH_FAILED: u16 = 514;
/// `Handshake-Status` of a forbidden client.
pub const HANDSHAKE_FORBIDDEN: u16 = 403;
/// `Handshake-Autherrcode` of the connection limit.
pub const AUTH_CODE_CONNECTION_LIMIT: i64 = 1_000_040_350;

/// Query of the WebSocket URL discovery handed out.
#[derive(Debug, Deserialize)]
pub struct ConnectQuery {
    #[serde(default)]
    ticket: String,
    #[serde(default)]
    device_id: String,
    #[serde(default)]
    service_id: String,
}

/// A refused upgrade: a non-101 answer with `Handshake-Status`, `Handshake-Msg` and, on 514,
/// `Handshake-Autherrcode`.
fn refuse(shared: &Shared, status: u16, auth_code: Option<i64>, msg: &str) -> Response {
    shared.with(|world, _| world.stats.handshakes_refused += 1);
    tracing::info!(status, ?auth_code, msg, "refusing a WebSocket handshake");
    let http = shared.config.handshake_http_status.unwrap_or(status);
    let mut response = (
        StatusCode::from_u16(http).unwrap_or(StatusCode::FORBIDDEN),
        msg.to_owned(),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert("handshake-status", HeaderValue::from(status));
    if let Ok(value) = HeaderValue::from_str(msg) {
        headers.insert("handshake-msg", value);
    }
    if let Some(code) = auth_code {
        headers.insert("handshake-autherrcode", HeaderValue::from(code));
    }
    response
}

/// `GET /ws/v2?…&ticket=…`: upgrade if the ticket is known, unexpired and unused (it is consumed either
/// way) and the app is under its connection limit.
pub async fn connect(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<ConnectQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let injected = shared.with(|world, _| {
        let fault = world.faults.handshake_refusal.as_mut()?;
        fault.remaining = fault.remaining.saturating_sub(1);
        let refusal = (fault.code, fault.auth_code);
        if fault.remaining == 0 {
            world.faults.handshake_refusal = None;
        }
        Some(refusal)
    });
    if let Some((status, auth_code)) = injected {
        let status = u16::try_from(status).unwrap_or(HANDSHAKE_AUTH_FAILED);
        return refuse(&shared, status, auth_code, "refused by an injected fault");
    }
    enum Verdict {
        Accept(i32),
        BadTicket,
        Full,
    }
    let verdict = shared.with(|world, config| {
        let ticket = world
            .tickets
            .remove(&query.ticket)
            .filter(|(expiry, device_id, service_id)| {
                *expiry > Instant::now() && *device_id == query.device_id && service_id.to_string() == query.service_id
            });
        match ticket {
            None => Verdict::BadTicket,
            Some(_) if world.connections.len() >= config.max_connections => Verdict::Full,
            Some((_, _, service_id)) => Verdict::Accept(service_id),
        }
    });
    match verdict {
        Verdict::BadTicket => refuse(
            &shared,
            HANDSHAKE_AUTH_FAILED,
            Some(shared.config.ticket_refusal_auth_code),
            "ticket is invalid, used or expired",
        ),
        Verdict::Full => refuse(
            &shared,
            HANDSHAKE_AUTH_FAILED,
            Some(AUTH_CODE_CONNECTION_LIMIT),
            "the app has too many connections",
        ),
        Verdict::Accept(service_id) => {
            upgrade.on_upgrade(move |socket| run_connection(shared, socket, query.device_id, service_id))
        }
    }
}

async fn run_connection(shared: Arc<Shared>, socket: WebSocket, device_id: String, service_id: i32) {
    let (tx, rx) = mpsc::unbounded_channel();
    let id = shared.with(|world, _| {
        let id = world.next_connection;
        world.next_connection += 1;
        world.stats.connections_opened += 1;
        world.connections.insert(
            id,
            Connection {
                device_id,
                service_id,
                tx,
                zombie: false,
                silent: false,
                opened_ms: now_ms(),
                pings: 0,
            },
        );
        id
    });
    let span = tracing::info_span!("feishu_connection", connection = id);
    shared.wake.notify_one();
    connection_loop(&shared, id, service_id, socket, rx)
        .instrument(span.clone())
        .await;
    shared.with(|world, _| world.connections.remove(&id));
    // Pushes left unanswered on this socket fail at their deadline and are retried.
    shared.wake.notify_one();
    span.in_scope(|| tracing::info!("connection closed"));
}

async fn connection_loop(
    shared: &Arc<Shared>,
    id: u64,
    service_id: i32,
    socket: WebSocket,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
) {
    tracing::info!("connection open");
    let (mut sink, mut stream) = socket.split();
    // A silent connection neither reads nor writes: the library would answer WebSocket pings it read.
    let mut silent = false;
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Outbound::Data(_) | Outbound::Control(_)) if silent => {}
                Some(Outbound::Data(_)) if is_zombie(shared, id) => {
                    tracing::debug!("a data frame vanishes on a zombie connection");
                }
                Some(Outbound::Data(bytes) | Outbound::Control(bytes)) => {
                    if sink.send(Message::Binary(bytes.into())).await.is_err() {
                        break;
                    }
                }
                Some(Outbound::Close) => {
                    tracing::info!("closing the connection (injected)");
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
                Some(Outbound::Silence) => {
                    tracing::info!("the connection goes silent");
                    silent = true;
                }
                None => break,
            },
            message = stream.next(), if !silent => match message {
                Some(Ok(Message::Binary(bytes))) => on_frame(shared, id, service_id, &bytes),
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(err)) => {
                    tracing::info!(cause = %err, "connection failed");
                    break;
                }
                Some(Ok(Message::Text(_))) => {
                    shared.with(|world, _| world.stats.undecodable_frames += 1);
                    tracing::warn!("ignoring a text message: the long connection carries binary frames only");
                }
                Some(Ok(_)) => {}
            },
        }
    }
}

/// One frame from the client: a ping (answered with a pong) or the response to a pushed event.
fn on_frame(shared: &Shared, id: u64, service_id: i32, bytes: &[u8]) {
    let frame = match Frame::decode(bytes) {
        Ok(frame) => frame,
        Err(err) => {
            shared.with(|world, _| world.stats.undecodable_frames += 1);
            tracing::warn!(cause = %err, "ignoring a binary message that is not a pbbp2 frame");
            return;
        }
    };
    if frame.service != service_id {
        shared.with(|world, _| world.stats.bad_service_frames += 1);
        tracing::warn!(
            got = frame.service,
            want = service_id,
            "a frame whose service is not the URL's service_id"
        );
    }
    match (frame.method, frame.header(header::TYPE)) {
        (METHOD_CONTROL, Some("ping")) => shared.with(|world, config| {
            world.stats.pings += 1;
            let Some(connection) = world.connections.get_mut(&id) else {
                return;
            };
            connection.pings += 1;
            let payload = config.pong_carries_config.then(|| {
                serde_json::to_vec(&WireClientConfig::from(config.client_config)).expect("the config serializes")
            });
            let pong = Frame::control(service_id, "pong", payload);
            if connection.tx.send(Outbound::Control(pong.encode_to_vec())).is_ok() {
                world.stats.pongs += 1;
            }
        }),
        (METHOD_DATA, _) => {
            let Some(message_id) = frame.header(header::MESSAGE_ID).map(str::to_owned) else {
                tracing::warn!("ignoring a data frame without a message_id header");
                return;
            };
            let payload: Option<ResponsePayload> =
                frame.payload.as_deref().and_then(|p| serde_json::from_slice(p).ok());
            let Some(payload) = payload else {
                tracing::warn!(%message_id, "a response frame whose payload is not {{\"code\": …}}: a failed push");
                shared.with(|world, config| world.on_response(config, &message_id, 500, Instant::now()));
                shared.wake.notify_one();
                return;
            };
            shared.with(|world, config| world.on_response(config, &message_id, payload.code, Instant::now()));
            shared.wake.notify_one();
        }
        (method, kind) => tracing::debug!(method, ?kind, "ignoring a frame"),
    }
}

/// Whether connection `id` is a zombie, whose data frames vanish (the platform believes it pushed them).
fn is_zombie(shared: &Shared, id: u64) -> bool {
    shared.read(|world| world.connections.get(&id).is_some_and(|c| c.zombie))
}

/// The platform's clock: advance the world whenever something falls due or changes, until `shutdown`.
pub(crate) async fn clock(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let next = shared.with(|world, config| world.tick(config, Instant::now()));
        let wait = timer(next.map(|at| at.saturating_duration_since(Instant::now())));
        tokio::select! {
            () = shared.wake.notified() => {}
            () = wait => {}
            _ = shutdown.changed() => return,
        }
    }
}
