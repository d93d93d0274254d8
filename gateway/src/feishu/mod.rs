//! The Feishu (Lark) adapter of the IM core: messages arrive over the long connection, answers stream into
//! CardKit cards, and a plain text reply carries an answer whose card fails.
//!
//! Everything platform-independent (the outbox and its dedupe, routing, skills, sessions, the model, card
//! pacing and roll-over, the fallback, audit and retention) is the core's (`crate::im`); this module is
//! what only Feishu has:
//! - `adapter`: [`Feishu`], the [`Adapter`](crate::im::adapter::Adapter): card entities created, sent as
//!   replies, streamed with full text, finished by one full update (streaming off, summary set).
//! - `cards`: [`CardBook`](cards::CardBook): each card's entity, reply and `sequence` counter, in the
//!   database, with one lock per card.
//! - `longconn`: endpoint discovery, the WebSocket, pings, fragments, zombie and dead-path detection.
//! - `frame`: the `pbbp2` protobuf frames; `message`: events parsed into [`FeishuMessage`].
//! - `api`: [`OpenApi`], the platform calls and their typed errors ([`FeishuError`]), refused scopes.
//! - `config`: [`FeishuConfig`], the `[feishu]` section.
//!
//! The wire reference is `shared/protocols/feishu.md`; `hearth emulate feishu` runs a local platform.

pub mod adapter;
pub mod api;
pub mod cards;
pub mod config;
pub mod frame;
mod longconn;
pub mod message;

use crate::im::connector::ImConnector;

pub use adapter::Feishu;
pub use api::{FeishuError, OpenApi, SCOPES};
pub use config::{ConfigError, FeishuConfig};
pub use message::FeishuMessage;

/// A running Feishu connector: the IM core driving the [`Feishu`] adapter.
pub type FeishuConnector = ImConnector<Feishu>;

/// Why the Feishu connector could not start.
pub type StartError = crate::im::start::StartError<FeishuError>;
