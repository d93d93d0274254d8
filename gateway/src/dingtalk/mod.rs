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
use std::sync::Arc;

use crate::db::{Database, DbError};
use crate::im::connector::ImConnector;
use crate::routing::ModelRouter;
use crate::skills::{SkillSet, SkillsConfig};

pub use crate::im::connector::{PruneError, Pruned};
pub use crate::im::draft::{BUSY, SLOW_DOWN};
pub use crate::im::settings::GroupSessions;
pub use adapter::DingTalk;
pub use api::{DingTalkError, OpenApi};
pub use config::{ConfigError, DingTalkConfig};

/// A running DingTalk connector: the IM core driving the [`DingTalk`] adapter.
pub type DingTalkConnector = ImConnector<DingTalk>;

/// Why the DingTalk connector could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Api(#[from] DingTalkError),
    #[error(transparent)]
    Core(#[from] crate::im::connector::StartError),
}

use crate::access_rules::AccessRules;

impl ImConnector<DingTalk> {
    /// [`start_with_skills`](Self::start_with_skills) with the default skills.
    pub async fn start(config: DingTalkConfig, models: Arc<ModelRouter>) -> Result<Self, StartError> {
        let skills = SkillSet::new(&SkillsConfig::default()).map_err(|_| ConfigError::Invalid {
            platform: "DingTalk",
            field: "skills",
            rule: "valid",
        })?;
        Self::start_with_skills(config, models, Arc::new(skills)).await
    }

    /// Validate `config`, open the database (outbox, sessions, audit log), resume unfinished messages and
    /// connect. Answers come from `skills`, else from the model `models` routes each message to.
    pub async fn start_with_skills(
        config: DingTalkConfig,
        models: Arc<ModelRouter>,
        skills: Arc<SkillSet>,
    ) -> Result<Self, StartError> {
        Self::start_with_access(config, models, skills, Arc::new(AccessRules::default())).await
    }

    /// [`start_with_skills`](Self::start_with_skills) under the IM access rules `access`.
    pub async fn start_with_access(
        config: DingTalkConfig,
        models: Arc<ModelRouter>,
        skills: Arc<SkillSet>,
        access: Arc<AccessRules>,
    ) -> Result<Self, StartError> {
        config.validate()?;
        let adapter = Arc::new(DingTalk::new(config)?);
        Ok(ImConnector::run(adapter, models, skills, access).await?)
    }
}

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
