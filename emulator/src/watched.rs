//! [`Watched`]: an emulator's world behind one std `Mutex`, with a change counter observers await instead of
//! polling. No lock is ever held across an `.await`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use crate::EmulatorError;

/// A value behind a lock whose every change bumps a version.
pub struct Watched<W> {
    inner: Mutex<W>,
    version: watch::Sender<u64>,
}

impl<W> Watched<W> {
    /// Wrap `value` at version 0.
    pub fn new(value: W) -> Self {
        Self {
            inner: Mutex::new(value),
            version: watch::channel(0).0,
        }
    }

    /// Run `f` on the value, then tell observers something may have changed.
    pub fn with<T>(&self, f: impl FnOnce(&mut W) -> T) -> T {
        let out = f(&mut self.lock());
        self.version.send_modify(|v| *v += 1);
        out
    }

    /// Read the value without signalling a change.
    pub fn read<T>(&self, f: impl FnOnce(&W) -> T) -> T {
        f(&self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, W> {
        // A panic while holding the lock is a bug in the emulator; the state is still usable for reading.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current change counter.
    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    /// A receiver of change counters.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Await `check` returning `Some`, re-checking after every change, for at most `timeout`; `None` when
    /// the time ran out.
    pub async fn wait_for<T>(&self, timeout: Duration, mut check: impl FnMut(&W) -> Option<T>) -> Option<T> {
        let mut changes = self.subscribe();
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

    /// [`wait_for`](Self::wait_for) for an emulator's public `wait_for`: [`EmulatorError::Timeout`] when the
    /// time ran out.
    pub async fn wait_or_timeout<T>(
        &self,
        timeout: Duration,
        check: impl FnMut(&W) -> Option<T>,
    ) -> Result<T, EmulatorError> {
        self.wait_for(timeout, check)
            .await
            .ok_or(EmulatorError::Timeout(timeout))
    }

    /// Wait until the counter passes `after`, or `timeout` passes; returns the counter.
    pub async fn wait_change(&self, after: u64, timeout: Duration) -> u64 {
        let mut rx = self.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|v| *v > after)).await;
        self.version()
    }
}

/// A boxed timer: a sleep, or a future that never completes.
pub type Timer = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A timer firing after `after`, or never for `None`.
pub fn timer(after: Option<Duration>) -> Timer {
    match after {
        Some(after) => Box::pin(tokio::time::sleep(after)),
        None => Box::pin(std::future::pending()),
    }
}
