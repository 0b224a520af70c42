#![doc = include_str!("../README.md")]

mod backend;
pub mod checkpoint;
mod error;
mod events;
mod expected;
mod headers;
pub mod inbox;
mod migrate;
pub mod outbox;
pub mod parked;
pub mod sequence;
mod value;

pub use backend::{
    Backend, BeforeCommit, DEFAULT_SQLITE_MEMORY_BUDGET, Db, DbUrl, PgDb, PgTx, SqliteDb, SqliteTx,
    Tx, blocking, copy_tables, set_sqlite_memory_budget, sqlite_memory_budget,
};
pub use error::{Error, Result};
pub use events::{AppendStream, EventStore, Loaded, Snapshot, StoredEvent};
pub use expected::ExpectedVersion;
pub use migrate::Migration;
pub use outbox::{Outgoing, emit};
pub use value::{Row, Value};

/// Splits `items` into runs for a statement with a `VALUES` list, each padded to 4, 16 or 64
/// entries by repeating its last one, so that a few prepared statements serve every batch size
/// (SQLite and PostgreSQL cache a statement per text).
pub fn in_lists<T: Clone>(items: &[T]) -> impl Iterator<Item = Vec<T>> + '_ {
    items.chunks(64).map(|chunk| {
        let width = [4, 16, 64]
            .into_iter()
            .find(|w| *w >= chunk.len())
            .unwrap_or(64);
        let mut run = chunk.to_vec();
        let last = chunk[chunk.len() - 1].clone();
        run.resize(width, last);
        run
    })
}

/// Splits `items` into runs of exactly 64, 16, 4 or 1, for a multi-row statement: a few
/// statement texts serve every count, and no row is repeated (an insert cannot pad).
pub fn exact_runs<T>(items: &[T]) -> Vec<&[T]> {
    let mut runs = Vec::new();
    let mut rest = items;
    for width in [64, 16, 4, 1] {
        while rest.len() >= width {
            let (run, tail) = rest.split_at(width);
            runs.push(run);
            rest = tail;
        }
    }
    runs
}

/// `($from), ($from+1), …` — `count` one-column rows of placeholders for a `VALUES` list.
pub fn values(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|i| format!("(${i})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A migration of this crate: `migrations/sqlite/<file>` and `migrations/postgres/<file>`.
macro_rules! migration {
    ($version:literal, $name:literal, $file:literal) => {
        Migration {
            version: $version,
            name: $name,
            sqlite: include_str!(concat!("../migrations/sqlite/", $file)),
            postgres: include_str!(concat!("../migrations/postgres/", $file)),
        }
    };
}

/// Migrations of the building blocks' own tables, applied by [`Db::migrate_building_blocks`].
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "event_store", "001_event_store.sql"),
    migration!(2, "outbox", "002_outbox.sql"),
    migration!(3, "inbox", "003_inbox.sql"),
    migration!(4, "checkpoints", "004_checkpoints.sql"),
    migration!(5, "sequences", "005_sequences.sql"),
    migration!(
        6,
        "positions_by_transaction",
        "006_positions_by_transaction.sql"
    ),
    migration!(7, "parked", "007_parked.sql"),
];

/// The environment variable naming the PostgreSQL server that tests use
/// (`postgres://postgres@127.0.0.1:5432/test` on a machine set up as CI's).
#[cfg(feature = "test-util")]
pub const TEST_POSTGRES_ENV: &str = "SHOPFLOW_TEST_POSTGRES";

/// For PostgreSQL-backed tests: the server's URL from [`TEST_POSTGRES_ENV`], or `None` after
/// printing why `what` is skipped. Under `CI=true` a missing address panics: CI must run them.
#[cfg(feature = "test-util")]
pub fn test_postgres_url(what: &str) -> Option<String> {
    shopflow_bus::conformance::test_server(
        TEST_POSTGRES_ENV,
        "postgres://postgres@127.0.0.1:5432/test",
        what,
    )
}
