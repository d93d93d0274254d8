//! What every platform's long connection does alike: reconnecting with growing, jittered delays
//! ([`Backoff`]), watching a socket for silence and dead paths ([`Watchdog`]), and giving a socket up
//! without waiting on a peer that may be gone ([`close_quickly`]).

use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;

/// Reconnect delays: the first failure waits `initial`, each further one twice as long up to `max`, plus
/// up to 100% random jitter so that many clients do not come back in step.
#[derive(Debug)]
pub struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    failures: u32,
}

impl Backoff {
    /// Delays from `initial_ms` doubling up to `max_ms`.
    pub fn new(initial_ms: u64, max_ms: u64) -> Self {
        Self {
            initial_ms: initial_ms.max(1),
            max_ms: max_ms.max(1),
            failures: 0,
        }
    }

    /// Count a failure; the delay before the next try.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let doubled = self.initial_ms.saturating_mul(1u64 << (self.failures - 1).min(16));
        let base = doubled.min(self.max_ms);
        Duration::from_millis(base + rand::rng().random_range(0..=base))
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The connection works again: the next failure starts from `initial`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Sleep `delay`; false when `shutdown` turned true first.
pub async fn sleep_unless_stopped(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        _ = shutdown.wait_for(|stop| *stop) => false,
    }
}

/// Close a socket that is being given up, waiting at most a second for the peer.
pub async fn close_quickly<S: AsyncRead + AsyncWrite + Unpin>(socket: &mut WebSocketStream<S>) {
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
}

/// What a [`Watchdog`] found due.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// Send a ping now, then tell the watchdog ([`Watchdog::pinged`]).
    Ping,
    /// The connection is dead, for this reason: replace it.
    Dead(String),
}

/// The liveness of one socket: it pings every `ping_every`, takes the path for dead when a ping goes
/// unanswered for `pong_timeout`, and the connection for a zombie when nothing that counts arrives for
/// `idle` (a socket that answers pings but delivers nothing).
#[derive(Debug)]
pub struct Watchdog {
    idle: Duration,
    ping_every: Duration,
    pong_timeout: Duration,
    last_heard: Instant,
    next_ping: Instant,
    /// When the oldest ping still without a pong was sent.
    unanswered: Option<Instant>,
}

impl Watchdog {
    /// A watch starting now, its first ping after `first_ping`. Durations under a second are taken as a
    /// second.
    pub fn new(idle: Duration, ping_every: Duration, pong_timeout: Duration, first_ping: Duration) -> Self {
        let second = Duration::from_secs(1);
        let now = Instant::now();
        Self {
            idle: idle.max(second),
            ping_every: ping_every.max(second),
            pong_timeout: pong_timeout.max(second),
            last_heard: now,
            next_ping: now + first_ping,
            unanswered: None,
        }
    }

    /// When something may next be due: sleep until then, then ask [`due`](Self::due).
    pub fn wake(&self) -> Instant {
        let pong_deadline = self.unanswered.map(|sent| sent + self.pong_timeout);
        [self.last_heard + self.idle, self.next_ping]
            .into_iter()
            .chain(pong_deadline)
            .min()
            .unwrap_or(self.next_ping)
    }

    /// What is due now, if anything.
    pub fn due(&self) -> Option<Due> {
        let now = Instant::now();
        if self.unanswered.is_some_and(|sent| now >= sent + self.pong_timeout) {
            let secs = self.pong_timeout.as_secs_f64();
            return Some(Due::Dead(format!("no pong within {secs} s of a ping")));
        }
        if now >= self.last_heard + self.idle {
            let secs = self.idle.as_secs_f64();
            return Some(Due::Dead(format!(
                "nothing received for {secs} s (a zombie connection?)"
            )));
        }
        (now >= self.next_ping).then_some(Due::Ping)
    }

    /// A ping went out.
    pub fn pinged(&mut self) {
        let now = Instant::now();
        self.unanswered.get_or_insert(now);
        self.next_ping = now + self.ping_every;
    }

    /// A pong came back: the path is alive.
    pub fn ponged(&mut self) {
        self.unanswered = None;
    }

    /// Something that proves the platform (not only the path) arrived.
    pub fn heard(&mut self) {
        self.last_heard = Instant::now();
    }

    /// Ping every `every` from now on (a platform may ask for another interval).
    pub fn ping_every(&mut self, every: Duration) {
        self.ping_every = every.max(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_socket_and_an_unanswered_ping_are_found() {
        let secs = Duration::from_secs;
        let mut dog = Watchdog::new(secs(60), secs(5), secs(10), secs(5));
        assert_eq!(dog.due(), None);
        assert_eq!(dog.wake(), Instant::now() + secs(5));
        tokio::time::advance(secs(5)).await;
        assert_eq!(dog.due(), Some(Due::Ping));
        dog.pinged();
        tokio::time::advance(secs(5)).await;
        assert_eq!(dog.due(), Some(Due::Ping));
        dog.pinged();
        // The first ping's pong is overdue 10 s after it, whatever pings followed.
        assert_eq!(dog.wake(), Instant::now() + secs(5));
        tokio::time::advance(secs(5)).await;
        assert!(matches!(dog.due(), Some(Due::Dead(reason)) if reason.contains("no pong")));
        dog.ponged();
        dog.heard();
        tokio::time::advance(secs(59)).await;
        assert_eq!(dog.due(), Some(Due::Ping));
        dog.pinged();
        dog.ponged();
        tokio::time::advance(secs(1)).await;
        assert!(matches!(dog.due(), Some(Due::Dead(reason)) if reason.contains("nothing received")));
    }

    #[test]
    fn backoff_doubles_to_its_bound_with_jitter() {
        let mut backoff = Backoff::new(100, 1_000);
        let delays: Vec<Duration> = (0..6).map(|_| backoff.failed()).collect();
        for (delay, base) in delays.iter().zip([100, 200, 400, 800, 1_000, 1_000]) {
            let ms = delay.as_millis() as u64;
            assert!((base..=2 * base).contains(&ms), "{ms} ms for a base of {base}");
        }
        assert_eq!(backoff.failures(), 6);
        backoff.reset();
        assert!(backoff.failed() <= Duration::from_millis(200));
    }
}
