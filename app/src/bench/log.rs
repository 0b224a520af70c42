use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use shopflow_bus::{Bus, Consumer, Message, TopicSpec};
use shopflow_log::{Config, Log};

use super::{Common, Report, histogram, payload};

#[derive(Debug, Args)]
pub(crate) struct LogArgs {
    #[command(flatten)]
    common: Common,
    /// Events per throughput case.
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    /// Concurrent publishers in the group-commit cases.
    #[arg(long, default_value_t = 64)]
    publishers: u64,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// Appends in the single-publisher latency case.
    #[arg(long, default_value_t = 3000)]
    latency_samples: u64,
}

pub(crate) async fn run(a: LogArgs) -> anyhow::Result<()> {
    let report = Report::new(&a.common, "log");
    let tmp = tempfile::Builder::new()
        .prefix("shopflow-bench-log")
        .tempdir_in(&a.common.dir)?;
    report.machine(tmp.path())?;
    let log = Log::open(tmp.path().join("log"), Config::default())?;
    let topic = "bench.events";
    log.create_topic(topic, &TopicSpec::new(a.partitions))
        .await?;

    for (case, batch, publishers) in [
        ("append_concurrent_batch64", 64u64, a.publishers),
        ("append_concurrent_batch1", 1u64, a.publishers * 4),
    ] {
        let events = if batch == 1 { a.events / 4 } else { a.events };
        let per = events / publishers;
        let done = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for p in 0..publishers {
            let log = log.clone();
            let done = done.clone();
            let size = a.payload;
            tasks.push(tokio::spawn(async move {
                let mut sent = 0u64;
                while sent < per {
                    let n = batch.min(per - sent);
                    let msgs: Vec<Message> = (0..n)
                        .map(|i| {
                            let k = p * 1_000_000 + sent + i;
                            Message::new(topic, format!("order-{}", k % 10_000), payload(size, k))
                        })
                        .collect();
                    log.publish(msgs).await?;
                    sent += n;
                    done.fetch_add(n, Ordering::Relaxed);
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let secs = started.elapsed().as_secs_f64();
        let n = done.load(Ordering::Relaxed);
        report.row(
            &format!("{case}_p{publishers}"),
            "throughput",
            n as f64 / secs,
            "events/s",
        );
        report.row(
            &format!("{case}_p{publishers}"),
            "bandwidth",
            n as f64 * a.payload as f64 / secs / 1e6,
            "MB/s",
        );
    }

    // Single publisher, one event per append: every append waits for its own fsync.
    let mut h = histogram();
    let started = Instant::now();
    for i in 0..a.latency_samples {
        let t = Instant::now();
        log.publish(vec![Message::new(topic, "single", payload(a.payload, i))])
            .await?;
        h.record(t.elapsed().as_micros().max(1) as u64)?;
    }
    let secs = started.elapsed().as_secs_f64();
    report.row(
        "append_single_batch1",
        "throughput",
        a.latency_samples as f64 / secs,
        "events/s",
    );
    report.row(
        "append_single_batch1",
        "p50",
        h.value_at_quantile(0.50) as f64 / 1000.0,
        "ms",
    );
    report.row(
        "append_single_batch1",
        "p99",
        h.value_at_quantile(0.99) as f64 / 1000.0,
        "ms",
    );
    report.row("append_single_batch1", "max", h.max() as f64 / 1000.0, "ms");

    // Consume everything from the start with one consumer.
    let mut total = 0u64;
    for p in 0..a.partitions {
        let (s, e) = log
            .watermarks(&shopflow_bus::TopicPartition::new(topic, p))
            .await?;
        total += e - s;
    }
    let mut c = log
        .subscribe("bench-consumer", &[topic.to_string()])
        .await?;
    let started = Instant::now();
    let mut got = 0u64;
    let mut bytes = 0u64;
    while got < total {
        let recs = c.poll(10_000, Duration::from_secs(5)).await?;
        if recs.is_empty() {
            anyhow::bail!("consumer stalled at {got} of {total}");
        }
        got += recs.len() as u64;
        bytes += recs.iter().map(|r| r.value.len() as u64).sum::<u64>();
    }
    let secs = started.elapsed().as_secs_f64();
    report.row(
        "consume_one_consumer",
        "throughput",
        got as f64 / secs,
        "events/s",
    );
    report.row(
        "consume_one_consumer",
        "bandwidth",
        bytes as f64 / secs / 1e6,
        "MB/s",
    );
    drop(c);
    log.close().await?;
    Ok(())
}
