//! The health of one IM connector, for the console's status page: whether its event connection is up and
//! since when, when the platform was last heard from, how many connections it opened, the last problem,
//! and the permission scopes the platform refused (cleared again once a call needing one succeeds).
//!
//! The connector writes it (its Stream client and its OpenAPI client); the console reads [`HealthView`]
//! snapshots. Nothing here blocks for long: one short mutex per update.

use std::sync::Mutex;

use serde::Serialize;

use crate::db::now_ms;

/// The live health of one connector. Share it as `Arc<PlatformHealth>`.
#[derive(Debug)]
pub struct PlatformHealth {
    name: String,
    api_base_url: String,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    connected: bool,
    since_ms: Option<i64>,
    last_event_ms: Option<i64>,
    connections: u64,
    last_problem: Option<Problem>,
    missing: Vec<MissingPermission>,
}

/// A snapshot of [`PlatformHealth`], as `/console/api/status` serves it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HealthView {
    /// The platform, e.g. `dingtalk`.
    pub name: String,
    /// The platform API the connector talks to.
    pub api_base_url: String,
    /// `ok`, `degraded` (connected, but the platform refuses a permission), or `down` (no connection).
    pub status: &'static str,
    /// Whether the event connection (DingTalk: the Stream WebSocket) is open.
    pub connected: bool,
    /// Since when `connected` has held, Unix ms; `None` before the first connection attempt ended.
    pub since_ms: Option<i64>,
    /// The last frame from the platform (pings included), Unix ms.
    pub last_event_ms: Option<i64>,
    /// Connections opened since start; more than one means reconnects.
    pub connections: u64,
    /// The latest failure: a lost connection, a refused call.
    pub last_problem: Option<Problem>,
    /// Permission scopes the platform refused, until a call needing them succeeds.
    pub missing_permissions: Vec<MissingPermission>,
}

/// A failure worth showing an operator.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Problem {
    pub at_ms: i64,
    pub message: String,
}

/// A permission scope the platform refused.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MissingPermission {
    /// The scope, e.g. `Card.Streaming.Write`.
    pub permission: String,
    /// The call it refused, e.g. `card/streaming`.
    pub api: String,
    pub at_ms: i64,
}

impl PlatformHealth {
    /// A connector of platform `name` talking to `api_base_url`, not connected yet.
    pub fn new(name: impl Into<String>, api_base_url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            api_base_url: api_base_url.into(),
            state: Mutex::new(State::default()),
        }
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The event connection opened.
    pub fn connected(&self) {
        let now = now_ms();
        self.update(|s| {
            s.connected = true;
            s.since_ms = Some(now);
            s.last_event_ms = Some(now);
            s.connections += 1;
        });
    }

    /// The event connection was lost (or could not be opened) because of `reason`.
    pub fn disconnected(&self, reason: impl Into<String>) {
        let now = now_ms();
        let message = reason.into();
        self.update(|s| {
            if s.connected || s.since_ms.is_none() {
                s.since_ms = Some(now);
            }
            s.connected = false;
            s.last_problem = Some(Problem { at_ms: now, message });
        });
    }

    /// A frame arrived from the platform.
    pub fn heard(&self) {
        let now = now_ms();
        self.update(|s| s.last_event_ms = Some(now));
    }

    /// A failure an operator should see, e.g. an answer that could not be delivered.
    pub fn problem(&self, message: impl Into<String>) {
        let problem = Problem {
            at_ms: now_ms(),
            message: message.into(),
        };
        self.update(|s| s.last_problem = Some(problem));
    }

    /// The platform refused `api` for lack of `permission`.
    pub fn permission_refused(&self, permission: &str, api: &str, message: impl Into<String>) {
        let now = now_ms();
        let message = message.into();
        self.update(|s| {
            s.missing.retain(|m| m.permission != permission);
            s.missing.push(MissingPermission {
                permission: permission.to_owned(),
                api: api.to_owned(),
                at_ms: now,
            });
            s.last_problem = Some(Problem { at_ms: now, message });
        });
    }

    /// A call needing `permission` succeeded: the scope is granted (again).
    pub fn permission_granted(&self, permission: &str) {
        self.update(|s| s.missing.retain(|m| m.permission != permission));
    }

    /// The current health.
    pub fn view(&self) -> HealthView {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let status = match (s.connected, s.missing.is_empty()) {
            (false, _) => "down",
            (true, false) => "degraded",
            (true, true) => "ok",
        };
        HealthView {
            name: self.name.clone(),
            api_base_url: self.api_base_url.clone(),
            status,
            connected: s.connected,
            since_ms: s.since_ms,
            last_event_ms: s.last_event_ms,
            connections: s.connections,
            last_problem: s.last_problem.clone(),
            missing_permissions: s.missing.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_permission_degrades_until_granted() {
        let health = PlatformHealth::new("dingtalk", "http://x");
        assert_eq!(health.view().status, "down");
        health.connected();
        assert_eq!(health.view().status, "ok");
        health.permission_refused("Card.Streaming.Write", "card/streaming", "no streaming");
        health.permission_refused("Card.Streaming.Write", "card/streaming", "still no streaming");
        let view = health.view();
        assert_eq!((view.status, view.missing_permissions.len()), ("degraded", 1));
        assert_eq!(view.last_problem.unwrap().message, "still no streaming");
        health.permission_granted("Card.Streaming.Write");
        assert_eq!(health.view().status, "ok");
        health.disconnected("no frame for 60 s");
        let view = health.view();
        assert_eq!((view.status, view.connections), ("down", 1));
    }
}
