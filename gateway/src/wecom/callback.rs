//! URL mode (§1 of `shared/protocols/wecom.md`): WeCom POSTs encrypted, signed callbacks to
//! [`PATH`] on hearth's own HTTP server, and each HTTP answer is the passive reply.
//!
//! - `GET` verifies the URL: the decrypted `echostr`, as the raw body.
//! - A user's message is stored in the outbox (dedupe on `msgid`) before it is answered; the answer opens
//!   its stream at once (`finish: false`), so the callback never waits on the model. A duplicate push gets
//!   the stream as it stands now.
//! - A stream refresh is answered with the stream's latest snapshot from the adapter's stream table; the
//!   core's finish waits until a refresh has collected the final snapshot (else the answer goes out through
//!   the `response_url`). A refresh of a stream this process does not know is finished empty, as the
//!   official plugin does, so WeCom stops polling it.
//! - Events get an empty reply.
//!
//! The crypto is `emulator::wecom::crypto` (AES-256-CBC with 32-byte PKCS#7, SHA-1 signatures), the same
//! code the emulator and its tests check against the official samples.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use emulator::wecom::crypto::{MsgCrypt, Padding};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::config::WeComConfig;
use super::message::{stream_body, WeComMessage};
use super::streams::{Streams, WeComError};
use crate::im::adapter::Inbox;
use crate::platform::PlatformHealth;

/// Where hearth's server takes WeCom's callbacks.
pub const PATH: &str = "/im/wecom/callback";

/// URL mode's half of the adapter: the crypto, and the running connector the callbacks reach.
pub struct Callback {
    crypt: MsgCrypt,
    /// The adapter and its inbox while the connector runs; callbacks before or after get 503.
    running: Mutex<Option<(Served, Inbox<WeComMessage>)>>,
    /// Bumped whenever a refresh collected a final snapshot.
    collected: watch::Sender<u64>,
}

/// What the callbacks need of the running adapter: its stream table, robot and stream deadline.
#[derive(Clone)]
pub(crate) struct Served {
    pub streams: Arc<Streams>,
    /// The robot's bot id (the outbox's account).
    pub account: String,
    pub deadline: Duration,
}

/// The query of a callback.
#[derive(Debug, Deserialize)]
pub struct Signed {
    msg_signature: String,
    timestamp: String,
    nonce: String,
    #[serde(default)]
    echostr: Option<String>,
}

impl Callback {
    /// The callback side of `config` (its `token` and `encoding_aes_key`).
    pub fn new(config: &WeComConfig) -> Result<Self, emulator::wecom::crypto::CryptoError> {
        Ok(Self {
            crypt: MsgCrypt::new(config.token.expose(), config.encoding_aes_key.expose())?,
            running: Mutex::new(None),
            collected: watch::Sender::new(0),
        })
    }

    /// Take callbacks for `adapter` into `inbox` until `shutdown` turns true.
    pub(crate) async fn serve(
        self: Arc<Self>,
        served: Served,
        health: Arc<PlatformHealth>,
        inbox: Inbox<WeComMessage>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some((served, inbox));
        health.connected();
        tracing::info!(path = PATH, "WeCom URL mode: taking callbacks");
        let _ = shutdown.wait_for(|stop| *stop).await;
        // Dropping the inbox lets the intake end; the adapter is released too (it holds this).
        self.running.lock().unwrap_or_else(|p| p.into_inner()).take();
        health.disconnected("stopped");
    }

    fn running(&self) -> Option<(Served, Inbox<WeComMessage>)> {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Wait until a refresh has collected stream `id`'s final snapshot, for at most `bound`.
    pub(crate) async fn await_collected(&self, streams: &Streams, id: &str, bound: Duration) -> Result<(), WeComError> {
        let mut changes = self.collected.subscribe();
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            if streams.with(|table| table.get(id).is_none_or(|t| t.finish_sent)) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(WeComError::NotCollected(id.to_owned())),
            }
        }
    }

    /// `plain` as the encrypted, signed passive reply (the callback's nonce reused).
    fn seal(&self, plain: &str, nonce: &str) -> Response {
        let encrypt = match self.crypt.encrypt(plain, "") {
            Ok(encrypt) => encrypt,
            Err(err) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
        };
        let timestamp = (crate::db::now_ms() / 1000).to_string();
        let signature = self.crypt.signature(&timestamp, nonce, &encrypt);
        let envelope = json!({"encrypt": encrypt, "msgsignature": signature, "timestamp": timestamp, "nonce": nonce});
        ([("content-type", "text/plain")], envelope.to_string()).into_response()
    }

    /// The reply to one decrypted callback body.
    async fn answer(&self, body: Value, nonce: &str) -> Response {
        let Some((adapter, inbox)) = self.running() else {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "the WeCom connector is not running");
        };
        match body.get("msgtype").and_then(Value::as_str).unwrap_or_default() {
            "stream" => {
                let id = body.pointer("/stream/id").and_then(Value::as_str).unwrap_or_default();
                let snapshot = adapter.streams.with(|table| {
                    table.get_mut(id).map(|t| {
                        if t.finish {
                            t.finish_sent = true;
                        }
                        (t.content.clone(), t.finish)
                    })
                });
                let reply = match snapshot {
                    Some((content, finish)) => {
                        if finish {
                            self.collected.send_modify(|n| *n += 1);
                        }
                        stream_body(id, &content, finish)
                    }
                    None => stream_body(id, "", true),
                };
                self.seal(&reply.to_string(), nonce)
            }
            "event" => "".into_response(),
            _ => {
                let mut message: WeComMessage = match serde_json::from_value(body) {
                    Ok(message) => message,
                    Err(err) => return refuse(StatusCode::BAD_REQUEST, &format!("unreadable message: {err}")),
                };
                if message.msgid.is_empty() {
                    return refuse(StatusCode::BAD_REQUEST, "the message has no msgid");
                }
                message.received_ms = crate::db::now_ms();
                let id = crate::im::outbox::card_id(&adapter.account, &message.msgid);
                adapter.streams.register(&id, &message, adapter.deadline);
                if let Err(err) = inbox.accept(message).await {
                    // Not stored: an error, so WeCom pushes it again.
                    return refuse(StatusCode::SERVICE_UNAVAILABLE, &err.to_string());
                }
                let (content, finish) = adapter
                    .streams
                    .with(|table| table.get(&id).map(|t| (t.content.clone(), t.finish)))
                    .unwrap_or_default();
                self.seal(&stream_body(&id, &content, finish).to_string(), nonce)
            }
        }
    }
}

fn refuse(status: StatusCode, why: &str) -> Response {
    tracing::warn!(%status, why, "WeCom callback refused");
    (status, why.to_owned()).into_response()
}

/// The routes of [`PATH`], for hearth's server.
pub fn routes<S: Clone + Send + Sync + 'static>(callback: Arc<Callback>) -> Router<S> {
    Router::new()
        .route(PATH, get(verify).post(receive))
        .with_state(callback)
}

/// `GET`: URL verification (§1.1).
async fn verify(State(callback): State<Arc<Callback>>, Query(query): Query<Signed>) -> Response {
    let Some(echostr) = query.echostr.as_deref() else {
        return refuse(StatusCode::BAD_REQUEST, "`echostr` is required");
    };
    if let Err(err) = callback
        .crypt
        .verify(&query.msg_signature, &query.timestamp, &query.nonce, echostr)
    {
        return refuse(StatusCode::FORBIDDEN, &err.to_string());
    }
    match callback.crypt.decrypt_for(echostr, "", Padding::Lenient) {
        Ok(plain) => plain.into_response(),
        Err(err) => refuse(StatusCode::BAD_REQUEST, &err.to_string()),
    }
}

/// `POST`: a message, stream refresh or event (§1.2, §1.3).
async fn receive(State(callback): State<Arc<Callback>>, Query(query): Query<Signed>, body: Bytes) -> Response {
    let Some(encrypt) = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("encrypt").and_then(Value::as_str).map(str::to_owned))
    else {
        return refuse(StatusCode::BAD_REQUEST, "the body must be {\"encrypt\": \"…\"}");
    };
    if let Err(err) = callback
        .crypt
        .verify(&query.msg_signature, &query.timestamp, &query.nonce, &encrypt)
    {
        return refuse(StatusCode::FORBIDDEN, &err.to_string());
    }
    let plain = match callback.crypt.decrypt_for(&encrypt, "", Padding::Lenient) {
        Ok(plain) => plain,
        Err(err) => return refuse(StatusCode::BAD_REQUEST, &err.to_string()),
    };
    match serde_json::from_str::<Value>(&plain) {
        Ok(body) => callback.answer(body, &query.nonce).await,
        Err(err) => refuse(
            StatusCode::BAD_REQUEST,
            &format!("the decrypted body is not JSON: {err}"),
        ),
    }
}
