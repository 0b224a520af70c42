//! `shopflow bench log|store|outbox|e2e|services|cdc|gateway`: the benchmarks.
//!
//! Every figure is printed as a row (`bench case metric value unit`), or with `--json` as one JSON
//! object per line, so tools can track them. Each run first reports the machine and its own fsync
//! rate, so durable figures can be judged against the disk.

mod cdc;
mod e2e;
mod gateway;
mod log;
mod outbox;
mod services;
mod store;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub(crate) enum Bench {
    /// The embedded log: durable append (group commit), single-publisher latency, consume.
    Log(log::LogArgs),
    /// The event store: batched appends and global reads on SQLite and PostgreSQL.
    Store(store::StoreArgs),
    /// The outbox relay: throughput and commit-to-published lag.
    Outbox(outbox::OutboxArgs),
    /// The whole shop in process: orders through the saga over HTTP, throughput and latency.
    E2e(e2e::E2eArgs),
    /// The distributed deployment as deployed: one process per service (`shopflow service` × 6)
    /// on Kafka and PostgreSQL, driven over HTTP; the same figures as `e2e`.
    Services(services::ServicesArgs),
    /// Change data capture: a PostgreSQL snapshot and a bulk update to the bus, changes/s.
    Cdc(cdc::CdcArgs),
    /// The strangler-fig gateway's added latency: direct versus proxied, interleaved.
    Gateway(gateway::GatewayArgs),
}

#[derive(Debug, Args, Clone)]
pub(crate) struct Common {
    /// One JSON object per figure instead of a table.
    #[arg(long)]
    json: bool,
    /// Where to put the benchmark's files (a fresh temporary directory under it is used).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
}

pub(crate) async fn run(b: Bench) -> anyhow::Result<()> {
    match b {
        Bench::Log(a) => log::run(a).await,
        Bench::Store(a) => store::run(a).await,
        Bench::Outbox(a) => outbox::run(a).await,
        Bench::E2e(a) => e2e::run(a).await,
        Bench::Services(a) => services::run(a).await,
        Bench::Cdc(a) => cdc::run(a).await,
        Bench::Gateway(a) => gateway::run(a).await,
    }
}

/// Prints figures as a table or JSON lines.
pub(crate) struct Report {
    json: bool,
    bench: &'static str,
}

impl Report {
    pub(crate) fn new(common: &Common, bench: &'static str) -> Self {
        let r = Self {
            json: common.json,
            bench,
        };
        if !r.json {
            println!(
                "{:<8} {:<34} {:<16} {:>14} unit",
                "bench", "case", "metric", "value"
            );
        }
        r
    }

    pub(crate) fn row(&self, case: &str, metric: &str, value: f64, unit: &str) {
        if self.json {
            let obj = serde_json::json!({
                "bench": self.bench, "case": case, "metric": metric, "value": value, "unit": unit,
            });
            println!("{obj}");
        } else {
            let v = if value.fract() == 0.0 || value.abs() >= 1000.0 {
                format!("{value:.0}")
            } else {
                format!("{value:.3}")
            };
            println!(
                "{:<8} {:<34} {:<16} {:>14} {unit}",
                self.bench, case, metric, v
            );
        }
        let _ = std::io::stdout().flush();
    }

    pub(crate) fn note(&self, text: &str) {
        if self.json {
            println!(
                "{}",
                serde_json::json!({"bench": self.bench, "case": "note", "metric": "text", "value": 0, "unit": "", "note": text})
            );
        } else {
            println!("# {text}");
        }
    }

    /// The machine, and how many `write(4 KiB) + fdatasync` per second its disk does in `dir`.
    pub(crate) fn machine(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown cpu".into());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let mem_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
            .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
        self.note(&format!("machine: {cpu}, {cores} cores, {mem_gib:.0} GiB"));
        self.row("machine", "cores", cores as f64, "cores");
        self.row("machine", "fsync_rate", fsync_rate(dir)?, "fdatasync/s");
        Ok(())
    }
}

fn fsync_rate(dir: &std::path::Path) -> anyhow::Result<f64> {
    use std::os::unix::fs::FileExt;
    let path = dir.join("fsync-probe");
    let f = std::fs::File::create(&path)?;
    let buf = vec![0x5a_u8; 4096];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(1) {
        f.write_all_at(&buf, n * 4096)?;
        f.sync_data()?;
        n += 1;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(path)?;
    Ok(rate)
}

/// Runs `f` on a throw-away PostgreSQL schema (dropped afterwards, also when `f` fails), or notes
/// that PostgreSQL was skipped when no URL was given.
pub(crate) async fn on_postgres<F, Fut>(
    report: &Report,
    url: Option<&str>,
    schema: &str,
    f: F,
) -> anyhow::Result<()>
where
    F: FnOnce(shopflow_store::Db) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let Some(url) = url else {
        report.note("postgres skipped: pass --postgres URL or set SHOPFLOW_POSTGRES_URL");
        return Ok(());
    };
    let schema = format!("{schema}_{}", std::process::id());
    let db = shopflow_store::Db::connect_postgres(url, &schema).await?;
    let result = f(db).await;
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await?;
    result
}

/// A latency histogram in microseconds.
pub(crate) fn histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

pub(crate) fn payload(size: usize, n: u64) -> bytes::Bytes {
    let mut v = format!("{{\"n\":{n},\"pad\":\"").into_bytes();
    while v.len() + 2 < size {
        v.push(b'x');
    }
    v.extend_from_slice(b"\"}");
    bytes::Bytes::from(v)
}
