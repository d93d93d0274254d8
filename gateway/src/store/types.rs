//! The rows the store keeps and hands back, as plain data below both the store and its users.

use crate::audit::record::{AuditRecord, Outcome};
use crate::im::adapter::Envelope;

/// The rows of one platform account (`robot` in the tables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub platform: &'static str,
    pub account: String,
}

/// Which node answers a message, and until when (milliseconds since the epoch) unless it renews the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub node: String,
    pub until_ms: i64,
}

/// Which unfinished messages a claim takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// At start: those whose lease ran out, and those this node held before it restarted.
    OnStart,
    /// While running: at most this many whose lease ran out.
    Expired(usize),
}

/// A message as the outbox records it on arrival.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub envelope: Envelope,
    /// The stable id of its first card.
    pub card_id: String,
    /// Not addressed to the robot: recorded `ignored`, never answered.
    pub ignore: bool,
    /// The platform's message as the adapter encoded it.
    pub payload: String,
}

/// A question and its answer, added to a session when the message that asked is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub session: String,
    pub question: String,
    pub answer: String,
}

/// How a message is settled: its outcome, and what is written with it in the same transaction.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub outcome: Outcome,
    pub detail: String,
    /// Its audit record, already masked.
    pub record: Option<AuditRecord>,
    pub turn: Option<Turn>,
}

/// A message left `accepted` by an earlier run, before its platform message is decoded.
#[derive(Debug, Clone)]
pub struct Unfinished {
    pub envelope: Envelope,
    /// The platform's message as the adapter encoded it; `None` in rows written before it was kept.
    pub payload: Option<String>,
    pub card_id: String,
    pub attempt: u32,
    pub card_created: bool,
    pub shown: usize,
}

/// A stored chat kind; `1` and `2` are DingTalk's `conversationType`, as rows before adapters had them.
pub(crate) fn parse_chat_kind(text: &str) -> crate::im::adapter::ChatKind {
    use crate::im::adapter::ChatKind;
    match text {
        "group" | "2" => ChatKind::Group,
        _ => ChatKind::Direct,
    }
}

/// The stored form of a chat kind.
pub(crate) fn chat_kind(kind: crate::im::adapter::ChatKind) -> &'static str {
    use crate::im::adapter::ChatKind;
    match kind {
        ChatKind::Direct => "direct",
        ChatKind::Group => "group",
    }
}
