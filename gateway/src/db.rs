//! The SQLite opener: a database file is opened here and only here ([`Database::open`]: WAL,
//! `synchronous = FULL`). The IM core's tables in it are the SQLite backend of the store
//! ([`crate::store`]), where one connection serves the outbox, the sessions and the audit log, so a
//! message's outcome, audit record and session turn commit in one transaction. [`DbError`] is the error of
//! every store backend.
//!
//! rusqlite is blocking: every call runs on the blocking pool through [`run`], and the connection's std
//! mutex is held only inside that closure, never across an `.await`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection};

/// How long a write waits for another process's write to the same file.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A connection shared by the stores of one database.
pub type SharedConnection = Arc<Mutex<Connection>>;

/// A store failure, of either backend.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database task failed: {0}")]
    Join(String),
    #[error("PostgreSQL error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("PostgreSQL unavailable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The store's locator (`[data] url`, a platform's `database`) cannot be used.
    #[error("invalid store locator: {0}")]
    Locator(String),
    /// A stored value this version cannot read.
    #[error("unreadable stored value: {0}")]
    Decode(String),
}

/// Run `work` on the blocking pool with the connection locked.
pub async fn run<T: Send + 'static>(
    conn: &SharedConnection,
    work: impl FnOnce(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
) -> Result<T, DbError> {
    let conn = conn.clone();
    tokio::task::spawn_blocking(move || {
        let conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        work(&conn)
    })
    .await
    .map_err(|err| DbError::Join(err.to_string()))?
    .map_err(DbError::from)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One open database file.
#[derive(Clone)]
pub struct Database {
    conn: SharedConnection,
}

impl Database {
    /// Open (or create) the database at `path`, in WAL mode with full syncs (a committed message survives
    /// a crash or a power cut), waiting up to `BUSY_TIMEOUT` for another process's write.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let conn = Connection::open(path)?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")?;
        // Another process writing the same file (two connectors on one outbox) makes a writer wait, not fail.
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Open the database at `path`, which must exist (for reading it out, as `hearth audit export` does).
    pub fn open_existing(path: &Path) -> Result<Self, rusqlite::Error> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// The connection the stores of this database share.
    pub fn connection(&self) -> SharedConnection {
        self.conn.clone()
    }
}

/// Add `column` (with its SQL `declaration`) to `table` unless it is there: databases written by an older
/// version gain the columns a newer one needs.
pub(crate) fn add_column(
    conn: &Connection,
    table: &str,
    column: &str,
    declaration: &str,
) -> Result<(), rusqlite::Error> {
    let present = conn
        .prepare(&format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"))?
        .exists(params![column])?;
    if !present {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {declaration}"))?;
    }
    Ok(())
}
