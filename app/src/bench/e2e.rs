use std::time::Duration;

use clap::Args;
use shopflow::load::{LoadConfig, run as run_load};
use shopflow::shop::{BusConfig, DbConfig, Shop, ShopConfig};

use super::{Common, Report};

#[derive(Debug, Args)]
pub(crate) struct E2eArgs {
    #[command(flatten)]
    common: Common,
    /// Orders in the throughput case (placed as fast as the clients go).
    #[arg(long, default_value_t = 20_000)]
    orders: u64,
    /// Orders in the latency case, placed at `--rate`.
    #[arg(long, default_value_t = 10_000)]
    latency_orders: u64,
    /// Orders per second in the latency case.
    #[arg(long, default_value_t = 1000.0)]
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
    /// `embedded`, or `kafka://host:port` (a fresh namespace is used and left behind).
    #[arg(long, default_value = "embedded")]
    bus: BusConfig,
    /// `sqlite`, or `postgres://…` (fresh schemas are used and dropped afterwards).
    #[arg(long, default_value = "sqlite")]
    db: DbConfig,
}

pub(crate) async fn run(a: E2eArgs) -> anyhow::Result<()> {
    let report = Report::new(&a.common, "e2e");
    let tmp = tempfile::Builder::new()
        .prefix("shopflow-bench-e2e")
        .tempdir_in(&a.common.dir)?;
    report.machine(tmp.path())?;
    let run = format!("bench{}", chrono::Utc::now().format("%Y%m%d%H%M%S"));
    let bus = match a.bus {
        BusConfig::Kafka(mut k) => {
            if k.namespace.is_empty() {
                k.namespace = format!("{run}.");
            }
            BusConfig::Kafka(k)
        }
        other => other,
    };
    let db = match a.db {
        DbConfig::Postgres { url, .. } => DbConfig::Postgres {
            url,
            schema_prefix: format!("{run}_"),
        },
        other => other,
    };
    report.note(&format!(
        "bus {}, databases {}, sagas by {}",
        match &bus {
            BusConfig::Embedded => "embedded log".to_owned(),
            BusConfig::Kafka(k) => format!("Kafka at {} (namespace {})", k.brokers, k.namespace),
        },
        match &db {
            DbConfig::Sqlite => "SQLite".to_owned(),
            DbConfig::Postgres { schema_prefix, .. } => {
                format!("PostgreSQL (schemas {schema_prefix}*)")
            }
        },
        a.saga
    ));
    let shop = Shop::start(ShopConfig {
        saga: a.saga,
        bus,
        db: db.clone(),
        ..ShopConfig::new(tmp.path().join("data"), "127.0.0.1:0".parse()?)
    })
    .await?;
    let target = format!("http://{}", shop.addr);
    let cases = [
        ("saga_max_throughput", a.orders, None),
        ("saga_at_rate", a.latency_orders, Some(a.rate)),
    ];
    for (case, orders, rate) in cases {
        let cfg = LoadConfig {
            target: target.clone(),
            orders,
            rate,
            concurrency: a.concurrency,
            decline_every: a.decline_every,
            bad_country_every: a.bad_country_every,
            progress: false,
            admin_token: Some(shop.admin_token.as_str().to_owned()),
            ..LoadConfig::default()
        };
        let cpu_before = process_cpu();
        let counters_before = Counters::now();
        let r = tokio::task::spawn_blocking(move || run_load(&cfg)).await??;
        let counted = Counters::now().since(&counters_before);
        let cpu = process_cpu()
            .zip(cpu_before)
            .map(|(a, b)| (a.0 - b.0, a.1 - b.1));
        let case = match rate {
            Some(r) => format!("{case}_{r:.0}"),
            None => case.to_owned(),
        };
        outcome_rows(&report, &case, &r);
        // The whole process (the shop and the load clients in it), user and kernel.
        if let Some((user, system)) = cpu {
            let per = |secs: f64| secs * 1000.0 / r.placed.max(1) as f64;
            report.row(&case, "cpu_per_order", per(user + system), "ms");
            report.row(&case, "cpu_user_per_order", per(user), "ms");
            report.row(&case, "cpu_system_per_order", per(system), "ms");
        }
        if let Some(kib) = peak_rss_kib() {
            report.row(&case, "peak_rss", kib as f64 / 1024.0, "MiB");
        }
        hops(&report, &case, &counted, r.placed, r.total_secs);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shop.stop().await?;
    if let DbConfig::Postgres { url, schema_prefix } = db {
        drop_schemas(&url, &schema_prefix).await?;
    }
    Ok(())
}

/// The figures of one load case: rates, placed → final latency, the POST's p99, outcomes.
pub(crate) fn outcome_rows(report: &Report, case: &str, r: &shopflow::load::LoadReport) {
    report.row(case, "placed", r.placed as f64 / r.place_secs, "orders/s");
    if r.rejected > 0 {
        report.row(case, "rejected", r.rejected as f64, "orders");
    }
    report.row(
        case,
        "completed",
        r.placed as f64 / r.total_secs,
        "orders/s",
    );
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        report.row(
            case,
            &format!("final_{name}"),
            r.latency_ms.value_at_quantile(q) as f64,
            "ms",
        );
    }
    report.row(case, "final_max", r.latency_ms.max() as f64, "ms");
    report.row(
        case,
        "post_p99",
        r.accept_ms.value_at_quantile(0.99) as f64,
        "ms",
    );
    report.row(
        case,
        "shipped",
        *r.outcomes.get("SHIPPED").unwrap_or(&0) as f64,
        "orders",
    );
    if let Some(cancelled) = r.outcomes.get("CANCELLED") {
        report.row(case, "cancelled", *cancelled as f64, "orders");
    }
}

pub(crate) async fn drop_schemas(url: &str, prefix: &str) -> anyhow::Result<()> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let rows = client
        .query(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
            &[&format!("{prefix}%")],
        )
        .await?;
    for r in rows {
        let name: String = r.get(0);
        client
            .batch_execute(&format!("DROP SCHEMA {name} CASCADE"))
            .await?;
    }
    Ok(())
}

/// This process's user and system CPU time so far, in seconds (`/proc/self/stat`).
fn process_cpu() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user / ticks, system / ticks))
}

/// The peak resident set of this process so far (`VmHWM`), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The shop's counters (`/metrics`), by series (`name{labels}`).
#[derive(Debug, Default)]
struct Counters(std::collections::BTreeMap<String, f64>);

impl Counters {
    fn now() -> Self {
        let Some(handle) = shopflow::ops::metrics_handle() else {
            return Self::default();
        };
        Self(
            handle
                .render()
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (series, value) = l.rsplit_once(' ')?;
                    Some((series.to_owned(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    fn since(&self, before: &Counters) -> Counters {
        Counters(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v - before.0.get(k).copied().unwrap_or(0.0)))
                .collect(),
        )
    }

    /// Series of `name` that `keep` accepts (given the whole series), by the value of `label`.
    fn by(&self, name: &str, label: &str, keep: impl Fn(&str) -> bool) -> Vec<(String, f64)> {
        let needle = format!("{label}=\"");
        self.0
            .iter()
            .filter(|(k, _)| keep(k))
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(name)?.strip_prefix('{')?;
                let at = rest.find(&needle)? + needle.len();
                let value = &rest[at..rest[at..].find('"')? + at];
                Some((value.to_owned(), *v))
            })
            .collect()
    }

    fn total(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
            .map(|(_, v)| v)
            .sum()
    }
}

/// Per hop: events per consumer transaction and transactions per second; durable commits per
/// second of each database; the log's records per group commit and fsyncs per order.
fn hops(report: &Report, case: &str, c: &Counters, orders: u64, secs: f64) {
    let consumed: std::collections::BTreeMap<String, f64> = c
        .by("shopflow_events_consumed_total", "consumer", |_| true)
        .into_iter()
        .collect();
    for (consumer, batches) in c.by("shopflow_consumer_batches_total", "consumer", |_| true) {
        if batches < 1.0 {
            continue;
        }
        let events = consumed.get(&consumer).copied().unwrap_or(0.0);
        report.row(
            case,
            &format!("batch_{consumer}"),
            events / batches,
            "events/tx",
        );
        report.row(case, &format!("tx_rate_{consumer}"), batches / secs, "tx/s");
    }
    // Where a hop's time goes: from a commit to the bus having its events (the relays), and
    // from the bus to a consumer taking them (delivery and queueing), mean per event.
    let relay = (
        c.total("shopflow_outbox_lag_seconds_sum"),
        c.total("shopflow_outbox_lag_seconds_count"),
    );
    if relay.1 >= 1.0 {
        report.row(case, "relay_lag_mean", relay.0 / relay.1 * 1000.0, "ms");
    }
    let counts: std::collections::BTreeMap<String, f64> = c
        .by(
            "shopflow_consumer_delivery_seconds_count",
            "consumer",
            |_| true,
        )
        .into_iter()
        .collect();
    for (consumer, sum) in c.by("shopflow_consumer_delivery_seconds_sum", "consumer", |_| {
        true
    }) {
        let n = counts.get(&consumer).copied().unwrap_or(0.0);
        if n >= 1.0 {
            report.row(
                case,
                &format!("delivery_{consumer}_mean"),
                sum / n * 1000.0,
                "ms",
            );
        }
    }
    // Only the durable commits are fsynced (relaxed ones ride on the next durable one).
    let durable = |series: &str| series.contains("sync=\"durable\"");
    let mut all = 0.0;
    for (db, commits) in c.by("shopflow_db_commits_total", "db", durable) {
        all += commits;
        report.row(
            case,
            &format!("commits_{db}"),
            commits / secs,
            "durable tx/s",
        );
    }
    let per_order = |v: f64| v / orders.max(1) as f64;
    report.row(
        case,
        "durable_db_commits_per_order",
        per_order(all),
        "tx/order",
    );
    let (groups, records) = (
        c.total("shopflow_log_group_commits_total"),
        c.total("shopflow_log_records_appended_total"),
    );
    if groups >= 1.0 {
        report.row(case, "log_records_per_commit", records / groups, "records");
        report.row(case, "log_commits", groups / secs, "commits/s");
        report.row(
            case,
            "log_fsyncs_per_order",
            per_order(c.total("shopflow_log_fsyncs_total")),
            "fsyncs/order",
        );
    }
}
