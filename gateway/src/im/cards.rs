//! Delivering an answer: cards streamed under the connector's delivery budget, rolled over into
//! continuation cards, and the plain-text fallback.
//!
//! Between card updates, new tokens only replace the pending snapshot (latest wins), so a slow platform
//! means fewer, larger updates, never a backlog; one card gets at most one update per
//! [`CardLimits::min_interval`](super::settings::CardLimits), and every card shares the budget's QPS.
//!
//! Once the platform refuses a card's calls (throttles, server errors), they are retried for at most the
//! retry bound; then the card is given up: the rest of the answer goes out as plain text while the card is
//! marked failed beside it (its final frame [`Ending::Abandoned`], then [`CardState::Failed`]), through the
//! same retries and budget. A finished card is closed [`CardState::Finished`]. A close the platform still
//! refuses after the retries is owed: kept in the outbox (`card_marks`) and done by the connector's marker
//! once the platform takes it, after a restart too, so no card stays "typing" because of a throttle.
//!
//! The outbox keeps how far into the answer the user has seen it (`shown_bytes`, set to "all" before the
//! last final frame): a card that an earlier run created (a resumed answer) streams again once the
//! regenerated text catches up with what it shows, and a finalized card only ever gets its final frame.
//!
//! A card holds at most `max_bytes`, and is streamed into for at most `max_age`: past either, the card is
//! finished at a line or word break (`split`) and the answer continues in a new card, `{id}-p2`, `-p3`, …
//! (ids a resumed answer finds again). A code block cut between two cards is closed in the first and opened
//! again in the second. The fallback sends only what no finished card shows.

use std::sync::Arc;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use super::adapter::{Adapter, CardRef, CardState, Ending, Opened, Update};
use super::draft::{Draft, Failure, Generated, BUSY};
use super::outbox::{parse_mark, Job, Outbox, SHOWN_ALL};
use super::retry::{CallFailure, DeliveryBudget, DeliveryError, PlatformError, Retrier};
use super::split;
use crate::audit::Outcome;
use crate::metrics;

/// What a card given up shows.
pub const ABANDONED_NOTICE: &str = "This answer could not be shown here; it was sent as a message.";

/// How an answer reached the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// Its cards were finished.
    Cards,
    /// As plain text, by the adapter's named route.
    Text(&'static str),
    /// Not at all, for this reason.
    Undelivered(String),
}

impl Via {
    /// The outbox's `detail` for this route.
    pub fn detail(&self) -> &str {
        match self {
            Self::Cards => "card finalized",
            Self::Text(route) => route,
            Self::Undelivered(reason) => reason,
        }
    }
}

/// How delivery ended.
pub struct Delivered {
    pub outcome: Outcome,
    pub via: Via,
    /// When the user could first see text (first accepted card update, or the fallback message).
    pub first_visible: Option<Instant>,
    /// The answer's last card and the state it is closed in before the message is settled (earlier cards
    /// were closed as they were finished).
    pub close: Option<(CardRef, CardState)>,
    /// Marking a failed card, started beside the fallback message; awaited before the message is settled.
    pub marking: Option<JoinHandle<()>>,
}

impl Delivered {
    fn answered(first_visible: Option<Instant>, close: Option<(CardRef, CardState)>) -> Self {
        Self {
            outcome: Outcome::Answered,
            via: Via::Cards,
            first_visible,
            close,
            marking: None,
        }
    }
}

/// Delivers answers through one adapter: its cards, its plain text, under one budget.
pub struct Deliverer<A: Adapter> {
    pub adapter: Arc<A>,
    pub outbox: Outbox,
    pub budget: DeliveryBudget,
    /// Woken when a card mark is owed (see [`Deliverer::settle_marks`]).
    pub marks_owed: Notify,
}

impl<A: Adapter> Deliverer<A> {
    /// The delivery side of `adapter`, recording in `outbox`.
    pub fn new(adapter: Arc<A>, outbox: Outbox) -> Self {
        let settings = adapter.settings();
        // Pauses after throttles stay well under the retry bound, so a refused card gets several tries
        // within it.
        let budget = DeliveryBudget::new(
            settings.cards.per_second,
            settings.throttle_backoff,
            settings.retry_bound / 4,
        );
        Self {
            adapter,
            outbox,
            budget,
            marks_owed: Notify::new(),
        }
    }

    /// Calls given up at `give_up_at` (a retry bound after they start when `None`), with the settings'
    /// attempts.
    fn retrier(&self, give_up_at: Option<Instant>) -> Retrier<'_> {
        let settings = self.adapter.settings();
        Retrier {
            budget: &self.budget,
            platform: A::PLATFORM,
            attempts: settings.call_attempts,
            give_up_at,
            bound: settings.retry_bound,
        }
    }

    /// Deliver a fixed answer (a skill's, or "slow down") as finished cards, or plain text if a card fails.
    pub async fn deliver_fixed(self: &Arc<Self>, job: &Job<A::Message>, text: &str) -> Delivered {
        let (_draft_tx, draft_rx) = watch::channel(Draft {
            text: text.to_owned(),
            end: Some(Ok(())),
        });
        let mut first_visible = None;
        match self.stream_cards(job, draft_rx, &mut first_visible).await {
            Ok(close) => Delivered::answered(first_visible, close),
            Err(failure) => {
                tracing::warn!(cause = %failure.cause, card = failure.card.id, "the card failed; falling back to plain text");
                self.fallback(job, &failure, &unsent_markdown(text, failure.shown))
                    .await
            }
        }
    }

    /// Stream the generation into cards (plain text if a card fails); returns how delivery ended and how
    /// generation did (`None` if its task died).
    pub async fn deliver_generated(
        self: &Arc<Self>,
        job: &Job<A::Message>,
        draft_rx: watch::Receiver<Draft>,
        generation: JoinHandle<Result<Generated, Failure>>,
    ) -> (Delivered, Option<Result<Generated, Failure>>) {
        let mut first_visible = None;
        let result = self.stream_cards(job, draft_rx, &mut first_visible).await;
        let failure = match result {
            // Generation ended before the final frame was sent, so this join is immediate.
            Ok(close) => return (Delivered::answered(first_visible, close), generation.await.ok()),
            Err(failure) => {
                tracing::warn!(cause = %failure.cause, card = failure.card.id, "the card failed; falling back to plain text");
                failure
            }
        };
        // The card failed: let generation finish so the text carries the rest of the answer (what earlier
        // cards finished is not sent again).
        let generated = generation.await.ok();
        let shown = failure.shown;
        let text = match &generated {
            Some(Ok(generated)) => unsent_markdown(&generated.text, shown),
            Some(Err(Failure::Busy)) => BUSY.to_owned(),
            Some(Err(Failure::Failed(reason))) if shown > 0 => {
                let draft = unsent_markdown(&failure.draft, shown);
                format!(
                    "{draft}{}\n\nSorry, I could not finish this answer ({reason}).",
                    split::closing(&draft),
                )
            }
            Some(Err(Failure::Failed(reason))) => format!("Sorry, I could not answer this message ({reason})."),
            None => unsent_markdown(&failure.draft, shown),
        };
        (self.fallback(job, &failure, &text).await, generated)
    }

    /// Stream the answer into its cards under the budget and finish them; text past the card limits rolls
    /// over into continuation cards. Returns the last card with the state it is to be closed in, or on
    /// failure what the fallback needs. `first_visible` is set when the platform first accepts text.
    ///
    /// Once the platform refuses card calls (throttles, server errors), they are retried for at most the
    /// retry bound before the card is given up: the user never waits longer behind a frozen card.
    async fn stream_cards(
        &self,
        job: &Job<A::Message>,
        mut draft: watch::Receiver<Draft>,
        first_visible: &mut Option<Instant>,
    ) -> Result<Option<(CardRef, CardState)>, CardFailure<A::Error>> {
        let limits = self.adapter.settings().cards;
        let bound = self.adapter.settings().retry_bound;
        let mut cards = Cards {
            deliverer: self,
            job,
            card: CardPart::first(job),
            first_visible,
            refused_since: None,
            close: None,
        };
        if let Some(cause) = self.adapter.no_card(&job.message) {
            return Err(cards.failure(DeliveryError::Platform(cause), String::new()));
        }
        if !cards.card.created {
            cards
                .open()
                .await
                .map_err(|cause| cards.failure(cause, String::new()))?;
        }
        let mut sent = String::new();
        // What the current card showed after its last accepted update, and which card that was.
        let (mut shown_content, mut shown_card) = (String::new(), 0u32);
        let mut n = 0u32;
        let mut last_update = Instant::now();
        loop {
            // Wait for new text or the end, then (after the first update) let more accumulate until the
            // card's interval has passed.
            if draft.borrow_and_update().end.is_none() && draft.changed().await.is_err() {
                break;
            }
            if n > 0 {
                tokio::time::sleep_until(last_update + limits.min_interval).await;
            }
            let snapshot = draft.borrow_and_update().clone();
            if let Some(end) = snapshot.end {
                let (text, error) = final_text(snapshot.text, end);
                return match cards.finish(&text, error).await {
                    Ok(()) => Ok(cards.close.take()),
                    Err(cause) => Err(cards.failure(cause, text)),
                };
            }
            cards
                .roll_over(&snapshot.text)
                .await
                .map_err(|cause| cards.failure(cause, snapshot.text.clone()))?;
            if cards.card.live && cards.card.aged(limits.max_age) && snapshot.text.len() > cards.card.start {
                cards
                    .roll_over_at(&snapshot.text, snapshot.text.len())
                    .await
                    .map_err(|cause| cards.failure(cause, snapshot.text.clone()))?;
            }
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
            if let Err(err) = self.outbox.shown(&job.envelope.id, snapshot.text.len()).await {
                tracing::warn!(cause = %err, "cannot record how much of the answer was shown");
            }
            let give_up_at = cards.refused_since.map(|since| since + bound);
            if !self.budget.acquire_by(give_up_at).await {
                return Err(cards.failure(DeliveryError::given_up(bound), snapshot.text));
            }
            last_update = Instant::now();
            let content = split::card_text(&snapshot.text, cards.card.start, None, limits.max_bytes);
            let card = cards.card.reference(job);
            let update = Update {
                content: &content,
                shown: if shown_card == card.number { &shown_content } else { "" },
                seq: n,
            };
            let updated = self.adapter.update_card(&card, update).await;
            match updated {
                Ok(()) => {
                    self.budget.succeeded();
                    cards.refused_since = None;
                    cards.first_visible.get_or_insert_with(Instant::now);
                    sent = snapshot.text;
                    (shown_content, shown_card) = (content, card.number);
                }
                // A throttled snapshot is skipped: the next one carries the whole text anyway, unless the
                // platform has refused the card for longer than the bound.
                Err(err) if err.failure() == CallFailure::Throttled => {
                    metrics::im_card_update_failure(A::PLATFORM);
                    self.budget.throttled();
                    let since = *cards.refused_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= bound {
                        return Err(cards.failure(DeliveryError::Platform(err), snapshot.text));
                    }
                }
                Err(err) => {
                    metrics::im_card_update_failure(A::PLATFORM);
                    return Err(cards.failure(DeliveryError::Platform(err), snapshot.text));
                }
            }
        }
        Err(cards.failure(DeliveryError::NoAnswer, sent))
    }

    /// Close `card` in `state` with the retries and bound of every card call. When the platform still
    /// refuses, the close is owed: kept in the outbox and done by the marker once the platform takes it.
    pub async fn close(&self, card: &CardRef, state: CardState) {
        if let Err(err) = self.try_close(card, state).await {
            tracing::warn!(card = card.id, ?state, cause = %err, "cannot close the card yet; it is owed and retried");
            self.defer_mark(card, state).await;
        }
    }

    async fn try_close(&self, card: &CardRef, state: CardState) -> Result<(), DeliveryError<A::Error>> {
        self.retrier(None).run(|| self.adapter.close_card(card, state)).await
    }

    /// Mark `card` failed (see [`Self::try_mark_failed`]); when the platform still refuses, the mark is
    /// owed as in [`Self::close`].
    async fn mark_failed(&self, card: &CardRef) {
        if let Err(err) = self.try_mark_failed(card).await {
            tracing::warn!(card = card.id, cause = %err, "cannot mark the card failed yet; it is owed and retried");
            self.defer_mark(card, CardState::Failed).await;
        }
    }

    /// Mark `card` failed: its final frame says the answer went out as text (idempotent, so a repeat is
    /// applied once), then it is closed failed, with the retries and bound of every card call.
    async fn try_mark_failed(&self, card: &CardRef) -> Result<(), DeliveryError<A::Error>> {
        self.retrier(None)
            .run(|| self.adapter.finish_card(card, ABANDONED_NOTICE, Ending::Abandoned))
            .await?;
        self.try_close(card, CardState::Failed).await
    }

    /// Record that `card` is owed `state` and wake the marker.
    async fn defer_mark(&self, card: &CardRef, state: CardState) {
        match self.outbox.defer_mark(&card.id, state).await {
            Ok(()) => self.marks_owed.notify_one(),
            Err(err) => tracing::error!(card = card.id, cause = %err, "cannot record the card's owed mark"),
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
        for (id, code) in owed {
            // An owed mark knows only its card's id.
            let card = CardRef {
                id,
                number: 0,
                attempt: 0,
            };
            let result = match parse_mark(&code) {
                Some(CardState::Failed) => self.try_mark_failed(&card).await,
                Some(CardState::Finished) => self.try_close(&card, CardState::Finished).await,
                None => {
                    tracing::warn!(card = card.id, code, "unknown owed card mark; dropped");
                    Ok(())
                }
            };
            match result {
                Ok(()) => tracing::info!(card = card.id, code, "owed card mark set"),
                Err(err) if err.may_pass_later() => {
                    tracing::debug!(card = card.id, cause = %err, "owed card mark still refused");
                    left += 1;
                    continue;
                }
                Err(err) => tracing::warn!(card = card.id, cause = %err, "owed card mark cannot be set; dropped"),
            }
            if let Err(err) = self.outbox.mark_done(&card.id, &code).await {
                tracing::warn!(card = card.id, cause = %err, "cannot clear the owed card mark");
            }
        }
        left
    }

    /// Send `text` as plain text while the failed card, if it exists, is marked failed beside it: the
    /// message does not wait behind the card.
    async fn fallback(
        self: &Arc<Self>,
        job: &Job<A::Message>,
        failure: &CardFailure<A::Error>,
        text: &str,
    ) -> Delivered {
        let marking = failure.created.then(|| {
            let (deliverer, card) = (self.clone(), failure.card.clone());
            tokio::spawn(async move { deliverer.mark_failed(&card).await }.instrument(tracing::Span::current()))
        });
        match self.adapter.send_text(&job.message, text, self.retrier(None)).await {
            Ok(route) => Delivered {
                outcome: Outcome::AnsweredMarkdown,
                via: Via::Text(route),
                first_visible: Some(Instant::now()),
                close: None,
                marking,
            },
            Err(err) => {
                tracing::error!(cause = %err, "the answer could not be delivered at all");
                self.adapter
                    .health()
                    .problem(format!("an answer could not be delivered: {err}"));
                Delivered {
                    outcome: Outcome::Failed,
                    via: Via::Undelivered(err.to_string()),
                    first_visible: None,
                    close: None,
                    marking,
                }
            }
        }
    }
}

/// One card of an answer. A long answer continues in further cards whose ids follow from the first's
/// (`{id}-p2`, `-p3`, …), so an answer resumed after a crash finds the same cards again.
struct CardPart {
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
    /// When this run opened the card.
    opened: Option<Instant>,
}

impl CardPart {
    /// The first card of `job`'s answer.
    fn first<M>(job: &Job<M>) -> Self {
        Self {
            id: job.card_id.clone(),
            number: 1,
            start: 0,
            created: job.card_created,
            live: false,
            opened: None,
        }
    }

    /// The card after this one, holding the answer from byte `start`.
    fn next<M>(&self, job: &Job<M>, start: usize) -> Self {
        let number = self.number + 1;
        Self {
            id: format!("{}-p{number}", job.card_id),
            number,
            start,
            created: false,
            live: false,
            opened: None,
        }
    }

    /// How the adapter addresses this card.
    fn reference<M>(&self, job: &Job<M>) -> CardRef {
        CardRef {
            id: self.id.clone(),
            number: self.number,
            attempt: job.attempt,
        }
    }

    /// Whether this run has streamed into the card for `max_age` or longer.
    fn aged(&self, max_age: Option<std::time::Duration>) -> bool {
        match (self.opened, max_age) {
            (Some(opened), Some(max_age)) => opened.elapsed() >= max_age,
            _ => false,
        }
    }
}

/// Why streaming an answer's cards stopped, with what the fallback needs.
struct CardFailure<E: PlatformError> {
    cause: DeliveryError<E>,
    /// The card that failed; the fallback marks it failed.
    card: CardRef,
    /// The failed card exists on the platform (else there is nothing to mark).
    created: bool,
    /// The answer as far as it was known.
    draft: String,
    /// Bytes of the answer finished in earlier cards; the fallback sends only the rest.
    shown: usize,
}

/// The cards of one answer while it streams: the card being written, and when text first showed.
struct Cards<'a, A: Adapter> {
    deliverer: &'a Deliverer<A>,
    job: &'a Job<A::Message>,
    card: CardPart,
    first_visible: &'a mut Option<Instant>,
    /// When the platform began refusing this answer's card calls (reset by an accepted one): calls are
    /// given up a retry bound after it.
    refused_since: Option<Instant>,
    /// The last card and the state it is to be closed in, once it is finished.
    close: Option<(CardRef, CardState)>,
}

impl<A: Adapter> Cards<'_, A> {
    /// When card calls are given up: a retry bound after the platform began refusing them (from now when
    /// it has not).
    fn give_up_at(&self) -> Instant {
        self.refused_since.unwrap_or_else(Instant::now) + self.deliverer.adapter.settings().retry_bound
    }

    /// Create and deliver the current card; one that already exists is taken as it is.
    async fn open(&mut self) -> Result<(), DeliveryError<A::Error>> {
        let (deliverer, job) = (self.deliverer, self.job);
        let card = self.card.reference(job);
        let opening = Instant::now();
        let opened = deliverer
            .retrier(Some(self.give_up_at()))
            .run(|| deliverer.adapter.open_card(&job.message, &card))
            .await?;
        metrics::im_card_open(A::PLATFORM, opening.elapsed());
        self.refused_since = None;
        self.card.created = true;
        self.card.live = opened == Opened::Created;
        self.card.opened = Some(Instant::now());
        if opened == Opened::AlreadyExisted {
            tracing::info!(card = %self.card.id, "the card exists from an earlier run; it streams again once the answer catches up");
        }
        if self.card.number == 1 {
            if let Err(err) = deliverer.outbox.card_created(&job.envelope.id).await {
                tracing::warn!(cause = %err, "cannot record the card's creation");
            }
        }
        Ok(())
    }

    /// While the current card's share of `text` is over the limit, finish it with the text up to a cut
    /// point (and close it finished) and move on to the next card (created when it has text to show).
    async fn roll_over(&mut self, text: &str) -> Result<(), DeliveryError<A::Error>> {
        let limits = self.deliverer.adapter.settings().cards;
        while let Some(end) = split::card_end(text, self.card.start, limits.max_bytes, limits.max_tables) {
            self.roll_over_at(text, end).await?;
        }
        Ok(())
    }

    /// Finish the current card with `text` up to byte `end`, close it finished, and move on to the next.
    async fn roll_over_at(&mut self, text: &str, end: usize) -> Result<(), DeliveryError<A::Error>> {
        let max = self.deliverer.adapter.settings().cards.max_bytes;
        tracing::info!(card = %self.card.id, bytes = end - self.card.start, "the answer continues in a new card");
        self.finalize(
            &split::card_text(text, self.card.start, Some(end), max),
            Ending::Finished,
            end,
        )
        .await?;
        let card = self.card.reference(self.job);
        self.deliverer.close(&card, CardState::Finished).await;
        self.card = self.card.next(self.job, end);
        Ok(())
    }

    /// The whole answer is `text`: finish every card, the last one failed if `error`.
    async fn finish(&mut self, text: &str, error: bool) -> Result<(), DeliveryError<A::Error>> {
        self.roll_over(text).await?;
        let rest = unsent(text, self.card.start);
        if self.card.number > 1 && !self.card.created && rest.trim().is_empty() {
            // The last cut left only whitespace: no card for it.
            return Ok(());
        }
        let max = self.deliverer.adapter.settings().cards.max_bytes;
        let ending = if error { Ending::Failed } else { Ending::Finished };
        self.finalize(&split::card_text(text, self.card.start, None, max), ending, SHOWN_ALL)
            .await?;
        let state = if error { CardState::Failed } else { CardState::Finished };
        self.close = Some((self.card.reference(self.job), state));
        Ok(())
    }

    /// Send `content` as the current card's final frame (creating the card first if needed). `reach`: how
    /// far into the answer the user has seen it once this frame lands ([`SHOWN_ALL`] for the last card),
    /// recorded first, so a resumed answer never streams a snapshot over a finished card.
    async fn finalize(&mut self, content: &str, ending: Ending, reach: usize) -> Result<(), DeliveryError<A::Error>> {
        if !self.card.created {
            self.open().await?;
        }
        let deliverer = self.deliverer;
        if let Err(err) = deliverer.outbox.shown(&self.job.envelope.id, reach).await {
            tracing::warn!(cause = %err, "cannot record how much of the answer was shown");
        }
        let card = self.card.reference(self.job);
        deliverer
            .retrier(Some(self.give_up_at()))
            .run(|| deliverer.adapter.finish_card(&card, content, ending))
            .await?;
        self.refused_since = None;
        self.first_visible.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// The failure `cause` on the current card, with the answer so far.
    fn failure(&self, cause: DeliveryError<A::Error>, draft: String) -> CardFailure<A::Error> {
        CardFailure {
            cause,
            card: self.card.reference(self.job),
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
        Err(Failure::Failed(reason)) if text.trim().is_empty() => {
            (format!("Sorry, I could not finish this answer ({reason})."), true)
        }
        Err(Failure::Failed(reason)) => (
            format!(
                "{text}{}\n\nSorry, I could not finish this answer ({reason}).",
                split::closing(&text),
            ),
            true,
        ),
    }
}

/// What of `text` earlier cards have not finished, from byte `shown`; all of it if `shown` does not fall
/// on a character boundary of `text` (an answer that changed), since a repeat beats a loss.
fn unsent(text: &str, shown: usize) -> &str {
    text.get(shown..).unwrap_or(text)
}

/// [`unsent`] for the plain-text fallback, with a code block open at `shown` reopened first.
fn unsent_markdown(text: &str, shown: usize) -> String {
    split::card_text(text, shown, None, usize::MAX)
}
