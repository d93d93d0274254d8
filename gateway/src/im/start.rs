//! Starting a platform's connector from its configuration section: [`Platform`], which each adapter
//! implements, and the `start` functions of [`ImConnector`] built on it, so that every platform starts
//! the same way (validate the section, build the adapter, run the core).

use std::sync::Arc;

use super::adapter::Adapter;
use super::connector::{ImConnector, OpenError};
use super::platform_config::ConfigError;
use crate::access_rules::AccessRules;
use crate::routing::ModelRouter;
use crate::skills::{SkillSet, SkillsConfig};

/// An adapter built from its platform's configuration section.
pub trait Platform: Adapter {
    /// The platform's section (`[dingtalk]`, …).
    type Config: Send;

    /// Check that the connector can start with `config`.
    fn validate(config: &Self::Config) -> Result<(), ConfigError>;
    /// The adapter for a validated `config` (its HTTP client, its card book, …); it connects once the
    /// core runs its receive loop.
    fn build(config: Self::Config) -> Result<Self, Self::Error>;
}

/// Why a platform's connector could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The adapter could not be built.
    #[error(transparent)]
    Platform(E),
    #[error(transparent)]
    Core(#[from] OpenError),
}

impl<A: Platform> ImConnector<A> {
    /// [`start_with_skills`](Self::start_with_skills) with the default skills.
    pub async fn start(config: A::Config, models: Arc<ModelRouter>) -> Result<Self, StartError<A::Error>> {
        let skills = SkillSet::new(&SkillsConfig::default()).map_err(|_| ConfigError::Invalid {
            platform: A::PLATFORM,
            field: "skills",
            rule: "valid",
        })?;
        Self::start_with_skills(config, models, Arc::new(skills)).await
    }

    /// [`start_with_access`](Self::start_with_access) with no access rules.
    pub async fn start_with_skills(
        config: A::Config,
        models: Arc<ModelRouter>,
        skills: Arc<SkillSet>,
    ) -> Result<Self, StartError<A::Error>> {
        Self::start_with_access(config, models, skills, Arc::new(AccessRules::default())).await
    }

    /// Validate `config`, open the store (outbox, sessions, audit log), resume unfinished messages and
    /// connect. Answers come from `skills`, else from the model `models` routes each message to, under the
    /// IM access rules `access`.
    pub async fn start_with_access(
        config: A::Config,
        models: Arc<ModelRouter>,
        skills: Arc<SkillSet>,
        access: Arc<AccessRules>,
    ) -> Result<Self, StartError<A::Error>> {
        A::validate(&config)?;
        let adapter = Arc::new(A::build(config).map_err(StartError::Platform)?);
        Ok(ImConnector::run(adapter, models, skills, access).await?)
    }
}
