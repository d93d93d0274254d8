//! [`SessionStore`]: the history of each conversation, in the [`Store`] (SQLite, or the PostgreSQL that
//! the nodes of one bot share, so a user's next message continues on any node), so follow-up questions
//! reach the model with their context. Platform-independent: a connector chooses the key (per 1:1 chat, per
//! group, or per group and user) and stores finished turns; a session idle for longer than the configured
//! time starts over, and `/new` resets it.

use std::time::Duration;

use engine::ChatMessage;

use crate::db::{now_ms, DbError};
use crate::store::{Store, Turn};

/// Conversation histories.
#[derive(Clone)]
pub struct SessionStore {
    store: Store,
    idle_ms: i64,
}

impl SessionStore {
    /// The sessions in `store`; sessions idle for `idle` start over.
    pub fn open(store: Store, idle: Duration) -> Self {
        Self {
            store,
            idle_ms: idle.as_millis() as i64,
        }
    }

    /// The store it keeps the sessions in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The turns of `key`'s session, oldest first; an expired session is cleared and yields none.
    pub async fn history(&self, key: &str) -> Result<Vec<ChatMessage>, DbError> {
        self.store.history(key, self.idle_ms).await
    }

    /// Add a question and its answer to `key`'s session (starting it if needed).
    pub async fn append(&self, key: &str, question: &str, answer: &str) -> Result<(), DbError> {
        self.store
            .append_turn(Turn {
                session: key.to_owned(),
                question: question.to_owned(),
                answer: answer.to_owned(),
            })
            .await
    }

    /// Delete every session idle past the expiry (they would start over anyway); returns how many went.
    pub async fn prune_idle(&self) -> Result<usize, DbError> {
        self.store.prune_sessions(now_ms() - self.idle_ms).await
    }

    /// Forget `key`'s session.
    pub async fn reset(&self, key: &str) -> Result<(), DbError> {
        self.store.reset_session(key).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use rusqlite::Connection;

    use super::*;
    use crate::db::Database;

    #[tokio::test]
    async fn history_grows_resets_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let database = Database::open(&dir.path().join("im.sqlite3")).unwrap();
        let conn: Arc<Mutex<Connection>> = database.connection();
        let store = SessionStore::open(Store::sqlite(&database).unwrap(), Duration::from_secs(60));
        assert!(store.history("a").await.unwrap().is_empty());
        store.append("a", "q1", "a1").await.unwrap();
        store.append("a", "q2", "a2").await.unwrap();
        store.append("b", "other", "x").await.unwrap();
        let history = store.history("a").await.unwrap();
        let contents: Vec<_> = history.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect();
        assert_eq!(
            contents,
            [("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2")]
        );
        store.reset("a").await.unwrap();
        assert!(store.history("a").await.unwrap().is_empty());
        assert_eq!(store.history("b").await.unwrap().len(), 2);
        // Idle past the limit: the session starts over.
        conn.lock()
            .unwrap()
            .execute("UPDATE sessions SET last_ms = last_ms - 61000 WHERE key = 'b'", [])
            .unwrap();
        store.append("c", "fresh", "x").await.unwrap();
        assert_eq!(store.prune_idle().await.unwrap(), 1, "only b was idle");
        let turns: i64 = conn
            .lock()
            .unwrap()
            .query_row("SELECT COUNT(*) FROM session_turns WHERE key = 'b'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(turns, 0);
        assert!(store.history("b").await.unwrap().is_empty());
        assert_eq!(store.history("c").await.unwrap().len(), 2);
    }
}
