//! The Stream client: open a connection (a fresh ticket every time), read frames, answer pings, hand robot
//! messages to the core's inbox (which persists them before the ACK), and keep one live connection.
//!
//! - A `disconnect` frame: open the replacement first, then close the old socket.
//! - A WebSocket ping of our own every `ping_interval_secs`; no pong within `pong_timeout_secs`: the path is
//!   dead, replace the socket (found within about 15 s by default, however rarely the platform pings).
//! - No frame for `idle_timeout_secs`: the socket answers pings but delivers nothing (a zombie), replace it.
//! - Failures to connect: exponential backoff from `backoff_initial_ms` to `backoff_max_ms`, plus up to 100%
//!   jitter; the delay resets once a connection delivers a frame. One connect attempt at a time.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::api::{DingTalkError, OpenApi};
use super::config::DingTalkConfig;
use super::message::{ack, BotMessage, Inbound};
use crate::im::adapter::Inbox;
use crate::im::socket::{close_quickly, sleep_unless_stopped, Backoff, Due, Watchdog};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a session ended.
enum SessionEnd {
    /// The server sent `disconnect`: replace the socket, then close it.
    Notice(Box<Socket>),
    /// No frame within the idle timeout, or the socket closed or failed.
    Dead(String),
    /// The connector is shutting down.
    Shutdown,
}

/// Open a connection: the open call, then the WebSocket with the ticket.
async fn connect(api: &OpenApi) -> Result<Socket, String> {
    let endpoint = api.open_connection().await.map_err(|e: DingTalkError| e.to_string())?;
    let url = format!("{}?ticket={}", endpoint.endpoint, endpoint.ticket);
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| format!("WebSocket connect failed: {e}"))?;
    Ok(socket)
}

/// Keep a Stream connection until `shutdown` turns true.
pub(crate) async fn run(api: &OpenApi, inbox: Inbox<BotMessage>, mut shutdown: watch::Receiver<bool>) {
    let config = api.config().clone();
    let mut backoff = Backoff::new(config.backoff_initial_ms, config.backoff_max_ms);
    let mut retiring: Option<Box<Socket>> = None;
    while !*shutdown.borrow() {
        let socket = tokio::select! {
            socket = connect(api) => socket,
            _ = shutdown.changed() => return,
        };
        // The replacement is open (or failed): the socket that announced its disconnect can go now.
        if let Some(mut old) = retiring.take() {
            let _ = (*old).close(None).await;
        }
        let socket = match socket {
            Ok(socket) => socket,
            Err(err) => {
                api.health()
                    .disconnected(format!("cannot open a Stream connection: {err}"));
                let delay = backoff.failed();
                let failures = backoff.failures();
                tracing::warn!(cause = %err, failures, delay_ms = delay.as_millis() as u64, "cannot open a DingTalk Stream connection; retrying");
                if !sleep_unless_stopped(delay, &mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        tracing::info!("DingTalk Stream connected");
        let health = api.health();
        health.connected();
        match session(api, &inbox, socket, &mut shutdown, &mut backoff, &config).await {
            SessionEnd::Notice(old) => retiring = Some(old),
            SessionEnd::Dead(reason) => {
                tracing::warn!(reason, "DingTalk Stream connection lost; reconnecting");
                health.disconnected(format!("Stream connection lost: {reason}"));
            }
            SessionEnd::Shutdown => {
                health.disconnected("stopped");
                return;
            }
        }
    }
}

/// Read frames until the connection ends. Besides answering the platform, the session pings the socket
/// itself every `ping_interval_secs` and gives it up when a ping goes unanswered for `pong_timeout_secs`
/// (a dead path), or when no frame arrives for `idle_timeout_secs` (a socket that answers pings but
/// delivers nothing). Only text frames count as frames: pongs prove the path, not the platform.
async fn session(
    api: &OpenApi,
    inbox: &Inbox<BotMessage>,
    mut socket: Socket,
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
    config: &DingTalkConfig,
) -> SessionEnd {
    let secs = Duration::from_secs;
    let ping_every = secs(config.ping_interval_secs);
    let mut watchdog = Watchdog::new(
        secs(config.idle_timeout_secs),
        ping_every,
        secs(config.pong_timeout_secs),
        ping_every,
    );
    loop {
        let message = tokio::select! {
            message = socket.next() => message,
            () = tokio::time::sleep_until(watchdog.wake()) => {
                match watchdog.due() {
                    Some(Due::Dead(reason)) => {
                        close_quickly(&mut socket).await;
                        return SessionEnd::Dead(reason);
                    }
                    Some(Due::Ping) => {
                        if let Err(err) = socket.send(Message::Ping(Default::default())).await {
                            return SessionEnd::Dead(format!("cannot send a ping: {err}"));
                        }
                        watchdog.pinged();
                    }
                    None => {}
                }
                continue;
            }
            _ = shutdown.changed() => {
                close_quickly(&mut socket).await;
                return SessionEnd::Shutdown;
            }
        };
        let text = match message {
            None => return SessionEnd::Dead("closed by the server".to_owned()),
            Some(Err(err)) => return SessionEnd::Dead(err.to_string()),
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Pong(_))) => {
                watchdog.ponged();
                continue;
            }
            Some(Ok(Message::Close(_))) => return SessionEnd::Dead("closed by the server".to_owned()),
            Some(Ok(_)) => continue,
        };
        watchdog.heard();
        backoff.reset();
        api.health().heard();
        let inbound = match Inbound::parse(text.as_str()) {
            Ok(inbound) => inbound,
            Err(err) => {
                tracing::warn!(cause = %err, "ignoring a malformed Stream frame");
                continue;
            }
        };
        let reply = match inbound {
            Inbound::Ping { message_id, data } => ack(&message_id, 200, "OK", &data),
            Inbound::Disconnect {
                message_id,
                data,
                reason,
            } => {
                tracing::info!(
                    reason,
                    "DingTalk announced a disconnect; opening a new connection first"
                );
                let _ = socket
                    .send(Message::Text(ack(&message_id, 200, "OK", &data).into()))
                    .await;
                return SessionEnd::Notice(Box::new(socket));
            }
            Inbound::Bot { message_id, message } => match inbox.accept(*message).await {
                // Persisted (or a known duplicate): now the ACK.
                Ok(()) => ack(&message_id, 200, "OK", r#"{"response":null}"#),
                Err(err) => {
                    tracing::error!(cause = %err, "cannot persist a DingTalk message; not acknowledging it so it is redelivered");
                    ack(&message_id, 500, "cannot persist the message", r#"{"response":null}"#)
                }
            },
            Inbound::BadBot { message_id, error } => {
                tracing::warn!(
                    error,
                    "unreadable robot message; acknowledging so it is not redelivered"
                );
                ack(&message_id, 400, "bad message", r#"{"response":null}"#)
            }
            Inbound::Unknown {
                message_id,
                kind,
                topic,
            } => {
                tracing::info!(kind, topic, "ignoring an unhandled Stream frame");
                ack(&message_id, 404, "topic not handled", "")
            }
        };
        if let Err(err) = socket.send(Message::Text(reply.into())).await {
            return SessionEnd::Dead(format!("cannot send an ACK: {err}"));
        }
    }
}
