//! [`CardBook`]: which CardKit entity shows each of hearth's cards, the reply that sent it, and the card's
//! `sequence` counter (§8.4), kept in the connector's database so a restarted hearth finds its cards again
//! and never reuses a sequence.
//!
//! Every call on one card takes that card's lock first and draws its sequence under it, so calls on a card
//! are serialized and their sequences strictly increase in the order they reach the platform: two updates
//! can never race on one card (300317, or older text landing last). Sequences are reserved in blocks of
//! [`RESERVE`] and the reservation is stored before any of it is used, so after a crash the counter resumes
//! past anything the last run may have sent, at one write per block.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, OptionalExtension};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::db::{run, Database, DbError, SharedConnection};

/// Sequences reserved per database write.
pub const RESERVE: i64 = 100;
/// Rows older than this are deleted at start: the platform keeps a card entity for 14 days.
const KEEP_MS: i64 = 15 * 86_400 * 1000;

/// The book's own SQLite file beside the connector's `database` (`NAME.cards.sqlite3`). Not the outbox's
/// file: a second connection's writes there would make the outbox's read-then-write transactions fail
/// with SQLITE_BUSY_SNAPSHOT, and the book needs no transaction with the outbox (a card it records and
/// the outbox never hears of is simply never used).
pub fn book_path(database: &Path) -> PathBuf {
    let stem = database
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    database.with_file_name(format!("{stem}.cards.sqlite3"))
}

/// One card's state, held under its lock.
#[derive(Debug, Default)]
pub struct CardSlot {
    loaded: bool,
    /// The platform's `card_id`, once the entity is created.
    pub card_id: Option<String>,
    /// The reply that shows the card, once sent.
    pub message_id: Option<String>,
    /// The last sequence used.
    last: i64,
    /// Sequences up to this one are stored as possibly used.
    reserved: i64,
}

/// The cards of one connector.
pub struct CardBook {
    conn: SharedConnection,
    slots: Mutex<HashMap<String, Arc<AsyncMutex<CardSlot>>>>,
}

impl CardBook {
    /// The book in the SQLite file at `path` (see [`book_path`]; created if missing).
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let conn = Database::open(path)?.connection();
        {
            let db = conn.lock().unwrap_or_else(|p| p.into_inner());
            db.execute_batch(
                "CREATE TABLE IF NOT EXISTS feishu_cards (
                    card TEXT PRIMARY KEY,
                    card_id TEXT NOT NULL,
                    message_id TEXT,
                    reserved INTEGER NOT NULL DEFAULT 0,
                    created_ms INTEGER NOT NULL
                );",
            )?;
            db.execute(
                "DELETE FROM feishu_cards WHERE created_ms < ?1",
                params![crate::db::now_ms() - KEEP_MS],
            )?;
        }
        Ok(Self {
            conn,
            slots: Mutex::new(HashMap::new()),
        })
    }

    /// Card `card`'s slot, locked (loaded from the database on first use).
    pub async fn lock(&self, card: &str) -> Result<OwnedMutexGuard<CardSlot>, DbError> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.entry(card.to_owned()).or_default().clone()
        };
        let mut guard = slot.lock_owned().await;
        if !guard.loaded {
            let key = card.to_owned();
            let row = run(&self.conn, move |db| {
                db.query_row(
                    "SELECT card_id, message_id, reserved FROM feishu_cards WHERE card = ?1",
                    params![key],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, Option<String>>(1)?,
                            row.get::<_, i64>(2)?,
                        ))
                    },
                )
                .optional()
            })
            .await?;
            if let Some((card_id, message_id, reserved)) = row {
                guard.card_id = Some(card_id);
                guard.message_id = message_id;
                (guard.last, guard.reserved) = (reserved, reserved);
            }
            guard.loaded = true;
        }
        Ok(guard)
    }

    /// Forget `card`'s slot in memory (its row stays): its answer is finished.
    pub fn release(&self, card: &str) {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).remove(card);
    }

    /// Record that `card` is shown by the new entity `card_id`.
    pub async fn created(&self, card: &str, slot: &mut CardSlot, card_id: &str) -> Result<(), DbError> {
        let (key, id) = (card.to_owned(), card_id.to_owned());
        run(&self.conn, move |db| {
            db.execute(
                "INSERT OR REPLACE INTO feishu_cards (card, card_id, message_id, reserved, created_ms)
                 VALUES (?1, ?2, NULL, 0, ?3)",
                params![key, id, crate::db::now_ms()],
            )
        })
        .await?;
        slot.card_id = Some(card_id.to_owned());
        slot.message_id = None;
        (slot.last, slot.reserved) = (0, 0);
        Ok(())
    }

    /// Record the reply `message_id` that sent `card`.
    pub async fn sent(&self, card: &str, slot: &mut CardSlot, message_id: &str) -> Result<(), DbError> {
        let (key, id) = (card.to_owned(), message_id.to_owned());
        run(&self.conn, move |db| {
            db.execute(
                "UPDATE feishu_cards SET message_id = ?2 WHERE card = ?1",
                params![key, id],
            )
        })
        .await?;
        slot.message_id = Some(message_id.to_owned());
        Ok(())
    }

    /// The next sequence of `card`, reserving a new block first when the last one is used up.
    pub async fn next_sequence(&self, card: &str, slot: &mut CardSlot) -> Result<i64, DbError> {
        let next = slot.last + 1;
        if next > slot.reserved {
            let reserved = next + RESERVE - 1;
            let key = card.to_owned();
            run(&self.conn, move |db| {
                db.execute(
                    "UPDATE feishu_cards SET reserved = ?2 WHERE card = ?1",
                    params![key, reserved],
                )
            })
            .await?;
            slot.reserved = reserved;
        }
        slot.last = next;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_book_sits_beside_the_outbox() {
        let path = book_path(Path::new("/var/lib/hearth/feishu.sqlite3"));
        assert_eq!(path, PathBuf::from("/var/lib/hearth/feishu.cards.sqlite3"));
    }

    #[tokio::test]
    async fn sequences_resume_past_the_last_reservation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cards.sqlite3");
        let book = CardBook::open(&path).unwrap();
        let mut slot = book.lock("c1").await.unwrap();
        assert!(slot.card_id.is_none());
        book.created("c1", &mut slot, "7355").await.unwrap();
        book.sent("c1", &mut slot, "om_1").await.unwrap();
        let mut used = Vec::new();
        for _ in 0..3 {
            used.push(book.next_sequence("c1", &mut slot).await.unwrap());
        }
        assert_eq!(used, [1, 2, 3]);
        drop(slot);
        // A restart: a new book on the same file.
        let again = CardBook::open(&path).unwrap();
        let mut slot = again.lock("c1").await.unwrap();
        assert_eq!(slot.card_id.as_deref(), Some("7355"));
        assert_eq!(slot.message_id.as_deref(), Some("om_1"));
        assert!(again.next_sequence("c1", &mut slot).await.unwrap() > RESERVE);
    }
}
