//! The audit of HTTP skill calls: one `skill_calls` row per call (who, which skill, how it ended, the
//! endpoint's HTTP status, the latency), in the connector's database beside the `audit` table. Neither the
//! URL nor any header is stored, so no secret reaches the disk.

use rusqlite::{params, Connection};

use super::http::CallStatus;
use crate::db::{run, DbError, SharedConnection};

/// One call, as audited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkillCall {
    pub at_ms: i64,
    pub platform: String,
    /// The message that led to the call.
    pub msg_id: String,
    pub sender_id: String,
    pub skill: String,
    pub status: CallStatus,
    /// The endpoint's status when it answered.
    pub http_status: Option<u16>,
    pub latency_ms: i64,
}

/// Create the `skill_calls` table if missing.
pub(crate) fn create(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS skill_calls (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             at_ms INTEGER NOT NULL,
             platform TEXT NOT NULL,
             msg_id TEXT NOT NULL,
             sender_id TEXT NOT NULL,
             skill TEXT NOT NULL,
             status TEXT NOT NULL,
             http_status INTEGER,
             latency_ms INTEGER NOT NULL
         );
         CREATE INDEX IF NOT EXISTS skill_calls_at ON skill_calls (at_ms);",
    )
}

/// The call log of one database (see [`crate::audit::AuditLog::calls`]).
#[derive(Clone)]
pub struct CallLog {
    conn: SharedConnection,
}

impl CallLog {
    /// The log in `conn`'s database, whose table [`create`] made.
    pub(crate) fn new(conn: SharedConnection) -> Self {
        Self { conn }
    }

    /// Store `call`.
    pub async fn record(&self, call: SkillCall) -> Result<(), DbError> {
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

    /// The calls since `since_ms`, oldest first.
    pub async fn since(&self, since_ms: i64) -> Result<Vec<SkillCall>, DbError> {
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
}
