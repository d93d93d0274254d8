//! Which store the IM tests run on: SQLite files by default, a throwaway PostgreSQL server when
//! `HEARTH_TEST_STORE=postgres` (`scripts/test.sh` runs the IM tests both ways). On PostgreSQL, one server
//! serves the whole test binary and each test gets its own database, so tests stay independent.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use gateway::store::throwaway::ThrowawayPostgres;

/// Whether this run keeps the IM tests' stores on PostgreSQL.
pub fn on_postgres() -> bool {
    std::env::var("HEARTH_TEST_STORE").is_ok_and(|store| store == "postgres")
}

/// The server of this test binary, started on first use.
pub fn shared_postgres() -> &'static ThrowawayPostgres {
    static SERVER: OnceLock<ThrowawayPostgres> = OnceLock::new();
    SERVER.get_or_init(|| ThrowawayPostgres::start().expect("a throwaway PostgreSQL server starts"))
}

/// The store a test's connector uses: the SQLite file `db`, or on PostgreSQL a new database (as a
/// `postgres://` locator in the `database` setting).
pub fn database(db: &Path) -> PathBuf {
    if on_postgres() {
        PathBuf::from(shared_postgres().create_database().expect("a test database is created"))
    } else {
        db.to_owned()
    }
}
