//! [`ImConnector`]: one platform's connector running: its adapter's receive loop, the intake that stores
//! each message before it is acknowledged, an answer task per new message, hourly retention, and shutdown.
//!
//! Flow of one message: the adapter's receive loop hands it to its [`Inbox`]; the intake records it in the
//! outbox (atomic dedupe on platform, account and message id) and only then lets the loop acknowledge it.
//! A new message addressed to the robot is answered in its own task (`answer`), at most
//! [`CONCURRENT_ANSWERS`] at once; a sender over their token bucket (`governor`, keyed by sender, checked
//! when the message is stored) gets "slow down". On start, messages left unfinished by a crash or shutdown
//! are answered first.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument;

use super::adapter::{Adapter, Arrival, Inbox, NotStored};
use super::answer::{Answerer, Route};
use super::cards::Deliverer;
use super::link::ImLink;
use super::outbox::{Job, Outbox, Unfinished};
use crate::access_rules::AccessRules;
use crate::audit::{AuditError, AuditLog, Masker};
use crate::db::DbError;
use crate::generation::PromptLimits;
use crate::platform::PlatformHealth;
use crate::routing::ModelRouter;
use crate::sessions::SessionStore;
use crate::skills::{SkillContext, SkillSet};
use crate::store::Store;

/// Most answers generated at once, per connector; the engine's own queue bounds the rest.
pub const CONCURRENT_ANSWERS: usize = 8;
/// Messages handed to the inbox and not yet stored; a receive loop past it waits.
const INBOX_CAPACITY: usize = 64;
/// How often the connector deletes rows past `retention_days` and expired sessions.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Why the core could not open what it keeps (the store, the audit log's masks).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// Why pruning old rows failed.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// Rows deleted by one [`ImConnector::prune`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Settled messages of the outbox.
    pub messages: usize,
    pub audit_records: usize,
    /// Sessions idle past their expiry, with their turns.
    pub sessions: usize,
}

/// Shared by the intake, the answer tasks and the pruner.
struct Connector<A: Adapter> {
    answerer: Arc<Answerer<A>>,
    /// Answers in flight, so shutdown can wait for them.
    answers: std::sync::Mutex<JoinSet<()>>,
    /// Bounds concurrent answers.
    answer_slots: Arc<Semaphore>,
    /// Per-sender token buckets; `None`: no limit.
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    /// The messages this node is answering (or waiting to), whose leases it renews.
    in_flight: Arc<std::sync::Mutex<HashSet<String>>>,
}

/// Takes a message out of the in-flight set when its answer task ends, however it ends.
struct InFlight {
    set: Arc<std::sync::Mutex<HashSet<String>>>,
    id: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

impl<A: Adapter> Connector<A> {
    fn adapter(&self) -> &Arc<A> {
        &self.answerer.deliverer.adapter
    }

    fn outbox(&self) -> &Outbox {
        &self.answerer.deliverer.outbox
    }

    /// Store every message the receive loop hands over (dedupe included) and say so, until every inbox is
    /// gone.
    async fn intake(self: Arc<Self>, mut arrivals: mpsc::Receiver<Arrival<A::Message>>) {
        while let Some(arrival) = arrivals.recv().await {
            let stored = self.receive(arrival.message).await.map_err(|err| {
                tracing::error!(cause = %err, "cannot store a message; it is not acknowledged, so it comes again");
                NotStored(err.to_string())
            });
            let _ = arrival.stored.send(stored);
        }
    }

    /// Persist `message`, then start answering it if it is new and addressed to the robot. Returns once the
    /// outbox has it, which is when the platform may be acknowledged.
    async fn receive(&self, message: A::Message) -> Result<(), DbError> {
        let envelope = self.adapter().envelope(&message);
        let payload = self.adapter().encode(&message);
        let (id, ignore, key) = (
            envelope.id.clone(),
            !envelope.addressed,
            if envelope.sender.is_empty() {
                envelope.conversation.clone()
            } else {
                envelope.sender.clone()
            },
        );
        match self.outbox().accept(envelope, message, payload).await? {
            Some(job) => {
                let route = match &self.limiter {
                    Some(limiter) => {
                        if limiter.len() > 100_000 {
                            limiter.retain_recent();
                        }
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
            None if ignore => tracing::debug!(msg_id = %id, "message not addressed to the robot; not answering"),
            None => tracing::info!(msg_id = %id, "duplicate push of a known message; acknowledging only"),
        }
        Ok(())
    }

    /// Delete settled messages and audit records from before `before_ms` (none when `None`), and idle
    /// sessions.
    async fn prune(&self, before_ms: Option<i64>) -> Result<Pruned, PruneError> {
        let answerer = &self.answerer;
        let mut pruned = Pruned {
            sessions: answerer.sessions.prune_idle().await?,
            ..Pruned::default()
        };
        if let Some(before_ms) = before_ms {
            pruned.messages = self.outbox().prune(before_ms).await?;
            pruned.audit_records = answerer.audit.prune(before_ms).await?;
        }
        Ok(pruned)
    }

    /// Prune now and every [`PRUNE_EVERY`] until `shutdown` turns true.
    async fn prune_periodically(&self, mut shutdown: watch::Receiver<bool>) {
        let retention = Duration::from_secs(u64::from(self.adapter().settings().retention_days) * 86_400);
        loop {
            let before_ms = (!retention.is_zero()).then(|| crate::db::now_ms() - retention.as_millis() as i64);
            match self.prune(before_ms).await {
                Ok(pruned) if pruned != Pruned::default() => tracing::info!(?pruned, "old rows deleted"),
                Ok(_) => {}
                Err(err) => tracing::warn!(cause = %err, "cannot delete old rows; trying again later"),
            }
            tokio::select! {
                () = tokio::time::sleep(PRUNE_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Set owed card marks as the platform takes them: at start, whenever one is owed, and every retry
    /// bound while some are, until `shutdown` turns true (what is left is owed at next start).
    async fn mark_owed_cards(&self, mut shutdown: watch::Receiver<bool>) {
        let deliverer = &self.answerer.deliverer;
        let pause = self.adapter().settings().retry_bound;
        loop {
            let left = deliverer.settle_marks().await;
            tokio::select! {
                () = deliverer.marks_owed.notified() => {}
                () = tokio::time::sleep(pause), if left > 0 => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Answer `unfinished` messages this node has just leased (resumed or claimed), but for any it is still
    /// answering (its lease ran out while the store was out of reach): that answer goes on, now under the
    /// new lease.
    fn take_up(&self, unfinished: Vec<Unfinished>) {
        for row in unfinished {
            if self
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&row.envelope.id)
            {
                tracing::info!(msg_id = %row.envelope.id, "reclaimed a message this node is still answering");
                continue;
            }
            let message = self.adapter().decode(&row.envelope, row.payload.as_deref());
            self.adapter().resuming(&message);
            self.spawn_answer(row.into_job(message), Route::Normal);
        }
    }

    /// Every third of a lease until `stop` turns true: renew the leases of the messages this node is
    /// answering, then, until `shutdown` turns true, claim, as answer slots are free, messages whose lease
    /// ran out (their node died or lost the store).
    async fn keep_leases(&self, shutdown: watch::Receiver<bool>, mut stop: watch::Receiver<bool>) {
        let outbox = self.outbox();
        let every = (outbox.lease_duration() / 3).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            let ids: Vec<String> = self
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect();
            if let Err(err) = outbox.renew(ids).await {
                tracing::warn!(cause = %err, "cannot renew the leases of the answers in flight");
            }
            // Once shutdown has begun, nothing new is taken up.
            if *shutdown.borrow() {
                continue;
            }
            match outbox.claim(self.answer_slots.available_permits()).await {
                Ok(claimed) if !claimed.is_empty() => {
                    tracing::info!(count = claimed.len(), "answering messages whose node's lease ran out");
                    self.take_up(claimed);
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(cause = %err, "cannot claim messages whose lease ran out"),
            }
        }
    }

    fn spawn_answer(&self, job: Job<A::Message>, route: Route) {
        let span = tracing::info_span!(
            "im_message",
            platform = A::PLATFORM,
            msg_id = %job.envelope.id,
            conversation = %job.envelope.conversation,
            attempt = job.attempt,
        );
        let (answerer, slots) = (self.answerer.clone(), self.answer_slots.clone());
        let id = job.envelope.id.clone();
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone());
        let in_flight = InFlight {
            set: self.in_flight.clone(),
            id,
        };
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        // Reap finished tasks so the set does not grow with every message.
        while answers.try_join_next().is_some() {}
        // The message is stored (or, resumed, read back) by now: the slot wait starts here.
        let stored = tokio::time::Instant::now();
        answers.spawn(
            async move {
                let _in_flight = in_flight;
                let Ok(_slot) = slots.acquire_owned().await else { return };
                crate::metrics::im_answer_slot_wait(A::PLATFORM, stored.elapsed());
                answerer.answer(job, route, stored).await;
            }
            .instrument(span),
        );
    }
}

/// A running connector of one platform.
pub struct ImConnector<A: Adapter> {
    connector: Arc<Connector<A>>,
    shutdown: watch::Sender<bool>,
    /// The adapter's receive loop.
    receiving: JoinHandle<()>,
    /// Stores what the receive loop hands over.
    intake: JoinHandle<()>,
    /// Deletes rows past `retention_days` and expired sessions, hourly.
    pruning: JoinHandle<()>,
    /// Sets card marks the platform refused at first.
    marking: JoinHandle<()>,
    /// Stops `leasing` once the answers have drained.
    leases_stop: watch::Sender<bool>,
    /// Renews this node's leases and claims messages whose lease ran out.
    leasing: JoinHandle<()>,
}

impl<A: Adapter> ImConnector<A> {
    /// Open the store the settings' `database` names (outbox, sessions, audit log), resume unfinished messages and start the adapter's
    /// receive loop. Answers come from `skills`, else from the model `models` routes each message to.
    /// `access` decides who may be answered, and with which skills and models.
    pub async fn run(
        adapter: Arc<A>,
        models: Arc<ModelRouter>,
        skills: Arc<SkillSet>,
        access: Arc<AccessRules>,
    ) -> Result<Self, OpenError> {
        let settings = adapter.settings().clone();
        let store = Store::open_setting(&settings.database).await?;
        let outbox =
            Outbox::on(store.clone(), A::PLATFORM, adapter.account()).with_lease(&settings.node, settings.lease);
        let sessions = SessionStore::open(store.clone(), settings.session_idle);
        let audit = AuditLog::open(store, Masker::new(&settings.audit_mask_patterns)?);
        let limiter =
            NonZeroU32::new(settings.user_requests_per_second).map(|rate| RateLimiter::keyed(Quota::per_second(rate)));
        let skill_context = SkillContext {
            models: models.clone(),
            started: Instant::now(),
        };
        let answerer = Arc::new(Answerer {
            deliverer: Arc::new(Deliverer::new(adapter.clone(), outbox.clone())),
            models,
            prompts: Arc::new(PromptLimits::new(None, settings.max_answer_tokens)),
            sessions,
            skills,
            skill_context,
            audit,
            access,
        });
        let connector = Arc::new(Connector {
            answerer,
            answers: std::sync::Mutex::new(JoinSet::new()),
            answer_slots: Arc::new(Semaphore::new(CONCURRENT_ANSWERS)),
            limiter,
            in_flight: Arc::default(),
        });
        let unfinished = outbox.resume().await?;
        if !unfinished.is_empty() {
            tracing::info!(
                platform = A::PLATFORM,
                count = unfinished.len(),
                "answering messages left unfinished by the last run"
            );
        }
        connector.take_up(unfinished);
        let (shutdown, rx) = watch::channel(false);
        let (inbox, arrivals) = Inbox::new(INBOX_CAPACITY);
        let intake = tokio::spawn(
            connector
                .clone()
                .intake(arrivals)
                .instrument(tracing::info_span!("im_intake", platform = A::PLATFORM)),
        );
        let receiving = tokio::spawn(
            adapter
                .receive(inbox, rx.clone())
                .instrument(tracing::info_span!("im_receive", platform = A::PLATFORM)),
        );
        let (pruner, marker, marks_rx, claims_rx) = (connector.clone(), connector.clone(), rx.clone(), rx.clone());
        let pruning = tokio::spawn(
            async move { pruner.prune_periodically(rx).await }
                .instrument(tracing::info_span!("im_prune", platform = A::PLATFORM)),
        );
        let marking = tokio::spawn(
            async move { marker.mark_owed_cards(marks_rx).await }
                .instrument(tracing::info_span!("im_marks", platform = A::PLATFORM)),
        );
        // Leases are kept through the drain at shutdown, so they have a signal of their own.
        let (leases_stop, leases_rx) = watch::channel(false);
        let keeper = connector.clone();
        let leasing = tokio::spawn(
            async move { keeper.keep_leases(claims_rx, leases_rx).await }
                .instrument(tracing::info_span!("im_leases", platform = A::PLATFORM, node = %settings.node)),
        );
        Ok(Self {
            connector,
            shutdown,
            receiving,
            intake,
            pruning,
            marking,
            leases_stop,
            leasing,
        })
    }

    /// The adapter.
    pub fn adapter(&self) -> &Arc<A> {
        self.connector.adapter()
    }

    /// The outbox (for diagnostics and tests).
    pub fn outbox(&self) -> &Outbox {
        self.connector.outbox()
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.connector.answerer.audit
    }

    /// The conversation histories.
    pub fn sessions(&self) -> &SessionStore {
        &self.connector.answerer.sessions
    }

    /// The live skills (reload them through [`SkillSet::reload`]).
    pub fn skills(&self) -> &Arc<SkillSet> {
        &self.connector.answerer.skills
    }

    /// Delete settled messages and audit records received before `before_ms`, and idle sessions, now
    /// (the connector also does it hourly, keeping `retention_days`).
    pub async fn prune(&self, before_ms: i64) -> Result<Pruned, PruneError> {
        self.connector.prune(Some(before_ms)).await
    }

    /// The connection's health and the permissions the platform refused, for the status page.
    pub fn health(&self) -> &Arc<PlatformHealth> {
        self.adapter().health()
    }

    /// What the console and the admin API need of this connector.
    pub fn link(&self) -> ImLink {
        ImLink {
            health: self.health().clone(),
            audit: self.audit().clone(),
            skills: self.skills().clone(),
        }
    }

    /// Stop taking messages (the receive loop ends, so nothing new is acknowledged), then give answers in
    /// flight up to `drain` to finish, their leases renewed meanwhile. The leases of unfinished ones are
    /// then released: another node on the store answers them at once, else this one on next start.
    pub async fn shutdown(self, drain: Duration) {
        let _ = self.shutdown.send(true);
        let _ = self.receiving.await;
        // The receive loop dropped its inbox, so the intake ends once it has stored what it was handed.
        let _ = self.intake.await;
        let _ = self.pruning.await;
        let _ = self.marking.await;
        let mut answers = std::mem::take(&mut *self.connector.answers.lock().unwrap_or_else(|p| p.into_inner()));
        let drained = tokio::time::timeout(drain, async { while answers.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                platform = A::PLATFORM,
                left = answers.len(),
                "answers still running at the drain deadline; they resume on next start"
            );
            answers.shutdown().await;
        }
        let _ = self.leases_stop.send(true);
        let _ = self.leasing.await;
        match self.connector.outbox().release().await {
            Ok(0) => {}
            Ok(released) => tracing::info!(
                platform = A::PLATFORM,
                released,
                "leases of unfinished answers released"
            ),
            Err(err) => tracing::warn!(cause = %err, "cannot release the leases of unfinished answers; they run out"),
        }
        tracing::info!(platform = A::PLATFORM, "IM connector stopped");
    }
}
