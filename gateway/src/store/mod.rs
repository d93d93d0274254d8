//! [`Store`]: everything the IM core persists (the durable inbox/outbox with its owed card marks, the
//! sessions, the audit log), behind one interface with two backends:
//! - `sqlite`: one file, one node, nothing to set up (the default; rusqlite on the blocking pool);
//! - `postgres`: a PostgreSQL server the operator runs, which several nodes of one bot share
//!   (tokio-postgres, pooled by deadpool-postgres).
//!
//! A store is named by a locator ([`Locator::parse`]): a plain path or `sqlite:///path` for SQLite,
//! `postgres://…` or `postgresql://…` for PostgreSQL. Opening one applies its versioned migrations
//! (`migrations/<backend>/NNNN_*.sql`) that it has not applied yet, so a node creates or upgrades the
//! schema on start; on PostgreSQL they run under an advisory lock, so nodes starting together apply each
//! migration once.
//!
//! **Invariant:** the two backends keep the same rows and give the same answers; the IM tests run on both.

mod postgres;
mod sqlite;
pub mod throwaway;
pub mod types;

pub use types::{Arrival, Claim, Lease, Scope, Settlement, Turn, Unfinished};

/// The newest migration: both backends have this many (`store/migrations/{sqlite,postgres}/`).
pub const SCHEMA_VERSION: i64 = 3;

pub(crate) use sqlite::{migrate_connection as sqlite_migrate, records_since as sqlite_records_since};

use std::path::PathBuf;

use engine::ChatMessage;

use crate::audit::record::AuditRecord;
use crate::db::{Database, DbError};
use crate::skills::calls::SkillCall;

/// Which store a locator names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locator {
    /// A SQLite file (created if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL, as libpq takes it.
    Postgres(String),
}

impl Locator {
    /// Read `text`: `postgres://…`/`postgresql://…`, `sqlite:///path` (or `sqlite://relative`), or a plain
    /// file path. Any other `scheme://` is an error naming the schemes known.
    pub fn parse(text: &str) -> Result<Self, DbError> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(Self::Postgres(text.to_owned()));
        }
        if let Some(path) = text.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(DbError::Locator(format!("{text:?} names no file")));
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            if !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || c == '+') {
                return Err(DbError::Locator(format!(
                    "unknown store scheme `{scheme}://` in {text:?}; use sqlite:///path or postgres://…"
                )));
            }
        }
        if text.is_empty() {
            return Err(DbError::Locator("the store locator is empty".to_owned()));
        }
        Ok(Self::Sqlite(PathBuf::from(text)))
    }
}

/// Which backend a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Its name in logs, metrics and `/readyz`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// An open store, cheap to clone (the clones share the connection or pool).
#[derive(Clone)]
pub struct Store {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

/// Dispatch `$call` to the backend's own function of the same shape.
macro_rules! dispatch {
    ($self:ident, $method:ident ( $($arg:expr),* )) => {
        match &$self.inner {
            Inner::Sqlite(backend) => backend.$method($($arg),*).await,
            Inner::Postgres(backend) => backend.$method($($arg),*).await,
        }
    };
}

impl Store {
    /// Open the store `locator` names (see [`Locator::parse`]) and bring its schema up to date.
    pub async fn open(locator: &str) -> Result<Self, DbError> {
        match Locator::parse(locator)? {
            Locator::Sqlite(path) => {
                let database = tokio::task::spawn_blocking(move || Database::open(&path))
                    .await
                    .map_err(|e| DbError::Join(e.to_string()))??;
                Self::sqlite(&database)
            }
            Locator::Postgres(url) => Ok(Self {
                inner: Inner::Postgres(postgres::Postgres::open(&url).await?),
            }),
        }
    }

    /// Open the store a platform's `database` setting names: a path, or a locator written as one.
    pub async fn open_setting(database: &std::path::Path) -> Result<Self, DbError> {
        match database.to_str() {
            Some(locator) => Self::open(locator).await,
            // Not UTF-8, so no URL: a SQLite file.
            None => {
                let path = database.to_owned();
                let database = tokio::task::spawn_blocking(move || Database::open(&path))
                    .await
                    .map_err(|e| DbError::Join(e.to_string()))??;
                Self::sqlite(&database)
            }
        }
    }

    /// The store in an open SQLite `database`, its schema brought up to date.
    pub fn sqlite(database: &Database) -> Result<Self, DbError> {
        Ok(Self {
            inner: Inner::Sqlite(sqlite::Sqlite::open(database.connection())?),
        })
    }

    /// Its backend.
    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::Sqlite(_) => Backend::Sqlite,
            Inner::Postgres(_) => Backend::Postgres,
        }
    }

    /// The newest migration applied.
    pub async fn schema_version(&self) -> Result<i64, DbError> {
        dispatch!(self, schema_version())
    }

    /// Record `arrival` (`accepted` under `lease`, or `ignored`); `true` when it is new (its dedupe key was
    /// free).
    pub async fn accept(&self, scope: &Scope, arrival: Arrival, lease: &Lease) -> Result<bool, DbError> {
        dispatch!(self, accept(scope.clone(), arrival, lease.clone()))
    }

    /// Take the messages still `accepted` that `claim` names, under `lease`, oldest first, each with its
    /// attempt bumped. Two nodes claiming at once take different messages.
    pub async fn claim(&self, scope: &Scope, lease: &Lease, claim: Claim) -> Result<Vec<Unfinished>, DbError> {
        dispatch!(self, claim(scope.clone(), lease.clone(), claim))
    }

    /// Extend `lease` over the messages `msg_ids` its node still holds; how many it holds.
    pub async fn renew(&self, scope: &Scope, lease: &Lease, msg_ids: Vec<String>) -> Result<usize, DbError> {
        dispatch!(self, renew(scope.clone(), lease.clone(), msg_ids))
    }

    /// End the leases `node` holds on unfinished messages, so another node may claim them at once.
    pub async fn release(&self, scope: &Scope, node: &str) -> Result<usize, DbError> {
        dispatch!(self, release(scope.clone(), node.to_owned()))
    }

    /// Note that the first card of `msg_id` exists.
    pub async fn card_created(&self, scope: &Scope, msg_id: &str) -> Result<(), DbError> {
        dispatch!(self, card_created(scope.clone(), msg_id.to_owned()))
    }

    /// Raise how far `msg_id`'s answer is shown to `shown` bytes (never lowered).
    pub async fn shown(&self, scope: &Scope, msg_id: &str, shown: i64) -> Result<(), DbError> {
        dispatch!(self, shown(scope.clone(), msg_id.to_owned(), shown))
    }

    /// Close `msg_id` as `settlement` says, with its audit record and session turn, in one transaction;
    /// only an `accepted` message closes (`false` otherwise, and nothing is written).
    pub async fn settle(&self, scope: &Scope, msg_id: &str, settlement: Settlement) -> Result<bool, DbError> {
        dispatch!(self, settle(scope.clone(), msg_id.to_owned(), settlement))
    }

    /// Owe the card state `code` to `card`.
    pub async fn defer_mark(&self, scope: &Scope, card: &str, code: &str) -> Result<(), DbError> {
        dispatch!(self, defer_mark(scope.clone(), card.to_owned(), code.to_owned()))
    }

    /// The owed card marks, oldest first: (card, code).
    pub async fn pending_marks(&self, scope: &Scope) -> Result<Vec<(String, String)>, DbError> {
        dispatch!(self, pending_marks(scope.clone()))
    }

    /// `card` no longer owes `code`.
    pub async fn mark_done(&self, scope: &Scope, card: &str, code: &str) -> Result<(), DbError> {
        dispatch!(self, mark_done(scope.clone(), card.to_owned(), code.to_owned()))
    }

    /// Delete settled messages received before `before_ms`; returns how many went.
    pub async fn prune_messages(&self, scope: &Scope, before_ms: i64) -> Result<usize, DbError> {
        dispatch!(self, prune_messages(scope.clone(), before_ms))
    }

    /// The state of `msg_id`, if recorded.
    pub async fn state(&self, scope: &Scope, msg_id: &str) -> Result<Option<String>, DbError> {
        dispatch!(self, state(scope.clone(), msg_id.to_owned()))
    }

    /// The turns of `key`'s session, oldest first; a session idle past `idle_ms` is cleared and yields none.
    pub async fn history(&self, key: &str, idle_ms: i64) -> Result<Vec<ChatMessage>, DbError> {
        dispatch!(self, history(key.to_owned(), idle_ms))
    }

    /// Add `turn` to its session (starting it if needed).
    pub async fn append_turn(&self, turn: Turn) -> Result<(), DbError> {
        dispatch!(self, append_turn(turn))
    }

    /// Forget `key`'s session.
    pub async fn reset_session(&self, key: &str) -> Result<(), DbError> {
        dispatch!(self, reset_session(key.to_owned()))
    }

    /// Delete the sessions last used before `cutoff_ms`, with their turns; returns how many went.
    pub async fn prune_sessions(&self, cutoff_ms: i64) -> Result<usize, DbError> {
        dispatch!(self, prune_sessions(cutoff_ms))
    }

    /// Store an audit record as it is (already masked).
    pub async fn insert_record(&self, record: AuditRecord) -> Result<(), DbError> {
        dispatch!(self, insert_record(record))
    }

    /// The audit records since `since_ms`, oldest first.
    pub async fn records_since(&self, since_ms: i64) -> Result<Vec<AuditRecord>, DbError> {
        dispatch!(self, records_since(since_ms))
    }

    /// Store an HTTP skill call's audit row.
    pub async fn insert_skill_call(&self, call: SkillCall) -> Result<(), DbError> {
        dispatch!(self, insert_skill_call(call))
    }

    /// The HTTP skill calls since `since_ms`, oldest first.
    pub async fn skill_calls_since(&self, since_ms: i64) -> Result<Vec<SkillCall>, DbError> {
        dispatch!(self, skill_calls_since(since_ms))
    }

    /// The `limit` newest audit records, newest first.
    pub async fn recent_records(&self, limit: i64) -> Result<Vec<AuditRecord>, DbError> {
        dispatch!(self, recent_records(limit))
    }

    /// Delete the audit records taken up before `before_ms`; returns how many went.
    pub async fn prune_records(&self, before_ms: i64) -> Result<usize, DbError> {
        dispatch!(self, prune_records(before_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_have_every_migration() {
        assert_eq!(sqlite::MIGRATIONS.len() as i64, SCHEMA_VERSION);
        assert_eq!(postgres::MIGRATIONS.len() as i64, SCHEMA_VERSION);
    }

    #[test]
    fn locators_name_their_backend() {
        assert_eq!(
            Locator::parse("postgres://u@h/db").unwrap(),
            Locator::Postgres("postgres://u@h/db".to_owned())
        );
        assert_eq!(
            Locator::parse("sqlite:///var/lib/hearth/im.sqlite3").unwrap(),
            Locator::Sqlite(PathBuf::from("/var/lib/hearth/im.sqlite3"))
        );
        assert_eq!(
            Locator::parse("hearth-dingtalk.sqlite3").unwrap(),
            Locator::Sqlite(PathBuf::from("hearth-dingtalk.sqlite3"))
        );
        let err = Locator::parse("mysql://h/db").unwrap_err().to_string();
        assert!(err.contains("mysql://"), "{err}");
        assert!(Locator::parse("sqlite://").is_err());
        assert!(Locator::parse("").is_err());
    }
}
