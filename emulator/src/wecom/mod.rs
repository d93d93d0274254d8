//! A local WeCom intelligent robot (智能机器人) platform: both transports of `shared/protocols/wecom.md` on one
//! loopback port, plus a control surface for simulated users and faults.
//!
//! - **Long connection** (§2): the WebSocket at `/` (point the SDK's `wsUrl` at `ws://ADDR`), with
//!   `aibot_subscribe`, `ping`, pushes, streamed `aibot_respond_msg` replies and `aibot_send_msg`.
//! - **URL mode** (§1): once a callback URL is set (and verified), messages are POSTed there encrypted and
//!   signed, passive replies are verified, and unfinished streams are refreshed until they finish.
//! - `response_url`s (§6.1) at `/cgi-bin/aibot/response`.
//!
//! Layout:
//! - [`config`]: [`EmulatorConfig`], the accepted robot and every timing, limit and UNCONFIRMED choice.
//! - [`crypto`]: the callback crypto ([`crypto::MsgCrypt`]), usable by a connector as it is.
//! - [`wire`]: the platform's JSON shapes.
//! - `world`: the platform's state ([`World`]) behind one lock, with a change counter to await.
//! - `longconn`: the WebSocket and its commands.
//! - `callback`: the URL-mode driver (pushes, passive replies, stream refreshes, URL verification).
//! - [`control`]: `/_emulator/…`, the page and its JSON API, and the `response_url` endpoint.
//!
//! ```no_run
//! # async fn demo() -> Result<(), emulator::wecom::EmulatorError> {
//! use emulator::wecom::{EmulatorConfig, UserMessage, WeComEmulator};
//! let wecom = WeComEmulator::start(EmulatorConfig::default(), "127.0.0.1:0".parse().unwrap()).await?;
//! // Point a client's wsUrl at wecom.ws_url(); then, as a user:
//! wecom.post_message(UserMessage::single("alice", "hello"))?;
//! # Ok(()) }
//! ```

mod callback;
pub mod config;
pub mod control;
pub mod crypto;
mod longconn;
pub mod wire;
mod world;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{watch, Notify};

use crate::server;

pub use config::{
    EmulatorConfig, ErrorCodes, InFlightOverflow, StreamExpiry, DEFAULT_BOT_ID, DEFAULT_ENCODING_AES_KEY,
    DEFAULT_SECRET, DEFAULT_TOKEN,
};
pub use control::{FaultCommand, PostedMessage, StateView, UserEvent, UserMessage};
pub use world::{
    ChatEntry, ChatType, Conversation, MessageRecord, MessageState, ReplyError, Stats, StreamRecord, StreamStatus,
    StreamUpdate, Transport, Via, World,
};

pub use crate::fault::FractionFault;
use crate::watched::Watched;
use world::{Outbound, Shared};

pub use crate::error::EmulatorError;

/// The router: the WebSocket at `/`, `response_url`s, and the control surface under `/_emulator`.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(longconn::connect))
        .route("/cgi-bin/aibot/response", post(control::response_url))
        .route("/_emulator", get(control::page))
        .route("/_emulator/page.js", get(crate::control::script))
        .route("/_emulator/page.css", get(crate::control::style))
        .route("/_emulator/api/state", get(control::state))
        .route("/_emulator/api/conversations/{chatid}", get(control::conversation))
        .route("/_emulator/api/messages", post(control::post_message))
        .route("/_emulator/api/messages/{msgid}", get(control::message))
        .route("/_emulator/api/messages/{msgid}/redeliver", post(control::redeliver))
        .route("/_emulator/api/events", post(control::post_event))
        .route("/_emulator/api/streams/{id}", get(control::stream))
        .route("/_emulator/api/callback", post(control::callback))
        .route("/_emulator/api/faults", post(control::fault))
        .route("/_emulator/api/wait", get(control::wait))
        .with_state(shared)
}

/// A running emulator. Dropping it does not stop the server; call [`WeComEmulator::shutdown`].
pub struct WeComEmulator {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    server: server::ServerTask,
}

impl WeComEmulator {
    /// Listen on `addr` (port 0 picks a free one) and serve until [`shutdown`](Self::shutdown).
    pub async fn start(config: EmulatorConfig, addr: SocketAddr) -> Result<Self, EmulatorError> {
        let crypto = crypto::MsgCrypt::new(&config.token, &config.encoding_aes_key)
            .map_err(|err| EmulatorError::Config(err.to_string()))?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|err| EmulatorError::Config(format!("cannot build the HTTP client: {err}")))?;
        let (listener, local) = server::bind(addr).await?;
        let world = World {
            callback_url: config.callback_url.clone(),
            ..World::default()
        };
        let shared = Arc::new(Shared {
            config,
            crypto,
            addr: local,
            state: Watched::new(world),
            wake: Notify::new(),
            http,
        });
        let (shutdown, rx) = watch::channel(false);
        tokio::spawn(callback::driver(shared.clone(), rx.clone()));
        let app = router(shared.clone());
        let server = server::spawn(listener, app, rx);
        tracing::info!(addr = %local, "WeCom emulator listening");
        Ok(Self {
            shared,
            shutdown,
            server,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://ADDR`: the control API, the page and `response_url`s.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// `ws://ADDR`: the long connection (the SDK's `wsUrl`).
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.shared.addr)
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &EmulatorConfig {
        &self.shared.config
    }

    /// Post a simulated user's message (pushed when the platform would push it).
    pub fn post_message(&self, message: UserMessage) -> Result<PostedMessage, EmulatorError> {
        self.shared.post_message(message)
    }

    /// Post a simulated user's event.
    pub fn post_event(&self, event: UserEvent) -> Result<PostedMessage, EmulatorError> {
        self.shared.post_event(event)
    }

    /// Push message `msgid` again with the same `msgid` and body.
    pub fn redeliver(&self, msgid: &str) -> Result<(), EmulatorError> {
        self.shared.redeliver(msgid)
    }

    /// Verify `url` (the GET with an encrypted `echostr`) and switch to URL mode; `None` switches back to
    /// the long connection.
    pub async fn set_callback_url(&self, url: Option<String>) -> Result<(), EmulatorError> {
        callback::set_callback(&self.shared, url).await
    }

    /// Inject a fault; returns how many connections (or switches) it touched.
    pub fn fault(&self, command: FaultCommand) -> Result<usize, EmulatorError> {
        self.shared.apply_fault(command)
    }

    /// Read the platform's state.
    pub fn inspect<T>(&self, f: impl FnOnce(&World) -> T) -> T {
        self.shared.read(f)
    }

    /// Await `check` returning `Some`, re-checking after every change, for at most `timeout`.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        check: impl FnMut(&World) -> Option<T>,
    ) -> Result<T, EmulatorError> {
        self.shared.state.wait_or_timeout(timeout, check).await
    }

    /// Stop serving and wait for the server to finish.
    pub async fn shutdown(self) -> Result<(), EmulatorError> {
        let _ = self.shutdown.send(true);
        // Open WebSockets keep graceful shutdown waiting: close each now.
        self.shared.read(|world| {
            for connection in world.connections.values() {
                if !connection.send(Outbound::Close) {
                    connection.close.notify_one();
                }
            }
        });
        server::join(self.server).await
    }

    /// Serve until `signal` completes, then shut down.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), EmulatorError> {
        signal.await;
        self.shutdown().await
    }
}
