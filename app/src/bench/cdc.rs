//! `shopflow bench cdc`: change data capture from PostgreSQL to the embedded log — the initial
//! snapshot's rate, and a bulk update of `--rows` rows in one transaction: changes per second
//! from its commit until the last change is durable on the bus and confirmed to PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;

use super::{Common, Report};

#[derive(Debug, Args)]
pub(crate) struct CdcArgs {
    #[command(flatten)]
    common: Common,
    /// The source PostgreSQL (wal_level = logical).
    #[arg(long, env = "SHOPFLOW_POSTGRES_URL")]
    postgres: String,
    /// Rows in the table, all updated by the bulk update.
    #[arg(long, default_value_t = 100_000)]
    rows: u64,
    /// Bulk updates to measure.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
}

pub(crate) async fn run(a: CdcArgs) -> anyhow::Result<()> {
    let report = Report::new(&a.common, "cdc");
    let tmp = tempfile::Builder::new()
        .prefix("shopflow-bench-cdc")
        .tempdir_in(&a.common.dir)?;
    report.machine(tmp.path())?;
    let schema = format!("bench_cdc_{}", std::process::id());
    let (sql, conn) = tokio_postgres::connect(&a.postgres, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    sql.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE;
         CREATE SCHEMA {schema};
         CREATE TABLE {schema}.items (id BIGINT PRIMARY KEY, name TEXT NOT NULL, qty INTEGER NOT NULL);
         INSERT INTO {schema}.items SELECT g, 'item ' || g, 0 FROM generate_series(1, {}) g;
         CREATE PUBLICATION {schema}_pub FOR TABLE {schema}.items;",
        a.rows
    ))
    .await?;
    let result = measure(&report, &a, &schema, &sql, tmp.path()).await;
    for _ in 0..50 {
        let gone = sql
            .query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                &[&schema],
            )
            .await
            .map(|r| !r.is_empty())
            .unwrap_or(false);
        if gone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sql.batch_execute(&format!(
        "DROP PUBLICATION IF EXISTS {schema}_pub; DROP SCHEMA IF EXISTS {schema} CASCADE;"
    ))
    .await?;
    result
}

async fn measure(
    report: &Report,
    a: &CdcArgs,
    schema: &str,
    sql: &tokio_postgres::Client,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let log = shopflow_log::Log::open(dir.join("log"), shopflow_log::Config::default())?;
    let state = shopflow_store::Db::open_sqlite(dir.join("cdc.db"))?;
    let mut config = shopflow_cdc::Config::new(&a.postgres, format!("{schema}_pub"), schema);
    config.lag_every = Duration::from_millis(200);
    let connector = shopflow_cdc::Connector::new(config, Arc::new(log.clone()), state).await?;
    let status = connector.status();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(connector.run(async move {
        let _ = stopped.await;
    }));

    let started = Instant::now();
    while status.phase() != "streaming" {
        if task.is_finished() {
            return Err(anyhow::anyhow!("the connector stopped: {:?}", task.await?));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let snap = started.elapsed();
    let rows = status.snapshot_rows.load(Ordering::Relaxed);
    report.row("snapshot", "rows", rows as f64, "rows");
    report.row(
        "snapshot",
        "rate",
        rows as f64 / snap.as_secs_f64(),
        "rows/s",
    );

    for round in 1..=a.rounds {
        let before = status.changes.load(Ordering::Relaxed);
        let txs = status.transactions.load(Ordering::Relaxed);
        let t = Instant::now();
        sql.batch_execute(&format!("UPDATE {schema}.items SET qty = qty + 1"))
            .await?;
        let committed = t.elapsed();
        let c = Instant::now();
        // Counted once the transaction's last batch is acknowledged by the log and its commit
        // position confirmed to PostgreSQL.
        while status.changes.load(Ordering::Relaxed) < before + a.rows
            || status.transactions.load(Ordering::Relaxed) <= txs
        {
            if c.elapsed() > Duration::from_secs(600) {
                anyhow::bail!("the bulk update did not reach the bus in 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let to_bus = c.elapsed();
        let case = format!("bulk update {} rows #{round}", a.rows);
        report.row(&case, "update_commit", committed.as_secs_f64(), "s");
        report.row(&case, "commit_to_bus", to_bus.as_secs_f64(), "s");
        report.row(
            &case,
            "throughput",
            a.rows as f64 / to_bus.as_secs_f64(),
            "changes/s",
        );
    }
    let _ = stop.send(());
    task.await??;
    Ok(())
}
