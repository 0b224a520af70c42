//! The one place where SQLite and PostgreSQL differ. [`Db`] and [`Tx`] are closed sets of the two
//! backends; every operation that is not plain portable SQL (batch inserts, array parameters,
//! advisory locks, commit wake-ups, the relay's lease) is a method here that dispatches to
//! [`sqlite`] or [`postgres`]. The event store, the outbox, the inbox and the services above them
//! only call these methods.

mod copy;
pub(crate) mod postgres;
pub(crate) mod sqlite;
mod url;

use std::path::Path;
use std::sync::Arc;

use shopflow_bus::Message;
use tokio::sync::Notify;

pub use copy::copy_tables;
pub use postgres::{PgDb, PgTx};
pub use sqlite::{
    DEFAULT_MEMORY_BUDGET as DEFAULT_SQLITE_MEMORY_BUDGET, SqliteDb, SqliteTx, blocking,
    memory_budget as sqlite_memory_budget, set_memory_budget as set_sqlite_memory_budget,
};
pub use url::DbUrl;

use crate::{Result, Row, Value};

/// Which database a [`Db`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A service's own database.
///
/// SQL given to [`Tx::execute`], [`Tx::query`] and [`Db::query`] uses PostgreSQL's `$1`
/// placeholders on both backends, and integer, text, bytes and boolean columns only.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqliteDb),
    Postgres(Box<PgDb>),
}

impl Db {
    /// Opens (creating if needed) a SQLite database file.
    pub fn open_sqlite(path: impl AsRef<Path>) -> Result<Self> {
        SqliteDb::open(path.as_ref()).map(Db::Sqlite)
    }

    /// Connects to PostgreSQL, creating `schema` if needed; everything this handle does happens
    /// in that schema.
    pub async fn connect_postgres(url: &str, schema: &str) -> Result<Self> {
        PgDb::connect(url, schema, 16)
            .await
            .map(|d| Db::Postgres(Box::new(d)))
    }

    pub fn backend(&self) -> Backend {
        match self {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// Whether both handles are clones of one (the same file, or the same schema of the same
    /// PostgreSQL server).
    pub fn same(&self, other: &Db) -> bool {
        match (self, other) {
            (Db::Sqlite(a), Db::Sqlite(b)) => Arc::ptr_eq(&a.inner, &b.inner),
            (Db::Postgres(a), Db::Postgres(b)) => {
                a.schema == b.schema
                    && a.config.get_hosts() == b.config.get_hosts()
                    && a.config.get_ports() == b.config.get_ports()
                    && a.config.get_dbname() == b.config.get_dbname()
            }
            _ => false,
        }
    }

    /// A receiver that changes after every commit, where the backend can tell in-process
    /// followers (SQLite); `None` where followers must poll (PostgreSQL, written by other processes).
    pub fn commits(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        match self {
            Db::Sqlite(db) => Some(db.inner.commits.subscribe()),
            Db::Postgres(_) => None,
        }
    }

    /// Starts a write transaction. Dropping it without [`Tx::commit`] rolls it back.
    pub async fn begin(&self) -> Result<Tx> {
        Ok(match self {
            Db::Sqlite(db) => Tx::Sqlite(db.begin(false).await?),
            Db::Postgres(db) => Tx::Postgres(Box::new(db.begin(false).await?)),
        })
    }

    /// Starts a transaction whose commit is atomic and ordered but not waited for on disk: a crash
    /// may lose it (and nothing committed after it). Only for writes that are safe to lose and
    /// redo — deleting published outbox rows, advancing a projection — never for effects.
    pub async fn begin_relaxed(&self) -> Result<Tx> {
        Ok(match self {
            Db::Sqlite(db) => Tx::Sqlite(db.begin(true).await?),
            Db::Postgres(db) => Tx::Postgres(Box::new(db.begin(true).await?)),
        })
    }

    /// Runs a read outside any transaction (committed data only).
    pub async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        match self {
            // On the calling thread, like the writer's statements: handing the worker to another
            // thread per read (`block_in_place`) cost more than the read (issue 14's profile).
            Db::Sqlite(db) => db.query(sql, params),
            Db::Postgres(db) => db.query(sql, params).await,
        }
    }

    /// The right to relay this database's outbox, and the signal that wakes the relay on commits
    /// that wrote outbox rows. SQLite: always granted (one process owns the file), woken in
    /// process. PostgreSQL: one relay per schema at a time (a session advisory lock on a
    /// dedicated connection that also LISTENs); `None` while another process holds it.
    pub(crate) async fn relay_lease(&self) -> Result<Option<RelayLease>> {
        match self {
            Db::Sqlite(db) => Ok(Some(RelayLease {
                wake: db.inner.outbox_signal.clone(),
                listener: None,
            })),
            Db::Postgres(db) => {
                let wake = Arc::new(Notify::new());
                Ok(postgres::PgListener::start(db, wake.clone())
                    .await?
                    .map(|l| RelayLease {
                        wake,
                        listener: Some(l),
                    }))
            }
        }
    }
}

/// See [`Db::relay_lease`].
pub(crate) struct RelayLease {
    pub(crate) wake: Arc<Notify>,
    listener: Option<postgres::PgListener>,
}

impl RelayLease {
    /// Whether the lease was lost (the PostgreSQL session ended); the relay must take a new one.
    pub(crate) fn is_lost(&self) -> bool {
        self.listener.as_ref().is_some_and(|l| l.is_finished())
    }
}

/// What [`Tx::before_commit`] runs: a blocking sync of something outside the database.
pub type BeforeCommit = Box<dyn FnOnce() -> std::io::Result<()> + Send>;

/// The hooks of a transaction, by the address of what they sync.
pub(crate) type Hooks = Vec<(usize, BeforeCommit)>;

/// Runs the hooks of [`Tx::before_commit`] in order; the first failure fails the commit.
pub(crate) fn run_before_commit(hooks: Hooks) -> Result<()> {
    for (_, h) in hooks {
        h().map_err(|e| crate::Error::Unavailable {
            reason: format!("before commit: {e}"),
        })?;
    }
    Ok(())
}

/// Statements that would move a transaction's savepoints behind the back of its pending
/// messages are refused (see [`Tx::savepoint`]).
fn not_a_savepoint(sql: &str) -> Result<()> {
    let head = sql.trim_start().as_bytes();
    for word in ["SAVEPOINT", "RELEASE", "ROLLBACK"] {
        if head.len() >= word.len() && head[..word.len()].eq_ignore_ascii_case(word.as_bytes()) {
            return Err(crate::Error::Invalid {
                what: "statement",
                reason: format!(
                    "{word} goes through Tx::savepoint, Tx::rollback_to_savepoint, \
                     Tx::release_savepoint or Tx::rollback, which also take back what the \
                     transaction emitted"
                ),
            });
        }
    }
    Ok(())
}

fn identifier(name: &str) -> Result<()> {
    let ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(crate::Error::Invalid {
            what: "savepoint name",
            reason: format!("{name:?} is not an SQL identifier"),
        })
    }
}

/// A write transaction on a [`Db`].
#[derive(Debug)]
pub enum Tx {
    Sqlite(SqliteTx),
    Postgres(Box<PgTx>),
}

/// One row of the event store, encoded for an append.
#[derive(Debug)]
pub(crate) struct EventRow {
    pub(crate) stream: String,
    pub(crate) version: i64,
    pub(crate) event_id: String,
    pub(crate) event_type: String,
    pub(crate) event_version: i64,
    pub(crate) recorded_at: i64,
    pub(crate) envelope: Vec<u8>,
}

impl Tx {
    pub fn backend(&self) -> Backend {
        match self {
            Tx::Sqlite(_) => Backend::Sqlite,
            Tx::Postgres(_) => Backend::Postgres,
        }
    }

    /// Executes a statement; returns the number of rows changed.
    pub async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        not_a_savepoint(sql)?;
        match self {
            Tx::Sqlite(t) => sqlite::execute(t.conn(), sql, params),
            Tx::Postgres(t) => t.pipelined(|c| postgres::execute(c, sql, params)).await,
        }
    }

    /// Executes a statement whose outcome matters only as success or failure (a savepoint, a
    /// bookkeeping upsert). SQLite runs it now. PostgreSQL sends it with the transaction's next
    /// statement or its commit, in the same round trip, and that one fails if it failed.
    pub async fn execute_deferred(&mut self, sql: &str, params: &[Value]) -> Result<()> {
        not_a_savepoint(sql)?;
        self.defer_unchecked(sql, params).await
    }

    async fn defer_unchecked(&mut self, sql: &str, params: &[Value]) -> Result<()> {
        match self {
            Tx::Sqlite(t) => sqlite::execute(t.conn(), sql, params).map(|_| ()),
            Tx::Postgres(t) => {
                let owned = params
                    .iter()
                    .map(|p| Box::new(p.clone()) as postgres::OwnedParam)
                    .collect();
                t.defer(sql, owned).await
            }
        }
    }

    /// Runs a query inside the transaction (sees its own writes).
    pub async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        not_a_savepoint(sql)?;
        match self {
            Tx::Sqlite(t) => sqlite::query(t.conn(), sql, params),
            Tx::Postgres(t) => t.pipelined(|c| postgres::query(c, sql, params)).await,
        }
    }

    /// Runs several statements without parameters (DDL).
    pub async fn batch(&mut self, sql: &str) -> Result<()> {
        not_a_savepoint(sql)?;
        match self {
            Tx::Sqlite(t) => Ok(t.conn().execute_batch(sql)?),
            Tx::Postgres(t) => {
                t.pipelined(|c| async move { Ok(c.batch_execute(sql).await?) })
                    .await
            }
        }
    }

    /// Starts a savepoint `name` (an SQL identifier): [`Tx::rollback_to_savepoint`] undoes
    /// everything the transaction did after it — its statements and what it [`emit`](crate::emit)ted —
    /// and [`Tx::release_savepoint`] keeps it. Deferred like [`Tx::execute_deferred`]. Savepoints
    /// go through these three methods only (the statements refuse `SAVEPOINT`, `RELEASE` and
    /// `ROLLBACK`), because the messages a transaction publishes wait in memory until it commits.
    pub async fn savepoint(&mut self, name: &str) -> Result<()> {
        identifier(name)?;
        self.defer_unchecked(&format!("SAVEPOINT {name}"), &[])
            .await?;
        self.pending_mut().mark(name);
        Ok(())
    }

    /// Undoes what the transaction did since the savepoint `name`, which stays (see
    /// [`Tx::savepoint`]).
    pub async fn rollback_to_savepoint(&mut self, name: &str) -> Result<()> {
        identifier(name)?;
        self.defer_unchecked(&format!("ROLLBACK TO SAVEPOINT {name}"), &[])
            .await?;
        self.pending_mut().rollback_to(name);
        Ok(())
    }

    /// Ends the savepoint `name`, keeping what was done since (see [`Tx::savepoint`]).
    pub async fn release_savepoint(&mut self, name: &str) -> Result<()> {
        identifier(name)?;
        self.defer_unchecked(&format!("RELEASE SAVEPOINT {name}"), &[])
            .await?;
        self.pending_mut().release(name);
        Ok(())
    }

    pub(crate) fn pending_mut(&mut self) -> &mut crate::outbox::Pending {
        match self {
            Tx::Sqlite(t) => &mut t.pending,
            Tx::Postgres(t) => &mut t.pending,
        }
    }

    /// Serializes this transaction with every other that locks `(class, key)`, until it ends:
    /// a transaction-scoped advisory lock on PostgreSQL; nothing on SQLite, whose single writer
    /// never lets two write transactions interleave.
    pub async fn lock(&mut self, class: i32, key: &str) -> Result<()> {
        if let Tx::Postgres(t) = self {
            let params = [Value::from(class), Value::from(key)];
            t.pipelined(|c| {
                postgres::execute(c, "SELECT pg_advisory_xact_lock($1, hashtext($2))", &params)
            })
            .await?;
        }
        Ok(())
    }

    /// [`Tx::lock`] without waiting: `false` when another transaction holds it.
    pub async fn try_lock(&mut self, class: i32, key: &str) -> Result<bool> {
        match self {
            Tx::Sqlite(_) => Ok(true),
            Tx::Postgres(t) => {
                let params = [Value::from(class), Value::from(key)];
                let rows = t
                    .pipelined(|c| {
                        postgres::query(
                            c,
                            "SELECT pg_try_advisory_xact_lock($1, hashtext($2))",
                            &params,
                        )
                    })
                    .await?;
                rows.first().map(|r| r.bool(0)).unwrap_or(Ok(false))
            }
        }
    }

    /// What a `SELECT` appends to lock the rows it reads until the transaction ends (`FOR
    /// UPDATE` on PostgreSQL; nothing on SQLite, see [`Tx::lock`]).
    pub fn for_update(&self) -> &'static str {
        match self {
            Tx::Sqlite(_) => "",
            Tx::Postgres(_) => " FOR UPDATE",
        }
    }

    /// Makes `sync` run right before this transaction commits, and the commit fail if it fails:
    /// for an effect outside the database that the transaction records as done (a message
    /// appended to a spool file), so one sync covers everything the transaction did there
    /// instead of one per effect. One hook per object `of` per transaction: `sync` is called
    /// for the first registration only (later ones cost a comparison). A rolled-back
    /// transaction never runs it.
    pub fn before_commit<T: ?Sized>(&mut self, of: &Arc<T>, sync: impl FnOnce() -> BeforeCommit) {
        let key = Arc::as_ptr(of) as *const () as usize;
        let hooks = match self {
            Tx::Sqlite(t) => &mut t.before_commit,
            Tx::Postgres(t) => &mut t.before_commit,
        };
        if !hooks.iter().any(|(k, _)| *k == key) {
            hooks.push((key, sync()));
        }
    }

    /// Makes `hook` run once this transaction has committed, on the committing thread, in the
    /// order of the calls: for caches of what the transaction wrote, which must learn of it
    /// only once it is durable. A rollback, a failed commit, or a rollback to a savepoint taken
    /// before this call drops the hook without running it. It must be quick and must not fail.
    pub fn after_commit(&mut self, hook: impl FnOnce() + Send + 'static) {
        self.pending_mut().add_after_commit(Box::new(hook));
    }

    /// Commits; when it returns `Ok` the transaction is durable. What the transaction emitted is
    /// written to the outbox first, numbered, in a few statements for all of it; then the hooks
    /// of [`Tx::after_commit`] run.
    pub async fn commit(mut self) -> Result<()> {
        crate::outbox::flush(&mut self).await?;
        let after = self.pending_mut().take_after_commit();
        match self {
            Tx::Sqlite(t) => t.commit()?,
            Tx::Postgres(t) => (*t).commit().await?,
        }
        for hook in after {
            hook();
        }
        Ok(())
    }

    pub async fn rollback(self) -> Result<()> {
        match self {
            Tx::Sqlite(t) => t.rollback(),
            Tx::Postgres(t) => (*t).rollback().await,
        }
    }

    // ---- what the building blocks need beyond portable SQL --------------------------------

    /// The versions of the given streams that exist (absent streams are left out).
    pub(crate) async fn stream_versions(&mut self, streams: &[&str]) -> Result<Vec<(String, u64)>> {
        match self {
            Tx::Sqlite(t) => sqlite::stream_versions(t.conn(), streams),
            Tx::Postgres(t) => t.pipelined(|c| postgres::stream_versions(c, streams)).await,
        }
    }

    /// Inserts event rows and sets each touched stream's version.
    pub(crate) async fn insert_events(
        &mut self,
        rows: &[EventRow],
        versions: &[(&str, u64)],
    ) -> Result<()> {
        match self {
            Tx::Sqlite(t) => sqlite::insert_events(t.conn(), rows, versions),
            Tx::Postgres(t) => {
                let first = t.take_positions(rows.len())?;
                t.pipelined(|c| postgres::insert_events(c, rows, versions, first))
                    .await
            }
        }
    }

    /// Inserts outbox rows (and makes the relay wake once the transaction commits).
    pub(crate) async fn insert_outbox(&mut self, messages: &[Message], now_us: i64) -> Result<()> {
        match self {
            Tx::Sqlite(t) => {
                sqlite::insert_outbox(t.conn(), messages, now_us)?;
                t.wrote_outbox = true;
                Ok(())
            }
            Tx::Postgres(t) => postgres::insert_outbox(t, messages, now_us).await,
        }
    }

    /// Deletes outbox rows by id.
    pub(crate) async fn delete_outbox(&mut self, ids: &[i64]) -> Result<()> {
        match self {
            Tx::Sqlite(t) => sqlite::delete_outbox(t.conn(), ids),
            Tx::Postgres(t) => t.pipelined(|c| postgres::delete_outbox(c, ids)).await,
        }
    }
}
