//! The long connection (§1–§3): discover an endpoint (a fresh one for every connection), open the
//! WebSocket, ping, hand each received message to the core's inbox and answer the frame only once the
//! inbox has stored it (so a message the outbox lost is pushed again, and a redelivered one is a known
//! duplicate), and keep one live connection.
//!
//! - hearth pings right after opening and every `ping_interval_secs` (or the shorter interval a pong asks
//!   for); a ping without a pong for `pong_timeout_secs` means the path is dead: the socket is replaced.
//! - No event for `idle_timeout_secs`: the socket may be a zombie (its pongs come, its pushes vanish), so
//!   it is replaced; pushes it swallowed come again, since the platform retries unanswered ones.
//! - Fragmented events (`sum > 1`) are joined per `message_id`; sets not complete within
//!   [`FRAGMENT_TTL`] are dropped (the platform pushes them again), at most [`MAX_FRAGMENT_SETS`] kept.
//! - Failures to connect: exponential backoff with jitter, reset once a connection delivers a frame.

use std::collections::HashMap;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::api::OpenApi;
use super::frame::{self, Frame, CONTROL, DATA};
use super::message::{Event, FeishuMessage};
use crate::im::adapter::Inbox;
use crate::im::socket::{close_quickly, sleep_unless_stopped, Backoff, Due, Watchdog};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long the fragments of one event are kept waiting for the rest (the SDKs: 5 to 10 s).
pub const FRAGMENT_TTL: Duration = Duration::from_secs(10);
/// Most events whose fragments are being joined at once.
pub const MAX_FRAGMENT_SETS: usize = 64;

/// Why a connection ended.
enum Ended {
    Lost(String),
    Shutdown,
}

/// An open connection and what discovery said about it.
struct Connection {
    socket: Socket,
    service: i32,
    ping_every: Duration,
}

async fn connect(api: &OpenApi) -> Result<Connection, String> {
    let endpoint = api.discover().await.map_err(|e| e.to_string())?;
    let (socket, _) = tokio_tungstenite::connect_async(endpoint.url.as_str())
        .await
        .map_err(|e| handshake_refusal(&e).unwrap_or_else(|| format!("WebSocket connect failed: {e}")))?;
    let ours = Duration::from_secs(api.config().ping_interval_secs);
    let ping_every = endpoint.ping_interval.map_or(ours, |asked| asked.min(ours));
    Ok(Connection {
        socket,
        service: endpoint.service_id,
        ping_every,
    })
}

/// What the platform's `Handshake-*` headers say about a refused upgrade (§1.2).
fn handshake_refusal(err: &tokio_tungstenite::tungstenite::Error) -> Option<String> {
    let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
        return None;
    };
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok());
    let status = header("handshake-status")?;
    Some(format!(
        "the platform refused the connection: Handshake-Status {status}, {} (auth code {})",
        header("handshake-msg").unwrap_or("no message"),
        header("handshake-autherrcode").unwrap_or("none"),
    ))
}

/// Keep a long connection until `shutdown` turns true.
pub(crate) async fn run(api: &OpenApi, inbox: Inbox<FeishuMessage>, mut shutdown: watch::Receiver<bool>) {
    let config = api.config();
    let mut backoff = Backoff::new(config.backoff_initial_ms, config.backoff_max_ms);
    while !*shutdown.borrow() {
        let opened = tokio::select! {
            opened = connect(api) => opened,
            _ = shutdown.changed() => return,
        };
        let connection = match opened {
            Ok(connection) => connection,
            Err(err) => {
                api.health()
                    .disconnected(format!("cannot open the long connection: {err}"));
                let wait = backoff.failed();
                let failures = backoff.failures();
                tracing::warn!(cause = %err, failures, wait_ms = wait.as_millis() as u64, "cannot open the Feishu long connection; retrying");
                if !sleep_unless_stopped(wait, &mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        tracing::info!(service = connection.service, "Feishu long connection open");
        api.health().connected();
        match session(api, &inbox, connection, &mut shutdown, &mut backoff).await {
            Ended::Lost(reason) => {
                tracing::warn!(reason, "Feishu long connection lost; reconnecting");
                api.health().disconnected(format!("long connection lost: {reason}"));
            }
            Ended::Shutdown => {
                api.health().disconnected("stopped");
                return;
            }
        }
    }
}

/// Fragments of one event still being joined.
struct Fragments {
    parts: Vec<Option<Vec<u8>>>,
    since: Instant,
}

/// Join `frame`'s payload with the fragments seen before; the whole payload once the set is complete.
fn join(sets: &mut HashMap<String, Fragments>, frame: &Frame) -> Option<Vec<u8>> {
    let payload = frame.payload.clone().unwrap_or_default();
    let sum: usize = frame.header("sum").and_then(|s| s.parse().ok()).unwrap_or(1);
    if sum <= 1 {
        return Some(payload);
    }
    let seq: usize = frame.header("seq").and_then(|s| s.parse().ok())?;
    let id = frame.header("message_id")?.to_owned();
    if seq >= sum || sum > 1024 {
        return None;
    }
    sets.retain(|_, set| set.since.elapsed() < FRAGMENT_TTL);
    if !sets.contains_key(&id) && sets.len() >= MAX_FRAGMENT_SETS {
        tracing::warn!("too many fragmented events at once; dropping one (it is pushed again)");
        return None;
    }
    let set = sets.entry(id.clone()).or_insert_with(|| Fragments {
        parts: vec![None; sum],
        since: Instant::now(),
    });
    if set.parts.len() != sum {
        return None;
    }
    set.parts[seq] = Some(payload);
    if set.parts.iter().any(Option::is_none) {
        return None;
    }
    let set = sets.remove(&id)?;
    Some(set.parts.into_iter().flatten().flatten().collect())
}

/// The `code` answering one event: 200 once the inbox stored it (or it is not for the core), 500 when it
/// could not be stored, so the platform pushes it again.
async fn handle(inbox: &Inbox<FeishuMessage>, payload: &[u8]) -> u16 {
    match Event::parse(payload) {
        Ok(Event::Message(message)) => {
            let id = message.message_id.clone();
            match inbox.accept(message).await {
                Ok(()) => 200,
                Err(err) => {
                    tracing::error!(msg_id = %id, cause = %err, "cannot store a Feishu message; answering 500 so it is pushed again");
                    500
                }
            }
        }
        Ok(Event::Other { kind }) => {
            tracing::debug!(kind, "ignoring an event hearth does not answer");
            200
        }
        Err(err) => {
            tracing::warn!(cause = %err, "ignoring an unreadable event (answered, so it is not pushed again)");
            200
        }
    }
}

/// Read frames until the connection ends. Only events count as proof of the platform (a zombie still
/// answers pings); pongs prove the path.
async fn session(
    api: &OpenApi,
    inbox: &Inbox<FeishuMessage>,
    connection: Connection,
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> Ended {
    let config = api.config();
    let Connection {
        mut socket,
        service,
        ping_every,
    } = connection;
    let secs = Duration::from_secs;
    // The first ping goes at once, as the SDKs do.
    let mut watchdog = Watchdog::new(
        secs(config.idle_timeout_secs),
        ping_every,
        secs(config.pong_timeout_secs),
        Duration::ZERO,
    );
    let mut fragments = HashMap::new();
    loop {
        let received = tokio::select! {
            received = socket.next() => received,
            () = tokio::time::sleep_until(watchdog.wake()) => {
                match watchdog.due() {
                    Some(Due::Dead(reason)) => {
                        close_quickly(&mut socket).await;
                        return Ended::Lost(reason);
                    }
                    Some(Due::Ping) => {
                        if let Err(err) = socket.send(Message::Binary(frame::ping(service).into())).await {
                            return Ended::Lost(format!("cannot send a ping: {err}"));
                        }
                        watchdog.pinged();
                    }
                    None => {}
                }
                continue;
            }
            _ = shutdown.changed() => {
                close_quickly(&mut socket).await;
                return Ended::Shutdown;
            }
        };
        let bytes = match received {
            None | Some(Ok(Message::Close(_))) => return Ended::Lost("closed by the platform".to_owned()),
            Some(Err(err)) => return Ended::Lost(err.to_string()),
            Some(Ok(Message::Binary(bytes))) => bytes,
            Some(Ok(_)) => continue,
        };
        let frame = match Frame::decode(bytes.as_ref()) {
            Ok(frame) => frame,
            Err(err) => {
                tracing::warn!(cause = %err, "ignoring a binary message that is not a pbbp2 frame");
                continue;
            }
        };
        api.health().heard();
        backoff.reset();
        match (frame.method, frame.header("type")) {
            (CONTROL, Some("pong")) => {
                watchdog.ponged();
                let asked = frame
                    .payload
                    .as_deref()
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                    .and_then(|v| v.get("PingInterval").and_then(serde_json::Value::as_u64))
                    .filter(|secs| *secs > 0);
                if let Some(asked) = asked {
                    watchdog.ping_every(secs(asked).min(secs(config.ping_interval_secs)));
                }
            }
            (DATA, Some("event")) => {
                watchdog.heard();
                let Some(payload) = join(&mut fragments, &frame) else {
                    continue;
                };
                let started = std::time::Instant::now();
                let code = handle(inbox, &payload).await;
                let response = frame::response(frame, code, started.elapsed().as_millis());
                if let Err(err) = socket.send(Message::Binary(response.into())).await {
                    return Ended::Lost(format!("cannot answer an event: {err}"));
                }
            }
            (method, kind) => tracing::debug!(method, ?kind, "ignoring a frame"),
        }
    }
}
