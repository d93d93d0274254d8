//! [`SessionStore`]: the history of each conversation, in SQLite, so follow-up questions reach the model
//! with their context. Platform-independent: a connector chooses the key (per 1:1 chat, per group, or per
//! group and user) and stores finished turns; a session idle for longer than the configured time starts
//! over, and `/new` resets it.
//!
//! rusqlite is blocking: every call runs on the blocking pool through [`run`], and the connection's std
//! mutex is held only inside that closure, never across an `.await`.

use std::time::Duration;

use engine::ChatMessage;
use rusqlite::{params, Connection, OptionalExtension};

use crate::db::{now_ms, run, DbError, SharedConnection};

/// Conversation histories.
#[derive(Clone)]
pub struct SessionStore {
    conn: SharedConnection,
    idle_ms: i64,
}

impl SessionStore {
    /// The store in `conn`'s database (tables created if missing); sessions idle for `idle` start over.
    pub fn open(conn: SharedConnection, idle: Duration) -> Result<Self, DbError> {
        conn.lock().unwrap_or_else(|p| p.into_inner()).execute_batch(
            "CREATE TABLE IF NOT EXISTS sessions (
                 key TEXT PRIMARY KEY,
                 started_ms INTEGER NOT NULL,
                 last_ms INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS session_turns (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 key TEXT NOT NULL,
                 role TEXT NOT NULL,
                 content TEXT NOT NULL,
                 at_ms INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS session_turns_key ON session_turns (key, id);",
        )?;
        Ok(Self {
            conn,
            idle_ms: idle.as_millis() as i64,
        })
    }

    /// The turns of `key`'s session, oldest first; an expired session is cleared and yields none.
    pub async fn history(&self, key: &str) -> Result<Vec<ChatMessage>, DbError> {
        let (key, idle_ms) = (key.to_owned(), self.idle_ms);
        run(&self.conn, move |conn| {
            let last: Option<i64> = conn
                .query_row("SELECT last_ms FROM sessions WHERE key = ?1", params![key], |row| {
                    row.get(0)
                })
                .optional()?;
            match last {
                None => return Ok(Vec::new()),
                Some(last) if now_ms() - last > idle_ms => {
                    clear(conn, &key)?;
                    return Ok(Vec::new());
                }
                Some(_) => {}
            }
            let mut statement = conn.prepare("SELECT role, content FROM session_turns WHERE key = ?1 ORDER BY id")?;
            let rows = statement.query_map(params![key], |row| {
                Ok(ChatMessage {
                    role: row.get(0)?,
                    content: row.get(1)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Add a question and its answer to `key`'s session (starting it if needed).
    pub async fn append(&self, key: &str, question: &str, answer: &str) -> Result<(), DbError> {
        let (key, question, answer) = (key.to_owned(), question.to_owned(), answer.to_owned());
        run(&self.conn, move |conn| {
            let tx = conn.unchecked_transaction()?;
            append_turn(&tx, &key, &question, &answer)?;
            tx.commit()
        })
        .await
    }

    /// Delete every session idle past the expiry (they would start over anyway); returns how many went.
    pub async fn prune_idle(&self) -> Result<usize, DbError> {
        let cutoff = now_ms() - self.idle_ms;
        run(&self.conn, move |conn| {
            let tx = conn.unchecked_transaction()?;
            tx.execute(
                "DELETE FROM session_turns WHERE key IN (SELECT key FROM sessions WHERE last_ms < ?1)",
                params![cutoff],
            )?;
            let removed = tx.execute("DELETE FROM sessions WHERE last_ms < ?1", params![cutoff])?;
            tx.commit()?;
            Ok(removed)
        })
        .await
    }

    /// Forget `key`'s session.
    pub async fn reset(&self, key: &str) -> Result<(), DbError> {
        let key = key.to_owned();
        run(&self.conn, move |conn| clear(conn, &key)).await
    }
}

/// Add a question and its answer to `key`'s session (starting it if needed), as part of the caller's
/// transaction: a connector stores the turn in the same transaction that closes the message, so a crash
/// can neither lose the turn of a closed message nor repeat the turn of a message answered again.
pub(crate) fn append_turn(conn: &Connection, key: &str, question: &str, answer: &str) -> Result<(), rusqlite::Error> {
    let now = now_ms();
    conn.execute(
        "INSERT INTO sessions (key, started_ms, last_ms) VALUES (?1, ?2, ?2)
         ON CONFLICT (key) DO UPDATE SET last_ms = excluded.last_ms",
        params![key, now],
    )?;
    for (role, content) in [("user", question), ("assistant", answer)] {
        conn.execute(
            "INSERT INTO session_turns (key, role, content, at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![key, role, content, now],
        )?;
    }
    Ok(())
}

fn clear(conn: &Connection, key: &str) -> Result<(), rusqlite::Error> {
    conn.execute("DELETE FROM session_turns WHERE key = ?1", params![key])?;
    conn.execute("DELETE FROM sessions WHERE key = ?1", params![key])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn history_grows_resets_and_expires() {
        let conn = Arc::new(Mutex::new(Connection::open_in_memory().unwrap()));
        let store = SessionStore::open(conn.clone(), Duration::from_secs(60)).unwrap();
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
