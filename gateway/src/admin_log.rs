//! The admin audit log: one row per state-changing admin action (a model switch, a skills reload), naming
//! the credential that asked (`admin_token`, or a `[[server.keys]]` entry's `name`), the action and its
//! target, and how it ended. `hearth serve` keeps it in SQLite in the data directory
//! (`[data] dir`/[`DATABASE_FILE`]) whenever the admin API is on; `GET /admin/audit` reads it back.
//!
//! Unlike the IM audit log ([`crate::audit`]), which records messages, this one records what operators
//! did to the running server. An admin route that changes state refuses to act without it (see
//! [`crate::admin`]), so no change goes unrecorded.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

use crate::db::{run, DbError, SharedConnection};

/// The database file `hearth serve` keeps in the data directory.
pub const DATABASE_FILE: &str = "hearth.sqlite3";

/// A state-changing admin action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminAction {
    /// `POST /admin/models/active`: the target is the model asked for.
    SwitchModel,
    /// `POST /admin/skills/reload`.
    ReloadSkills,
}

/// How an admin action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminOutcome {
    /// It took effect.
    Done,
    /// It was refused as asked (an unknown model, a `[skills]` section that does not validate); nothing
    /// changed.
    Refused,
    /// It failed on the server's side (a model file that does not load); nothing changed.
    Failed,
}

macro_rules! stored_as_text {
    ($type:ty, $what:literal, $($variant:ident => $name:literal),+ $(,)?) => {
        impl $type {
            /// Every value.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The name stored in SQLite and shown by `GET /admin/audit`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name),+
                }
            }
        }

        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $type {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|value| value.as_str() == text)
                    .ok_or_else(|| format!("unknown {} {text:?}", $what))
            }
        }

        impl ToSql for $type {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $type {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                value.as_str()?.parse().map_err(|e: String| FromSqlError::Other(e.into()))
            }
        }
    };
}

stored_as_text!(AdminAction, "admin action", SwitchModel => "switch_model", ReloadSkills => "reload_skills");
stored_as_text!(AdminOutcome, "admin outcome", Done => "done", Refused => "refused", Failed => "failed");

/// One admin action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRecord {
    /// When it was asked for (Unix ms).
    pub at_ms: i64,
    /// The credential's name: `admin_token`, or a `[[server.keys]]` entry's `name`.
    pub caller: String,
    pub action: AdminAction,
    /// What it acted on (the model of a switch); empty when the action has no target.
    pub target: String,
    pub outcome: AdminOutcome,
    /// What came of it: the previous model of a switch, the skills now live, or why it was refused or failed.
    pub detail: String,
}

/// The admin audit log of one database.
#[derive(Clone)]
pub struct AdminLog {
    conn: SharedConnection,
}

impl fmt::Debug for AdminLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminLog").finish_non_exhaustive()
    }
}

/// Why the admin audit log could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the admin audit log {path}: {source}")]
pub struct OpenError {
    path: String,
    source: rusqlite::Error,
}

const COLUMNS: &str = "at_ms, caller, action, target, outcome, detail";

impl AdminLog {
    /// The log in the SQLite database at `path` (created, with its table, if missing).
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let error = |source| OpenError {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(error)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(error)?;
        Self::with_connection(Arc::new(Mutex::new(conn))).map_err(error)
    }

    /// The log in `conn`'s database (its table created if missing).
    pub fn with_connection(conn: SharedConnection) -> Result<Self, rusqlite::Error> {
        conn.lock().unwrap_or_else(|p| p.into_inner()).execute_batch(
            "CREATE TABLE IF NOT EXISTS admin_audit (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 at_ms INTEGER NOT NULL,
                 caller TEXT NOT NULL,
                 action TEXT NOT NULL,
                 target TEXT NOT NULL,
                 outcome TEXT NOT NULL,
                 detail TEXT NOT NULL
             );",
        )?;
        Ok(Self { conn })
    }

    /// Store `record`.
    pub async fn record(&self, record: AdminRecord) -> Result<(), DbError> {
        run(&self.conn, move |conn| {
            conn.execute(
                &format!("INSERT INTO admin_audit ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
                params![
                    record.at_ms,
                    record.caller,
                    record.action,
                    record.target,
                    record.outcome,
                    record.detail
                ],
            )
            .map(drop)
        })
        .await
    }

    /// The `limit` newest records, newest first.
    pub async fn recent(&self, limit: usize) -> Result<Vec<AdminRecord>, DbError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        run(&self.conn, move |conn| {
            let mut statement =
                conn.prepare(&format!("SELECT {COLUMNS} FROM admin_audit ORDER BY id DESC LIMIT ?1"))?;
            let rows = statement.query_map(params![limit], |row| {
                Ok(AdminRecord {
                    at_ms: row.get(0)?,
                    caller: row.get(1)?,
                    action: row.get(2)?,
                    target: row.get(3)?,
                    outcome: row.get(4)?,
                    detail: row.get(5)?,
                })
            })?;
            rows.collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_and_outcomes_keep_their_stored_names() {
        let actions: Vec<&str> = AdminAction::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(actions, ["switch_model", "reload_skills"]);
        let outcomes: Vec<&str> = AdminOutcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(outcomes, ["done", "refused", "failed"]);
        for action in AdminAction::ALL {
            assert_eq!(action.as_str().parse(), Ok(*action));
            assert_eq!(serde_json::to_value(action).unwrap(), action.as_str());
        }
        for outcome in AdminOutcome::ALL {
            assert_eq!(outcome.as_str().parse(), Ok(*outcome));
            assert_eq!(serde_json::to_value(outcome).unwrap(), outcome.as_str());
        }
        assert!("drop_tables".parse::<AdminAction>().is_err());
    }

    #[tokio::test]
    async fn records_come_back_newest_first() {
        let log = AdminLog::with_connection(Arc::new(Mutex::new(Connection::open_in_memory().unwrap()))).unwrap();
        let record = |at_ms, outcome| AdminRecord {
            at_ms,
            caller: "ops".to_owned(),
            action: AdminAction::SwitchModel,
            target: "qwen".to_owned(),
            outcome,
            detail: String::new(),
        };
        log.record(record(1, AdminOutcome::Refused)).await.unwrap();
        log.record(record(2, AdminOutcome::Done)).await.unwrap();
        assert_eq!(
            log.recent(10).await.unwrap(),
            [record(2, AdminOutcome::Done), record(1, AdminOutcome::Refused)]
        );
        assert_eq!(log.recent(1).await.unwrap().len(), 1);
    }
}
