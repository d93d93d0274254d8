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

use std::path::Path;
use std::sync::Arc;

use crate::access_rules::AccessRules;
use crate::db::{Database, DbError};
use crate::im::connector::ImConnector;
use crate::routing::ModelRouter;
use crate::skills::SkillSet;

pub use adapter::Feishu;
pub use api::{FeishuError, OpenApi, SCOPES};
pub use config::{ConfigError, FeishuConfig};
pub use message::FeishuMessage;

/// A running Feishu connector: the IM core driving the [`Feishu`] adapter.
pub type FeishuConnector = ImConnector<Feishu>;

/// Why the Feishu connector could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Api(#[from] FeishuError),
    #[error(transparent)]
    Core(#[from] crate::im::connector::StartError),
}

impl ImConnector<Feishu> {
    /// Validate `config`, open the database (outbox, cards, sessions, audit log), resume unfinished messages
    /// and connect. Answers come from `skills`, else from the model `models` routes each message to, under
    /// the IM access rules `access`.
    pub async fn start_feishu(
        config: FeishuConfig,
        models: Arc<ModelRouter>,
        skills: Arc<SkillSet>,
        access: Arc<AccessRules>,
    ) -> Result<Self, StartError> {
        config.validate()?;
        let adapter = Arc::new(Feishu::new(config)?);
        Ok(ImConnector::run(adapter, models, skills, access).await?)
    }
}

/// The outbox of app `app_id`'s Feishu messages in the database at `path` (for diagnostics and tests).
pub fn outbox(path: &Path, app_id: &str) -> Result<crate::im::outbox::Outbox, DbError> {
    crate::im::outbox::Outbox::open(
        &Database::open(path)?,
        <Feishu as crate::im::adapter::Adapter>::PLATFORM,
        app_id,
    )
}
