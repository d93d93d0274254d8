//! The Stream side (§1.2, §2): the ticket-checked WebSocket at `/connect`, SYSTEM `ping` and `disconnect`
//! frames, ACK tracking, and the dispatcher that pushes CALLBACKs to a random live connection and pushes
//! them again when no ACK came within the redelivery window.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::openapi::PlatformError;
use super::wire::{AckFrame, Subscription};
use super::world::{now_ms, system_frame, Connection, Outbound, Shared, World};
use crate::watched::timer;

/// Query of the WebSocket URL.
#[derive(Debug, Deserialize)]
pub struct TicketQuery {
    #[serde(default)]
    ticket: String,
}

/// `GET /connect?ticket=…`: upgrade if the ticket is known, unexpired and unused; it is consumed either way.
pub async fn connect(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<TicketQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let ticket = shared.with(|world, _| {
        let found = world
            .tickets
            .remove(&query.ticket)
            .filter(|(expiry, _, _)| *expiry > Instant::now());
        if found.is_none() {
            world.stats.tickets_refused += 1;
        }
        found
    });
    let Some((_, subscriptions, ua)) = ticket else {
        tracing::info!("refusing a WebSocket with an unknown, used or expired ticket");
        return PlatformError::new(
            shared.config.ticket_refusal_status,
            "InvalidTicket",
            "ticket is invalid or expired",
        )
        .into_response();
    };
    upgrade.on_upgrade(move |socket| run_connection(shared, socket, subscriptions, ua))
}

async fn run_connection(shared: Arc<Shared>, socket: WebSocket, subscriptions: Vec<Subscription>, ua: Option<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let id = shared.with(|world, _| {
        let id = world.next_connection;
        world.next_connection += 1;
        world.stats.connections_opened += 1;
        world.connections.insert(
            id,
            Connection {
                subscriptions,
                tx,
                zombie: false,
                silent: false,
                disconnecting: false,
                opened_ms: now_ms(),
                ua,
            },
        );
        id
    });
    let span = tracing::info_span!("stream_connection", connection = id);
    shared.dispatch.notify_one();
    connection_loop(&shared, id, socket, rx).instrument(span.clone()).await;
    shared.with(|world, _| world.connections.remove(&id));
    // Pushes left un-ACKed on this socket are redelivered when their window ends.
    shared.dispatch.notify_one();
    span.in_scope(|| tracing::info!("connection closed"));
}

async fn connection_loop(shared: &Arc<Shared>, id: u64, socket: WebSocket, mut rx: mpsc::UnboundedReceiver<Outbound>) {
    tracing::info!("connection open");
    let (mut sink, mut stream) = socket.split();
    let ping_every = shared.config.ping_interval;
    let mut ping = timer(ping_every);
    let mut lifetime = timer(shared.config.connection_lifetime);
    let mut close_at = timer(None);
    // A silent connection neither reads nor writes: the library would answer pings it read with pongs.
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
                Some(Outbound::CloseAfter(after)) => close_at = timer(Some(after)),
                Some(Outbound::Silence) => {
                    tracing::info!("the connection goes silent");
                    silent = true;
                }
                None => break,
            },
            message = stream.next(), if !silent => match message {
                Some(Ok(Message::Text(text))) => on_upstream(shared, id, text.as_str()),
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(err)) => {
                    tracing::info!(cause = %err, "connection failed");
                    break;
                }
                // WebSocket pings are answered with pongs by the library, zombie or not.
                Some(Ok(Message::Ping(_))) => shared.with(|world, _| world.stats.ws_pings_received += 1),
                Some(Ok(_)) => {}
            },
            () = &mut ping, if !silent => {
                send_ping(shared, id);
                ping = timer(ping_every);
            }
            () = &mut lifetime, if !silent => {
                shared.with(|world, config| disconnect(world, config, id, "persistent connection is timeout"));
                lifetime = timer(None);
            }
            () = &mut close_at => {
                tracing::info!("dropping the connection after its disconnect notice");
                break;
            }
        }
    }
}

fn send_ping(shared: &Shared, id: u64) {
    shared.with(|world, _| {
        let Some(connection) = world.connections.get(&id) else {
            return;
        };
        if connection.zombie || connection.disconnecting {
            return;
        }
        let opaque = super::world::uuid_like();
        let data = json!({ "opaque": opaque });
        let (message_id, frame) = system_frame("ping", data);
        let sent = connection
            .tx
            .send(Outbound::Text(serde_json::to_string(&frame).expect("frames serialize")))
            .is_ok();
        if sent {
            world.ping_opaque.insert(message_id, frame.data);
            world.stats.pings_sent += 1;
        }
    });
}

/// Send a `disconnect` notice on connection `id`, stop delivering there, and drop it after the grace period.
pub(crate) fn disconnect(world: &mut World, config: &super::EmulatorConfig, id: u64, reason: &str) -> bool {
    let Some(connection) = world.connections.get_mut(&id) else {
        return false;
    };
    if connection.disconnecting {
        return false;
    }
    connection.disconnecting = true;
    let (_, frame) = system_frame("disconnect", json!({ "reason": reason }));
    let _ = connection
        .tx
        .send(Outbound::Text(serde_json::to_string(&frame).expect("frames serialize")));
    let _ = connection.tx.send(Outbound::CloseAfter(config.disconnect_grace));
    world.stats.disconnects_sent += 1;
    tracing::info!(connection = id, reason, "sent a disconnect notice");
    true
}

/// An upstream frame: an ACK of a CALLBACK, a ping or a disconnect notice.
fn on_upstream(shared: &Shared, id: u64, text: &str) {
    let ack: AckFrame = match serde_json::from_str(text) {
        Ok(ack) => ack,
        Err(err) => {
            tracing::warn!(cause = %err, "ignoring an upstream frame that is not a JSON ACK");
            return;
        }
    };
    let Some(message_id) = ack.message_id().map(str::to_owned) else {
        tracing::warn!("ignoring an ACK without headers.messageId");
        return;
    };
    let acked = shared.with(|world, _| {
        if let Some(sent) = world.ping_opaque.remove(&message_id) {
            // The opaque value must come back unchanged; SDKs re-serialize the JSON (Python adds spaces),
            // so compare documents, not bytes.
            let parse = |text: &str| serde_json::from_str::<serde_json::Value>(text).ok();
            let echoed = ack.data.as_ref().and_then(|d| d.as_str()).and_then(parse).is_some_and(|d| Some(d) == parse(&sent));
            if echoed {
                world.stats.pings_acked += 1;
            } else {
                world.stats.bad_ping_acks += 1;
                tracing::warn!(connection = id, "a ping ACK did not echo the ping's data");
            }
            return false;
        }
        // A non-200 code (Go sends 500 with LATER) leaves the push to be redelivered.
        if ack.code.unwrap_or(200) != 200 {
            tracing::info!(connection = id, %message_id, code = ?ack.code, message = ?ack.message, "callback refused; will redeliver");
            return false;
        }
        if world.pending.get(&message_id).is_some_and(|p| p.attempts > 0) {
            world.pending.remove(&message_id);
            world.stats.callbacks_acked += 1;
            return true;
        }
        false
    });
    if acked {
        tracing::debug!(connection = id, %message_id, "callback ACKed");
        shared.dispatch.notify_one();
    }
}

/// Push due CALLBACKs until `shutdown` turns true.
pub(crate) async fn dispatcher(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let next = shared.with(|world, config| world.dispatch_due(Instant::now(), config));
        let wait = timer(next.map(|at| at.saturating_duration_since(Instant::now())));
        tokio::select! {
            () = shared.dispatch.notified() => {}
            () = wait => {}
            _ = shutdown.changed() => return,
        }
    }
}
