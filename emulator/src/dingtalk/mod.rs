//! A local DingTalk: the Stream gateway, OpenAPI and sessionWebhooks of the platform on one loopback port,
//! plus a control surface for simulated users and faults.
//!
//! Layout:
//! - [`config`]: [`EmulatorConfig`], the accepted app and every timing, limit and UNCONFIRMED choice.
//! - [`wire`]: the platform's JSON shapes.
//! - `world`: the platform's state ([`World`]) behind one lock, with a change counter to await.
//! - `openapi`: `POST /v1.0/gateway/connections/open`, `POST /v1.0/oauth2/accessToken` (and the legacy
//!   `GET /gettoken` of the Node SDK), the card APIs
//!   (`/v1.0/card/instances[/createAndDeliver|/deliver]`, `PUT /v1.0/card/streaming`), the robot send
//!   APIs and `POST /robot/sendBySession`.
//! - `stream`: the WebSocket at `/connect?ticket=…` and the CALLBACK dispatcher (ACKs, redelivery).
//! - [`control`]: `/_emulator/…`, the page and its JSON API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), emulator::dingtalk::EmulatorError> {
//! use emulator::dingtalk::{DingTalkEmulator, EmulatorConfig, UserMessage};
//! let dingtalk = DingTalkEmulator::start(EmulatorConfig::default(), "127.0.0.1:0".parse().unwrap()).await?;
//! // Point a client at dingtalk.base_url(); then, as a user:
//! dingtalk.post_message(UserMessage::single("alice", "hello"))?;
//! # Ok(()) }
//! ```

pub mod config;
pub mod control;
#[doc(hidden)]
pub mod fuzzing;
mod openapi;
mod stream;
pub mod wire;
mod world;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use tokio::sync::watch;

pub use config::{EmulatorConfig, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET};
pub use control::{ConversationView, FaultCommand, PostedMessage, StateView, UserMessage};
pub use openapi::{PERM_CARD_INSTANCE, PERM_CARD_STREAMING, PERM_ROBOT_SEND, TOKEN_HEADER};
pub use world::{Card, CardStatus, CardUpdate, ChatEntry, Conversation, ConversationKind, Stats, World};

use world::Shared;

pub use crate::error::EmulatorError;

/// The router: platform routes at their real paths, the control surface under `/_emulator`.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1.0/gateway/connections/open", post(openapi::open_connection))
        .route("/connect", get(stream::connect))
        .route("/v1.0/oauth2/accessToken", post(openapi::access_token))
        .route("/gettoken", get(openapi::legacy_token))
        .route(
            "/v1.0/card/instances/createAndDeliver",
            post(openapi::create_and_deliver),
        )
        .route(
            "/v1.0/card/instances",
            post(openapi::create).put(openapi::update_instance),
        )
        .route("/v1.0/card/instances/deliver", post(openapi::deliver))
        .route("/v1.0/card/streaming", axum::routing::put(openapi::streaming))
        .route("/v1.0/robot/oToMessages/batchSend", post(openapi::oto_send))
        .route("/v1.0/robot/groupMessages/send", post(openapi::group_send))
        .route("/robot/sendBySession", post(openapi::session_webhook))
        .route("/_emulator", get(control::page))
        .route("/_emulator/page.js", get(crate::control::script))
        .route("/_emulator/page.css", get(crate::control::style))
        .route("/_emulator/api/state", get(control::state))
        .route("/_emulator/api/conversations/{id}", get(control::conversation))
        .route("/_emulator/api/cards/{id}", get(control::card))
        .route("/_emulator/api/messages", post(control::post_message))
        .route("/_emulator/api/faults", post(control::fault))
        .route("/_emulator/api/wait", get(control::wait))
        .layer(axum::middleware::map_response_with_state(
            shared.clone(),
            openapi::count_bad_requests,
        ))
        .with_state(shared)
}

/// A running emulator. Dropping it does not stop the server; call [`DingTalkEmulator::shutdown`].
pub struct DingTalkEmulator {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    server: crate::server::ServerTask,
}

impl DingTalkEmulator {
    /// Listen on `addr` (port 0 picks a free one) and serve until [`shutdown`](Self::shutdown).
    pub async fn start(config: EmulatorConfig, addr: SocketAddr) -> Result<Self, EmulatorError> {
        let (listener, local) = crate::server::bind(addr).await?;
        let shared = Shared::new(config, local);
        let (shutdown, rx) = watch::channel(false);
        tokio::spawn(stream::dispatcher(shared.clone(), rx.clone()));
        let server = crate::server::spawn(listener, router(shared.clone()), rx);
        tracing::info!(addr = %local, "DingTalk emulator listening");
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

    /// `http://ADDR`: the base of both the OpenAPI (`api.dingtalk.com`) and legacy (`oapi.dingtalk.com`) hosts.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &EmulatorConfig {
        &self.shared.config
    }

    /// Post a simulated user's message (pushed to the robot when the platform would push it).
    pub fn post_message(&self, message: UserMessage) -> Result<PostedMessage, EmulatorError> {
        self.shared.post_message(message)
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
        // Open WebSockets keep graceful shutdown waiting: tell each to close now.
        self.shared.with(|world, _| {
            for connection in world.connections.values() {
                let _ = connection.tx.send(world::Outbound::CloseAfter(Duration::ZERO));
            }
        });
        crate::server::join(self.server).await
    }

    /// Serve until `signal` completes, then shut down.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), EmulatorError> {
        signal.await;
        self.shutdown().await
    }
}
