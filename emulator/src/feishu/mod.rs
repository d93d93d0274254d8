//! A local Feishu (Lark): endpoint discovery, the long connection, tenant tokens, IM messages and CardKit
//! card entities on one loopback port, plus a control surface for simulated users and faults, as described
//! in `shared/protocols/feishu.md`.
//!
//! Layout:
//! - [`config`]: [`EmulatorConfig`], the accepted app and every timing, limit and UNCONFIRMED choice.
//! - [`wire`]: the `pbbp2` protobuf frames (prost) and the JSON bodies.
//! - `world`: the platform's state ([`World`]) behind one lock, with a change counter to await, and its
//!   clock (`World::tick`): pushes, response deadlines, retries, streaming windows.
//! - `card`: one CardKit card entity ([`Card`]): sequence rule, uuid replays, streaming mode, history.
//! - `openapi`: `POST /callback/ws/endpoint`, `POST /open-apis/auth/v3/tenant_access_token/internal`,
//!   `POST /open-apis/im/v1/messages`, `POST /open-apis/im/v1/messages/{message_id}/reply`, the error envelope
//!   and quotas.
//! - `cardkit`: `/open-apis/cardkit/v1/cards…` (create, element content, settings, full update, element
//!   delete) with the per-card quota.
//! - `longconn`: the WebSocket at `/ws/v2` (tickets, `Handshake-*` refusals, ping/pong, events and
//!   responses) and the clock task.
//! - [`control`]: `/_emulator/…`, the page and its JSON API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), emulator::feishu::EmulatorError> {
//! use emulator::feishu::{EmulatorConfig, FeishuEmulator, UserMessage};
//! let feishu = FeishuEmulator::start(EmulatorConfig::default(), "127.0.0.1:0".parse().unwrap()).await?;
//! // Point an SDK's domain at feishu.base_url(); then, as a user:
//! feishu.post_message(UserMessage::p2p("alice", "hello"))?;
//! # Ok(()) }
//! ```

mod card;
mod cardkit;
pub mod config;
pub mod control;
mod longconn;
mod openapi;
pub mod wire;
mod world;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{delete, get, patch, post, put};
use axum::Router;
use tokio::sync::watch;

pub use crate::fault::FractionFault;
pub use card::{Card, CardOp, Element};
pub use config::{ClientConfig, EmulatorConfig, UuidReplay, DEFAULT_APP_ID, DEFAULT_APP_SECRET};
pub use control::{ChatView, ConnectionView, FaultCommand, PostedMessage, StateView, UserMessage};
pub use longconn::{AUTH_CODE_CONNECTION_LIMIT, HANDSHAKE_AUTH_FAILED, HANDSHAKE_FORBIDDEN};
pub use openapi::{
    ALL_SCOPES, CODE_MISSING_SCOPE, CODE_RATE_LIMITED, CODE_TOKEN_INVALID, CODE_TOKEN_MALFORMED, CODE_TOKEN_MISSING,
    SCOPE_CARDKIT, SCOPE_GROUP_AT_EVENTS, SCOPE_IM_SEND, SCOPE_P2P_EVENTS,
};
pub use world::{Chat, ChatEntry, ChatType, CountedFault, Faults, Stats, User, World};

use world::{Outbound, Shared};

pub use crate::error::EmulatorError;

/// The router: platform routes at their real paths, the control surface under `/_emulator`.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/callback/ws/endpoint", post(openapi::endpoint))
        .route("/ws/v2", get(longconn::connect))
        .route(
            "/open-apis/auth/v3/tenant_access_token/internal",
            post(openapi::tenant_access_token),
        )
        .route("/open-apis/im/v1/messages", post(openapi::send_message))
        .route(
            "/open-apis/im/v1/messages/{message_id}/reply",
            post(openapi::reply_message),
        )
        .route("/open-apis/cardkit/v1/cards", post(cardkit::create))
        .route("/open-apis/cardkit/v1/cards/{card_id}", put(cardkit::update))
        .route(
            "/open-apis/cardkit/v1/cards/{card_id}/settings",
            patch(cardkit::settings),
        )
        .route(
            "/open-apis/cardkit/v1/cards/{card_id}/elements/{element_id}",
            delete(cardkit::delete_element),
        )
        .route(
            "/open-apis/cardkit/v1/cards/{card_id}/elements/{element_id}/content",
            put(cardkit::content),
        )
        .route("/_emulator", get(control::page))
        .route("/_emulator/page.js", get(crate::control::script))
        .route("/_emulator/page.css", get(crate::control::style))
        .route("/_emulator/api/state", get(control::state))
        .route("/_emulator/api/chats/{id}", get(control::chat))
        .route("/_emulator/api/cards/{id}", get(control::card))
        .route("/_emulator/api/messages", post(control::post_message))
        .route("/_emulator/api/faults", post(control::fault))
        .route("/_emulator/api/wait", get(control::wait))
        .with_state(shared)
}

/// A running emulator. Dropping it does not stop the server; call [`FeishuEmulator::shutdown`].
pub struct FeishuEmulator {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    server: crate::server::ServerTask,
}

impl FeishuEmulator {
    /// Listen on `addr` (port 0 picks a free one) and serve until [`shutdown`](Self::shutdown).
    pub async fn start(config: EmulatorConfig, addr: SocketAddr) -> Result<Self, EmulatorError> {
        let (listener, local) = crate::server::bind(addr).await?;
        let shared = Shared::new(config, local);
        let (shutdown, rx) = watch::channel(false);
        tokio::spawn(longconn::clock(shared.clone(), rx.clone()));
        let server = crate::server::spawn(listener, router(shared.clone()), rx);
        tracing::info!(addr = %local, "Feishu emulator listening");
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

    /// `http://ADDR`: the domain to give an SDK (discovery and the OpenAPI both live there).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &EmulatorConfig {
        &self.shared.config
    }

    /// Post a simulated user's message (pushed to the bot when the platform would push it).
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
        // Open WebSockets keep graceful shutdown waiting: tell each to close now. Being a change, this also
        // answers the change feed's pending long polls (an open page's), which would hold it up as well.
        self.shared.with(|world, _| {
            for connection in world.connections.values() {
                let _ = connection.tx.send(Outbound::Close);
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
