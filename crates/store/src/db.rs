//! One handle for a service's database, SQLite or PostgreSQL, with transactions that the event
//! store, the outbox, the inbox and the service's own tables share.

use std::path::Path;

use crate::postgres::{self, PgDb, PgTx};
use crate::sqlite::{self, SqliteDb, SqliteTx};
use crate::{Error, Result, Row, Value};

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

/// A numbered schema change, in both dialects.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
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
            Db::Sqlite(db) => {
                let db = db.clone();
                sqlite::blocking(|| db.query(sql, params))
            }
            Db::Postgres(db) => db.query(sql, params).await,
        }
    }

    /// Applies the migrations of `component` that are not applied yet, in version order, in one
    /// transaction (PostgreSQL: under an advisory lock, so processes starting together take turns).
    pub async fn migrate(&self, component: &str, migrations: &[Migration]) -> Result<()> {
        let mut tx = self.begin().await?;
        tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                component  TEXT   NOT NULL,
                version    BIGINT NOT NULL,
                name       TEXT   NOT NULL,
                applied_at BIGINT NOT NULL,
                PRIMARY KEY (component, version)
            )",
            &[],
        )
        .await?;
        if let Tx::Postgres(t) = &tx {
            t.client()
                .execute(
                    "SELECT pg_advisory_xact_lock(hashtext('shopflow-migrate'))",
                    &[],
                )
                .await?;
        }
        let applied: Vec<i64> = tx
            .query(
                "SELECT version FROM schema_migrations WHERE component = $1",
                crate::params![component],
            )
            .await?
            .iter()
            .map(|r| r.i64(0))
            .collect::<Result<_>>()?;
        let mut sorted: Vec<&Migration> = migrations.iter().collect();
        sorted.sort_by_key(|m| m.version);
        for m in sorted {
            if applied.contains(&i64::from(m.version)) {
                continue;
            }
            let sql = match self.backend() {
                Backend::Sqlite => m.sqlite,
                Backend::Postgres => m.postgres,
            };
            tx.batch(sql).await.map_err(|e| Error::Migration {
                component: component.to_owned(),
                version: m.version,
                source: Box::new(e),
            })?;
            tx.execute(
                "INSERT INTO schema_migrations (component, version, name, applied_at) VALUES ($1, $2, $3, $4)",
                crate::params![component, m.version, m.name, chrono::Utc::now().timestamp_millis()],
            )
            .await?;
            tracing::info!(
                component,
                version = m.version,
                name = m.name,
                "migration applied"
            );
        }
        tx.commit().await
    }

    /// A service's database: the building blocks' tables, then the service's own migrations.
    pub async fn migrate_service(&self, service: &str, migrations: &[Migration]) -> Result<()> {
        self.migrate_building_blocks().await?;
        self.migrate(service, migrations).await
    }

    /// The shared building blocks' tables: event store, outbox, inbox.
    pub async fn migrate_building_blocks(&self) -> Result<()> {
        self.migrate("shopflow", crate::MIGRATIONS).await
    }
}

/// A write transaction on a [`Db`].
#[derive(Debug)]
pub enum Tx {
    Sqlite(SqliteTx),
    Postgres(Box<PgTx>),
}

impl Tx {
    /// Executes a statement; returns the number of rows changed.
    pub async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        match self {
            Tx::Sqlite(t) => sqlite::execute(t.conn(), sql, params),
            Tx::Postgres(t) => postgres::execute(t.client(), sql, params).await,
        }
    }

    /// Runs a query inside the transaction (sees its own writes).
    pub async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        match self {
            Tx::Sqlite(t) => sqlite::query(t.conn(), sql, params),
            Tx::Postgres(t) => postgres::query(t.client(), sql, params).await,
        }
    }

    /// Runs several statements without parameters (DDL).
    pub async fn batch(&mut self, sql: &str) -> Result<()> {
        match self {
            Tx::Sqlite(t) => Ok(t.conn().execute_batch(sql)?),
            Tx::Postgres(t) => Ok(t.client().batch_execute(sql).await?),
        }
    }

    /// Serializes this transaction with every other that locks `(class, key)`, until it ends:
    /// a transaction-scoped advisory lock on PostgreSQL; nothing on SQLite, whose single writer
    /// never lets two write transactions interleave.
    pub async fn lock(&mut self, class: i32, key: &str) -> Result<()> {
        if let Tx::Postgres(t) = self {
            postgres::execute(
                t.client(),
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[Value::from(class), Value::from(key)],
            )
            .await?;
        }
        Ok(())
    }

    /// [`Tx::lock`] without waiting: `false` when another transaction holds it.
    pub async fn try_lock(&mut self, class: i32, key: &str) -> Result<bool> {
        match self {
            Tx::Sqlite(_) => Ok(true),
            Tx::Postgres(t) => {
                let rows = postgres::query(
                    t.client(),
                    "SELECT pg_try_advisory_xact_lock($1, hashtext($2))",
                    &[Value::from(class), Value::from(key)],
                )
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

    /// Commits; when it returns `Ok` the transaction is durable.
    pub async fn commit(self) -> Result<()> {
        match self {
            Tx::Sqlite(t) => t.commit(),
            Tx::Postgres(t) => (*t).commit().await,
        }
    }

    pub async fn rollback(self) -> Result<()> {
        match self {
            Tx::Sqlite(t) => t.rollback(),
            Tx::Postgres(t) => (*t).rollback().await,
        }
    }
}
