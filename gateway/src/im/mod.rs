//! The IM core: what every chat platform shares, driving one [`Adapter`](adapter::Adapter) per platform.
//!
//! From the bottom up (each file imports only those above it in this list, and none imports `mod.rs`):
//! - `split`: where a long answer is cut between cards (line or word breaks, code blocks reopened).
//! - `settings`: [`Settings`](settings::Settings), what the core takes from a platform's config section,
//!   and the platform's [`CardLimits`](settings::CardLimits).
//! - `retry`: platform calls under the connector's [`DeliveryBudget`](retry::DeliveryBudget), retried by
//!   a [`Retrier`](retry::Retrier); failures as [`DeliveryError`](retry::DeliveryError).
//! - `adapter`: the seam: the [`Adapter`](adapter::Adapter) trait, the [`Envelope`](adapter::Envelope)
//!   of an inbound message and the [`Inbox`](adapter::Inbox) a receive loop hands messages to.
//! - `outbox`: the durable inbox/outbox ([`Outbox`](outbox::Outbox)) with atomic dedupe and resume.
//! - `draft`: the answer as generation hands it to delivery.
//! - `cards`: delivery: cards streamed, paced, rolled over, finished, and the plain-text fallback.
//! - `answer`: routing (rate limit, skills, the model with the session's history, busy and failure
//!   answers) and the one transaction that settles a message.
//! - `connector`: [`ImConnector`](connector::ImConnector): intake, answer tasks, retention, shutdown.
//! - `link`: [`ImLink`](link::ImLink), a connector as the console and the admin API see it.
//!
//! **Invariant:** nothing here names a platform; adding one touches its adapter, its emulator and its
//! config section only.

pub mod adapter;
pub mod answer;
pub mod cards;
pub mod connector;
pub mod draft;
pub mod link;
pub mod outbox;
pub mod platform_config;
pub mod retry;
pub mod settings;
pub mod socket;
pub(crate) mod split;
pub mod start;
pub mod token;
