//! [`Outbox`]: the SQLite record of every inbound message, written before the platform is acknowledged.
//!
//! The primary key `(platform, robot, msg_id)` makes dedupe atomic: `INSERT OR IGNORE` either records a
//! new message or changes nothing, so a redelivered push is recognised in one statement, also across two
//! processes on one database. A message stays `accepted` until it is `answered` (finished card),
//! `answered_markdown` (plain-text fallback), `failed` (nothing could be delivered; logged) or `ignored`
//! (not addressed to the robot). [`Outbox::settle`] closes a message together with its audit record and
//! session turn, in one transaction. After a crash, every `accepted` row is taken up again
//! ([`Outbox::resume`]); each restart bumps its `attempts`, and `shown_bytes` tells it how much of the
//! answer its cards already show. The platform's own message is kept as the adapter encodes it (`payload`).

use rusqlite::{params, Connection, OptionalExtension};

use super::adapter::{CardState, ChatKind, Envelope};
use crate::audit::{AuditRecord, Outcome};
use crate::db::{add_column, now_ms, run, Database, DbError, SharedConnection};

/// A message taken up for answering.
#[derive(Debug, Clone)]
pub struct Job<M> {
    /// The platform's message.
    pub message: M,
    pub envelope: Envelope,
    /// The first card's id, derived from the message so a retry finds the same card.
    pub card_id: String,
    /// How many times answering began (1 on the first run).
    pub attempt: u32,
    /// The first card exists on the platform (an earlier run created it).
    pub card_created: bool,
    /// How far into the answer the user has seen it in its cards, in bytes, as an earlier run left it
    /// ([`SHOWN_ALL`]: the last card's final frame was sent); 0 for a new message. A resumed answer
    /// streams into the cards again once the regenerated text reaches this point.
    pub shown: usize,
}

/// A message left `accepted` by an earlier run, before its platform message is decoded.
#[derive(Debug, Clone)]
pub struct Unfinished {
    pub envelope: Envelope,
    /// The platform's message as the adapter encoded it; `None` in rows written before it was kept.
    pub payload: Option<String>,
    pub card_id: String,
    pub attempt: u32,
    pub card_created: bool,
    pub shown: usize,
}

impl Unfinished {
    /// The job, with its decoded platform `message`.
    pub fn into_job<M>(self, message: M) -> Job<M> {
        Job {
            message,
            envelope: self.envelope,
            card_id: self.card_id,
            attempt: self.attempt,
            card_created: self.card_created,
            shown: self.shown,
        }
    }
}

/// [`Job::shown`] once the answer's last card was finalized: nothing may overwrite it.
pub const SHOWN_ALL: usize = i64::MAX as usize;

/// The outbox of one platform account in a [`Database`].
#[derive(Clone)]
pub struct Outbox {
    conn: SharedConnection,
    platform: &'static str,
    account: String,
}

/// The stored form of a chat kind.
fn chat_kind(kind: ChatKind) -> &'static str {
    match kind {
        ChatKind::Direct => "direct",
        ChatKind::Group => "group",
    }
}

/// The stored code of a card state owed to a card: the codes the outbox has kept since owed marks were
/// added, which are DingTalk's `flowStatus` values (its first adapter), so older databases read the same.
fn mark_code(state: CardState) -> &'static str {
    match state {
        CardState::Finished => "3",
        CardState::Failed => "5",
    }
}

/// The card state an owed mark's stored code names, if any.
pub fn parse_mark(code: &str) -> Option<CardState> {
    [CardState::Finished, CardState::Failed]
        .into_iter()
        .find(|state| mark_code(*state) == code)
}

/// A stored chat kind; `1` and `2` are DingTalk's `conversationType`, as rows before adapters had them.
fn parse_chat_kind(text: &str) -> ChatKind {
    match text {
        "group" | "2" => ChatKind::Group,
        _ => ChatKind::Direct,
    }
}

impl Outbox {
    /// The outbox of `platform`'s `account` in `database` (its table created if missing).
    pub fn open(database: &Database, platform: &'static str, account: &str) -> Result<Self, DbError> {
        let conn = database.connection();
        create(&conn.lock().unwrap_or_else(|p| p.into_inner()))?;
        Ok(Self {
            conn,
            platform,
            account: account.to_owned(),
        })
    }

    /// Run `work` on the blocking pool with the connection, this platform and account.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection, &str, &str) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, DbError> {
        let (platform, account) = (self.platform, self.account.clone());
        run(&self.conn, move |conn| work(conn, platform, &account)).await
    }

    /// Record `envelope`'s message (its platform form `payload`) as `accepted`, or `ignored` when it is not
    /// addressed to the robot. Returns the job when it is new and to be answered, `None` for a duplicate or
    /// an ignored message.
    pub async fn accept<M: Send + 'static>(
        &self,
        envelope: Envelope,
        message: M,
        payload: String,
    ) -> Result<Option<Job<M>>, DbError> {
        let ignore = !envelope.addressed;
        self.run(move |conn, platform, account| {
            let card_id = card_id(account, &envelope.id);
            let inserted = conn.execute(
                "INSERT OR IGNORE INTO inbound (platform, robot, msg_id, message_id, conversation_id, conversation_type,
                     sender_staff_id, sender_nick, text, at_bot, out_track_id, state, attempts, received_ms, sender_id,
                     payload)
                 VALUES (?1, ?2, ?3, '', ?4, ?5, '', ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                params![
                    platform,
                    account,
                    envelope.id,
                    envelope.conversation,
                    chat_kind(envelope.chat),
                    envelope.sender_nick,
                    envelope.text,
                    envelope.addressed,
                    card_id,
                    if ignore { Outcome::Ignored.as_str() } else { "accepted" },
                    if ignore { 0 } else { 1 },
                    now_ms(),
                    envelope.sender,
                    payload,
                ],
            )?;
            Ok((inserted == 1 && !ignore).then_some(Job {
                message,
                envelope,
                card_id,
                attempt: 1,
                card_created: false,
                shown: 0,
            }))
        })
        .await
    }

    /// Every message still `accepted` (interrupted by a crash or shutdown), each with its attempt bumped.
    pub async fn resume(&self) -> Result<Vec<Unfinished>, DbError> {
        self.run(|conn, platform, account| {
            conn.execute(
                "UPDATE inbound SET attempts = attempts + 1 WHERE platform = ?1 AND robot = ?2 AND state = 'accepted'",
                params![platform, account],
            )?;
            let mut statement = conn.prepare(
                "SELECT msg_id, conversation_id, conversation_type, sender_id, sender_staff_id, sender_nick, text,
                        at_bot, out_track_id, attempts, card_created, shown_bytes, payload
                 FROM inbound WHERE platform = ?1 AND robot = ?2 AND state = 'accepted' ORDER BY received_ms",
            )?;
            let rows = statement.query_map(params![platform, account], |row| {
                let kind: String = row.get(2)?;
                let (sender_id, staff_id): (String, String) = (row.get(3)?, row.get(4)?);
                Ok(Unfinished {
                    envelope: Envelope {
                        id: row.get(0)?,
                        conversation: row.get(1)?,
                        chat: parse_chat_kind(&kind),
                        // Rows before adapters kept DingTalk's staff id apart.
                        sender: if staff_id.is_empty() { sender_id } else { staff_id },
                        sender_nick: row.get(5)?,
                        text: row.get::<_, String>(6)?.trim().to_owned(),
                        addressed: row.get(7)?,
                    },
                    card_id: row.get(8)?,
                    attempt: row.get(9)?,
                    card_created: row.get(10)?,
                    shown: usize::try_from(row.get::<_, i64>(11)?).unwrap_or(0),
                    payload: row.get(12)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Note that the first card of `msg_id` exists.
    pub async fn card_created(&self, msg_id: &str) -> Result<(), DbError> {
        let msg_id = msg_id.to_owned();
        self.run(move |conn, platform, account| {
            conn.execute(
                "UPDATE inbound SET card_created = 1 WHERE platform = ?1 AND robot = ?2 AND msg_id = ?3",
                params![platform, account, msg_id],
            )
            .map(drop)
        })
        .await
    }

    /// Record that the user has seen `msg_id`'s answer up to byte `shown` in its cards (it never goes back).
    pub async fn shown(&self, msg_id: &str, shown: usize) -> Result<(), DbError> {
        let msg_id = msg_id.to_owned();
        let shown = i64::try_from(shown).unwrap_or(i64::MAX);
        self.run(move |conn, platform, account| {
            conn.execute(
                "UPDATE inbound SET shown_bytes = MAX(shown_bytes, ?4) WHERE platform = ?1 AND robot = ?2 AND msg_id = ?3",
                params![platform, account, msg_id, shown],
            )
            .map(drop)
        })
        .await
    }

    /// Close `msg_id` with `outcome`; only an `accepted` row changes, so a message finishes once.
    pub async fn finish(&self, msg_id: &str, outcome: Outcome, detail: &str) -> Result<bool, DbError> {
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
        record: Option<AuditRecord>,
        turn: Option<(String, String, String)>,
    ) -> Result<bool, DbError> {
        let (msg_id, detail) = (msg_id.to_owned(), detail.to_owned());
        self.run(move |conn, platform, account| {
            let tx = conn.unchecked_transaction()?;
            let open = tx
                .query_row(
                    "SELECT 1 FROM inbound WHERE platform = ?1 AND robot = ?2 AND msg_id = ?3 AND state = 'accepted'",
                    params![platform, account, msg_id],
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
                params![platform, account, msg_id, outcome.as_str(), detail, now_ms()],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    /// Keep `state` as owed to `card`: the platform refused to close the card for now, and the connector's
    /// marker closes it once the platform takes it, after a restart too.
    pub async fn defer_mark(&self, card: &str, state: CardState) -> Result<(), DbError> {
        let card = card.to_owned();
        self.run(move |conn, platform, account| {
            conn.execute(
                "INSERT OR REPLACE INTO card_marks (platform, robot, card, status, added_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![platform, account, card, mark_code(state), now_ms()],
            )
            .map(drop)
        })
        .await
    }

    /// The owed card marks, oldest first: (card, the state's stored code, see [`parse_mark`]).
    pub async fn pending_marks(&self) -> Result<Vec<(String, String)>, DbError> {
        self.run(|conn, platform, account| {
            let mut statement = conn
                .prepare("SELECT card, status FROM card_marks WHERE platform = ?1 AND robot = ?2 ORDER BY added_ms")?;
            let rows = statement.query_map(params![platform, account], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect()
        })
        .await
    }

    /// `card` got its mark `code` (or it can never get it): it is no longer owed. A mark deferred again
    /// with another state meanwhile stays.
    pub async fn mark_done(&self, card: &str, code: &str) -> Result<(), DbError> {
        let (card, code) = (card.to_owned(), code.to_owned());
        self.run(move |conn, platform, account| {
            conn.execute(
                "DELETE FROM card_marks WHERE platform = ?1 AND robot = ?2 AND card = ?3 AND status = ?4",
                params![platform, account, card, code],
            )
            .map(drop)
        })
        .await
    }

    /// Delete the settled messages (answered, failed or ignored) received before `before_ms`; a message
    /// still `accepted` stays whatever its age. Returns how many rows went.
    pub async fn prune(&self, before_ms: i64) -> Result<usize, DbError> {
        self.run(move |conn, platform, account| {
            conn.execute(
                "DELETE FROM inbound WHERE platform = ?1 AND robot = ?2 AND state != 'accepted' AND received_ms < ?3",
                params![platform, account, before_ms],
            )
        })
        .await
    }

    /// The state of `msg_id`, if recorded (for tests and diagnostics).
    pub async fn state(&self, msg_id: &str) -> Result<Option<String>, DbError> {
        let msg_id = msg_id.to_owned();
        self.run(move |conn, platform, account| {
            conn.query_row(
                "SELECT state FROM inbound WHERE platform = ?1 AND robot = ?2 AND msg_id = ?3",
                params![platform, account, msg_id],
                |row| row.get(0),
            )
            .optional()
        })
        .await
    }
}

/// The `inbound` table, with the columns later versions added.
fn create(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS inbound (
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
             payload TEXT,
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
        ("payload", "TEXT"),
    ] {
        add_column(conn, "inbound", column, declaration)?;
    }
    Ok(())
}

/// A card id derived from the account and message: stable across restarts, so the card is found again.
pub(crate) fn card_id(account: &str, msg_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{account}\n{msg_id}").as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("hearth-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(id: &str, addressed: bool) -> Envelope {
        Envelope {
            id: id.to_owned(),
            conversation: "c1".to_owned(),
            chat: ChatKind::Group,
            sender: "u1".to_owned(),
            sender_nick: "Ann".to_owned(),
            text: "hello".to_owned(),
            addressed,
        }
    }

    #[tokio::test]
    async fn messages_are_deduped_resumed_with_their_payload_and_settled_once() {
        let dir = tempfile::tempdir().unwrap();
        let database = Database::open(&dir.path().join("im.sqlite3")).unwrap();
        let outbox = Outbox::open(&database, "test", "robot").unwrap();
        let job = outbox
            .accept(envelope("m1", true), (), "{\"raw\":1}".to_owned())
            .await
            .unwrap()
            .expect("a new message is a job");
        assert_eq!((job.attempt, job.shown, job.card_created), (1, 0, false));
        assert!(outbox
            .accept(envelope("m1", true), (), String::new())
            .await
            .unwrap()
            .is_none());
        assert!(outbox
            .accept(envelope("m2", false), (), String::new())
            .await
            .unwrap()
            .is_none());
        assert_eq!(outbox.state("m2").await.unwrap().as_deref(), Some("ignored"));
        // Another account of the same platform, and another platform, have their own rows.
        let other = Outbox::open(&database, "test", "robot2").unwrap();
        assert!(other
            .accept(envelope("m1", true), (), String::new())
            .await
            .unwrap()
            .is_some());

        outbox.shown("m1", 42).await.unwrap();
        let unfinished = outbox.resume().await.unwrap();
        assert_eq!(unfinished.len(), 1);
        let row = &unfinished[0];
        assert_eq!(row.envelope, envelope("m1", true));
        assert_eq!(row.payload.as_deref(), Some("{\"raw\":1}"));
        assert_eq!(
            (row.attempt, row.shown, row.card_id.as_str()),
            (2, 42, job.card_id.as_str())
        );

        assert!(outbox.finish("m1", Outcome::Answered, "card finalized").await.unwrap());
        assert!(!outbox.finish("m1", Outcome::Failed, "again").await.unwrap());
        assert_eq!(outbox.state("m1").await.unwrap().as_deref(), Some("answered"));
        assert!(outbox.resume().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn owed_card_marks_stay_until_done_with_their_own_state() {
        let dir = tempfile::tempdir().unwrap();
        let database = Database::open(&dir.path().join("im.sqlite3")).unwrap();
        let outbox = Outbox::open(&database, "test", "robot").unwrap();
        outbox.defer_mark("card-1", CardState::Finished).await.unwrap();
        outbox.defer_mark("card-2", CardState::Failed).await.unwrap();
        let mut owed = outbox.pending_marks().await.unwrap();
        owed.sort();
        let states: Vec<_> = owed
            .iter()
            .map(|(card, code)| (card.as_str(), parse_mark(code)))
            .collect();
        assert_eq!(
            states,
            [
                ("card-1", Some(CardState::Finished)),
                ("card-2", Some(CardState::Failed))
            ]
        );
        // Done with another state than the one owed (it was deferred again meanwhile): still owed.
        outbox.mark_done("card-1", mark_code(CardState::Failed)).await.unwrap();
        assert_eq!(outbox.pending_marks().await.unwrap().len(), 2);
        outbox
            .mark_done("card-1", mark_code(CardState::Finished))
            .await
            .unwrap();
        let left = outbox.pending_marks().await.unwrap();
        assert_eq!(left, [("card-2".to_owned(), mark_code(CardState::Failed).to_owned())]);
        assert!(Outbox::open(&database, "test", "robot2")
            .unwrap()
            .pending_marks()
            .await
            .unwrap()
            .is_empty());
        assert_eq!(parse_mark("9"), None);
    }
}
