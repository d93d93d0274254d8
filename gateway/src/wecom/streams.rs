//! What the WeCom adapter's two transports share below it: how a call fails ([`WeComError`]) and the
//! table of answer streams in flight ([`Streams`]), each stream's latest snapshot and deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::message::WeComMessage;
use crate::db::now_ms;
use crate::im::retry::{CallFailure, PlatformError};

/// Streams kept in the table at most; the oldest past their deadline are dropped first.
const MAX_STREAMS: usize = 10_000;

/// `errcode` of an update to an expired (or finished) stream (OBSERVED, §2.5).
pub const STREAM_EXPIRED: i64 = 846_608;
/// `errcode` of a reply whose `req_id` the platform does not know (OBSERVED).
pub const UNKNOWN_REQ_ID: i64 = 846_605;
/// `errcode` of a command conflict, retried with a short back-off (OBSERVED in AstrBot).
pub const CONFLICT: i64 = 6_000;

/// How a WeCom call failed.
#[derive(Debug, thiserror::Error)]
pub enum WeComError {
    /// The platform refused the call.
    #[error("WeCom {call}: errcode {errcode}: {errmsg}")]
    Platform {
        call: &'static str,
        errcode: i64,
        errmsg: String,
    },
    /// No long connection is subscribed right now.
    #[error("WeCom {0}: no long connection")]
    NotConnected(&'static str),
    /// The connection closed before the call was acknowledged.
    #[error("WeCom {0}: the connection closed before the acknowledgement")]
    ConnectionLost(&'static str),
    /// No acknowledgement within the timeout.
    #[error("WeCom {0}: no acknowledgement in time")]
    AckTimeout(&'static str),
    /// The message's stream deadline has passed: the answer goes out as a message.
    #[error("WeCom stream: the message's stream deadline has passed")]
    PastDeadline,
    /// A stream this process knows nothing of (after a restart, or one that was closed).
    #[error("WeCom stream {0}: unknown here")]
    UnknownStream(String),
    /// URL mode: WeCom did not collect the final snapshot with a refresh in time.
    #[error("WeCom stream {0}: the final snapshot was not collected by a refresh in time")]
    NotCollected(String),
    /// What this transport cannot do.
    #[error("WeCom: {0}")]
    Unsupported(&'static str),
    /// A `response_url` POST failed on the way.
    #[error("WeCom response_url: {0}")]
    Http(String),
}

impl PlatformError for WeComError {
    fn failure(&self) -> CallFailure {
        match self {
            Self::Platform { errcode, .. } if *errcode == CONFLICT || *errcode == -1 => CallFailure::Transient,
            Self::Platform { errcode: 45_009, .. } => CallFailure::Throttled,
            Self::NotConnected(_) | Self::ConnectionLost(_) | Self::AckTimeout(_) | Self::NotCollected(_) => {
                CallFailure::Transient
            }
            Self::Http(_) => CallFailure::Transient,
            Self::Platform { .. } | Self::PastDeadline | Self::UnknownStream(_) | Self::Unsupported(_) => {
                CallFailure::Final
            }
        }
    }
}

/// One stream of an answer, as this process knows it.
pub(crate) struct Target {
    /// The message it answers.
    pub message: Arc<WeComMessage>,
    /// Past this (Unix ms), the stream is not written.
    pub deadline_ms: i64,
    /// The latest snapshot.
    pub content: String,
    /// The final snapshot is set (URL mode: served with `finish: true` on the next refresh).
    pub finish: bool,
    /// A finish frame went out (long connection: written, acknowledged or not) or was served (URL mode).
    pub finish_sent: bool,
    /// When a snapshot last went out.
    pub last_sent: Instant,
    /// Serializes this stream's frames, so snapshots reach the platform in order.
    pub lock: Arc<tokio::sync::Mutex<()>>,
}

/// The streams of answers in flight, by stream id (= card id).
#[derive(Default)]
pub(crate) struct Streams {
    table: Mutex<HashMap<String, Target>>,
}

impl Streams {
    /// Run `f` on the table.
    pub fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Target>) -> T) -> T {
        f(&mut self.table.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Know stream `id` of `message` (kept as it is when known).
    pub fn register(&self, id: &str, message: &WeComMessage, deadline: Duration) {
        self.with(|table| {
            if table.len() >= MAX_STREAMS {
                let now = now_ms();
                table.retain(|_, t| t.deadline_ms > now);
                if table.len() >= MAX_STREAMS {
                    let oldest = table
                        .iter()
                        .min_by_key(|(_, t)| t.deadline_ms)
                        .map(|(id, _)| id.clone());
                    if let Some(oldest) = oldest {
                        table.remove(&oldest);
                    }
                }
            }
            table.entry(id.to_owned()).or_insert_with(|| Target {
                message: Arc::new(message.clone()),
                deadline_ms: message.sent_ms() + deadline.as_millis() as i64,
                content: String::new(),
                finish: false,
                finish_sent: false,
                last_sent: Instant::now(),
                lock: Arc::new(tokio::sync::Mutex::new(())),
            });
        })
    }
}
