use std::time::Instant;

use clap::Args;
use shopflow_envelope::{Envelope, Kind, Meta};
use shopflow_store::{AppendStream, Db, EventStore, ExpectedVersion};

use super::{Common, Report, on_postgres};

#[derive(Debug, Args)]
pub(crate) struct StoreArgs {
    #[command(flatten)]
    common: Common,
    /// Events appended per backend.
    #[arg(long, default_value_t = 500_000)]
    events: u64,
    /// Events per transaction.
    #[arg(long, default_value_t = 1000)]
    batch: u64,
    /// Events per stream within a batch.
    #[arg(long, default_value_t = 10)]
    per_stream: u64,
    /// PostgreSQL URL; without it (or SHOPFLOW_POSTGRES_URL) only SQLite is measured.
    #[arg(long, env = "SHOPFLOW_POSTGRES_URL")]
    postgres: Option<String>,
}

pub(crate) async fn run(a: StoreArgs) -> anyhow::Result<()> {
    let report = Report::new(&a.common, "store");
    let tmp = tempfile::Builder::new()
        .prefix("shopflow-bench-store")
        .tempdir_in(&a.common.dir)?;
    report.machine(tmp.path())?;
    let sqlite = Db::open_sqlite(tmp.path().join("store.db"))?;
    measure(&report, "sqlite", sqlite, &a).await?;
    on_postgres(&report, a.postgres.as_deref(), "bench_store", |db| {
        measure(&report, "postgres", db, &a)
    })
    .await?;
    Ok(())
}

async fn measure(report: &Report, backend: &str, db: Db, a: &StoreArgs) -> anyhow::Result<()> {
    db.migrate_building_blocks().await?;
    let store = EventStore::new(db.clone());
    let streams_per_batch = (a.batch / a.per_stream).max(1);
    let batches = a.events / (streams_per_batch * a.per_stream);
    let mut appended = 0u64;
    let mut encode_secs = 0.0;
    let started = Instant::now();
    for b in 0..batches {
        let t = Instant::now();
        let envs: Vec<(String, Vec<Envelope>)> = (0..streams_per_batch)
            .map(|s| {
                let stream = format!("order-{b}-{s}");
                let evs = (1..=a.per_stream)
                    .map(|q| {
                        Envelope::from_parts(
                            "OrderLineAdded",
                            1,
                            Kind::Domain,
                            serde_json::json!({"sku": format!("SKU-{q}"), "quantity": q, "priceMinor": 1299}),
                            Meta::new("bench", stream.clone(), q),
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((stream, evs))
            })
            .collect::<anyhow::Result<_>>()?;
        encode_secs += t.elapsed().as_secs_f64();
        let batch: Vec<AppendStream<'_>> = envs
            .iter()
            .map(|(s, e)| AppendStream {
                stream: s,
                expected: ExpectedVersion::NoStream,
                events: e,
            })
            .collect();
        let mut tx = db.begin().await?;
        store.append_batch(&mut tx, &batch).await?;
        tx.commit().await?;
        appended += streams_per_batch * a.per_stream;
    }
    let secs = started.elapsed().as_secs_f64();
    let case = format!("{backend}_append_batch{}", a.batch);
    report.row(&case, "throughput", appended as f64 / secs, "events/s");
    report.row(
        &case,
        "throughput_excl_build",
        appended as f64 / (secs - encode_secs),
        "events/s",
    );
    report.row(&case, "transactions", batches as f64 / secs, "tx/s");

    let started = Instant::now();
    let mut after = 0;
    let mut read = 0u64;
    loop {
        let page = store.read_all(after, 5000).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        read += page.len() as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    report.row(
        &format!("{backend}_read_all"),
        "throughput",
        read as f64 / secs,
        "events/s",
    );
    Ok(())
}
