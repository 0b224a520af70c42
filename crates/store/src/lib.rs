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

/// The widths [`in_lists`] (from 4 up) and [`exact_runs`] make, smallest first.
const RUN_WIDTHS: [usize; 4] = [1, 4, 16, 64];
/// The widest run: statements never carry more rows than this.
const WIDEST_RUN: usize = RUN_WIDTHS[RUN_WIDTHS.len() - 1];

/// A multi-row statement's text for each width that [`in_lists`] and [`exact_runs`] make, built
/// on first use and kept. Formatting it anew at every execution, a `format!` per row, was ~3 % of
/// the shop's instructions (issue 14's callgrind profile). Another width is built each time.
#[derive(Debug)]
pub struct SqlByWidth([std::sync::OnceLock<Box<str>>; RUN_WIDTHS.len()]);

impl SqlByWidth {
    pub const fn new() -> Self {
        Self([const { std::sync::OnceLock::new() }; RUN_WIDTHS.len()])
    }

    /// The text for `width`, from `build(width)` the first time.
    pub fn get(
        &self,
        width: usize,
        build: impl FnOnce(usize) -> String,
    ) -> std::borrow::Cow<'_, str> {
        match RUN_WIDTHS.iter().position(|w| *w == width) {
            Some(i) => self.0[i]
                .get_or_init(|| build(width).into())
                .as_ref()
                .into(),
            None => build(width).into(),
        }
    }
}

impl Default for SqlByWidth {
    fn default() -> Self {
        Self::new()
    }
}

/// Splits `items` into runs for a statement with a `VALUES` list, each padded to 4, 16 or 64
/// entries by repeating its last one, so that a few prepared statements serve every batch size
/// (SQLite and PostgreSQL cache a statement per text).
pub fn in_lists<T: Clone>(items: &[T]) -> impl Iterator<Item = Vec<T>> + '_ {
    items.chunks(WIDEST_RUN).map(|chunk| {
        let width = RUN_WIDTHS[1..]
            .iter()
            .copied()
            .find(|w| *w >= chunk.len())
            .unwrap_or(WIDEST_RUN);
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
    for &width in RUN_WIDTHS.iter().rev() {
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    #[test]
    fn values_lists_the_placeholders_from_the_first_given() {
        assert_eq!(super::values(2, 3), "($2), ($3), ($4)");
        assert_eq!(super::values(1, 1), "($1)");
        assert_eq!(super::values(5, 0), "");
    }

    #[test]
    fn runs_have_only_the_widths_the_texts_are_kept_for() {
        let items: Vec<u32> = (0..87).collect();
        let exact: Vec<usize> = super::exact_runs(&items).iter().map(|r| r.len()).collect();
        assert_eq!(exact, [64, 16, 4, 1, 1, 1]);
        let padded: Vec<Vec<u32>> = super::in_lists(&items[..70]).collect();
        assert_eq!(padded.iter().map(Vec::len).collect::<Vec<_>>(), [64, 16]);
        assert_eq!(padded[1][..6], [64, 65, 66, 67, 68, 69]);
        assert!(
            padded[1][6..].iter().all(|i| *i == 69),
            "padded with the last"
        );
        assert_eq!(super::in_lists(&items[..3]).next().unwrap(), [0, 1, 2, 2]);
    }

    #[test]
    fn a_text_by_width_is_built_once_for_the_run_widths_and_each_time_for_others() {
        static SQL: super::SqlByWidth = super::SqlByWidth::new();
        let builds = Cell::new(0);
        let build = |w: usize| {
            builds.set(builds.get() + 1);
            format!("rows {w}")
        };
        for _ in 0..3 {
            for w in [1, 4, 16, 64] {
                assert_eq!(SQL.get(w, build), format!("rows {w}"));
            }
        }
        assert_eq!(builds.get(), 4);
        assert_eq!(SQL.get(7, build), "rows 7");
        assert_eq!(SQL.get(7, build), "rows 7");
        assert_eq!(builds.get(), 6);
    }
}
