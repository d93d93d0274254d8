//! Answering one message: the engine generates, an AI card streams the answer, the outbox records the end.
//!
//! Card calls go through one [`DeliveryBudget`] shared by all cards: a QPS pacer plus a pause after each
//! 403/429 throttle (doubling while they repeat). Between card updates, new tokens only replace the pending
//! snapshot (latest wins), so a slow platform means fewer, larger updates, never a backlog.
//!
//! Guids: intermediate updates use `{outTrackId}-{attempt}-{n}`; the final frame always uses
//! `{outTrackId}-final` (or `-error`), so a finalize retried after a crash is applied once by the platform.
//! When the card cannot be completed the card is marked failed (`isError`) and the answer goes out as
//! markdown through the sessionWebhook, or the robot send API once the webhook has expired.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engine::{ChatMessage, EngineError, Event, GenerateRequest};

use std::sync::Arc;

use crate::routing::{Loaded, ModelRouter};
use tokio::sync::watch;
use tokio::time::Instant;

use super::api::{DingTalkError, OpenApi};
use super::store::{Job, Outbox, Outcome};

/// Paces card calls: at most `per_second` shared by every card, and a pause after throttling.
pub struct DeliveryBudget {
    interval: Duration,
    backoff: Duration,
    state: Mutex<BudgetState>,
}

struct BudgetState {
    next_slot: Instant,
    paused_until: Instant,
    throttles_in_a_row: u32,
}

impl DeliveryBudget {
    /// A budget of `per_second` calls with `backoff` as the first pause after a throttle.
    pub fn new(per_second: u32, backoff: Duration) -> Self {
        let now = Instant::now();
        Self {
            interval: Duration::from_secs(1) / per_second.max(1),
            backoff,
            state: Mutex::new(BudgetState { next_slot: now, paused_until: now, throttles_in_a_row: 0 }),
        }
    }

    /// Wait for this call's slot.
    pub async fn acquire(&self) {
        let slot = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let slot = Instant::now().max(state.next_slot).max(state.paused_until);
            state.next_slot = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    /// The platform throttled a call: pause every card.
    pub fn throttled(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.throttles_in_a_row += 1;
        let pause = self.backoff * 2u32.saturating_pow(state.throttles_in_a_row.saturating_sub(1).min(5));
        state.paused_until = state.paused_until.max(Instant::now() + pause);
        tracing::info!(pause_ms = pause.as_millis() as u64, "card updates throttled by the platform; backing off");
    }

    /// A call went through.
    pub fn succeeded(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).throttles_in_a_row = 0;
    }
}

/// What answering needs.
pub struct Replier {
    pub api: OpenApi,
    /// Which model answers; each answer holds its model until it ends (see `routing`).
    pub models: Arc<ModelRouter>,
    pub outbox: Outbox,
    pub budget: DeliveryBudget,
}

/// The generated text so far, and whether generation ended (and how).
#[derive(Debug, Clone, Default)]
struct Draft {
    text: String,
    end: Option<Result<(), String>>,
}

impl Replier {
    /// Answer `job` and record how it ended. Never panics on platform or engine errors; they end the job
    /// with a fallback or a logged failure.
    pub async fn answer(&self, job: Job) {
        let msg_id = job.message.msg_id.clone();
        let (outcome, detail) = self.deliver(&job).await;
        match self.outbox.finish(&msg_id, outcome, &detail).await {
            Ok(true) => {
                tracing::info!(outcome = ?outcome, detail, "message finished");
                let label = match outcome {
                    Outcome::Answered => "finalized",
                    Outcome::AnsweredMarkdown => "fallback",
                    Outcome::Failed => "failed",
                    Outcome::Ignored => "ignored",
                };
                crate::metrics::im_delivery("dingtalk", label);
            }
            Ok(false) => tracing::warn!("message was already finished"),
            Err(err) => tracing::error!(cause = %err, "cannot record the message's end; it will be retried after a restart"),
        }
    }

    async fn deliver(&self, job: &Job) -> (Outcome, String) {
        let (draft_tx, draft_rx) = watch::channel(Draft::default());
        let generation = tokio::spawn(generate(self.models.route(), job.message.question(), self.api.config().max_answer_tokens, draft_tx));
        let result = self.stream_card(job, draft_rx).await;
        // Dropping the generation (if the card failed early) cancels it in the engine.
        let draft = match result {
            Ok(()) => return (Outcome::Answered, "card finalized".to_owned()),
            Err((err, draft)) => {
                tracing::warn!(cause = %err, "the AI card failed; falling back to markdown");
                if let DingTalkError::PermissionDenied { permission, .. } = &err {
                    tracing::error!(permission, "DingTalk refused a card call: grant the `{permission}` permission to the app");
                }
                draft
            }
        };
        // The card failed: let generation finish so the markdown carries the whole answer.
        let text = match generation.await {
            Ok(Ok(text)) => text,
            Ok(Err(reason)) => format!("Sorry, I could not answer this message ({reason})."),
            Err(_) => draft,
        };
        self.fallback(job, &text).await
    }

    /// Create the card, stream snapshots under the budget, finalize. On failure returns the error and the
    /// text so far.
    async fn stream_card(&self, job: &Job, mut draft: watch::Receiver<Draft>) -> Result<(), (DingTalkError, String)> {
        let config = self.api.config();
        let attempts = config.card_call_attempts;
        let interval = Duration::from_millis(config.card_update_interval_ms);
        let id = &job.out_track_id;
        if !job.card_created {
            self.with_retries(attempts, || self.api.create_and_deliver(id, &job.message)).await.map_err(|e| (e, String::new()))?;
            if let Err(err) = self.outbox.card_created(&job.message.msg_id).await {
                tracing::warn!(cause = %err, "cannot record the card's creation");
            }
        }
        let mut sent = String::new();
        let mut n = 0u32;
        let mut last_update = Instant::now();
        loop {
            // Wait for new text or the end, then let more accumulate until the card's interval has passed.
            if draft.borrow_and_update().end.is_none() && draft.changed().await.is_err() {
                break;
            }
            tokio::time::sleep_until(last_update + interval).await;
            let snapshot = draft.borrow_and_update().clone();
            if let Some(end) = snapshot.end {
                let (text, error) = match end {
                    Ok(()) if snapshot.text.trim().is_empty() => ("(no answer)".to_owned(), false),
                    Ok(()) => (snapshot.text, false),
                    Err(reason) => (format!("{}\n\nSorry, I could not finish this answer ({reason}).", snapshot.text).trim().to_owned(), true),
                };
                let guid = format!("{id}-final");
                return self
                    .with_retries(attempts, || self.api.stream(id, &guid, &text, true, error))
                    .await
                    .map_err(|e| (e, text.clone()));
            }
            if snapshot.text.trim().is_empty() || snapshot.text == sent {
                continue;
            }
            n += 1;
            self.budget.acquire().await;
            last_update = Instant::now();
            match self.api.stream(id, &format!("{id}-{}-{n}", job.attempt), &snapshot.text, false, false).await {
                Ok(()) => {
                    self.budget.succeeded();
                    sent = snapshot.text;
                }
                // A throttled snapshot is skipped: the next one carries the whole text anyway.
                Err(err) if err.is_throttle() => self.budget.throttled(),
                Err(err) => return Err((err, snapshot.text)),
            }
        }
        Err((DingTalkError::Unexpected { api: "generation", detail: "the answer stream ended without a result".to_owned() }, sent))
    }

    /// Run a card call under the budget, retrying throttles and transient failures up to `attempts` times.
    async fn with_retries<F, Fut>(&self, attempts: u32, mut call: F) -> Result<(), DingTalkError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), DingTalkError>>,
    {
        let mut last = None;
        for attempt in 1..=attempts {
            self.budget.acquire().await;
            match call().await {
                Ok(()) => {
                    self.budget.succeeded();
                    return Ok(());
                }
                Err(err) if err.is_throttle() => self.budget.throttled(),
                Err(err @ (DingTalkError::Http { .. } | DingTalkError::Platform { status: 500..=599, .. })) => {
                    tracing::info!(attempt, cause = %err, "card call failed; retrying");
                    tokio::time::sleep(self.budget.backoff * attempt).await;
                    last = Some(err);
                    continue;
                }
                Err(err) => return Err(err),
            }
            last = None;
        }
        Err(last.unwrap_or(DingTalkError::Throttled { api: "card", status: 429, code: "retries exhausted".to_owned() }))
    }

    /// Mark the card failed (best effort) and send `text` as markdown: sessionWebhook while valid, else
    /// the robot send API.
    async fn fallback(&self, job: &Job, text: &str) -> (Outcome, String) {
        let id = &job.out_track_id;
        if let Err(err) = self.api.stream(id, &format!("{id}-error"), "This answer could not be shown here; it was sent as a message.", true, true).await {
            tracing::info!(cause = %err, "cannot mark the card failed");
        }
        let message = &job.message;
        let title: String = message.question().chars().take(20).collect();
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let webhook_valid = message.session_webhook_expired_time.is_some_and(|t| t > now_ms + 5_000);
        if let (Some(webhook), true) = (&message.session_webhook, webhook_valid) {
            match self.api.webhook_markdown(webhook, &title, text, &message.sender_staff_id).await {
                Ok(()) => return (Outcome::AnsweredMarkdown, "sessionWebhook".to_owned()),
                Err(err) => tracing::warn!(cause = %err, "sessionWebhook failed; trying the robot send API"),
            }
        }
        match self.api.robot_markdown(message, &title, text).await {
            Ok(()) => (Outcome::AnsweredMarkdown, "robot send API".to_owned()),
            Err(err) => {
                if let DingTalkError::PermissionDenied { permission, .. } = &err {
                    tracing::error!(permission, "DingTalk refused the robot send API: grant the `{permission}` permission to the app");
                }
                tracing::error!(cause = %err, "the answer could not be delivered at all");
                (Outcome::Failed, err.to_string())
            }
        }
    }
}

/// Generate the answer to `question` with the chat template, publishing the text as it grows. Returns the
/// whole text, or the reason it failed.
async fn generate(model: Arc<Loaded>, question: String, max_tokens: usize, draft: watch::Sender<Draft>) -> Result<String, String> {
    let engine = &model.engine;
    let finish = |draft: &watch::Sender<Draft>, end: Result<(), String>| {
        draft.send_modify(|d| d.end = Some(end.clone()));
        end
    };
    let handle = engine.clone();
    let prompt = tokio::task::spawn_blocking(move || {
        let tokenizer = handle.tokenizer();
        let messages = [ChatMessage { role: "user".to_owned(), content: question }];
        tokenizer.encode(&tokenizer.apply_chat_template(&messages, true)?, false)
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r.map_err(|e: EngineError| e.to_string()));
    let prompt = match prompt {
        Ok(prompt) => prompt,
        Err(reason) => return finish(&draft, Err(reason)).map(|()| String::new()),
    };
    let room = engine.info().context_length.saturating_sub(prompt.len()).max(1);
    let mut events = match engine.submit(GenerateRequest::greedy(prompt, max_tokens.min(room))) {
        Ok(events) => events,
        Err(err) => return finish(&draft, Err(err.to_string())).map(|()| String::new()),
    };
    let mut text = String::new();
    loop {
        match events.next().await {
            Some(Event::Token(chunk)) => {
                text.push_str(&chunk.text);
                let snapshot = text.clone();
                draft.send_modify(|d| d.text = snapshot);
            }
            Some(Event::Finished(_)) => return finish(&draft, Ok(())).map(|()| text),
            Some(Event::Error(err)) => return finish(&draft, Err(err.to_string())).map(|()| text),
            None => return finish(&draft, Err(EngineError::ShutDown.to_string())).map(|()| text),
        }
    }
}
