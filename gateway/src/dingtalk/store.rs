//! [`Outbox`]: the SQLite record of every inbound message, written before the ACK.
//!
//! The primary key `(platform, robot, msg_id)` makes dedupe atomic: `INSERT OR IGNORE` either records a
//! new message or changes nothing, so a redelivered push is recognised in one statement. A message stays
//! `accepted` until it is `answered` (finalized card), `answered_markdown` (fallback), `failed` (nothing
//! could be delivered; logged) or `ignored` (a group message without a mention). [`Outbox::settle`] closes
//! a message together with its audit record and session turn, in one transaction. After a crash, every
//! `accepted` row is taken up again; each restart bumps its `attempts`, which the card guids include, and
//! `shown_bytes` tells it how much of the answer its cards already show.
//!
//! rusqlite is blocking: every call runs on the blocking pool, and the connection's std mutex is only held
//! inside that closure, never across an `.await`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

use super::message::{BotMessage, ConversationType, TextContent};
use crate::audit::Outcome;

/// The platform name in keys.
const PLATFORM: &str = "dingtalk";

/// An outbox failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("outbox database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("outbox task failed: {0}")]
    Join(String),
}

/// A message taken up for answering.
#[derive(Debug, Clone)]
pub struct Job {
    pub message: BotMessage,
    /// The card's id, derived from the message so a retry finds the same card.
    pub out_track_id: String,
    /// How many times answering began (1 on the first run).
    pub attempt: u32,
    pub card_created: bool,
    /// How far into the answer the user has seen it in its cards, in bytes, as an earlier run left it
    /// ([`SHOWN_ALL`]: the last card's final frame was sent); 0 for a new message. A resumed answer
    /// streams into the cards again once the regenerated text reaches this point.
    pub shown: usize,
}

/// [`Job::shown`] once the answer's last card was finalized: nothing may overwrite it.
pub const SHOWN_ALL: usize = i64::MAX as usize;

/// The SQLite outbox.
#[derive(Clone)]
pub struct Outbox {
    conn: Arc<Mutex<Connection>>,
    robot: String,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Outbox {
    /// Open (or create) the database at `path`.
    pub fn open(path: &Path, robot: &str) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS inbound (
                 platform TEXT NOT NULL,
                 robot TEXT NOT NULL,
                 msg_id TEXT NOT NULL,
                 message_id TEXT NOT NULL,
                 conversation_id TEXT NOT NULL,
                 conversation_type TEXT NOT NULL,
                 sender_staff_id TEXT NOT NULL,
                 sender_nick TEXT NOT NULL,
                 text TEXT NOT NULL,
                 at_bot INTEGER NOT NULL,
                 session_webhook TEXT,
                 webhook_expires_ms INTEGER,
                 out_track_id TEXT NOT NULL,
                 state TEXT NOT NULL,
                 attempts INTEGER NOT NULL DEFAULT 0,
                 card_created INTEGER NOT NULL DEFAULT 0,
                 detail TEXT,
                 received_ms INTEGER NOT NULL,
                 finished_ms INTEGER,
                 sender_id TEXT NOT NULL DEFAULT '',
                 sender_union_id TEXT,
                 shown_bytes INTEGER NOT NULL DEFAULT 0,
                 PRIMARY KEY (platform, robot, msg_id)
             );
             CREATE TABLE IF NOT EXISTS card_marks (
                 platform TEXT NOT NULL,
                 robot TEXT NOT NULL,
                 card TEXT NOT NULL,
                 status TEXT NOT NULL,
                 added_ms INTEGER NOT NULL,
                 PRIMARY KEY (platform, robot, card)
             );",
        )?;
        // Databases written before these columns existed.
        for (column, declaration) in [
            ("sender_id", "TEXT NOT NULL DEFAULT ''"),
            ("sender_union_id", "TEXT"),
            ("shown_bytes", "INTEGER NOT NULL DEFAULT 0"),
        ] {
            crate::sessions::add_column(&conn, "inbound", column, declaration)?;
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            robot: robot.to_owned(),
        })
    }

    /// The database connection, shared with the session store and the audit log.
    pub(crate) fn connection(&self) -> crate::sessions::SharedConnection {
        self.conn.clone()
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection, &str) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (conn, robot) = (self.conn.clone(), self.robot.clone());
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&conn, &robot)
        })
        .await
        .map_err(|err| StoreError::Join(err.to_string()))?
        .map_err(StoreError::from)
    }

    /// Record `message` (pushed as `message_id`) as `accepted` or, with `ignore`, `ignored`. Returns the
    /// job when it is new, `None` for a duplicate.
    pub async fn accept(
        &self,
        message_id: &str,
        message: &BotMessage,
        ignore: bool,
    ) -> Result<Option<Job>, StoreError> {
        let message = message.clone();
        let message_id = message_id.to_owned();
        self.run(move |conn, robot| {
            let out_track_id = card_id(robot, &message.msg_id);
            let inserted = conn.execute(
                "INSERT OR IGNORE INTO inbound (platform, robot, msg_id, message_id, conversation_id, conversation_type,
                     sender_staff_id, sender_nick, text, at_bot, session_webhook, webhook_expires_ms, out_track_id, state,
                     attempts, received_ms, sender_id, sender_union_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
                params![
                    PLATFORM,
                    robot,
                    message.msg_id,
                    message_id,
                    message.conversation_id,
                    message.conversation_type.wire(),
                    message.sender_staff_id,
                    message.sender_nick,
                    message.text.as_ref().map(|t| t.content.clone()).unwrap_or_default(),
                    message.is_in_at_list,
                    message.session_webhook,
                    message.session_webhook_expired_time.map(|t| t as i64),
                    out_track_id,
                    if ignore { Outcome::Ignored.as_str() } else { "accepted" },
                    if ignore { 0 } else { 1 },
                    now_ms(),
                    message.sender_id,
                    message.sender_union_id,
                ],
            )?;
            Ok((inserted == 1 && !ignore).then_some(Job { message, out_track_id, attempt: 1, card_created: false, shown: 0 }))
        })
        .await
    }

    /// Every message still `accepted` (interrupted by a crash or shutdown), each with its attempt bumped.
    pub async fn resume(&self) -> Result<Vec<Job>, StoreError> {
        self.run(|conn, robot| {
            conn.execute("UPDATE inbound SET attempts = attempts + 1 WHERE platform = ?1 AND robot = ?2 AND state = 'accepted'", params![PLATFORM, robot])?;
            let mut statement = conn.prepare(
                "SELECT msg_id, conversation_id, conversation_type, sender_staff_id, sender_nick, text, at_bot, session_webhook,
                        webhook_expires_ms, out_track_id, attempts, card_created, sender_id, sender_union_id, shown_bytes
                 FROM inbound WHERE platform = ?1 AND robot = ?2 AND state = 'accepted' ORDER BY received_ms",
            )?;
            let rows = statement.query_map(params![PLATFORM, robot], |row| {
                let kind: String = row.get(2)?;
                Ok(Job {
                    message: BotMessage {
                        msg_id: row.get(0)?,
                        conversation_id: row.get(1)?,
                        conversation_type: ConversationType::from_wire(&kind).unwrap_or(ConversationType::Single),
                        sender_staff_id: row.get(3)?,
                        sender_id: row.get(12)?,
                        sender_union_id: row.get(13)?,
                        sender_nick: row.get(4)?,
                        text: Some(TextContent { content: row.get(5)? }),
                        msgtype: "text".to_owned(),
                        robot_code: Some(robot.to_owned()),
                        is_in_at_list: row.get(6)?,
                        session_webhook: row.get(7)?,
                        session_webhook_expired_time: row.get::<_, Option<i64>>(8)?.map(|t| t as u64),
                    },
                    out_track_id: row.get(9)?,
                    attempt: row.get(10)?,
                    card_created: row.get(11)?,
                    shown: usize::try_from(row.get::<_, i64>(14)?).unwrap_or(0),
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Note that the card of `msg_id` exists.
    pub async fn card_created(&self, msg_id: &str) -> Result<(), StoreError> {
        let msg_id = msg_id.to_owned();
        self.run(move |conn, robot| {
            conn.execute(
                "UPDATE inbound SET card_created = 1 WHERE platform = ?1 AND robot = ?2 AND msg_id = ?3",
                params![PLATFORM, robot, msg_id],
            )
            .map(drop)
        })
        .await
    }

    /// Record that the user has seen `msg_id`'s answer up to byte `shown` in its cards (it never goes back).
    pub async fn shown(&self, msg_id: &str, shown: usize) -> Result<(), StoreError> {
        let msg_id = msg_id.to_owned();
        let shown = i64::try_from(shown).unwrap_or(i64::MAX);
        self.run(move |conn, robot| {
            conn.execute(
                "UPDATE inbound SET shown_bytes = MAX(shown_bytes, ?4) WHERE platform = ?1 AND robot = ?2 AND msg_id = ?3",
                params![PLATFORM, robot, msg_id, shown],
            )
            .map(drop)
        })
        .await
    }

    /// Close `msg_id` with `outcome`; only an `accepted` row changes, so a message finishes once.
    pub async fn finish(&self, msg_id: &str, outcome: Outcome, detail: &str) -> Result<bool, StoreError> {
        self.settle(msg_id, outcome, detail, None, None).await
    }

    /// Close `msg_id` with `outcome` and, in the same transaction, write its audit `record` (already
    /// masked) and its session `turn` (session key, question, answer). Either all of it is stored or none:
    /// a crash before the commit leaves the message `accepted`, to be answered again with nothing doubled.
    /// Only an `accepted` message is closed; for any other, nothing is written and `false` comes back.
    pub async fn settle(
        &self,
        msg_id: &str,
        outcome: Outcome,
        detail: &str,
        record: Option<crate::audit::AuditRecord>,
        turn: Option<(String, String, String)>,
    ) -> Result<bool, StoreError> {
        let (msg_id, detail) = (msg_id.to_owned(), detail.to_owned());
        self.run(move |conn, robot| {
            let tx = conn.unchecked_transaction()?;
            let open = tx
                .query_row(
                    "SELECT 1 FROM inbound WHERE platform = ?1 AND robot = ?2 AND msg_id = ?3 AND state = 'accepted'",
                    params![PLATFORM, robot, msg_id],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !open {
                return Ok(false);
            }
            if let Some(record) = &record {
                crate::audit::insert(&tx, record)?;
            }
            if let Some((key, question, answer)) = &turn {
                crate::sessions::append_turn(&tx, key, question, answer)?;
            }
            tx.execute(
                "UPDATE inbound SET state = ?4, detail = ?5, finished_ms = ?6
                 WHERE platform = ?1 AND robot = ?2 AND msg_id = ?3 AND state = 'accepted'",
                params![PLATFORM, robot, msg_id, outcome.as_str(), detail, now_ms()],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    /// Keep `status` (a card state's wire value) as owed to `card`: the platform refused it for now, and
    /// the connector's marker sets it once the platform takes it, after a restart too.
    pub async fn defer_mark(&self, card: &str, status: &str) -> Result<(), StoreError> {
        let (card, status) = (card.to_owned(), status.to_owned());
        self.run(move |conn, robot| {
            conn.execute(
                "INSERT OR REPLACE INTO card_marks (platform, robot, card, status, added_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![PLATFORM, robot, card, status, now_ms()],
            )
            .map(drop)
        })
        .await
    }

    /// The owed card marks, oldest first: (card, state's wire value).
    pub async fn pending_marks(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.run(|conn, robot| {
            let mut statement = conn
                .prepare("SELECT card, status FROM card_marks WHERE platform = ?1 AND robot = ?2 ORDER BY added_ms")?;
            let rows = statement.query_map(params![PLATFORM, robot], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect()
        })
        .await
    }

    /// `card` got its mark `status` (or it can never get it): it is no longer owed. A mark deferred again
    /// with another status meanwhile stays.
    pub async fn mark_done(&self, card: &str, status: &str) -> Result<(), StoreError> {
        let (card, status) = (card.to_owned(), status.to_owned());
        self.run(move |conn, robot| {
            conn.execute(
                "DELETE FROM card_marks WHERE platform = ?1 AND robot = ?2 AND card = ?3 AND status = ?4",
                params![PLATFORM, robot, card, status],
            )
            .map(drop)
        })
        .await
    }

    /// Delete the settled messages (answered, failed or ignored) received before `before_ms`; a message
    /// still `accepted` stays whatever its age. Returns how many rows went.
    pub async fn prune(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.run(move |conn, robot| {
            conn.execute(
                "DELETE FROM inbound WHERE platform = ?1 AND robot = ?2 AND state != 'accepted' AND received_ms < ?3",
                params![PLATFORM, robot, before_ms],
            )
        })
        .await
    }

    /// The state of `msg_id`, if recorded (for tests and diagnostics).
    pub async fn state(&self, msg_id: &str) -> Result<Option<String>, StoreError> {
        let msg_id = msg_id.to_owned();
        self.run(move |conn, robot| {
            conn.query_row(
                "SELECT state FROM inbound WHERE platform = ?1 AND robot = ?2 AND msg_id = ?3",
                params![PLATFORM, robot, msg_id],
                |row| row.get(0),
            )
            .optional()
        })
        .await
    }
}

/// A card id derived from the robot and message: stable across restarts, so the card is found again.
fn card_id(robot: &str, msg_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{robot}\n{msg_id}").as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("hearth-{hex}")
}
