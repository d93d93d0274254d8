//! The long connection (§2 of `shared/protocols/wecom.md`), as the official SDK keeps it: connect,
//! `aibot_subscribe` with bot id and secret, a `ping` every `heartbeat_secs` (the socket is dead after
//! `missed_heartbeats` pings in a row without an acknowledgement), pushes handed to the core's inbox, and
//! reconnects with exponential back-off (`backoff_initial_ms` doubling to `backoff_max_ms`, reset once a
//! subscription succeeds).
//!
//! One connection holds a robot: when another instance subscribes, the platform sends this one a
//! `disconnected_event` and closes it. hearth then does not reconnect (that would take the robot back
//! and start a fight), unless `reconnect_after_takeover_secs` says when; the takeover is logged and shown
//! on the status page.
//!
//! Requests ([`Link::request`]) go out through the live connection's writer and wait for the
//! acknowledgement echoing their `req_id` (several requests may share one: a stream's frames); a request
//! while no connection is subscribed fails at once, and the core retries it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::config::WeComConfig;
use super::message::{cmd, req_id, request, Frame, WeComMessage};
use super::streams::WeComError;
use crate::im::adapter::Inbox;
use crate::im::socket::{close_quickly, sleep_unless_stopped, Backoff};
use crate::platform::PlatformHealth;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Largest frame read from the platform.
const MAX_FRAME_BYTES: usize = 4 << 20;
/// Frames waiting to be written to the connection.
const WRITE_QUEUE: usize = 256;

/// The result of one request, as its acknowledgement says.
type Acked = Result<(), WeComError>;

/// The requests awaiting their acknowledgement on one `req_id`, oldest first: each with its command.
type Waiting = VecDeque<(&'static str, oneshot::Sender<Acked>)>;

/// The live connection's writer and the requests awaiting their acknowledgement.
pub(crate) struct Link {
    writer: Mutex<Option<mpsc::Sender<String>>>,
    /// By `req_id`, oldest first: the platform acknowledges a connection's requests in order.
    pending: Mutex<HashMap<String, Waiting>>,
    ack_timeout: Duration,
}

impl Link {
    pub(crate) fn new(ack_timeout: Duration) -> Self {
        Self {
            writer: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            ack_timeout,
        }
    }

    /// Send `cmd` with `req_id` and `body`, and wait for its acknowledgement.
    pub(crate) async fn request(
        &self,
        cmd: &'static str,
        req_id: String,
        body: Option<serde_json::Value>,
    ) -> Result<(), WeComError> {
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(WeComError::NotConnected(cmd))?;
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(req_id.clone())
            .or_default()
            .push_back((cmd, tx));
        if writer.send(request(cmd, &req_id, body)).await.is_err() {
            return Err(WeComError::ConnectionLost(cmd));
        }
        match tokio::time::timeout(self.ack_timeout, rx).await {
            Ok(Ok(acked)) => acked,
            Ok(Err(_)) => Err(WeComError::ConnectionLost(cmd)),
            Err(_) => {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(queue) = pending.get_mut(&req_id) {
                    queue.retain(|(_, tx)| !tx.is_closed());
                    if queue.is_empty() {
                        pending.remove(&req_id);
                    }
                }
                Err(WeComError::AckTimeout(cmd))
            }
        }
    }

    /// An acknowledgement arrived: settle the oldest request with its `req_id`.
    fn acknowledge(&self, frame: &Frame) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let Some(queue) = pending.get_mut(&frame.headers.req_id) else {
            tracing::debug!(req_id = %frame.headers.req_id, "an acknowledgement of no pending request");
            return;
        };
        if let Some((call, tx)) = queue.pop_front() {
            let acked = match frame.errcode {
                0 => Ok(()),
                errcode => Err(WeComError::Platform {
                    call,
                    errcode,
                    errmsg: frame.errmsg.clone(),
                }),
            };
            let _ = tx.send(acked);
        }
        if queue.is_empty() {
            pending.remove(&frame.headers.req_id);
        }
    }

    /// The connection is up (`Some`) or gone (`None`); requests awaiting acknowledgement on a gone one fail.
    fn attach(&self, writer: Option<mpsc::Sender<String>>) {
        let gone = writer.is_none();
        *self.writer.lock().unwrap_or_else(|p| p.into_inner()) = writer;
        if gone {
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }
}

/// Why a session ended.
enum SessionEnd {
    /// The socket closed, failed, or missed its heartbeats.
    Dead(String),
    /// Another instance took the robot over (`disconnected_event`).
    TakenOver,
    /// The connector is shutting down.
    Shutdown,
}

/// Why connecting failed.
enum ConnectError {
    /// The socket could not be opened, or closed during the subscription.
    Network(String),
    /// The platform refused the bot id or secret.
    Refused(String),
}

/// Keep the robot's long connection until `shutdown` turns true.
pub(crate) async fn run(
    link: &Link,
    config: &WeComConfig,
    health: &PlatformHealth,
    inbox: Inbox<WeComMessage>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(config.backoff_initial_ms, config.backoff_max_ms);
    while !*shutdown.borrow() {
        let connected = tokio::select! {
            connected = connect(config) => connected,
            _ = shutdown.changed() => return,
        };
        let socket = match connected {
            Ok(socket) => socket,
            Err(err) => {
                let reason = match err {
                    ConnectError::Network(reason) => format!("cannot open the long connection: {reason}"),
                    ConnectError::Refused(reason) => format!("aibot_subscribe refused: {reason}"),
                };
                health.disconnected(reason.clone());
                let delay = backoff.failed();
                let failures = backoff.failures();
                tracing::warn!(cause = %reason, failures, delay_ms = delay.as_millis() as u64, "WeCom long connection failed; retrying");
                if !sleep_unless_stopped(delay, &mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        tracing::info!("WeCom long connection subscribed");
        health.connected();
        let (writer, outgoing) = mpsc::channel(WRITE_QUEUE);
        link.attach(Some(writer));
        let end = session(config, health, link, &inbox, socket, outgoing, &mut shutdown).await;
        link.attach(None);
        match end {
            SessionEnd::Dead(reason) => {
                tracing::warn!(reason, "WeCom long connection lost; reconnecting");
                health.disconnected(format!("long connection lost: {reason}"));
            }
            SessionEnd::TakenOver => {
                let after = config.reconnect_after_takeover_secs;
                tracing::warn!(
                    reconnect_after_secs = after,
                    "another instance took the WeCom robot over (disconnected_event); not fighting it for the connection"
                );
                health.disconnected(if after == 0 {
                    "taken over by another instance (disconnected_event); not reconnecting: restart hearth to take the robot back".to_owned()
                } else {
                    format!("taken over by another instance (disconnected_event); reconnecting in {after} s")
                });
                if after == 0 {
                    let _ = shutdown.wait_for(|stop| *stop).await;
                    return;
                }
                if !sleep_unless_stopped(Duration::from_secs(after), &mut shutdown).await {
                    return;
                }
            }
            SessionEnd::Shutdown => {
                health.disconnected("stopped");
                return;
            }
        }
    }
}

/// Open the socket and subscribe.
async fn connect(config: &WeComConfig) -> Result<Socket, ConnectError> {
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES));
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(config.ws_url.as_str(), Some(ws_config), false)
        .await
        .map_err(|err| ConnectError::Network(err.to_string()))?;
    let id = req_id(cmd::SUBSCRIBE);
    let body = json!({"bot_id": config.bot_id, "secret": config.secret.expose()});
    socket
        .send(Message::Text(request(cmd::SUBSCRIBE, &id, Some(body)).into()))
        .await
        .map_err(|err| ConnectError::Network(err.to_string()))?;
    let answer = tokio::time::timeout(config.ack_timeout(), async {
        while let Some(message) = socket.next().await {
            let text = match message {
                Ok(Message::Text(text)) => text,
                Ok(Message::Close(_)) => break,
                Ok(_) => continue,
                Err(err) => return Err(ConnectError::Network(err.to_string())),
            };
            match serde_json::from_str::<Frame>(text.as_str()) {
                Ok(frame) if frame.cmd.is_none() && frame.headers.req_id == id => return Ok(frame),
                _ => continue,
            }
        }
        Err(ConnectError::Network("closed during the subscription".to_owned()))
    })
    .await
    .map_err(|_| ConnectError::Network("no answer to aibot_subscribe in time".to_owned()))??;
    if answer.errcode != 0 {
        close_quickly(&mut socket).await;
        return Err(ConnectError::Refused(format!(
            "errcode {}: {}",
            answer.errcode, answer.errmsg
        )));
    }
    Ok(socket)
}

/// Read frames and write requests until the connection ends.
async fn session(
    config: &WeComConfig,
    health: &PlatformHealth,
    link: &Link,
    inbox: &Inbox<WeComMessage>,
    mut socket: Socket,
    mut outgoing: mpsc::Receiver<String>,
    shutdown: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + config.heartbeat(), config.heartbeat());
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unacked_pings = 0u32;
    loop {
        let message = tokio::select! {
            message = socket.next() => message,
            Some(frame) = outgoing.recv() => {
                if let Err(err) = socket.send(Message::Text(frame.into())).await {
                    return SessionEnd::Dead(format!("cannot send a frame: {err}"));
                }
                continue;
            }
            _ = heartbeat.tick() => {
                if unacked_pings >= config.missed_heartbeats.max(1) {
                    close_quickly(&mut socket).await;
                    return SessionEnd::Dead(format!("{unacked_pings} pings without an acknowledgement"));
                }
                unacked_pings += 1;
                if let Err(err) = socket.send(Message::Text(request(cmd::PING, &req_id(cmd::PING), None).into())).await {
                    return SessionEnd::Dead(format!("cannot send a ping: {err}"));
                }
                continue;
            }
            _ = shutdown.changed() => {
                close_quickly(&mut socket).await;
                return SessionEnd::Shutdown;
            }
        };
        let text = match message {
            None | Some(Ok(Message::Close(_))) => return SessionEnd::Dead("closed by the server".to_owned()),
            Some(Err(err)) => return SessionEnd::Dead(err.to_string()),
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
        };
        health.heard();
        let frame: Frame = match serde_json::from_str(text.as_str()) {
            Ok(frame) => frame,
            Err(err) => {
                tracing::warn!(cause = %err, "ignoring a malformed WeCom frame");
                continue;
            }
        };
        match frame.cmd.as_deref() {
            None if frame.headers.req_id.starts_with("ping_") => unacked_pings = 0,
            None => link.acknowledge(&frame),
            Some(cmd::MSG_CALLBACK) => {
                let Some(body) = frame.body else { continue };
                let mut message: WeComMessage = match serde_json::from_value(body) {
                    Ok(message) => message,
                    Err(err) => {
                        tracing::warn!(cause = %err, "ignoring an unreadable WeCom message");
                        continue;
                    }
                };
                message.req_id = Some(frame.headers.req_id);
                message.received_ms = crate::db::now_ms();
                if message.msgid.is_empty() {
                    tracing::warn!("ignoring a WeCom message without a msgid");
                    continue;
                }
                // Nothing is acknowledged on this transport: the answer is the reply. A message not stored
                // is not answered; it is logged.
                if let Err(err) = inbox.accept(message).await {
                    tracing::error!(cause = %err, "cannot store a WeCom message");
                }
            }
            Some(cmd::EVENT_CALLBACK) => {
                let eventtype = frame
                    .body
                    .as_ref()
                    .and_then(|b| b.pointer("/event/eventtype"))
                    .and_then(|e| e.as_str())
                    .unwrap_or_default();
                if eventtype == "disconnected_event" {
                    close_quickly(&mut socket).await;
                    return SessionEnd::TakenOver;
                }
                tracing::debug!(eventtype, "ignoring a WeCom event");
            }
            Some(other) => tracing::debug!(cmd = other, "ignoring an unhandled WeCom frame"),
        }
    }
}
