//! The PostgreSQL backend: a server the operator runs, shared by every node of one bot. Connections come
//! from a deadpool-postgres pool with bounded waits, so an unreachable server is an error after
//! [`WAIT`], never a hang. Migrations are recorded in `hearth_migrations` and applied under a
//! transaction-scoped advisory lock, so nodes that start together apply each one once.
//!
//! Dedupe across nodes rests on the primary key `(platform, robot, msg_id)`: `INSERT … ON CONFLICT DO
//! NOTHING` records a message once whichever node receives it. A message closes once because settling
//! updates only an `accepted` row, and that `UPDATE` holds the row's lock until its transaction ends.

use std::time::Duration;

use deadpool_postgres::{Config, GenericClient, ManagerConfig, Pool, PoolConfig, RecyclingMethod, Runtime, Timeouts};
use engine::ChatMessage;
use tokio_postgres::{NoTls, Row};

use super::types::{chat_kind, parse_chat_kind, Arrival, Claim, Lease, Scope, Settlement, Turn, Unfinished};
use crate::audit::record::{AuditRecord, Handler, Outcome};
use crate::db::{now_ms, DbError};
use crate::im::adapter::Envelope;
use crate::skills::calls::{CallStatus, SkillCall};

/// The migrations, in order; `hearth_migrations` records each one applied.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("migrations/postgres/0001_init.sql"),
    include_str!("migrations/postgres/0002_skill_calls.sql"),
    include_str!("migrations/postgres/0003_leases.sql"),
];

/// The advisory lock migrations hold ("hearth" in ASCII).
const MIGRATION_LOCK: i64 = 0x6865_6172_7468;

/// Most connections one node holds.
const POOL_SIZE: usize = 16;

/// Longest wait for a connection (from the pool, or a new one to the server) before a call fails.
const WAIT: Duration = Duration::from_secs(5);

const AUDIT_COLUMNS: &str =
    "at_ms, platform, conversation_id, session, sender_id, sender_nick, handler, question, answer, first_visible_ms,
     prompt_tokens, completion_tokens, context_turns, outcome, msg_id";

/// A PostgreSQL store.
#[derive(Clone)]
pub(super) struct Postgres {
    pool: Pool,
}

impl Postgres {
    /// Connect to `url` and bring the schema up to date.
    pub(super) async fn open(url: &str) -> Result<Self, DbError> {
        // Parsed here first, so a malformed URL is reported as such rather than as a failed connection.
        url.parse::<tokio_postgres::Config>()
            .map_err(|err| DbError::Locator(format!("invalid PostgreSQL URL: {err}")))?;
        let mut config = Config::new();
        config.url = Some(url.to_owned());
        config.manager = Some(ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        });
        config.pool = Some(PoolConfig {
            max_size: POOL_SIZE,
            timeouts: Timeouts {
                wait: Some(WAIT),
                create: Some(WAIT),
                recycle: Some(WAIT),
            },
            ..PoolConfig::default()
        });
        let pool = config
            .create_pool(Some(Runtime::Tokio1), NoTls)
            .map_err(|err| DbError::Locator(err.to_string()))?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        Ok(self.pool.get().await?)
    }

    async fn migrate(&self) -> Result<(), DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS hearth_migrations (version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL)",
        )
        .await?;
        let applied: i64 = tx
            .query_one("SELECT COALESCE(MAX(version), 0) FROM hearth_migrations", &[])
            .await?
            .get(0);
        for (index, sql) in MIGRATIONS.iter().enumerate() {
            let version = index as i64 + 1;
            if version <= applied {
                continue;
            }
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO hearth_migrations (version, applied_ms) VALUES ($1, $2)",
                &[&version, &now_ms()],
            )
            .await?;
            tracing::info!(version, "PostgreSQL store migrated");
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn schema_version(&self) -> Result<i64, DbError> {
        let client = self.client().await?;
        Ok(client
            .query_one("SELECT COALESCE(MAX(version), 0) FROM hearth_migrations", &[])
            .await?
            .get(0))
    }

    pub(super) async fn accept(&self, scope: Scope, arrival: Arrival, lease: Lease) -> Result<bool, DbError> {
        let client = self.client().await?;
        let Arrival {
            envelope,
            card_id,
            ignore,
            payload,
        } = arrival;
        let state = if ignore { Outcome::Ignored.as_str() } else { "accepted" };
        let attempts: i32 = if ignore { 0 } else { 1 };
        let inserted = client
            .execute(
                "INSERT INTO inbound (platform, robot, msg_id, conversation_id, conversation_type, sender_id,
                     sender_nick, text, at_bot, out_track_id, state, attempts, received_ms, payload, owner,
                     lease_until_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
                 ON CONFLICT (platform, robot, msg_id) DO NOTHING",
                &[
                    &scope.platform,
                    &scope.account,
                    &envelope.id,
                    &envelope.conversation,
                    &chat_kind(envelope.chat),
                    &envelope.sender,
                    &envelope.sender_nick,
                    &envelope.text,
                    &envelope.addressed,
                    &card_id,
                    &state,
                    &attempts,
                    &now_ms(),
                    &payload,
                    &lease.node,
                    &lease.until_ms,
                ],
            )
            .await?;
        Ok(inserted == 1)
    }

    pub(super) async fn claim(&self, scope: Scope, lease: Lease, claim: Claim) -> Result<Vec<Unfinished>, DbError> {
        let client = self.client().await?;
        let (mine_too, limit) = match claim {
            Claim::OnStart => (true, i64::MAX),
            Claim::Expired(limit) => (false, i64::try_from(limit).unwrap_or(i64::MAX)),
        };
        let rows = client
            .query(
                "UPDATE inbound SET attempts = attempts + 1, owner = $3, lease_until_ms = $4
                 WHERE (platform, robot, msg_id) IN (
                     SELECT platform, robot, msg_id FROM inbound
                     WHERE platform = $1 AND robot = $2 AND state = 'accepted'
                       AND (lease_until_ms < $5 OR ($6 AND owner = $3))
                     ORDER BY received_ms LIMIT $7
                     FOR UPDATE SKIP LOCKED)
                 RETURNING msg_id, conversation_id, conversation_type, sender_id, sender_nick, text, at_bot,
                           out_track_id, attempts, card_created, shown_bytes, payload, received_ms",
                &[
                    &scope.platform,
                    &scope.account,
                    &lease.node,
                    &lease.until_ms,
                    &now_ms(),
                    &mine_too,
                    &limit,
                ],
            )
            .await?;
        let mut unfinished: Vec<(i64, Unfinished)> = rows
            .iter()
            .map(|row| {
                let kind: String = row.get(2);
                let text: String = row.get(5);
                let attempts: i32 = row.get(8);
                let unfinished = Unfinished {
                    envelope: Envelope {
                        id: row.get(0),
                        conversation: row.get(1),
                        chat: parse_chat_kind(&kind),
                        sender: row.get(3),
                        sender_nick: row.get(4),
                        text: text.trim().to_owned(),
                        addressed: row.get(6),
                    },
                    card_id: row.get(7),
                    attempt: u32::try_from(attempts).unwrap_or(0),
                    card_created: row.get(9),
                    shown: usize::try_from(row.get::<_, i64>(10)).unwrap_or(0),
                    payload: row.get(11),
                };
                (row.get(12), unfinished)
            })
            .collect();
        unfinished.sort_by_key(|(received, _)| *received);
        Ok(unfinished.into_iter().map(|(_, row)| row).collect())
    }

    pub(super) async fn renew(&self, scope: Scope, lease: Lease, msg_ids: Vec<String>) -> Result<usize, DbError> {
        let client = self.client().await?;
        let renewed = client
            .execute(
                "UPDATE inbound SET lease_until_ms = $4
                 WHERE platform = $1 AND robot = $2 AND owner = $3 AND state = 'accepted' AND msg_id = ANY($5)",
                &[&scope.platform, &scope.account, &lease.node, &lease.until_ms, &msg_ids],
            )
            .await?;
        Ok(usize::try_from(renewed).unwrap_or(usize::MAX))
    }

    pub(super) async fn release(&self, scope: Scope, node: String) -> Result<usize, DbError> {
        let client = self.client().await?;
        let released = client
            .execute(
                "UPDATE inbound SET lease_until_ms = 0
                 WHERE platform = $1 AND robot = $2 AND owner = $3 AND state = 'accepted'",
                &[&scope.platform, &scope.account, &node],
            )
            .await?;
        Ok(usize::try_from(released).unwrap_or(usize::MAX))
    }

    pub(super) async fn card_created(&self, scope: Scope, msg_id: String) -> Result<(), DbError> {
        self.client()
            .await?
            .execute(
                "UPDATE inbound SET card_created = TRUE WHERE platform = $1 AND robot = $2 AND msg_id = $3",
                &[&scope.platform, &scope.account, &msg_id],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn shown(&self, scope: Scope, msg_id: String, shown: i64) -> Result<(), DbError> {
        self.client()
            .await?
            .execute(
                "UPDATE inbound SET shown_bytes = GREATEST(shown_bytes, $4)
                 WHERE platform = $1 AND robot = $2 AND msg_id = $3",
                &[&scope.platform, &scope.account, &msg_id, &shown],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn settle(&self, scope: Scope, msg_id: String, settlement: Settlement) -> Result<bool, DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let closed = tx
            .execute(
                "UPDATE inbound SET state = $4, detail = $5, finished_ms = $6
                 WHERE platform = $1 AND robot = $2 AND msg_id = $3 AND state = 'accepted'",
                &[
                    &scope.platform,
                    &scope.account,
                    &msg_id,
                    &settlement.outcome.as_str(),
                    &settlement.detail,
                    &now_ms(),
                ],
            )
            .await?;
        if closed != 1 {
            return Ok(false);
        }
        if let Some(record) = &settlement.record {
            insert_record(&tx, record).await?;
        }
        if let Some(turn) = &settlement.turn {
            append_turn(&tx, turn).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub(super) async fn defer_mark(&self, scope: Scope, card: String, code: String) -> Result<(), DbError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO card_marks (platform, robot, card, status, added_ms) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (platform, robot, card) DO UPDATE SET status = EXCLUDED.status, added_ms = EXCLUDED.added_ms",
                &[&scope.platform, &scope.account, &card, &code, &now_ms()],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn pending_marks(&self, scope: Scope) -> Result<Vec<(String, String)>, DbError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT card, status FROM card_marks WHERE platform = $1 AND robot = $2 ORDER BY added_ms",
                &[&scope.platform, &scope.account],
            )
            .await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    pub(super) async fn mark_done(&self, scope: Scope, card: String, code: String) -> Result<(), DbError> {
        self.client()
            .await?
            .execute(
                "DELETE FROM card_marks WHERE platform = $1 AND robot = $2 AND card = $3 AND status = $4",
                &[&scope.platform, &scope.account, &card, &code],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn prune_messages(&self, scope: Scope, before_ms: i64) -> Result<usize, DbError> {
        let removed = self
            .client()
            .await?
            .execute(
                "DELETE FROM inbound WHERE platform = $1 AND robot = $2 AND state <> 'accepted' AND received_ms < $3",
                &[&scope.platform, &scope.account, &before_ms],
            )
            .await?;
        Ok(removed as usize)
    }

    pub(super) async fn state(&self, scope: Scope, msg_id: String) -> Result<Option<String>, DbError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT state FROM inbound WHERE platform = $1 AND robot = $2 AND msg_id = $3",
                &[&scope.platform, &scope.account, &msg_id],
            )
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    pub(super) async fn history(&self, key: String, idle_ms: i64) -> Result<Vec<ChatMessage>, DbError> {
        let mut client = self.client().await?;
        let last: Option<i64> = client
            .query_opt("SELECT last_ms FROM sessions WHERE key = $1", &[&key])
            .await?
            .map(|row| row.get(0));
        match last {
            None => return Ok(Vec::new()),
            Some(last) if now_ms() - last > idle_ms => {
                let tx = client.transaction().await?;
                clear_session(&tx, &key).await?;
                tx.commit().await?;
                return Ok(Vec::new());
            }
            Some(_) => {}
        }
        let rows = client
            .query(
                "SELECT role, content FROM session_turns WHERE key = $1 ORDER BY id",
                &[&key],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| ChatMessage {
                role: row.get(0),
                content: row.get(1),
            })
            .collect())
    }

    pub(super) async fn append_turn(&self, turn: Turn) -> Result<(), DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        append_turn(&tx, &turn).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn reset_session(&self, key: String) -> Result<(), DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        clear_session(&tx, &key).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn prune_sessions(&self, cutoff_ms: i64) -> Result<usize, DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "DELETE FROM session_turns WHERE key IN (SELECT key FROM sessions WHERE last_ms < $1)",
            &[&cutoff_ms],
        )
        .await?;
        let removed = tx
            .execute("DELETE FROM sessions WHERE last_ms < $1", &[&cutoff_ms])
            .await?;
        tx.commit().await?;
        Ok(removed as usize)
    }

    pub(super) async fn insert_record(&self, record: AuditRecord) -> Result<(), DbError> {
        let client = self.client().await?;
        insert_record(&client, &record).await
    }

    pub(super) async fn records_since(&self, since_ms: i64) -> Result<Vec<AuditRecord>, DbError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE at_ms >= $1 ORDER BY id"),
                &[&since_ms],
            )
            .await?;
        rows.iter().map(record).collect()
    }

    pub(super) async fn insert_skill_call(&self, call: SkillCall) -> Result<(), DbError> {
        let http_status = call.http_status.map(i32::from);
        self.client()
            .await?
            .execute(
                "INSERT INTO skill_calls (at_ms, platform, msg_id, sender_id, skill, status, http_status, latency_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &call.at_ms,
                    &call.platform,
                    &call.msg_id,
                    &call.sender_id,
                    &call.skill,
                    &call.status.as_str(),
                    &http_status,
                    &call.latency_ms,
                ],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn skill_calls_since(&self, since_ms: i64) -> Result<Vec<SkillCall>, DbError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT at_ms, platform, msg_id, sender_id, skill, status, http_status, latency_ms
                 FROM skill_calls WHERE at_ms >= $1 ORDER BY id",
                &[&since_ms],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let status: String = row.get(5);
                let http_status: Option<i32> = row.get(6);
                Ok(SkillCall {
                    at_ms: row.get(0),
                    platform: row.get(1),
                    msg_id: row.get(2),
                    sender_id: row.get(3),
                    skill: row.get(4),
                    status: CallStatus::parse(&status)
                        .ok_or_else(|| DbError::Decode(format!("skill_calls: unknown call status {status:?}")))?,
                    http_status: http_status.and_then(|s| u16::try_from(s).ok()),
                    latency_ms: row.get(7),
                })
            })
            .collect()
    }

    pub(super) async fn recent_records(&self, limit: i64) -> Result<Vec<AuditRecord>, DbError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id DESC LIMIT $1"),
                &[&limit],
            )
            .await?;
        rows.iter().map(record).collect()
    }

    pub(super) async fn prune_records(&self, before_ms: i64) -> Result<usize, DbError> {
        let removed = self
            .client()
            .await?
            .execute("DELETE FROM audit WHERE at_ms < $1", &[&before_ms])
            .await?;
        Ok(removed as usize)
    }
}

/// An audit record from a row selecting [`AUDIT_COLUMNS`].
fn record(row: &Row) -> Result<AuditRecord, DbError> {
    let handler: String = row.get(6);
    let outcome: String = row.get(13);
    Ok(AuditRecord {
        at_ms: row.get(0),
        platform: row.get(1),
        conversation_id: row.get(2),
        session: row.get(3),
        sender_id: row.get(4),
        sender_nick: row.get(5),
        handler: Handler::from(handler.as_str()),
        question: row.get(7),
        answer: row.get(8),
        first_visible_ms: row.get(9),
        prompt_tokens: row.get(10),
        completion_tokens: row.get(11),
        context_turns: row.get(12),
        outcome: outcome
            .parse()
            .map_err(|err| DbError::Decode(format!("audit: {err}")))?,
        msg_id: row.get(14),
    })
}

async fn insert_record(client: &impl GenericClient, record: &AuditRecord) -> Result<(), DbError> {
    client
        .execute(
            &format!(
                "INSERT INTO audit ({AUDIT_COLUMNS})
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
            ),
            &[
                &record.at_ms,
                &record.platform,
                &record.conversation_id,
                &record.session,
                &record.sender_id,
                &record.sender_nick,
                &record.handler.to_string(),
                &record.question,
                &record.answer,
                &record.first_visible_ms,
                &record.prompt_tokens,
                &record.completion_tokens,
                &record.context_turns,
                &record.outcome.as_str(),
                &record.msg_id,
            ],
        )
        .await?;
    Ok(())
}

async fn append_turn(client: &impl GenericClient, turn: &Turn) -> Result<(), DbError> {
    let now = now_ms();
    client
        .execute(
            "INSERT INTO sessions (key, started_ms, last_ms) VALUES ($1, $2, $2)
             ON CONFLICT (key) DO UPDATE SET last_ms = EXCLUDED.last_ms",
            &[&turn.session, &now],
        )
        .await?;
    for (role, content) in [("user", &turn.question), ("assistant", &turn.answer)] {
        client
            .execute(
                "INSERT INTO session_turns (key, role, content, at_ms) VALUES ($1, $2, $3, $4)",
                &[&turn.session, &role, content, &now],
            )
            .await?;
    }
    Ok(())
}

async fn clear_session(client: &impl GenericClient, key: &str) -> Result<(), DbError> {
    client
        .execute("DELETE FROM session_turns WHERE key = $1", &[&key])
        .await?;
    client.execute("DELETE FROM sessions WHERE key = $1", &[&key]).await?;
    Ok(())
}
