//! [`Settings`]: what the IM core needs to know of a platform's configuration section, and the
//! platform's card limits ([`CardLimits`]). Each platform keeps its own section (`[dingtalk]`, …) and maps
//! it to these.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Whose history a group message continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupSessions {
    /// One session per group.
    Group,
    /// One session per group and user.
    GroupUser,
}

/// What a platform's cards can take; the core paces, cuts and rolls answers over to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardLimits {
    /// Most bytes of answer text in one card; past it the card is finished at a break and the answer
    /// continues in a new card.
    pub max_bytes: usize,
    /// Card calls per second shared by every card of the connector.
    pub per_second: u32,
    /// At most one streaming update per card per this interval; updates in between are coalesced (the
    /// latest text wins).
    pub min_interval: Duration,
    /// Most markdown tables one card may hold (the platform refuses more); a card ends before its first
    /// table past it and the answer continues in a new card. `None`: no limit.
    pub max_tables: Option<usize>,
    /// A card streamed into for this long is finished and the answer continues in a new card (platforms
    /// close a card's streaming mode after a while); `None`: no limit.
    pub max_age: Option<Duration>,
}

/// The core's settings for one platform connector.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The store of the outbox, the sessions and the audit log: a SQLite file (created if missing), or a
    /// `sqlite:///…` or `postgres://…` locator (see `store::Locator`).
    pub database: PathBuf,
    /// Most tokens of one answer.
    pub max_answer_tokens: usize,
    /// Whose history a group message continues.
    pub group_sessions: GroupSessions,
    /// A session idle for this long starts over.
    pub session_idle: Duration,
    /// Messages per second each user may send (token bucket, burst of the same size); 0: no limit.
    pub user_requests_per_second: u32,
    /// Regexes masked in the audit log's question and answer text.
    pub audit_mask_patterns: Vec<String>,
    /// Days settled messages and audit records are kept; 0 keeps them forever.
    pub retention_days: u32,
    /// Attempts per card call before the card is given up and the answer is sent as text.
    pub call_attempts: u32,
    /// Most time card calls are retried once the platform starts refusing them, before the card is given
    /// up; marking a card finished or failed gets the same bound of its own.
    pub retry_bound: Duration,
    /// After a throttle, pause card calls this long (doubling per consecutive throttle).
    pub throttle_backoff: Duration,
    /// What the platform's cards can take.
    pub cards: CardLimits,
    /// This node's name in the store's leases.
    pub node: String,
    /// How long a lease lasts unless renewed.
    pub lease: Duration,
}
