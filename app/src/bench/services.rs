//! `shopflow bench services`: the distributed deployment as it is deployed — one process per
//! service (`shopflow service <name>` × 6, this binary) on one Kafka broker and one PostgreSQL —
//! driven over HTTP by `shopflow load`'s code from this process. Reports the same figures as
//! `bench e2e`, with the CPU of all six processes.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use shopflow::load::{LoadConfig, run as run_load};
use shopflow::shop::{BusConfig, DbConfig};

use super::{Common, Report};

#[derive(Debug, Args)]
pub(crate) struct ServicesArgs {
    #[command(flatten)]
    common: Common,
    /// Orders in the throughput case (placed as fast as the clients go).
    #[arg(long, default_value_t = 3_000)]
    orders: u64,
    /// Orders in the latency case, placed at `--rate`.
    #[arg(long, default_value_t = 1_000)]
    latency_orders: u64,
    /// Orders per second in the latency case.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Every n-th order uses a declining card and is cancelled (0: never; the peers' harnesses
    /// in docs/BENCHMARKS.md use 20).
    #[arg(long, default_value_t = 0)]
    decline_every: u64,
    /// Every n-th order goes to an unsupported country and is compensated (0: never).
    #[arg(long, default_value_t = 0)]
    bad_country_every: u64,
    /// `choreography` or `orchestration`.
    #[arg(long, default_value = "choreography")]
    saga: shopflow::shop::SagaStyle,
    /// `kafka://host:port` (a fresh namespace is used and left behind).
    #[arg(long)]
    bus: String,
    /// `postgres://…` (fresh schemas are used and dropped afterwards).
    #[arg(long)]
    db: String,
}

/// The services, in the order they start: the order service last, as it tokenises cards
/// through a payment process.
const SERVICES: [&str; 6] = [
    "users",
    "inventory",
    "payment",
    "shipping",
    "notification",
    "order",
];

/// The six processes; killed when dropped (a failed run leaves none behind).
struct Fleet {
    procs: Vec<(&'static str, u16, Child)>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (_, _, c) in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Fleet {
    fn url(&self, service: &str) -> String {
        let port = self
            .procs
            .iter()
            .find(|(s, _, _)| *s == service)
            .map(|(_, p, _)| *p)
            .unwrap_or_default();
        format!("http://127.0.0.1:{port}")
    }

    /// User and system CPU seconds of all the processes so far.
    fn cpu(&self) -> f64 {
        self.procs
            .iter()
            .filter_map(|(_, _, c)| process_cpu(c.id()))
            .sum()
    }

    /// SIGTERM to each, then waits for them to stop (graceful: consumers commit, relays drain).
    fn stop(mut self) -> anyhow::Result<()> {
        for (_, _, c) in &self.procs {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(c.id() as i32)
                    .context("a child process without an id")?,
                rustix::process::Signal::TERM,
            );
        }
        let end = Instant::now() + Duration::from_secs(30);
        for (name, _, c) in &mut self.procs {
            loop {
                if c.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() > end {
                    eprintln!("shopflow service {name} did not stop within 30 s; killing it");
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.procs.clear();
        Ok(())
    }
}

fn with_param(url: &str, key: &str, value: &str) -> String {
    if url.contains(&format!("{key}=")) {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&{key}={value}")
    } else {
        format!("{url}?{key}={value}")
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// User + system CPU seconds of process `pid` (`/proc/<pid>/stat`).
fn process_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / ticks)
}

fn healthy(url: &str) -> bool {
    ureq::get(&format!("{url}/health"))
        .config()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .call()
        .is_ok_and(|r| r.status() == 200)
}

pub(crate) async fn run(a: ServicesArgs) -> anyhow::Result<()> {
    let (Ok(BusConfig::Kafka(_)), Ok(DbConfig::Postgres { .. })) =
        (a.bus.parse::<BusConfig>(), a.db.parse::<DbConfig>())
    else {
        bail!(
            "one process per service shares a Kafka broker and a PostgreSQL server: \
             --bus kafka://host:port --db postgres://… (the embedded shop is `bench e2e`)"
        );
    };
    let report = Report::new(&a.common, "services");
    let tmp = tempfile::Builder::new()
        .prefix("shopflow-bench-services")
        .tempdir_in(&a.common.dir)?;
    report.machine(tmp.path())?;
    let run = format!("bench{}", chrono::Utc::now().format("%Y%m%d%H%M%S"));
    let bus = with_param(&a.bus, "namespace", &format!("{run}."));
    let db = with_param(&a.db, "schema_prefix", &format!("{run}_"));
    report.note(&format!(
        "one process per service ({}), bus {bus}, databases {db}, sagas by {}",
        SERVICES.join(", "),
        a.saga
    ));
    let admin_token = format!("bench-{}", uuid::Uuid::now_v7().simple());
    let vault_keys = shopflow_payment::VaultKeys::generate();
    let exe = std::env::current_exe().context("where is this binary?")?;
    let mut fleet = Fleet { procs: Vec::new() };
    for service in SERVICES {
        let port = free_port()?;
        let log = tmp.path().join(format!("{service}.log"));
        let child = Command::new(&exe)
            .args(["service", service, "--bus", &bus, "--db", &db, "--saga"])
            .arg(a.saga.to_string())
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(tmp.path().join(service))
            .env("SHOPFLOW_ADMIN_TOKEN", &admin_token)
            .env("SHOPFLOW_VAULT_KEYS", &vault_keys)
            .env("SHOPFLOW_VAULT_URL", fleet.url("payment"))
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log)?))
            .spawn()
            .with_context(|| format!("starting shopflow service {service}"))?;
        fleet.procs.push((service, port, child));
        let url = fleet.url(service);
        let end = Instant::now() + Duration::from_secs(60);
        while !tokio::task::spawn_blocking({
            let url = url.clone();
            move || healthy(&url)
        })
        .await?
        {
            let exited = fleet
                .procs
                .last_mut()
                .map(|(_, _, c)| c.try_wait())
                .transpose()?
                .flatten();
            if exited.is_some() || Instant::now() > end {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                bail!(
                    "shopflow service {service} did not start on {url}; the end of its log:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let cases = [
        ("saga_max_throughput", a.orders, None),
        ("saga_at_rate", a.latency_orders, Some(a.rate)),
    ];
    for (case, orders, rate) in cases {
        let cfg = LoadConfig {
            target: fleet.url("order"),
            users_target: Some(fleet.url("users")),
            products_target: Some(fleet.url("inventory")),
            orders,
            rate,
            concurrency: a.concurrency,
            decline_every: a.decline_every,
            bad_country_every: a.bad_country_every,
            progress: false,
            admin_token: Some(admin_token.clone()),
            ..LoadConfig::default()
        };
        let cpu_before = fleet.cpu();
        let r = tokio::task::spawn_blocking(move || run_load(&cfg)).await??;
        let cpu = fleet.cpu() - cpu_before;
        let case = match rate {
            Some(r) => format!("{case}_{r:.0}"),
            None => case.to_owned(),
        };
        super::e2e::outcome_rows(&report, &case, &r);
        // The six processes (the load clients in this one are not counted).
        report.row(
            &case,
            "cpu_per_order",
            cpu * 1000.0 / r.placed.max(1) as f64,
            "ms",
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::task::spawn_blocking(move || fleet.stop()).await??;
    if let Ok(DbConfig::Postgres { url, schema_prefix }) = db.parse::<DbConfig>() {
        super::e2e::drop_schemas(&url, &schema_prefix).await?;
    }
    Ok(())
}
