use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use shopflow_bus::{Bus, Consumer, Message, TopicSpec};
use shopflow_log::{Config, Log};
use shopflow_store::Db;
use shopflow_store::outbox::{self, Relay, RelayConfig};

use super::{Common, Report, on_postgres, payload};

#[derive(Debug, Args)]
pub(crate) struct OutboxArgs {
    #[command(flatten)]
    common: Common,
    /// Messages written through the outbox per backend.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Concurrent producers, each committing its own transactions.
    #[arg(long, default_value_t = 8)]
    producers: u64,
    /// Messages per producer transaction.
    #[arg(long, default_value_t = 10)]
    per_tx: u64,
    /// PostgreSQL URL; without it (or SHOPFLOW_POSTGRES_URL) only SQLite is measured.
    #[arg(long, env = "SHOPFLOW_POSTGRES_URL")]
    postgres: Option<String>,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 200)]
    payload: usize,
}

pub(crate) async fn run(a: OutboxArgs) -> anyhow::Result<()> {
    let report = Report::new(&a.common, "outbox");
    let tmp = tempfile::Builder::new()
        .prefix("shopflow-bench-outbox")
        .tempdir_in(&a.common.dir)?;
    report.machine(tmp.path())?;
    let db = Db::open_sqlite(tmp.path().join("svc.db"))?;
    measure(&report, "sqlite", db, tmp.path(), &a).await?;
    on_postgres(&report, a.postgres.as_deref(), "bench_outbox", |db| {
        measure(&report, "postgres", db, tmp.path(), &a)
    })
    .await?;
    Ok(())
}

async fn measure(
    report: &Report,
    backend: &str,
    db: Db,
    dir: &std::path::Path,
    a: &OutboxArgs,
) -> anyhow::Result<()> {
    db.migrate_building_blocks().await?;
    let log = Log::open(dir.join(format!("log-{backend}")), Config::default())?;
    let topic = "bench.outbox";
    log.create_topic(topic, &TopicSpec::new(4)).await?;
    let relay = Arc::new(Relay::new(db.clone(), log.clone(), RelayConfig::default()));
    let stats = relay.stats();
    let (stop_tx, relay_task) = spawn_relay(&relay);

    let txs_per_producer = a.messages / a.producers / a.per_tx;
    let total = txs_per_producer * a.producers * a.per_tx;
    let committed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut producers = Vec::new();
    for p in 0..a.producers {
        let db = db.clone();
        let committed = committed.clone();
        let (per_tx, size) = (a.per_tx, a.payload);
        producers.push(tokio::spawn(async move {
            for t in 0..txs_per_producer {
                let msgs: Vec<Message> = (0..per_tx)
                    .map(|i| {
                        let n = (p * txs_per_producer + t) * per_tx + i;
                        Message::new(topic, format!("agg-{}", n % 1000), payload(size, n))
                    })
                    .collect();
                let mut tx = db.begin().await?;
                outbox::enqueue(&mut tx, &msgs).await?;
                tx.commit().await?;
                committed.fetch_add(per_tx, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let mut c = log.subscribe("bench-outbox", &[topic.to_string()]).await?;
    let mut got = 0u64;
    while got < total {
        let recs = c.poll(10_000, Duration::from_secs(30)).await?;
        if recs.is_empty() {
            anyhow::bail!("{backend}: relay stalled at {got} of {total}");
        }
        got += recs.len() as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    for p in producers {
        p.await??;
    }
    let _ = stop_tx.send(());
    relay_task.await??;
    let case = format!("{backend}_p{}_tx{}", a.producers, a.per_tx);
    report.row(&case, "throughput", got as f64 / secs, "messages/s");
    report.row(&case, "commits", (total / a.per_tx) as f64 / secs, "tx/s");
    let h = stats.lag_us.lock().expect("stats lock").clone();
    report.row(
        &case,
        "lag_p50",
        h.value_at_quantile(0.50) as f64 / 1000.0,
        "ms",
    );
    report.row(
        &case,
        "lag_p99",
        h.value_at_quantile(0.99) as f64 / 1000.0,
        "ms",
    );

    // Lag without load: one message per transaction, one at a time.
    stats.lag_us.lock().expect("stats lock").reset();
    let (stop_tx, relay_task) = spawn_relay(&relay);
    for i in 0..500u64 {
        let mut tx = db.begin().await?;
        outbox::enqueue(
            &mut tx,
            &[Message::new(topic, "idle", payload(a.payload, i))],
        )
        .await?;
        tx.commit().await?;
        let recs = c.poll(1, Duration::from_secs(10)).await?;
        if recs.is_empty() {
            anyhow::bail!("{backend}: relay did not publish within 10 s");
        }
    }
    let _ = stop_tx.send(());
    relay_task.await??;
    let h = stats.lag_us.lock().expect("stats lock").clone();
    let case = format!("{backend}_single_tx1");
    report.row(
        &case,
        "lag_p50",
        h.value_at_quantile(0.50) as f64 / 1000.0,
        "ms",
    );
    report.row(
        &case,
        "lag_p99",
        h.value_at_quantile(0.99) as f64 / 1000.0,
        "ms",
    );
    drop(c);
    log.close().await?;
    Ok(())
}

type RelayTask = tokio::task::JoinHandle<shopflow_store::Result<()>>;

/// Runs the relay in a task until the returned sender fires.
fn spawn_relay(relay: &Arc<Relay<Log>>) -> (tokio::sync::oneshot::Sender<()>, RelayTask) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let r = relay.clone();
    let task = tokio::spawn(async move {
        r.run(async {
            let _ = stop_rx.await;
        })
        .await
    });
    (stop_tx, task)
}
