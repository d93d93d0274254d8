//! The audit of HTTP skill calls: one `skill_calls` row per call (who, which skill, how it ended, the
//! endpoint's HTTP status, the latency), in the store beside the `audit` table ([`crate::audit::AuditLog::record_call`]).
//! Neither the URL nor any header is stored, so no secret reaches the disk.

use std::fmt;

/// One call, as audited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkillCall {
    pub at_ms: i64,
    pub platform: String,
    /// The message that led to the call.
    pub msg_id: String,
    pub sender_id: String,
    pub skill: String,
    pub status: CallStatus,
    /// The endpoint's status when it answered.
    pub http_status: Option<u16>,
    pub latency_ms: i64,
}

/// How a call ended; audited as [`CallStatus::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallStatus {
    /// A 2xx answer, rendered.
    Ok,
    /// The endpoint answered with a non-2xx status.
    HttpError,
    /// No whole answer within the timeout.
    Timeout,
    /// The answer was longer than `max_response_bytes`.
    TooLarge,
    /// The endpoint could not be reached (connection refused, DNS, TLS).
    Unreachable,
    /// The access rules refused the sender (a model's call of a reserved skill).
    Refused,
}

impl CallStatus {
    /// The name stored in the audit log.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::HttpError => "http_error",
            Self::Timeout => "timeout",
            Self::TooLarge => "too_large",
            Self::Unreachable => "unreachable",
            Self::Refused => "refused",
        }
    }

    /// The stored name read back.
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Ok,
            Self::HttpError,
            Self::Timeout,
            Self::TooLarge,
            Self::Unreachable,
            Self::Refused,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

impl fmt::Display for CallStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
