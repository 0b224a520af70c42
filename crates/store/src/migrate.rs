//! Numbered schema changes, applied once per database in version order.

use crate::{Backend, Db, Error, Result};

/// Advisory-lock class of migrations (PostgreSQL): processes starting together take turns.
const MIGRATE_LOCK_CLASS: i32 = 0x5346_4d47; // "SFMG"

/// A numbered schema change, in both dialects.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

impl Migration {
    /// A migration whose SQL is the same on both backends.
    pub const fn portable(version: u32, name: &'static str, sql: &'static str) -> Self {
        Self {
            version,
            name,
            sqlite: sql,
            postgres: sql,
        }
    }
}

impl Db {
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
        tx.lock(MIGRATE_LOCK_CLASS, "shopflow-migrate").await?;
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

    /// The shared building blocks' tables: event store, outbox, inbox, checkpoints.
    pub async fn migrate_building_blocks(&self) -> Result<()> {
        self.migrate("shopflow", crate::MIGRATIONS).await
    }
}
