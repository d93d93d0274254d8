//! The DingTalk adapter of the IM core: robot messages arrive over Stream mode, answers go out as
//! streaming AI cards, and markdown when a card fails.
//!
//! Everything platform-independent (the outbox and its dedupe, routing, skills, sessions, the model,
//! card pacing and roll-over, the fallback, audit and retention) is the core's (`crate::im`); this module
//! is what only DingTalk has:
//! - `adapter`: [`DingTalk`], the [`Adapter`](crate::im::adapter::Adapter): AI cards, `flowStatus`,
//!   sessionWebhook or robot-API markdown, union-id addressing for senders without a staff id.
//! - `stream`: the Stream client (tickets, ping ACKs, its own WebSocket pings, disconnect handover,
//!   zombie detection, backoff).
//! - `config`: [`DingTalkConfig`], the `[dingtalk]` section.
//! - `api`: [`OpenApi`], the platform calls and their typed errors ([`DingTalkError`]); `wire`: their
//!   bodies.
//! - `message`: frames parsed into `Inbound`, and the robot message.
//!
//! The wire reference is `shared/protocols/dingtalk.md`; `hearth emulate dingtalk` runs a local platform.

pub mod adapter;
pub mod api;
pub mod config;
pub mod message;
mod stream;
pub mod wire;

use std::path::Path;

use crate::db::{Database, DbError};
use crate::im::connector::ImConnector;

pub use crate::im::connector::{PruneError, Pruned};
pub use crate::im::draft::{BUSY, SLOW_DOWN};
pub use crate::im::settings::GroupSessions;
pub use adapter::DingTalk;
pub use api::{DingTalkError, OpenApi};
pub use config::{ConfigError, DingTalkConfig};

/// A running DingTalk connector: the IM core driving the [`DingTalk`] adapter.
pub type DingTalkConnector = ImConnector<DingTalk>;

/// Why the DingTalk connector could not start.
pub type StartError = crate::im::start::StartError<DingTalkError>;

/// The DingTalk rows of an outbox database.
pub struct Outbox;

impl Outbox {
    /// The outbox of `robot`'s DingTalk messages in the database at `path` (for diagnostics and tests).
    pub fn open(path: &Path, robot: &str) -> Result<crate::im::outbox::Outbox, DbError> {
        crate::im::outbox::Outbox::open(
            &Database::open(path)?,
            <DingTalk as crate::im::adapter::Adapter>::PLATFORM,
            robot,
        )
    }
}
