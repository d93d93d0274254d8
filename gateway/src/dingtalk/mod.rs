//! The DingTalk connector: robot messages arrive over Stream mode, answers go out as streaming AI cards.
//!
//! Flow of one message: the Stream client (`stream`) reads a CALLBACK frame, `Connector::receive`
//! records it in the SQLite outbox (`store`; atomic dedupe on platform, robot and msgId) and only then is
//! the frame ACKed. A new message is answered in its own task (`reply`): the engine generates through the
//! chat template, the card is created and delivered, snapshots stream under a shared delivery budget, and
//! the card is finalized; if the card fails, it is marked failed and the answer goes out as markdown. On
//! start, messages left unfinished by a crash or shutdown are answered first.
//!
//! Around the model: a per-user token bucket (`governor`) answers floods with "slow down"; [`SkillSet`]
//! skills answer what they claim; the model sees the conversation's history from the [`SessionStore`]
//! (same SQLite file); every message ends with one [`AuditLog`] record.
//!
//! - `config`: [`DingTalkConfig`], a serde struct with defaults, read from TOML.
//! - `api`: [`OpenApi`], the platform calls and their typed errors ([`DingTalkError`]).
//! - `message`: frames parsed into `Inbound`, and the robot message.
//!
//! The wire reference is `shared/protocols/dingtalk.md`; `hearth emulate dingtalk` runs a local platform.

pub mod api;
pub mod config;
pub mod message;
mod reply;
pub(crate) mod split;
pub mod store;
mod stream;
pub mod wire;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::audit::{AuditLog, Masker};
use crate::console::ImLink;
use crate::platform::PlatformHealth;
use crate::routing::ModelRouter;
use crate::sessions::SessionStore;
use crate::skills::{SkillContext, SkillSet, SkillsConfig};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

pub use api::{DingTalkError, OpenApi};
pub use config::{ConfigError, DingTalkConfig, GroupSessions};
pub use reply::{BUSY, SLOW_DOWN};
pub use store::{Outbox, StoreError};

use message::{BotMessage, ConversationType};
use reply::{DeliveryBudget, Replier, Route, WebhookPause};
use store::Job;

/// Why the connector could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Api(#[from] DingTalkError),
    #[error(transparent)]
    Db(#[from] crate::sessions::DbError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

/// Why pruning old rows failed.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Db(#[from] crate::sessions::DbError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

/// Rows deleted by one [`DingTalkConnector::prune`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Settled messages of the outbox.
    pub messages: usize,
    pub audit_records: usize,
    /// Sessions idle past their expiry, with their turns.
    pub sessions: usize,
}

/// How often the connector deletes rows past `retention_days` and expired sessions.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Shared by the Stream client and the answer tasks.
pub(crate) struct Connector {
    replier: Arc<Replier>,
    /// Answers in flight, so shutdown can wait for them.
    answers: std::sync::Mutex<JoinSet<()>>,
    /// Bounds concurrent answers; the engine's own queue bounds the rest.
    answer_slots: Arc<Semaphore>,
    /// Per-sender token buckets; `None`: no limit.
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

/// Most answers generated at once.
const CONCURRENT_ANSWERS: usize = 8;

impl Connector {
    /// Persist a pushed message (dedupe included), then start answering it if it is new and addressed to
    /// the robot. Returns once the outbox has it, which is when the caller may ACK.
    async fn receive(&self, message_id: &str, message: BotMessage) -> Result<(), StoreError> {
        let config = self.replier.api.config();
        let ignore = config.require_mention_in_groups
            && message.conversation_type == ConversationType::Group
            && !message.is_in_at_list;
        match self.replier.outbox.accept(message_id, &message, ignore).await? {
            Some(job) => {
                let route = match &self.limiter {
                    Some(limiter) => {
                        if limiter.len() > 100_000 {
                            limiter.retain_recent();
                        }
                        let key = if message.sender().is_empty() {
                            message.conversation_id.clone()
                        } else {
                            message.sender().to_owned()
                        };
                        if limiter.check_key(&key).is_ok() {
                            Route::Normal
                        } else {
                            tracing::info!(sender = key, "sender over their rate; answering slow down");
                            Route::RateLimited
                        }
                    }
                    None => Route::Normal,
                };
                self.spawn_answer(job, route)
            }
            None if ignore => {
                tracing::debug!(msg_id = %message.msg_id, "group message without a mention; not answering")
            }
            None => tracing::info!(msg_id = %message.msg_id, "duplicate push of a known message; ACKing only"),
        }
        Ok(())
    }

    /// Delete settled messages and audit records from before `before_ms` (none when `None`), and idle
    /// sessions.
    async fn prune(&self, before_ms: Option<i64>) -> Result<Pruned, PruneError> {
        let replier = &self.replier;
        let mut pruned = Pruned {
            sessions: replier.sessions.prune_idle().await?,
            ..Pruned::default()
        };
        if let Some(before_ms) = before_ms {
            pruned.messages = replier.outbox.prune(before_ms).await?;
            pruned.audit_records = replier.audit.prune(before_ms).await?;
        }
        Ok(pruned)
    }

    /// Prune now and every [`PRUNE_EVERY`] until `shutdown` turns true.
    async fn prune_periodically(&self, mut shutdown: watch::Receiver<bool>) {
        let retention = Duration::from_secs(u64::from(self.replier.api.config().retention_days) * 86_400);
        loop {
            let before_ms = (!retention.is_zero()).then(|| crate::sessions::now_ms() - retention.as_millis() as i64);
            match self.prune(before_ms).await {
                Ok(pruned) if pruned != Pruned::default() => tracing::info!(?pruned, "old DingTalk rows deleted"),
                Ok(_) => {}
                Err(err) => tracing::warn!(cause = %err, "cannot delete old DingTalk rows; trying again later"),
            }
            tokio::select! {
                () = tokio::time::sleep(PRUNE_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    fn spawn_answer(&self, job: Job, route: Route) {
        let span = tracing::info_span!(
            "dingtalk_message",
            platform = "dingtalk",
            msg_id = %job.message.msg_id,
            conversation = %job.message.conversation_id,
            attempt = job.attempt,
        );
        let (replier, slots) = (self.replier.clone(), self.answer_slots.clone());
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        // Reap finished tasks so the set does not grow with every message.
        while answers.try_join_next().is_some() {}
        answers.spawn(
            async move {
                let Ok(_slot) = slots.acquire_owned().await else { return };
                replier.answer(job, route).await;
            }
            .instrument(span),
        );
    }
}

/// A running connector.
pub struct DingTalkConnector {
    connector: Arc<Connector>,
    shutdown: watch::Sender<bool>,
    stream: tokio::task::JoinHandle<()>,
    /// Deletes rows past `retention_days` and expired sessions, hourly.
    pruning: tokio::task::JoinHandle<()>,
    outbox: Outbox,
}

impl DingTalkConnector {
    /// [`start_with_skills`](Self::start_with_skills) with the default skills.
    pub async fn start(config: DingTalkConfig, models: Arc<ModelRouter>) -> Result<Self, StartError> {
        let skills = SkillSet::new(&SkillsConfig::default()).map_err(|_| ConfigError::Invalid {
            field: "skills",
            rule: "valid",
        })?;
        Self::start_with_skills(config, models, Arc::new(skills)).await
    }

    /// Validate `config`, open the outbox (with the sessions and the audit log), resume unfinished messages
    /// and connect. Answers come from `skills`, else from the model `models` routes each message to.
    pub async fn start_with_skills(
        config: DingTalkConfig,
        models: Arc<ModelRouter>,
        skills: Arc<SkillSet>,
    ) -> Result<Self, StartError> {
        config.validate()?;
        let path = config.database.clone();
        let robot = config.robot().to_owned();
        let outbox = tokio::task::spawn_blocking(move || Outbox::open(&path, &robot))
            .await
            .map_err(|e| StoreError::Join(e.to_string()))??;
        // Pauses after throttles stay well under the card retry bound, so a refused card gets several tries
        // within it.
        let budget = DeliveryBudget::new(
            config.card_updates_per_second,
            Duration::from_millis(config.throttle_backoff_ms),
            config.card_retry() / 4,
        );
        let sessions = SessionStore::open(outbox.connection(), Duration::from_secs(config.session_idle_secs))?;
        let audit = AuditLog::open(outbox.connection(), Masker::new(&config.audit_mask_patterns)?)?;
        let limiter =
            NonZeroU32::new(config.user_requests_per_second).map(|rate| RateLimiter::keyed(Quota::per_second(rate)));
        let api = OpenApi::new(config)?;
        let skill_context = SkillContext {
            models: models.clone(),
            started: Instant::now(),
        };
        let webhook_pause = WebhookPause::default();
        let replier = Arc::new(Replier {
            api,
            models,
            outbox: outbox.clone(),
            budget,
            webhook_pause,
            sessions,
            skills,
            skill_context,
            audit,
        });
        let connector = Arc::new(Connector {
            replier,
            answers: std::sync::Mutex::new(JoinSet::new()),
            answer_slots: Arc::new(Semaphore::new(CONCURRENT_ANSWERS)),
            limiter,
        });
        let unfinished = outbox.resume().await?;
        if !unfinished.is_empty() {
            tracing::info!(
                count = unfinished.len(),
                "answering DingTalk messages left unfinished by the last run"
            );
        }
        for job in unfinished {
            connector.spawn_answer(job, Route::Normal);
        }
        let (shutdown, rx) = watch::channel(false);
        let stream =
            tokio::spawn(stream::run(connector.clone(), rx.clone()).instrument(tracing::info_span!("dingtalk_stream")));
        let pruner = connector.clone();
        let pruning = tokio::spawn(
            async move { pruner.prune_periodically(rx).await }.instrument(tracing::info_span!("dingtalk_prune")),
        );
        Ok(Self {
            connector,
            shutdown,
            stream,
            pruning,
            outbox,
        })
    }

    /// The outbox (for diagnostics and tests).
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.connector.replier.audit
    }

    /// The conversation histories.
    pub fn sessions(&self) -> &SessionStore {
        &self.connector.replier.sessions
    }

    /// The live skills (reload them through [`SkillSet::reload`]).
    pub fn skills(&self) -> &Arc<SkillSet> {
        &self.connector.replier.skills
    }

    /// Delete settled messages and audit records received before `before_ms`, and idle sessions, now
    /// (the connector also does it hourly, keeping `retention_days`).
    pub async fn prune(&self, before_ms: i64) -> Result<Pruned, PruneError> {
        self.connector.prune(Some(before_ms)).await
    }

    /// The connection's health and the permissions the platform refused, for the status page.
    pub fn health(&self) -> &Arc<PlatformHealth> {
        self.connector.replier.api.health()
    }

    /// What the console and the admin API need of this connector.
    pub fn link(&self) -> ImLink {
        ImLink {
            health: self.health().clone(),
            audit: self.audit().clone(),
            skills: self.skills().clone(),
        }
    }

    /// Stop taking messages (the Stream connection closes, so nothing new is ACKed), then give answers in
    /// flight up to `drain` to finish. Unfinished ones stay in the outbox and are answered on next start.
    pub async fn shutdown(self, drain: Duration) {
        let _ = self.shutdown.send(true);
        let _ = self.stream.await;
        let _ = self.pruning.await;
        let mut answers = std::mem::take(&mut *self.connector.answers.lock().unwrap_or_else(|p| p.into_inner()));
        let drained = tokio::time::timeout(drain, async { while answers.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                left = answers.len(),
                "DingTalk answers still running at the drain deadline; they resume on next start"
            );
            answers.shutdown().await;
        }
        tracing::info!("DingTalk connector stopped");
    }
}
