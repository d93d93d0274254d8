//! Calls to a platform under one [`DeliveryBudget`] with retries ([`Retrier`]), and how they fail
//! ([`PlatformError`], [`DeliveryError`]).
//!
//! The budget is shared by every card of a connector: a pacer of `per_second` calls (platforms count QPS
//! per app and API) plus a pause after each throttle, doubling while throttles repeat, so a throttling
//! platform sees fewer calls from every card at once, never a burst of retries.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics;

/// How the core treats a failed platform call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallFailure {
    /// The platform throttled the call: every card backs off, and the call is tried again.
    Throttled,
    /// A transport failure or a server error: tried again after a pause.
    Transient,
    /// Anything else (refused permission, bad request): not tried again.
    Final,
}

/// A platform's error, classified for retrying.
pub trait PlatformError: std::error::Error + Send + Sync + 'static {
    /// Whether and how the call may be tried again.
    fn failure(&self) -> CallFailure;

    /// Whether the platform may take the call later (minutes or a restart on): an owed card mark is kept
    /// while its failure may pass. By default, anything but a [`CallFailure::Final`] one.
    fn may_pass_later(&self) -> bool {
        self.failure() != CallFailure::Final
    }
}

/// Why delivering through a platform failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError<E: PlatformError> {
    /// The platform's own error (the last one, after retries).
    #[error(transparent)]
    Platform(E),
    /// The platform refused the calls for the whole retry bound.
    #[error("card: refused by the platform for {after_secs} s; given up")]
    GaveUp { after_secs: u64 },
    /// Generation ended without a result (its task died), so there was nothing to finish the card with.
    #[error("generation: the answer stream ended without a result")]
    NoAnswer,
}

impl<E: PlatformError> DeliveryError<E> {
    /// Whether the platform may take the call later: a bound that ran out, or a platform error that may
    /// pass ([`PlatformError::may_pass_later`]).
    pub fn may_pass_later(&self) -> bool {
        match self {
            Self::Platform(err) => err.may_pass_later(),
            Self::GaveUp { .. } => true,
            Self::NoAnswer => false,
        }
    }

    /// The error of calls given up after the platform refused them for `bound`.
    pub fn given_up(bound: Duration) -> Self {
        Self::GaveUp {
            after_secs: bound.as_secs(),
        }
    }
}

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

/// Runs platform calls (card calls, a fallback send) under the budget, retrying throttles and transient
/// failures up to `attempts` times, and never past `give_up_at`: a call whose next slot under the budget
/// would come later is given up.
pub struct Retrier<'a> {
    pub(crate) budget: &'a DeliveryBudget,
    pub(crate) platform: &'static str,
    pub(crate) attempts: u32,
    /// `None`: a retry bound after [`run`](Self::run) starts.
    pub(crate) give_up_at: Option<Instant>,
    /// The retry bound, named when calls are given up.
    pub(crate) bound: Duration,
}

impl Retrier<'_> {
    /// Run `call` until it succeeds, fails for good, or the attempts or time run out.
    pub async fn run<T, E, F, Fut>(&self, mut call: F) -> Result<T, DeliveryError<E>>
    where
        E: PlatformError,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let give_up_at = self.give_up_at.unwrap_or_else(|| Instant::now() + self.bound);
        let mut last = None;
        for attempt in 1..=self.attempts {
            if !self.budget.acquire_by(Some(give_up_at)).await {
                break;
            }
            match call().await {
                Ok(value) => {
                    self.budget.succeeded();
                    return Ok(value);
                }
                Err(err) => {
                    metrics::im_card_update_failure(self.platform);
                    match err.failure() {
                        CallFailure::Throttled => {
                            self.budget.throttled();
                            last = Some(err);
                        }
                        CallFailure::Transient => {
                            tracing::info!(attempt, cause = %err, "card call failed; retrying");
                            let pause = self.budget.backoff * attempt;
                            last = Some(err);
                            if Instant::now() + pause > give_up_at {
                                break;
                            }
                            tokio::time::sleep(pause).await;
                        }
                        CallFailure::Final => return Err(DeliveryError::Platform(err)),
                    }
                }
            }
        }
        Err(last.map_or_else(|| DeliveryError::given_up(self.bound), DeliveryError::Platform))
    }
}
