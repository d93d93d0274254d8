//! [`Watched`]: an emulator's state behind one std `Mutex`, with a change counter that observers await.
//!
//! No lock is ever held across an `.await`: handlers take the lock, change the state and let go, and every
//! change bumps a `watch` version, so the control API (`/_emulator/api/wait`) and tests await a change
//! instead of polling or sleeping.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;

/// Query of the control APIs' change feed, `GET /_emulator/api/wait?after=V&timeout_ms=T`.
#[derive(Debug, Deserialize)]
pub(crate) struct WaitQuery {
    /// The version the caller has seen.
    #[serde(default)]
    after: u64,
    /// How long to wait at most, in milliseconds (default 10 000, at most 60 000).
    #[serde(default = "default_wait_ms")]
    timeout_ms: u64,
}

fn default_wait_ms() -> u64 {
    10_000
}

/// A value behind one lock, with a version bumped after every change.
pub(crate) struct Watched<T> {
    state: Mutex<T>,
    version: watch::Sender<u64>,
}

impl<T> Watched<T> {
    pub fn new(state: T) -> Self {
        Self {
            state: Mutex::new(state),
            version: watch::channel(0).0,
        }
    }

    /// Run `f` on the state, then tell observers something may have changed.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let out = {
            let mut state = self.lock();
            f(&mut state)
        };
        self.version.send_modify(|v| *v += 1);
        out
    }

    /// Read the state without signalling a change.
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, T> {
        // A panic while holding the lock is a bug in the emulator; the state is still usable for reading.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current change counter.
    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    /// Await `check` returning `Some`, re-checking after every change, for at most `timeout`.
    pub async fn wait_for<R>(&self, timeout: Duration, mut check: impl FnMut(&T) -> Option<R>) -> Option<R> {
        let mut changes = self.version.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.borrow_and_update();
            if let Some(found) = self.read(&mut check) {
                return Some(found);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// Answer a change-feed query: `{"version"}` once the version passes `after`, or when the time is up.
    pub async fn wait_change(&self, query: &WaitQuery) -> serde_json::Value {
        let mut changes = self.version.subscribe();
        let timeout = Duration::from_millis(query.timeout_ms.min(60_000));
        let _ = tokio::time::timeout(timeout, changes.wait_for(|v| *v > query.after)).await;
        serde_json::json!({ "version": self.version() })
    }
}
