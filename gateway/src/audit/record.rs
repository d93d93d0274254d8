//! One audited message ([`AuditRecord`]) and its typed fields: how it ended ([`Outcome`]) and who answered
//! ([`Handler`]). Plain data, below both the audit log and the store that keeps it.

use std::fmt;
use std::str::FromStr;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize};

/// How a message ended: the audit record's `outcome`, and the final state of an IM connector's outbox row.
/// Stored, exported and counted in metrics as [`Outcome::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Answered in the platform's rich form (DingTalk: AI cards).
    Answered,
    /// Answered in plain markdown after the rich form failed.
    AnsweredMarkdown,
    /// The engine was too busy; the user was asked to try again (audit only: the outbox keeps how the busy
    /// answer was delivered).
    Busy,
    /// Nothing could be delivered.
    Failed,
    /// Not answered on purpose (outbox only).
    Ignored,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 5] = [
        Self::Answered,
        Self::AnsweredMarkdown,
        Self::Busy,
        Self::Failed,
        Self::Ignored,
    ];

    /// The name stored in SQLite and written by [`export`](super::export).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::AnsweredMarkdown => "answered_markdown",
            Self::Busy => "busy",
            Self::Failed => "failed",
            Self::Ignored => "ignored",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored outcome this version does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown outcome {0:?}")]
pub struct UnknownOutcome(pub String);

impl FromStr for Outcome {
    type Err = UnknownOutcome;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|outcome| outcome.as_str() == text)
            .ok_or_else(|| UnknownOutcome(text.to_owned()))
    }
}

impl ToSql for Outcome {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for Outcome {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value.as_str()?.parse().map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// Who answered a message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Handler {
    /// The sender was over their rate and was asked to slow down.
    RateLimited,
    /// A skill, by name.
    Skill(String),
    /// The model, by its served name.
    Model(String),
    /// The access rules refused the sender (or the skill or model they asked for), with why.
    Refused(String),
    /// A handler this version does not know (written by a newer one), kept as stored.
    Other(String),
}

impl fmt::Display for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RateLimited => f.write_str("rate_limited"),
            Self::Skill(name) => write!(f, "skill:{name}"),
            Self::Model(name) => write!(f, "model:{name}"),
            Self::Refused(why) => write!(f, "refused:{why}"),
            Self::Other(text) => f.write_str(text),
        }
    }
}

impl From<&str> for Handler {
    fn from(text: &str) -> Self {
        if text == "rate_limited" {
            Self::RateLimited
        } else if let Some(name) = text.strip_prefix("skill:") {
            Self::Skill(name.to_owned())
        } else if let Some(name) = text.strip_prefix("model:") {
            Self::Model(name.to_owned())
        } else if let Some(why) = text.strip_prefix("refused:") {
            Self::Refused(why.to_owned())
        } else {
            Self::Other(text.to_owned())
        }
    }
}

impl PartialEq<str> for Handler {
    fn eq(&self, other: &str) -> bool {
        match self {
            Self::RateLimited => other == "rate_limited",
            Self::Skill(name) => other.strip_prefix("skill:") == Some(name.as_str()),
            Self::Model(name) => other.strip_prefix("model:") == Some(name.as_str()),
            Self::Refused(why) => other.strip_prefix("refused:") == Some(why.as_str()),
            Self::Other(text) => other == text,
        }
    }
}

impl PartialEq<&str> for Handler {
    fn eq(&self, other: &&str) -> bool {
        self == *other
    }
}

impl PartialEq<String> for Handler {
    fn eq(&self, other: &String) -> bool {
        self == other.as_str()
    }
}

impl Serialize for Handler {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Handler {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self::from(String::deserialize(deserializer)?.as_str()))
    }
}

impl ToSql for Handler {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.to_string()))
    }
}

impl FromSql for Handler {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        Ok(Self::from(value.as_str()?))
    }
}

/// One audited message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the message was taken up (Unix ms).
    pub at_ms: i64,
    pub platform: String,
    /// The platform's id of the message (DingTalk `msgId`), so an operator can trace one message through
    /// the platform's and hearth's logs; empty in records written before it was kept.
    pub msg_id: String,
    pub conversation_id: String,
    /// The session the history came from.
    pub session: String,
    pub sender_id: String,
    pub sender_nick: String,
    /// Who answered: stored and exported as `skill:NAME`, `model:NAME` or `rate_limited`.
    pub handler: Handler,
    /// Masked.
    pub question: String,
    /// Masked.
    pub answer: String,
    /// From taking the message up to the first text the user could see; `None` when nothing was shown.
    pub first_visible_ms: Option<i64>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// Earlier turns of the session sent with the question.
    pub context_turns: i64,
    /// How the message ended (never [`Outcome::Ignored`]).
    pub outcome: Outcome,
}
