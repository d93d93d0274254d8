//! Answering one message: the engine generates, an AI card streams the answer, the outbox records the end.
//!
//! Card calls go through one [`DeliveryBudget`] shared by all cards: a QPS pacer plus a pause after each
//! 403/429 throttle (doubling while they repeat). Between card updates, new tokens only replace the pending
//! snapshot (latest wins), so a slow platform means fewer, larger updates, never a backlog.
//!
//! Once the platform refuses a card's calls (403/429 throttles, server errors), they are retried for at
//! most `card_retry_secs`; then the card is given up: the rest of the answer goes out as markdown while
//! the card is marked failed beside it (final frame with `isError`, then `flowStatus` "5"), through the
//! same retries and budget. A finished card gets `flowStatus` "3" (the official SDK's AI-card states). A
//! mark the platform still refuses after the retries is owed: kept in the outbox (`card_marks`) and set by
//! the connector's marker once the platform takes it, after a restart too.
//!
//! Guids: intermediate updates use `{outTrackId}-{attempt}-{n}`; the final frame always uses
//! `{outTrackId}-final` (or `-error`), so a finalize retried after a crash is applied once by the platform.
//! The outbox keeps how far into the answer the user has seen it (`shown_bytes`, set to "all" before the
//! last final frame): a card that an earlier run created (a resumed answer) streams again once the
//! regenerated text catches up with what it shows, and a finalized card only ever gets its final frame.
//!
//! A card holds at most `card_max_bytes`: past that the card is finalized at a line or word break
//! (`split`) and the answer continues in a new card, `{outTrackId}-p2`, `-p3`, … — ids a resumed answer
//! finds again (`param.cardAlreadyExist` counts as created). A code block cut between two cards is closed
//! in the first and opened again in the second. When a card cannot be completed it is marked
//! failed (`isError`) and the rest of the answer (what no earlier card finalized) goes out as markdown
//! through the sessionWebhook, or the robot send API once the webhook has expired or while the platform
//! throttles the robot's webhook messages (errcode 130101: then webhooks are left alone for minutes).
//!
//! Before the model: a rate-limited sender gets a short "slow down" card, and a message a skill claims gets
//! the skill's answer as a finalized card. The model gets the conversation's session history (trimmed to
//! its context, newest turns kept) plus the question; a full engine queue gets a "busy" card. Every
//! message ends with one delivery metric and one transaction: its audit record (with the platform's
//! msgId), its session turn and its outcome in the outbox.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engine::{ChatMessage, EngineError, Event, GenerateRequest};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::audit::{AuditLog, AuditRecord, Outcome};
use crate::metrics;
use crate::routing::{Loaded, ModelRouter};
use crate::sessions::SessionStore;
use crate::skills::{SkillAction, SkillContext, SkillInput, SkillSet};

use super::api::{CardCreation, DingTalkError, OpenApi};
use super::config::GroupSessions;
use super::message::{Addressee, BotMessage, ConversationType};
use super::split;
use super::store::{Job, Outbox, SHOWN_ALL};
use super::wire::FlowStatus;

/// Paces card calls: at most `per_second` shared by every card, and a pause after throttling.
pub struct DeliveryBudget {
    interval: Duration,
    backoff: Duration,
    /// The longest pause after throttles: a pause past the card retry bound would only make every card
    /// give up.
    max_pause: Duration,
    state: Mutex<BudgetState>,
}

struct BudgetState {
    next_slot: Instant,
    paused_until: Instant,
    throttles_in_a_row: u32,
}

impl DeliveryBudget {
    /// A budget of `per_second` calls with `backoff` as the first pause after a throttle, doubling while
    /// throttles repeat, up to `max_pause`.
    pub fn new(per_second: u32, backoff: Duration, max_pause: Duration) -> Self {
        let now = Instant::now();
        Self {
            interval: Duration::from_secs(1) / per_second.max(1),
            backoff,
            max_pause: max_pause.max(backoff),
            state: Mutex::new(BudgetState {
                next_slot: now,
                paused_until: now,
                throttles_in_a_row: 0,
            }),
        }
    }

    /// Wait for this call's slot if it comes by `deadline` (any time when `None`); `false`, without
    /// waiting or taking a slot, when it would come later.
    pub async fn acquire_by(&self, deadline: Option<Instant>) -> bool {
        let slot = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let slot = Instant::now().max(state.next_slot).max(state.paused_until);
            if deadline.is_some_and(|deadline| slot > deadline) {
                return false;
            }
            state.next_slot = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
        true
    }

    /// The platform throttled a call: pause every card.
    pub fn throttled(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.throttles_in_a_row += 1;
        let pause =
            (self.backoff * 2u32.saturating_pow(state.throttles_in_a_row.saturating_sub(1).min(5))).min(self.max_pause);
        state.paused_until = state.paused_until.max(Instant::now() + pause);
        tracing::info!(
            pause_ms = pause.as_millis() as u64,
            "card updates throttled by the platform; backing off"
        );
    }

    /// A call went through.
    pub fn succeeded(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).throttles_in_a_row = 0;
    }
}

/// How long sessionWebhooks are left alone after the platform throttled the robot on them: it allows 20
/// messages a minute and then refuses for 10 minutes (protocol notes §7.1). The robot send API carries
/// the fallback meanwhile.
pub const WEBHOOK_PAUSE: Duration = Duration::from_secs(10 * 60);

/// Whether the robot's sessionWebhook messages are throttled, as last seen.
#[derive(Default)]
pub struct WebhookPause {
    until: Mutex<Option<Instant>>,
}

impl WebhookPause {
    /// The platform throttled a sessionWebhook message: leave them alone for [`WEBHOOK_PAUSE`].
    pub fn start(&self) {
        *self.until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + WEBHOOK_PAUSE);
    }

    /// Whether sessionWebhooks are still being left alone.
    pub fn active(&self) -> bool {
        self.until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }
}

/// The answer a rate-limited user gets.
pub const SLOW_DOWN: &str = "You are sending messages too quickly; please wait a moment and try again.";
/// The answer when the engine's queue is full.
pub const BUSY: &str = "The assistant is busy right now; please try again in a moment.";

/// What answering needs.
pub struct Replier {
    pub api: OpenApi,
    /// Which model answers; each answer holds its model until it ends (see `routing`).
    pub models: Arc<ModelRouter>,
    pub outbox: Outbox,
    pub budget: DeliveryBudget,
    /// Set while the platform throttles the robot's sessionWebhook messages.
    pub webhook_pause: WebhookPause,
    /// Conversation histories.
    pub sessions: SessionStore,
    /// Answers without the model; reloadable.
    pub skills: Arc<SkillSet>,
    /// What skills may look at.
    pub skill_context: SkillContext,
    pub audit: AuditLog,
    /// Woken when a card mark is owed (see [`Replier::settle_marks`]).
    pub marks_owed: Notify,
}

/// How a job is to be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A skill or the model.
    Normal,
    /// The sender is over their rate: a short "slow down" answer.
    RateLimited,
}

/// Why generation ended without an answer.
#[derive(Debug, Clone)]
enum Failure {
    /// The engine's queue was full (`EngineError::Overloaded`): the user is asked to try again.
    Busy,
    /// Anything else, with the reason the user is told.
    Error(String),
}

/// The generated text so far, and whether generation ended (and how).
#[derive(Debug, Clone, Default)]
struct Draft {
    text: String,
    end: Option<Result<(), Failure>>,
}

/// A finished generation.
#[derive(Debug, Clone, Default)]
struct Generated {
    text: String,
    prompt_tokens: usize,
    completion_tokens: usize,
    /// Earlier session turns that fit the context and were sent.
    context_turns: usize,
}

/// How delivery ended.
struct Delivered {
    outcome: Outcome,
    detail: String,
    /// When the user could first see text (first accepted card update, or the fallback message).
    first_visible: Option<Instant>,
    /// The answer's last card and the `flowStatus` it gets before the message is settled (its earlier cards
    /// got theirs as they were finalized).
    flow: Option<(String, FlowStatus)>,
    /// Marking a failed card, started beside the fallback message; awaited before the message is settled.
    marking: Option<JoinHandle<()>>,
}

impl Delivered {
    fn answered(first_visible: Option<Instant>, flow: Option<(String, FlowStatus)>) -> Self {
        Self {
            outcome: Outcome::Answered,
            detail: "card finalized".to_owned(),
            first_visible,
            flow,
            marking: None,
        }
    }
}

impl Replier {
    /// The session `message` continues: its 1:1 chat, its group, or (configured) its group and sender.
    pub fn session_key(&self, message: &BotMessage) -> String {
        let config = self.api.config();
        let base = format!("dingtalk:{}:{}", config.robot(), message.conversation_id);
        match (message.conversation_type, config.group_sessions) {
            (ConversationType::Group, GroupSessions::GroupUser) => format!("{base}:{}", message.sender()),
            _ => base,
        }
    }

    /// Answer `job` and record how it ended. Never panics on platform or engine errors; they end the job
    /// with a fallback or a logged failure.
    ///
    /// The audit record, the session turn and the message's outcome are written in one transaction once
    /// the answer is delivered and its last card's `flowStatus` set. A crash before that commit leaves the
    /// message to be answered again (its cards are found again), with nothing recorded twice.
    pub async fn answer(self: &Arc<Self>, job: Job, route: Route) {
        let started = Instant::now();
        let message = &job.message;
        let question = message.question();
        let session = self.session_key(message);
        let mut record = AuditRecord {
            at_ms: crate::sessions::now_ms(),
            platform: "dingtalk".to_owned(),
            msg_id: message.msg_id.clone(),
            conversation_id: message.conversation_id.clone(),
            session: session.clone(),
            sender_id: message.sender().to_owned(),
            sender_nick: message.sender_nick.clone(),
            handler: String::new(),
            question: question.clone(),
            answer: String::new(),
            first_visible_ms: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            context_turns: 0,
            // Set once delivery ended.
            outcome: Outcome::Failed,
        };
        let mut busy = false;
        let mut turn = None;
        let matched = match route {
            Route::Normal => self.skills.find(&question),
            Route::RateLimited => None,
        };
        let delivered = if route == Route::RateLimited {
            record.handler = "rate_limited".to_owned();
            record.answer = SLOW_DOWN.to_owned();
            self.deliver_fixed(&job, SLOW_DOWN).await
        } else if let Some(matched) = matched {
            record.handler = format!("skill:{}", matched.skill.name());
            let input = SkillInput {
                text: &question,
                args: &matched.args,
                sender_id: message.sender(),
                sender_nick: &message.sender_nick,
            };
            let reply = matched.skill.answer(&input, &self.skill_context);
            let mut text = reply.text;
            for action in reply.actions {
                match action {
                    SkillAction::ResetSession => {
                        if let Err(err) = self.sessions.reset(&session).await {
                            tracing::warn!(cause = %err, "cannot reset the session");
                        }
                    }
                    SkillAction::Escalate { to, summary } => {
                        match self.api.robot_markdown_to(&to, "Escalation", &summary).await {
                            Ok(()) => tracing::info!(to, "conversation escalated to a person"),
                            Err(err) => {
                                tracing::warn!(to, cause = %err, "cannot reach the escalation contact");
                                text =
                                    "Sorry, I could not reach a colleague just now; please try again later.".to_owned();
                            }
                        }
                    }
                }
            }
            record.answer = text.clone();
            self.deliver_fixed(&job, &text).await
        } else {
            let model = self.models.route();
            record.handler = format!("model:{}", model.name);
            let history = self.sessions.history(&session).await.unwrap_or_else(|err| {
                tracing::warn!(cause = %err, "cannot read the session; answering without history");
                Vec::new()
            });
            let (draft_tx, draft_rx) = watch::channel(Draft::default());
            let max_tokens = self.api.config().max_answer_tokens;
            let generation = tokio::spawn(generate(model, history, question.clone(), max_tokens, draft_tx));
            let (delivered, generated) = self.deliver_generated(&job, draft_rx, generation).await;
            match generated {
                Some(Ok(generated)) => {
                    record.answer = generated.text.clone();
                    record.prompt_tokens = generated.prompt_tokens as i64;
                    record.completion_tokens = generated.completion_tokens as i64;
                    record.context_turns = generated.context_turns as i64;
                    turn = Some((session.clone(), question.clone(), generated.text));
                }
                Some(Err(Failure::Busy)) => {
                    record.answer = BUSY.to_owned();
                    busy = true;
                }
                Some(Err(Failure::Error(reason))) => record.answer = reason,
                None => {}
            }
            delivered
        };
        record.first_visible_ms = delivered
            .first_visible
            .map(|t| t.duration_since(started).as_millis() as i64);
        record.outcome = if busy { Outcome::Busy } else { delivered.outcome };
        metrics::im_delivery("dingtalk", delivered.outcome.as_str());
        // Before the commit: a crash before it answers the message again, which sets the flowStatus again.
        if let Some((card, status)) = &delivered.flow {
            self.set_flow_status(card, *status).await;
        }
        // A failed card is marked beside the fallback message (the user's answer never waits for it), and the
        // commit waits for the mark, bounded by `card_retry_secs`: a crash in that window answers the message
        // again, while a commit first would leave the card "typing" for good if the process died before the
        // mark went through.
        if let Some(marking) = delivered.marking {
            let _ = marking.await;
        }
        let record = self.audit.masked(record);
        match self
            .outbox
            .settle(
                &message.msg_id,
                delivered.outcome,
                &delivered.detail,
                Some(record),
                turn,
            )
            .await
        {
            Ok(true) => {
                self.audit.note_written();
                tracing::info!(outcome = ?delivered.outcome, detail = delivered.detail, "message finished")
            }
            Ok(false) => tracing::warn!("message was already finished"),
            Err(err) => {
                tracing::error!(cause = %err, "cannot record the message's end; it will be answered again after a restart")
            }
        }
    }

    /// Deliver a fixed answer (a skill's, or "slow down") as finalized cards, or markdown if a card fails.
    async fn deliver_fixed(self: &Arc<Self>, job: &Job, text: &str) -> Delivered {
        let (_draft_tx, draft_rx) = watch::channel(Draft {
            text: text.to_owned(),
            end: Some(Ok(())),
        });
        let mut first_visible = None;
        match self.stream_card(job, draft_rx, &mut first_visible).await {
            Ok(flow) => Delivered::answered(first_visible, flow),
            Err(failure) => {
                tracing::warn!(cause = %failure.cause, card = failure.card, "the AI card failed; falling back to markdown");
                self.fallback(job, &failure, &unsent_markdown(text, failure.shown))
                    .await
            }
        }
    }

    /// Stream the generation into cards (markdown if a card fails); returns how delivery ended and how
    /// generation did (`None` if its task died).
    async fn deliver_generated(
        self: &Arc<Self>,
        job: &Job,
        draft_rx: watch::Receiver<Draft>,
        generation: JoinHandle<Result<Generated, Failure>>,
    ) -> (Delivered, Option<Result<Generated, Failure>>) {
        let mut first_visible = None;
        let result = self.stream_card(job, draft_rx, &mut first_visible).await;
        let failure = match result {
            // Generation ended before the final frame was sent, so this join is immediate.
            Ok(flow) => return (Delivered::answered(first_visible, flow), generation.await.ok()),
            Err(failure) => {
                tracing::warn!(cause = %failure.cause, card = failure.card, "the AI card failed; falling back to markdown");
                failure
            }
        };
        // The card failed: let generation finish so the markdown carries the rest of the answer (what
        // earlier cards finalized is not sent again).
        let generated = generation.await.ok();
        let shown = failure.shown;
        let text = match &generated {
            Some(Ok(generated)) => unsent_markdown(&generated.text, shown),
            Some(Err(Failure::Busy)) => BUSY.to_owned(),
            Some(Err(Failure::Error(reason))) if shown > 0 => {
                let draft = unsent_markdown(&failure.draft, shown);
                format!(
                    "{draft}{}\n\nSorry, I could not finish this answer ({}).",
                    split::closing(&draft),
                    reason
                )
            }
            Some(Err(Failure::Error(reason))) => format!("Sorry, I could not answer this message ({reason})."),
            None => unsent_markdown(&failure.draft, shown),
        };
        (self.fallback(job, &failure, &text).await, generated)
    }

    /// Stream the answer into its card under the budget and finalize it; text past `card_max_bytes`
    /// rolls over into continuation cards. Returns the last card with the `flowStatus` it is to get, or
    /// on failure what the fallback needs. `first_visible` is set when the platform first accepts text.
    ///
    /// Once the platform refuses card calls (throttles, server errors), they are retried for at most
    /// `card_retry_secs` before the card is given up: the user never waits longer behind a frozen card.
    async fn stream_card(
        &self,
        job: &Job,
        mut draft: watch::Receiver<Draft>,
        first_visible: &mut Option<Instant>,
    ) -> Result<Option<(String, FlowStatus)>, CardFailure> {
        let interval = Duration::from_millis(self.api.config().card_update_interval_ms);
        let bound = self.api.config().card_retry();
        let mut cards = Cards {
            replier: self,
            job,
            card: CardPart::first(job),
            first_visible,
            refused_since: None,
            flow: None,
        };
        if !cards.card.created {
            cards
                .open()
                .await
                .map_err(|cause| cards.failure(cause, String::new()))?;
        }
        let max = self.api.config().card_max_bytes;
        let mut sent = String::new();
        let mut n = 0u32;
        let mut last_update = Instant::now();
        loop {
            // Wait for new text or the end, then (after the first update) let more accumulate until the
            // card's interval has passed.
            if draft.borrow_and_update().end.is_none() && draft.changed().await.is_err() {
                break;
            }
            if n > 0 {
                tokio::time::sleep_until(last_update + interval).await;
            }
            let snapshot = draft.borrow_and_update().clone();
            if let Some(end) = snapshot.end {
                let (text, error) = final_text(snapshot.text, end);
                return match cards.finish(&text, error).await {
                    Ok(()) => Ok(cards.flow.take()),
                    Err(cause) => Err(cards.failure(cause, text)),
                };
            }
            cards
                .roll_over(&snapshot.text)
                .await
                .map_err(|cause| cards.failure(cause, snapshot.text.clone()))?;
            let rest = unsent(&snapshot.text, cards.card.start);
            if rest.trim().is_empty() || snapshot.text == sent {
                continue;
            }
            if !cards.card.created {
                cards
                    .open()
                    .await
                    .map_err(|cause| cards.failure(cause, snapshot.text.clone()))?;
            }
            if !cards.card.live {
                // A card an earlier run created shows the answer up to `job.shown` (the regenerated answer
                // is the same greedy text): it streams again once the new text gets there, so the user
                // sees it grow on from where it stopped. A finalized card is never streamed into.
                if job.shown == SHOWN_ALL || snapshot.text.len() < job.shown {
                    continue;
                }
                tracing::info!(card = %cards.card.id, shown = job.shown, "the resumed answer caught up; streaming on");
                cards.card.live = true;
            }
            n += 1;
            // Recorded before the call: the card never shows more than a resumed answer will wait for.
            if let Err(err) = self.outbox.shown(&job.message.msg_id, snapshot.text.len()).await {
                tracing::warn!(cause = %err, "cannot record how much of the answer was shown");
            }
            let give_up_at = cards.refused_since.map(|since| since + bound);
            if !self.budget.acquire_by(give_up_at).await {
                return Err(cards.failure(given_up(bound), snapshot.text));
            }
            last_update = Instant::now();
            let card = &cards.card.id;
            let shown = split::card_text(&snapshot.text, cards.card.start, None, max);
            match self
                .api
                .stream(card, &format!("{card}-{}-{n}", job.attempt), &shown, false, false)
                .await
            {
                Ok(()) => {
                    self.budget.succeeded();
                    cards.refused_since = None;
                    cards.first_visible.get_or_insert_with(Instant::now);
                    sent = snapshot.text;
                }
                // A throttled snapshot is skipped: the next one carries the whole text anyway, unless the
                // platform has refused the card for longer than the bound.
                Err(err) if err.is_throttle() => {
                    metrics::im_card_update_failure("dingtalk");
                    self.budget.throttled();
                    let since = *cards.refused_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= bound {
                        return Err(cards.failure(err, snapshot.text));
                    }
                }
                Err(err) => {
                    metrics::im_card_update_failure("dingtalk");
                    return Err(cards.failure(err, snapshot.text));
                }
            }
        }
        Err(cards.failure(
            DingTalkError::Unexpected {
                api: "generation",
                detail: "the answer stream ended without a result".to_owned(),
            },
            sent,
        ))
    }

    /// Run a card call (or a fallback robot send) under the budget, retrying throttles and transient
    /// failures up to `attempts` times, and never past `give_up_at`: a call whose next slot under the
    /// budget would come later is given up.
    async fn with_retries<T, F, Fut>(&self, attempts: u32, give_up_at: Instant, mut call: F) -> Result<T, DingTalkError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, DingTalkError>>,
    {
        let bound = self.api.config().card_retry();
        let mut last = None;
        for attempt in 1..=attempts {
            if !self.budget.acquire_by(Some(give_up_at)).await {
                break;
            }
            match call().await {
                Ok(value) => {
                    self.budget.succeeded();
                    return Ok(value);
                }
                Err(err) if err.is_throttle() => {
                    metrics::im_card_update_failure("dingtalk");
                    self.budget.throttled();
                    last = Some(err);
                }
                Err(err @ (DingTalkError::Http { .. } | DingTalkError::Platform { status: 500..=599, .. })) => {
                    metrics::im_card_update_failure("dingtalk");
                    tracing::info!(attempt, cause = %err, "card call failed; retrying");
                    let pause = self.budget.backoff * attempt;
                    last = Some(err);
                    if Instant::now() + pause > give_up_at {
                        break;
                    }
                    tokio::time::sleep(pause).await;
                }
                Err(err) => {
                    metrics::im_card_update_failure("dingtalk");
                    return Err(err);
                }
            }
        }
        Err(last.unwrap_or_else(|| given_up(bound)))
    }

    /// Set `card`'s `flowStatus` with the retries and bound of every card call. When the platform still
    /// refuses it, the mark is owed: kept in the outbox and set by the marker once the platform takes it
    /// (after a restart too), so a card never stays "typing" because of a throttle.
    async fn set_flow_status(&self, card: &str, status: FlowStatus) {
        if let Err(err) = self.try_flow_status(card, status).await {
            tracing::warn!(card, ?status, cause = %err, "cannot set the card's flowStatus yet; it is owed and retried");
            self.defer_mark(card, status).await;
        }
    }

    async fn try_flow_status(&self, card: &str, status: FlowStatus) -> Result<(), DingTalkError> {
        let config = self.api.config();
        let give_up_at = Instant::now() + config.card_retry();
        self.with_retries(config.card_call_attempts, give_up_at, || {
            self.api.set_flow_status(card, status)
        })
        .await
    }

    /// Mark `card` failed (see [`Self::try_mark_failed`]); when the platform still refuses, the mark is
    /// owed as in [`Self::set_flow_status`].
    async fn mark_failed(&self, card: &str) {
        if let Err(err) = self.try_mark_failed(card).await {
            tracing::warn!(card, cause = %err, "cannot mark the card failed yet; it is owed and retried");
            self.defer_mark(card, FlowStatus::Failed).await;
        }
    }

    /// Mark `card` failed: its final frame with `isError` (fixed guid, so a repeat is applied once), then
    /// `flowStatus` "5", with the retries and bound of every card call.
    async fn try_mark_failed(&self, card: &str) -> Result<(), DingTalkError> {
        let config = self.api.config();
        let give_up_at = Instant::now() + config.card_retry();
        let guid = format!("{card}-error");
        self.with_retries(config.card_call_attempts, give_up_at, || {
            self.api.stream(
                card,
                &guid,
                "This answer could not be shown here; it was sent as a message.",
                true,
                true,
            )
        })
        .await?;
        self.try_flow_status(card, FlowStatus::Failed).await
    }

    /// Record that `card` is owed `status` and wake the marker.
    async fn defer_mark(&self, card: &str, status: FlowStatus) {
        match self.outbox.defer_mark(card, status.wire()).await {
            Ok(()) => self.marks_owed.notify_one(),
            Err(err) => tracing::error!(card, cause = %err, "cannot record the card's owed mark"),
        }
    }

    /// Set every owed card mark the platform takes now; returns how many are still owed. A mark the
    /// platform can never take (the card is gone, the call is refused as malformed) is dropped, logged.
    pub async fn settle_marks(&self) -> usize {
        let owed = match self.outbox.pending_marks().await {
            Ok(owed) => owed,
            Err(err) => {
                tracing::warn!(cause = %err, "cannot read the owed card marks");
                return 0;
            }
        };
        let mut left = 0;
        for (card, wire) in owed {
            let result = match FlowStatus::from_wire(&wire) {
                Some(FlowStatus::Failed) => self.try_mark_failed(&card).await,
                Some(status) => self.try_flow_status(&card, status).await,
                None => Err(DingTalkError::Unexpected {
                    api: "card mark",
                    detail: format!("unknown flowStatus {wire:?} in the outbox"),
                }),
            };
            match result {
                Ok(()) => tracing::info!(card, status = wire, "owed card mark set"),
                Err(err) if err.is_transient() => {
                    tracing::debug!(card, cause = %err, "owed card mark still refused");
                    left += 1;
                    continue;
                }
                Err(err) => tracing::warn!(card, cause = %err, "owed card mark cannot be set; dropped"),
            }
            if let Err(err) = self.outbox.mark_done(&card, &wire).await {
                tracing::warn!(card, cause = %err, "cannot clear the owed card mark");
            }
        }
        left
    }

    /// Send `text` as markdown (sessionWebhook while valid and not throttled, else the robot send API,
    /// throttles retried under the budget) while the failed card, if it exists, is marked failed beside it:
    /// the message does not wait behind the card.
    async fn fallback(self: &Arc<Self>, job: &Job, failure: &CardFailure, text: &str) -> Delivered {
        let marking = failure.created.then(|| {
            let (replier, card) = (self.clone(), failure.card.clone());
            tokio::spawn(async move { replier.mark_failed(&card).await }.instrument(tracing::Span::current()))
        });
        let message = &job.message;
        let title: String = message.question().chars().take(20).collect();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let webhook_valid = message.session_webhook_expired_time.is_some_and(|t| t > now_ms + 5_000);
        let sent = |detail: &str, marking: Option<JoinHandle<()>>| Delivered {
            outcome: Outcome::AnsweredMarkdown,
            detail: detail.to_owned(),
            first_visible: Some(Instant::now()),
            flow: None,
            marking,
        };
        if let (Some(webhook), true) = (&message.session_webhook, webhook_valid) {
            if self.webhook_pause.active() {
                tracing::info!("the robot's sessionWebhook messages are throttled; using the robot send API");
            } else {
                match self
                    .api
                    .webhook_markdown(webhook, &title, text, &message.sender_staff_id)
                    .await
                {
                    Ok(()) => return sent("sessionWebhook", marking),
                    Err(err) if err.is_throttle() => {
                        self.webhook_pause.start();
                        tracing::warn!(cause = %err, pause_secs = WEBHOOK_PAUSE.as_secs(), "the platform throttles the robot's sessionWebhook messages; using the robot send API meanwhile");
                    }
                    Err(err) => tracing::warn!(cause = %err, "sessionWebhook failed; trying the robot send API"),
                }
            }
        }
        let config = self.api.config();
        let give_up_at = Instant::now() + config.card_retry();
        match self
            .with_retries(config.card_call_attempts, give_up_at, || {
                self.api.robot_markdown(message, &title, text)
            })
            .await
        {
            Ok(()) => sent("robot send API", marking),
            Err(err) => {
                tracing::error!(cause = %err, "the answer could not be delivered at all");
                self.api
                    .health()
                    .problem(format!("an answer could not be delivered: {err}"));
                Delivered {
                    outcome: Outcome::Failed,
                    detail: err.to_string(),
                    first_visible: None,
                    flow: None,
                    marking,
                }
            }
        }
    }
}

/// The error of card calls given up after the platform refused them for `bound`.
fn given_up(bound: Duration) -> DingTalkError {
    DingTalkError::GaveUp {
        api: "card",
        after_secs: bound.as_secs(),
    }
}

/// One card of an answer. A long answer continues in further cards whose ids follow from the first's
/// (`{outTrackId}-p2`, `-p3`, …), so an answer resumed after a crash finds the same cards again.
struct CardPart {
    /// The card's `outTrackId`.
    id: String,
    /// 1 for the message's first card.
    number: u32,
    /// Where this card's text starts in the answer, in bytes.
    start: usize,
    /// The card exists on the platform.
    created: bool,
    /// This run may stream intermediate snapshots into the card: it created it, or (a card an earlier
    /// run created) the regenerated answer has caught up with what the card shows.
    live: bool,
}

impl CardPart {
    /// The first card of `job`'s answer.
    fn first(job: &Job) -> Self {
        Self {
            id: job.out_track_id.clone(),
            number: 1,
            start: 0,
            created: job.card_created,
            live: false,
        }
    }

    /// The card after this one, holding the answer from byte `start`.
    fn next(&self, job: &Job, start: usize) -> Self {
        let number = self.number + 1;
        Self {
            id: format!("{}-p{number}", job.out_track_id),
            number,
            start,
            created: false,
            live: false,
        }
    }
}

/// Why streaming an answer's cards stopped, with what the markdown fallback needs.
struct CardFailure {
    cause: DingTalkError,
    /// The card that failed; the fallback marks it failed.
    card: String,
    /// The failed card exists on the platform (else there is nothing to mark).
    created: bool,
    /// The answer as far as it was known.
    draft: String,
    /// Bytes of the answer finalized in earlier cards; the fallback sends only the rest.
    shown: usize,
}

/// The cards of one answer while it streams: the card being written, and when text first showed.
struct Cards<'a> {
    replier: &'a Replier,
    job: &'a Job,
    card: CardPart,
    first_visible: &'a mut Option<Instant>,
    /// When the platform began refusing this answer's card calls (reset by an accepted one): calls are
    /// given up `card_retry_secs` after it.
    refused_since: Option<Instant>,
    /// The last card and its `flowStatus`, once it is finalized.
    flow: Option<(String, FlowStatus)>,
}

impl Cards<'_> {
    /// When card calls are given up: `card_retry_secs` after the platform began refusing them (from now
    /// when it has not).
    fn give_up_at(&self) -> Instant {
        self.refused_since.unwrap_or_else(Instant::now) + self.replier.api.config().card_retry()
    }

    /// Create and deliver the current card; one that already exists is taken as it is. A 1:1 sender with
    /// neither a staff id nor a unionId cannot get a card: that fails at once, without a call.
    async fn open(&mut self) -> Result<(), DingTalkError> {
        let (replier, job, id) = (self.replier, self.job, &self.card.id);
        let message = &job.message;
        if message.conversation_type == ConversationType::Single && message.addressee() == Addressee::Unknown {
            return Err(DingTalkError::NoAddressee {
                api: "card/instances/createAndDeliver",
            });
        }
        let attempts = replier.api.config().card_call_attempts;
        let give_up_at = self.give_up_at();
        let creation = replier
            .with_retries(attempts, give_up_at, || replier.api.create_and_deliver(id, message))
            .await?;
        self.refused_since = None;
        self.card.created = true;
        self.card.live = creation == CardCreation::Created;
        if creation == CardCreation::AlreadyExisted {
            tracing::info!(card = %self.card.id, "the card exists from an earlier run; it streams again once the answer catches up");
        }
        if self.card.number == 1 {
            if let Err(err) = replier.outbox.card_created(&message.msg_id).await {
                tracing::warn!(cause = %err, "cannot record the card's creation");
            }
        }
        Ok(())
    }

    /// While the current card's share of `text` is over the limit, finalize it with the text up to a cut
    /// point (and mark it finished) and move on to the next card (created when it has text to show).
    async fn roll_over(&mut self, text: &str) -> Result<(), DingTalkError> {
        let max = self.replier.api.config().card_max_bytes;
        while let Some(end) = split::card_end(text, self.card.start, max) {
            tracing::info!(card = %self.card.id, bytes = end - self.card.start, "the answer continues in a new card");
            self.finalize(&split::card_text(text, self.card.start, Some(end), max), false, end)
                .await?;
            self.replier.set_flow_status(&self.card.id, FlowStatus::Finished).await;
            self.card = self.card.next(self.job, end);
        }
        Ok(())
    }

    /// The whole answer is `text`: finalize every card, the last one failed if `error`.
    async fn finish(&mut self, text: &str, error: bool) -> Result<(), DingTalkError> {
        self.roll_over(text).await?;
        let rest = unsent(text, self.card.start);
        if self.card.number > 1 && !self.card.created && rest.trim().is_empty() {
            // The last cut left only whitespace: no card for it.
            return Ok(());
        }
        let max = self.replier.api.config().card_max_bytes;
        self.finalize(&split::card_text(text, self.card.start, None, max), error, SHOWN_ALL)
            .await?;
        self.flow = Some((
            self.card.id.clone(),
            if error {
                FlowStatus::Failed
            } else {
                FlowStatus::Finished
            },
        ));
        Ok(())
    }

    /// Send `content` as the current card's final frame (creating the card first if needed). `reach`:
    /// how far into the answer the user has seen it once this frame lands ([`SHOWN_ALL`] for the last
    /// card), recorded first, so a resumed answer never streams a snapshot over a finalized card.
    async fn finalize(&mut self, content: &str, error: bool, reach: usize) -> Result<(), DingTalkError> {
        if !self.card.created {
            self.open().await?;
        }
        let (replier, id) = (self.replier, &self.card.id);
        if let Err(err) = replier.outbox.shown(&self.job.message.msg_id, reach).await {
            tracing::warn!(cause = %err, "cannot record how much of the answer was shown");
        }
        let guid = format!("{id}-final");
        let attempts = replier.api.config().card_call_attempts;
        let give_up_at = self.give_up_at();
        replier
            .with_retries(attempts, give_up_at, || {
                replier.api.stream(id, &guid, content, true, error)
            })
            .await?;
        self.refused_since = None;
        self.first_visible.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// The failure `cause` on the current card, with the answer so far.
    fn failure(&self, cause: DingTalkError, draft: String) -> CardFailure {
        CardFailure {
            cause,
            card: self.card.id.clone(),
            created: self.card.created,
            draft,
            shown: self.card.start,
        }
    }
}

/// The text an answer's last card ends with, and whether that card ends failed.
fn final_text(text: String, end: Result<(), Failure>) -> (String, bool) {
    match end {
        Ok(()) if text.trim().is_empty() => ("(no answer)".to_owned(), false),
        Ok(()) => (text, false),
        Err(Failure::Busy) => (BUSY.to_owned(), false),
        Err(Failure::Error(reason)) if text.trim().is_empty() => {
            (format!("Sorry, I could not finish this answer ({reason})."), true)
        }
        Err(Failure::Error(reason)) => (
            format!(
                "{text}{}\n\nSorry, I could not finish this answer ({reason}).",
                split::closing(&text),
            ),
            true,
        ),
    }
}

/// What of `text` earlier cards have not finalized, from byte `shown`; all of it if `shown` does not fall
/// on a character boundary of `text` (an answer that changed), since a repeat beats a loss.
fn unsent(text: &str, shown: usize) -> &str {
    text.get(shown..).unwrap_or(text)
}

/// [`unsent`] for the markdown fallback, with a code block open at `shown` reopened first.
fn unsent_markdown(text: &str, shown: usize) -> String {
    split::card_text(text, shown, None, usize::MAX)
}

/// The prompt for `question` after `history`, with the oldest turns dropped until the prompt plus
/// `reserve` answer tokens fits `context_length`. Returns the tokens and how many history turns were kept.
fn build_prompt(
    tokenizer: &engine::Tokenizer,
    mut history: Vec<ChatMessage>,
    question: String,
    context_length: usize,
    reserve: usize,
) -> Result<(Vec<u32>, usize), EngineError> {
    let question = ChatMessage {
        role: "user".to_owned(),
        content: question,
    };
    loop {
        let mut messages = history.clone();
        messages.push(question.clone());
        let prompt = tokenizer.encode_chat(&messages, true)?;
        if prompt.len() + reserve <= context_length || history.is_empty() {
            return Ok((prompt, history.len()));
        }
        // Drop the oldest question and its answer together.
        let oldest = if history.len() >= 2 && history[1].role == "assistant" {
            2
        } else {
            1
        };
        history.drain(..oldest);
    }
}

/// Generate the answer to `question` after the session's `history` with the chat template, publishing the
/// text as it grows. Returns the whole text with its counts, or why it failed; the caller stores the turn
/// with the message's outcome.
async fn generate(
    model: Arc<Loaded>,
    history: Vec<ChatMessage>,
    question: String,
    max_tokens: usize,
    draft: watch::Sender<Draft>,
) -> Result<Generated, Failure> {
    let engine = &model.engine;
    let fail = |draft: &watch::Sender<Draft>, failure: Failure| {
        draft.send_modify(|d| d.end = Some(Err(failure.clone())));
        Err(failure)
    };
    let handle = engine.clone();
    let context_length = engine.info().context_length;
    let reserve = max_tokens.min(context_length / 2);
    let asked = question;
    let prompt =
        tokio::task::spawn_blocking(move || build_prompt(handle.tokenizer(), history, asked, context_length, reserve))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e: EngineError| e.to_string()));
    let (prompt, context_turns) = match prompt {
        Ok(built) => built,
        Err(reason) => return fail(&draft, Failure::Error(reason)),
    };
    let room = context_length.saturating_sub(prompt.len()).max(1);
    let mut events = match engine.submit(GenerateRequest::greedy(prompt, max_tokens.min(room))) {
        Ok(events) => events,
        Err(err @ EngineError::Overloaded { .. }) => {
            tracing::info!(cause = %err, "the engine is overloaded; answering busy");
            return fail(&draft, Failure::Busy);
        }
        Err(err) => return fail(&draft, Failure::Error(err.to_string())),
    };
    let mut text = String::new();
    loop {
        match events.next().await {
            Some(Event::Token(chunk)) => {
                text.push_str(&chunk.text);
                let snapshot = text.clone();
                draft.send_modify(|d| d.text = snapshot);
            }
            Some(Event::Finished(done)) => {
                draft.send_modify(|d| d.end = Some(Ok(())));
                return Ok(Generated {
                    text,
                    prompt_tokens: done.usage.prompt_tokens,
                    completion_tokens: done.usage.completion_tokens,
                    context_turns,
                });
            }
            Some(Event::Error(err)) => return fail(&draft, Failure::Error(err.to_string())),
            None => return fail(&draft, Failure::Error(EngineError::ShutDown.to_string())),
        }
    }
}
