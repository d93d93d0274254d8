//! The SQLite backend: one file, one node. rusqlite is blocking, so every call runs on the blocking pool
//! through [`run`], and the connection's std mutex is held only inside that closure, never across an
//! `.await`. Migrations are numbered by `PRAGMA user_version`.

use engine::ChatMessage;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::types::{chat_kind, parse_chat_kind, Arrival, Claim, Lease, Scope, Settlement, Turn, Unfinished};
use crate::audit::record::{AuditRecord, Outcome};
use crate::db::{add_column, now_ms, run, DbError, SharedConnection};
use crate::im::adapter::Envelope;
use crate::skills::calls::{CallStatus, SkillCall};

/// The migrations, in order: the database's `user_version` is how many it has applied.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("migrations/sqlite/0001_init.sql"),
    include_str!("migrations/sqlite/0002_skill_calls.sql"),
    include_str!("migrations/sqlite/0003_leases.sql"),
];

/// Columns older (unversioned) databases may lack, added after the first migration.
const LEGACY_COLUMNS: &[(&str, &str, &str)] = &[
    ("inbound", "sender_id", "TEXT NOT NULL DEFAULT ''"),
    ("inbound", "sender_union_id", "TEXT"),
    ("inbound", "shown_bytes", "INTEGER NOT NULL DEFAULT 0"),
    ("inbound", "payload", "TEXT"),
    ("audit", "msg_id", "TEXT NOT NULL DEFAULT ''"),
];

const AUDIT_COLUMNS: &str =
    "at_ms, platform, conversation_id, session, sender_id, sender_nick, handler, question, answer, first_visible_ms,
     prompt_tokens, completion_tokens, context_turns, outcome, msg_id";

/// A SQLite store.
#[derive(Clone)]
pub(super) struct Sqlite {
    conn: SharedConnection,
}

/// Apply the migrations `conn` lacks, each in its own transaction with its version.
fn migrate(conn: &mut Connection) -> Result<(), rusqlite::Error> {
    let applied: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let version = index as i64 + 1;
        if version <= applied {
            continue;
        }
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        if version == 1 {
            for (table, column, declaration) in LEGACY_COLUMNS {
                add_column(&tx, table, column, declaration)?;
            }
        }
        tx.execute_batch(&format!("PRAGMA user_version = {version}"))?;
        tx.commit()?;
    }
    Ok(())
}

impl Sqlite {
    pub(super) fn open(conn: SharedConnection) -> Result<Self, DbError> {
        migrate(&mut conn.lock().unwrap_or_else(|p| p.into_inner()))?;
        Ok(Self { conn })
    }

    pub(super) async fn schema_version(&self) -> Result<i64, DbError> {
        run(&self.conn, |conn| {
            conn.query_row("PRAGMA user_version", [], |row| row.get(0))
        })
        .await
    }

    pub(super) async fn accept(&self, scope: Scope, arrival: Arrival, lease: Lease) -> Result<bool, DbError> {
        run(&self.conn, move |conn| {
            let Arrival {
                envelope,
                card_id,
                ignore,
                payload,
            } = arrival;
            let inserted = conn.execute(
                "INSERT OR IGNORE INTO inbound (platform, robot, msg_id, message_id, conversation_id, conversation_type,
                     sender_staff_id, sender_nick, text, at_bot, out_track_id, state, attempts, received_ms, sender_id,
                     payload, owner, lease_until_ms)
                 VALUES (?1, ?2, ?3, '', ?4, ?5, '', ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                params![
                    scope.platform,
                    scope.account,
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
                    lease.node,
                    lease.until_ms,
                ],
            )?;
            Ok(inserted == 1)
        })
        .await
    }

    pub(super) async fn claim(&self, scope: Scope, lease: Lease, claim: Claim) -> Result<Vec<Unfinished>, DbError> {
        run(&self.conn, move |conn| {
            let (mine_too, limit) = match claim {
                Claim::OnStart => (true, i64::MAX),
                Claim::Expired(limit) => (false, i64::try_from(limit).unwrap_or(i64::MAX)),
            };
            // One statement: SQLite runs it alone, so no other claim sees its rows half taken.
            let mut claimed = {
                let mut statement = conn.prepare(
                    "UPDATE inbound SET attempts = attempts + 1, owner = ?3, lease_until_ms = ?4
                     WHERE platform = ?1 AND robot = ?2 AND msg_id IN (
                         SELECT msg_id FROM inbound
                         WHERE platform = ?1 AND robot = ?2 AND state = 'accepted'
                           AND (lease_until_ms < ?5 OR (?6 AND owner = ?3))
                         ORDER BY received_ms LIMIT ?7)
                     RETURNING msg_id, conversation_id, conversation_type, sender_id, sender_staff_id, sender_nick,
                               text, at_bot, out_track_id, attempts, card_created, shown_bytes, payload, received_ms",
                )?;
                let rows = statement.query_map(
                    params![
                        scope.platform,
                        scope.account,
                        lease.node,
                        lease.until_ms,
                        now_ms(),
                        mine_too,
                        limit
                    ],
                    |row| {
                        let kind: String = row.get(2)?;
                        let (sender_id, staff_id): (String, String) = (row.get(3)?, row.get(4)?);
                        let unfinished = Unfinished {
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
                        };
                        Ok((row.get::<_, i64>(13)?, unfinished))
                    },
                )?;
                rows.collect::<Result<Vec<_>, _>>()?
            };
            claimed.sort_by_key(|(received, _)| *received);
            Ok(claimed.into_iter().map(|(_, row)| row).collect())
        })
        .await
    }

    pub(super) async fn renew(&self, scope: Scope, lease: Lease, msg_ids: Vec<String>) -> Result<usize, DbError> {
        let ids = serde_json::to_string(&msg_ids).unwrap_or_else(|_| "[]".to_owned());
        run(&self.conn, move |conn| {
            conn.execute(
                "UPDATE inbound SET lease_until_ms = ?4
                 WHERE platform = ?1 AND robot = ?2 AND owner = ?3 AND state = 'accepted'
                   AND msg_id IN (SELECT value FROM json_each(?5))",
                params![scope.platform, scope.account, lease.node, lease.until_ms, ids],
            )
        })
        .await
    }

    pub(super) async fn release(&self, scope: Scope, node: String) -> Result<usize, DbError> {
        run(&self.conn, move |conn| {
            conn.execute(
                "UPDATE inbound SET lease_until_ms = 0
                 WHERE platform = ?1 AND robot = ?2 AND owner = ?3 AND state = 'accepted'",
                params![scope.platform, scope.account, node],
            )
        })
        .await
    }

    pub(super) async fn card_created(&self, scope: Scope, msg_id: String) -> Result<(), DbError> {
        run(&self.conn, move |conn| {
            conn.execute(
                "UPDATE inbound SET card_created = 1 WHERE platform = ?1 AND robot = ?2 AND msg_id = ?3",
                params![scope.platform, scope.account, msg_id],
            )
            .map(drop)
        })
        .await
    }

    pub(super) async fn shown(&self, scope: Scope, msg_id: String, shown: i64) -> Result<(), DbError> {
        run(&self.conn, move |conn| {
            conn.execute(
                "UPDATE inbound SET shown_bytes = MAX(shown_bytes, ?4) WHERE platform = ?1 AND robot = ?2 AND msg_id = ?3",
                params![scope.platform, scope.account, msg_id, shown],
            )
            .map(drop)
        })
        .await
    }

    pub(super) async fn settle(&self, scope: Scope, msg_id: String, settlement: Settlement) -> Result<bool, DbError> {
        run(&self.conn, move |conn| {
            // It reads, then writes: taking the write lock first means another process settling the same
            // message waits for this one (busy timeout) instead of failing on a stale read.
            let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
            let open = tx
                .query_row(
                    "SELECT 1 FROM inbound WHERE platform = ?1 AND robot = ?2 AND msg_id = ?3 AND state = 'accepted'",
                    params![scope.platform, scope.account, msg_id],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !open {
                return Ok(false);
            }
            if let Some(record) = &settlement.record {
                insert_record(&tx, record)?;
            }
            if let Some(turn) = &settlement.turn {
                append_turn(&tx, turn)?;
            }
            tx.execute(
                "UPDATE inbound SET state = ?4, detail = ?5, finished_ms = ?6
                 WHERE platform = ?1 AND robot = ?2 AND msg_id = ?3 AND state = 'accepted'",
                params![
                    scope.platform,
                    scope.account,
                    msg_id,
                    settlement.outcome.as_str(),
                    settlement.detail,
                    now_ms()
                ],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    pub(super) async fn defer_mark(&self, scope: Scope, card: String, code: String) -> Result<(), DbError> {
        run(&self.conn, move |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO card_marks (platform, robot, card, status, added_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![scope.platform, scope.account, card, code, now_ms()],
            )
            .map(drop)
        })
        .await
    }

    pub(super) async fn pending_marks(&self, scope: Scope) -> Result<Vec<(String, String)>, DbError> {
        run(&self.conn, move |conn| {
            let mut statement = conn
                .prepare("SELECT card, status FROM card_marks WHERE platform = ?1 AND robot = ?2 ORDER BY added_ms")?;
            let rows = statement.query_map(params![scope.platform, scope.account], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?;
            rows.collect()
        })
        .await
    }

    pub(super) async fn mark_done(&self, scope: Scope, card: String, code: String) -> Result<(), DbError> {
        run(&self.conn, move |conn| {
            conn.execute(
                "DELETE FROM card_marks WHERE platform = ?1 AND robot = ?2 AND card = ?3 AND status = ?4",
                params![scope.platform, scope.account, card, code],
            )
            .map(drop)
        })
        .await
    }

    pub(super) async fn prune_messages(&self, scope: Scope, before_ms: i64) -> Result<usize, DbError> {
        run(&self.conn, move |conn| {
            conn.execute(
                "DELETE FROM inbound WHERE platform = ?1 AND robot = ?2 AND state != 'accepted' AND received_ms < ?3",
                params![scope.platform, scope.account, before_ms],
            )
        })
        .await
    }

    pub(super) async fn state(&self, scope: Scope, msg_id: String) -> Result<Option<String>, DbError> {
        run(&self.conn, move |conn| {
            conn.query_row(
                "SELECT state FROM inbound WHERE platform = ?1 AND robot = ?2 AND msg_id = ?3",
                params![scope.platform, scope.account, msg_id],
                |row| row.get(0),
            )
            .optional()
        })
        .await
    }

    pub(super) async fn history(&self, key: String, idle_ms: i64) -> Result<Vec<ChatMessage>, DbError> {
        run(&self.conn, move |conn| {
            let last: Option<i64> = conn
                .query_row("SELECT last_ms FROM sessions WHERE key = ?1", params![key], |row| {
                    row.get(0)
                })
                .optional()?;
            match last {
                None => return Ok(Vec::new()),
                Some(last) if now_ms() - last > idle_ms => {
                    clear_session(conn, &key)?;
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

    pub(super) async fn append_turn(&self, turn: Turn) -> Result<(), DbError> {
        run(&self.conn, move |conn| {
            let tx = conn.unchecked_transaction()?;
            append_turn(&tx, &turn)?;
            tx.commit()
        })
        .await
    }

    pub(super) async fn reset_session(&self, key: String) -> Result<(), DbError> {
        run(&self.conn, move |conn| clear_session(conn, &key)).await
    }

    pub(super) async fn prune_sessions(&self, cutoff_ms: i64) -> Result<usize, DbError> {
        run(&self.conn, move |conn| {
            let tx = conn.unchecked_transaction()?;
            tx.execute(
                "DELETE FROM session_turns WHERE key IN (SELECT key FROM sessions WHERE last_ms < ?1)",
                params![cutoff_ms],
            )?;
            let removed = tx.execute("DELETE FROM sessions WHERE last_ms < ?1", params![cutoff_ms])?;
            tx.commit()?;
            Ok(removed)
        })
        .await
    }

    pub(super) async fn insert_record(&self, record: AuditRecord) -> Result<(), DbError> {
        run(&self.conn, move |conn| insert_record(conn, &record)).await
    }

    pub(super) async fn records_since(&self, since_ms: i64) -> Result<Vec<AuditRecord>, DbError> {
        run(&self.conn, move |conn| records_since(conn, since_ms)).await
    }

    pub(super) async fn insert_skill_call(&self, call: SkillCall) -> Result<(), DbError> {
        run(&self.conn, move |conn| {
            conn.execute(
                "INSERT INTO skill_calls (at_ms, platform, msg_id, sender_id, skill, status, http_status, latency_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    call.at_ms,
                    call.platform,
                    call.msg_id,
                    call.sender_id,
                    call.skill,
                    call.status.as_str(),
                    call.http_status,
                    call.latency_ms
                ],
            )
            .map(drop)
        })
        .await
    }

    pub(super) async fn skill_calls_since(&self, since_ms: i64) -> Result<Vec<SkillCall>, DbError> {
        run(&self.conn, move |conn| {
            let mut statement = conn.prepare(
                "SELECT at_ms, platform, msg_id, sender_id, skill, status, http_status, latency_ms
                 FROM skill_calls WHERE at_ms >= ?1 ORDER BY id",
            )?;
            let rows = statement.query_map(params![since_ms], |row| {
                let status: String = row.get(5)?;
                Ok(SkillCall {
                    at_ms: row.get(0)?,
                    platform: row.get(1)?,
                    msg_id: row.get(2)?,
                    sender_id: row.get(3)?,
                    skill: row.get(4)?,
                    status: CallStatus::parse(&status).ok_or_else(|| {
                        rusqlite::Error::FromSqlConversionFailure(
                            5,
                            rusqlite::types::Type::Text,
                            format!("unknown call status {status:?}").into(),
                        )
                    })?,
                    http_status: row.get(6)?,
                    latency_ms: row.get(7)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    pub(super) async fn recent_records(&self, limit: i64) -> Result<Vec<AuditRecord>, DbError> {
        run(&self.conn, move |conn| {
            query_records(
                conn,
                &format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id DESC LIMIT ?1"),
                limit,
            )
        })
        .await
    }

    pub(super) async fn prune_records(&self, before_ms: i64) -> Result<usize, DbError> {
        run(&self.conn, move |conn| {
            conn.execute("DELETE FROM audit WHERE at_ms < ?1", params![before_ms])
        })
        .await
    }
}

/// The audit records since `since_ms` of the database `conn`, oldest first (also for `hearth audit
/// export`, which reads a file without migrating it).
pub(crate) fn records_since(conn: &Connection, since_ms: i64) -> Result<Vec<AuditRecord>, rusqlite::Error> {
    query_records(
        conn,
        &format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE at_ms >= ?1 ORDER BY id"),
        since_ms,
    )
}

/// Bring the database `conn` up to date (for readers that open a file themselves).
pub(crate) fn migrate_connection(conn: &mut Connection) -> Result<(), rusqlite::Error> {
    migrate(conn)
}

/// Run `sql` (selecting [`AUDIT_COLUMNS`], with one integer parameter) into records.
fn query_records(conn: &Connection, sql: &str, parameter: i64) -> Result<Vec<AuditRecord>, rusqlite::Error> {
    let mut statement = conn.prepare(sql)?;
    let rows = statement.query_map(params![parameter], |row| {
        Ok(AuditRecord {
            at_ms: row.get(0)?,
            platform: row.get(1)?,
            conversation_id: row.get(2)?,
            session: row.get(3)?,
            sender_id: row.get(4)?,
            sender_nick: row.get(5)?,
            handler: row.get(6)?,
            question: row.get(7)?,
            answer: row.get(8)?,
            first_visible_ms: row.get(9)?,
            prompt_tokens: row.get(10)?,
            completion_tokens: row.get(11)?,
            context_turns: row.get(12)?,
            outcome: row.get(13)?,
            msg_id: row.get(14)?,
        })
    })?;
    rows.collect()
}

/// Insert `record` as it is (already masked), as part of the caller's transaction.
fn insert_record(conn: &Connection, record: &AuditRecord) -> Result<(), rusqlite::Error> {
    conn.execute(
        &format!(
            "INSERT INTO audit ({AUDIT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
        ),
        params![
            record.at_ms,
            record.platform,
            record.conversation_id,
            record.session,
            record.sender_id,
            record.sender_nick,
            record.handler,
            record.question,
            record.answer,
            record.first_visible_ms,
            record.prompt_tokens,
            record.completion_tokens,
            record.context_turns,
            record.outcome,
            record.msg_id,
        ],
    )
    .map(drop)
}

/// Add `turn` to its session (starting it if needed), as part of the caller's transaction.
fn append_turn(conn: &Connection, turn: &Turn) -> Result<(), rusqlite::Error> {
    let now = now_ms();
    conn.execute(
        "INSERT INTO sessions (key, started_ms, last_ms) VALUES (?1, ?2, ?2)
         ON CONFLICT (key) DO UPDATE SET last_ms = excluded.last_ms",
        params![turn.session, now],
    )?;
    for (role, content) in [("user", &turn.question), ("assistant", &turn.answer)] {
        conn.execute(
            "INSERT INTO session_turns (key, role, content, at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![turn.session, role, content, now],
        )?;
    }
    Ok(())
}

fn clear_session(conn: &Connection, key: &str) -> Result<(), rusqlite::Error> {
    conn.execute("DELETE FROM session_turns WHERE key = ?1", params![key])?;
    conn.execute("DELETE FROM sessions WHERE key = ?1", params![key])?;
    Ok(())
}
