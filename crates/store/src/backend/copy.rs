//! Copying a whole database from SQLite to PostgreSQL: the growth path from an embedded
//! deployment. Backend-specific through and through (SQLite's catalog, PostgreSQL's sequences),
//! so it lives here.

use crate::{Backend, Db, Error, Result, Value};

/// Copies every table of the SQLite database `from` (but its migration record) into the same
/// tables of the PostgreSQL database `to`, which must exist (migrated) and be empty; sequences
/// (outbox ids, event positions) continue after the copied rows. Returns the rows per table.
pub async fn copy_tables(from: &Db, to: &Db) -> Result<Vec<(String, u64)>> {
    if from.backend() != Backend::Sqlite || to.backend() != Backend::Postgres {
        return Err(Error::Invalid {
            what: "copy",
            reason: "tables are copied from SQLite to PostgreSQL".into(),
        });
    }
    let tables: Vec<String> = from
        .query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name <> 'schema_migrations' ORDER BY name",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.str(0).map(str::to_owned))
        .collect::<Result<_>>()?;
    let mut copied = Vec::with_capacity(tables.len());
    for table in tables {
        let cols: Vec<String> = from
            .query(&format!("PRAGMA table_info({table})"), &[])
            .await?
            .iter()
            .map(|r| r.str(1).map(str::to_owned))
            .collect::<Result<_>>()?;
        let occupied = to
            .query(&format!("SELECT 1 FROM {table} LIMIT 1"), &[])
            .await
            .map_err(|e| Error::Invalid {
                what: "target schema",
                reason: format!("table {table} is not in the PostgreSQL schema: {e}"),
            })?;
        if !occupied.is_empty() {
            return Err(Error::Invalid {
                what: "target schema",
                reason: format!("{table} already has rows: migrate only into fresh schemas"),
            });
        }
        let rows = from
            .query(&format!("SELECT {} FROM {table}", cols.join(", ")), &[])
            .await?;
        let mut tx = to.begin().await?;
        for chunk in rows.chunks(500) {
            let mut sql = format!("INSERT INTO {table} ({}) VALUES ", cols.join(", "));
            let mut params: Vec<Value> = Vec::with_capacity(chunk.len() * cols.len());
            for (i, r) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push('(');
                for j in 0..cols.len() {
                    if j > 0 {
                        sql.push_str(", ");
                    }
                    params.push(r.0.get(j).cloned().unwrap_or(Value::Null));
                    sql.push_str(&format!("${}", params.len()));
                }
                sql.push(')');
            }
            tx.execute(&sql, &params).await?;
        }
        // Sequences (outbox ids, event store positions) continue after the copied rows.
        let serials = tx
            .query(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1 AND column_default LIKE 'nextval%'",
                crate::params![table.as_str()],
            )
            .await?;
        for s in serials {
            let col = s.str(0)?.to_owned();
            tx.execute(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', '{col}'), COALESCE((SELECT MAX({col}) FROM {table}), 0) + 1, false)"
                ),
                &[],
            )
            .await?;
        }
        if table == "events" {
            // Positions appended on PostgreSQL start at (transaction id << 20): the copied ones
            // must stay below, or followers of the global order would skip what comes next.
            let check = tx
                .query(
                    "SELECT COALESCE(MAX(position), 0) < (pg_current_xact_id()::text::bigint << 20) FROM events",
                    &[],
                )
                .await?;
            if !check
                .first()
                .map(|r| r.bool(0))
                .transpose()?
                .unwrap_or(true)
            {
                return Err(Error::Invalid {
                    what: "copy",
                    reason: "the copied event positions reach past this PostgreSQL server's transaction-id positions; copy into a server with more transactions behind it".into(),
                });
            }
        }
        tx.commit().await?;
        copied.push((table, rows.len() as u64));
    }
    Ok(copied)
}
