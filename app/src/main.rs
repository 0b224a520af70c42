//! The `shopflow` command line.

mod admin;
mod bench;
mod history;

/// Most events one `events tail --follow` round asks for.
const MAX_TAIL: u32 = shopflow::tail::MAX_LIMIT;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use shopflow::shop::{Shop, ShopConfig};

/// jemalloc rather than glibc's malloc: a shop's heap mixes long-lived allocations (page caches,
/// indexes) with several short-lived ones per event, and glibc's free lists grew with that mix
/// until malloc was a fifth of the CPU after 200,000 orders; jemalloc's size-class slabs keep
/// the cost per order flat (docs/BENCHMARKS.md, issue 14).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// shopflow: an event-driven commerce backend and the building blocks it is made of.
#[derive(Debug, Parser)]
#[command(name = "shopflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// What SQLite may hold in memory across every database of this process, in MiB (page
    /// caches first; 0: no bound). Resident memory stays flat as history grows; a larger
    /// budget keeps more of a big database's pages hot (docs/OPERATIONS.md).
    #[arg(
        long,
        global = true,
        env = "SHOPFLOW_SQLITE_MEMORY_MIB",
        default_value_t = shopflow_store::DEFAULT_SQLITE_MEMORY_BUDGET / (1024 * 1024)
    )]
    sqlite_memory_mib: i64,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole shop in this process: every service, the API, relays and consumers.
    Up(RunArgs),
    /// Run one service in this process (its consumers, relays and HTTP routes), for the
    /// distributed deployment: `shopflow service payment --bus kafka://… --db postgres://…`.
    Service {
        /// users, inventory, payment, shipping, notification or order.
        #[arg(value_parser = shopflow::services::parse)]
        name: &'static str,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Capture a PostgreSQL database's row changes onto the bus (change data capture), for the
    /// distributed deployment: `shopflow cdc --cdc-source postgres://… --bus kafka://…`. (The
    /// embedded shop runs it inside `up --cdc-source …`, since it owns the log.)
    Cdc {
        #[command(flatten)]
        cdc: shopflow::cdc::CdcArgs,
        /// Where the connector's own database lives (SQLite), unless --db says PostgreSQL.
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// The bus: `embedded` (the log in <data-dir>/log) or `kafka://host:port[,…]`.
        #[arg(long, default_value = "embedded", env = "SHOPFLOW_BUS")]
        bus: shopflow::shop::BusConfig,
        /// The connector's own database (whether its snapshot finished): `sqlite` or
        /// `postgres://…` (schema `cdc`).
        #[arg(long, default_value = "sqlite", env = "SHOPFLOW_DB")]
        db: shopflow::shop::DbConfig,
        /// Where /health and /metrics are served.
        #[arg(long, default_value = "127.0.0.1:8091")]
        listen: SocketAddr,
        /// Partitions of each topic it creates.
        #[arg(long, default_value_t = 4)]
        partitions: u32,
    },
    /// The strangler-fig gateway: each route to the legacy system, to the shop, or to both in
    /// shadow, switched at run time (docs/MIGRATING.md):
    /// `shopflow gateway --routes routes.toml --listen 127.0.0.1:8000`.
    Gateway {
        /// The routes file.
        #[arg(long)]
        routes: PathBuf,
        /// Where clients connect.
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
        /// The legacy side's URL (overrides the routes file's [legacy] url).
        #[arg(long)]
        legacy: Option<String>,
        /// The new side's URL (overrides the routes file's [new] url).
        #[arg(long)]
        new: Option<String>,
        /// Where its database (switches, differences) and, embedded, its log live.
        #[arg(long, default_value = "./data-gateway")]
        data_dir: PathBuf,
        /// The bus its RouteSwitched system events go to.
        #[arg(long, default_value = "embedded", env = "SHOPFLOW_BUS")]
        bus: shopflow::shop::BusConfig,
        /// Its database: `sqlite` or `postgres://…` (schema `gateway`).
        #[arg(long, default_value = "sqlite", env = "SHOPFLOW_DB")]
        db: shopflow::shop::DbConfig,
        /// The token of its admin API (default: <data-dir>/admin.token, created once).
        #[arg(long, env = "SHOPFLOW_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Partitions of the topic it creates (system.route-switched): the deployment's count,
        /// as every process of it is given.
        #[arg(long, default_value_t = 4)]
        partitions: u32,
    },
    /// Show or switch a running gateway's routes, or list its shadow differences.
    Routes {
        #[command(subcommand)]
        action: RoutesAction,
        /// The gateway's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8000", global = true)]
        gateway: String,
        /// The admin token (default: the one in <data-dir>/admin.token).
        #[arg(
            long,
            env = "SHOPFLOW_ADMIN_TOKEN",
            hide_env_values = true,
            global = true
        )]
        admin_token: Option<String>,
        /// Where to look for admin.token when no token is given.
        #[arg(long, default_value = "./data", global = true)]
        data_dir: PathBuf,
    },
    /// Place orders against a running shop and report throughput, latency and outcomes.
    Load {
        /// How many orders.
        #[arg(long, default_value_t = 1000)]
        orders: u64,
        /// Orders per second (default: as fast as the workers go).
        #[arg(long)]
        rate: Option<f64>,
        /// Concurrent clients.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// The shop's base URL (with one process per service: the order service's).
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        target: String,
        /// The users service's base URL, where it runs on its own (default: --target).
        #[arg(long)]
        users_target: Option<String>,
        /// The inventory service's base URL, where it runs on its own (default: --target).
        #[arg(long)]
        products_target: Option<String>,
        /// Do not create the LOAD-* catalog first.
        #[arg(long)]
        no_seed: bool,
        /// Every n-th order uses a declining card (0: never).
        #[arg(long, default_value_t = 0)]
        decline_every: u64,
        /// Every n-th order goes to an unsupported country (0: never).
        #[arg(long, default_value_t = 0)]
        bad_country_every: u64,
        /// Keep retrying (same Idempotency-Key) for this many seconds while the shop is down or
        /// answers 503, e.g. across a restart.
        #[arg(long, default_value_t = 0)]
        retry_for_secs: u64,
        /// Print the report as one JSON object (no progress bar).
        #[arg(long)]
        json: bool,
        /// The admin token, for creating the LOAD-* catalog (PUT /products). Default: the one
        /// in <data-dir>/admin.token.
        #[arg(long, env = "SHOPFLOW_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Where to look for admin.token when no token is given.
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
    },
    /// Check the business invariants over every service's data; exits 1 on any violation.
    Verify {
        /// The data directory of an embedded deployment.
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// The shop has drained: an order still in flight is a violation too.
        #[arg(long)]
        settled: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// The databases: `sqlite` (the files in --data-dir) or `postgres://…` as given to `up`.
        #[arg(long, default_value = "sqlite", env = "SHOPFLOW_DB")]
        db: shopflow::shop::DbConfig,
    },
    /// Move a stopped embedded deployment to Kafka and PostgreSQL: databases, topics and consumer
    /// positions. Then run `shopflow up` (or `shopflow service …`) with the same --bus and --db.
    Migrate {
        /// The embedded deployment's data directory (stop it first).
        #[arg(long)]
        from: PathBuf,
        /// `kafka://host:port[,…][?namespace=…&replication=N]`.
        #[arg(long)]
        to: String,
        /// `postgres://…[?schema_prefix=shopflow_]`: fresh schemas for every service.
        #[arg(long)]
        db: shopflow::shop::DbConfig,
        /// Print what was moved as JSON.
        #[arg(long)]
        json: bool,
    },
    /// An order of a running shop: as it is or was (time travel), and its events.
    #[command(subcommand)]
    Orders(history::Orders),
    /// The events of a running shop, as they are published.
    #[command(subcommand)]
    Events(history::Events),
    /// Dead letters of a running shop: list, show, redrive, discard.
    #[command(subcommand)]
    Dlq(admin::Dlq),
    /// Sagas of a running shop (orchestration): list, show, cancel.
    #[command(subcommand)]
    Sagas(admin::Sagas),
    /// Consumer lag of a running shop, per group and partition, and its outbox backlogs.
    Lag {
        /// Show partitions without lag too.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        common: admin::Common,
    },
    /// Operate projections of a running shop.
    #[command(subcommand)]
    Projections(Projections),
    /// Benchmarks anyone can run; results go to docs/BENCHMARKS.md.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// The JSON Schemas of every event type and version, committed under schemas/.
    #[command(subcommand)]
    Schemas(Schemas),
    /// Print the HTTP API's OpenAPI document (the one `GET /openapi.json` serves).
    Openapi,
}

#[derive(Debug, Subcommand)]
enum Schemas {
    /// Compare the event types with the committed schemas; exits 1 when an event changed
    /// incompatibly without a new version and an upcaster, or a schema is not committed.
    Check {
        /// The schema catalog (the repository's `schemas/`).
        #[arg(long, default_value = "schemas")]
        dir: PathBuf,
    },
    /// Write the schemas of new and compatibly changed event types; refuses while the check
    /// finds an incompatible change.
    Write {
        #[arg(long, default_value = "schemas")]
        dir: PathBuf,
    },
}

/// How to run the shop (or one service of it).
#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Where the event log and the services' databases live.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Where the HTTP API listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Partitions per topic (only for topics created by this start).
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Send e-mail over SMTP (`smtp://host:port`, plain) instead of to <data-dir>/mail.
    #[arg(long)]
    smtp: Option<String>,
    /// Latency of the simulated payment gateway, in milliseconds.
    #[arg(long, default_value_t = 0)]
    gateway_latency_ms: u64,
    /// Transactions each consumer keeps in flight at once, over separate partitions (for the
    /// handlers whose effects allow it). Default: 1 on SQLite, the partition count on PostgreSQL.
    #[arg(long)]
    lanes: Option<usize>,
    /// How often a busy consumer commits its offsets, in milliseconds (an idle one commits what
    /// is left within this time). A crash redelivers what was handled since, and the inboxes
    /// skip it; 0 commits after every batch.
    #[arg(long, default_value_t = 200)]
    commit_interval_ms: u64,
    /// Attempts per event before a transient failure is dead-lettered.
    #[arg(long, default_value_t = 10)]
    max_attempts: u32,
    /// First retry delay in milliseconds (doubling, with jitter, up to 10 s).
    #[arg(long, default_value_t = 50)]
    retry_initial_ms: u64,
    /// Consecutive failures of the payment gateway or of delivery that open its breaker.
    #[arg(long, default_value_t = 5)]
    breaker_failures: u32,
    /// How long an open breaker waits before it lets a probe through, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    breaker_open_ms: u64,
    /// How orders are coordinated: `choreography` (services react to events) or
    /// `orchestration` (the order-fulfilment saga sends commands).
    #[arg(long, default_value = "choreography", env = "SHOPFLOW_SAGA")]
    saga: shopflow::shop::SagaStyle,
    /// Orchestration: a step without a reply for this long is given up and compensated.
    #[arg(long)]
    saga_step_timeout_secs: Option<u64>,
    /// The bus: `embedded` (the durable log in <data-dir>/log) or
    /// `kafka://host:port[,host:port…][?replication=N]`.
    #[arg(long, default_value = "embedded", env = "SHOPFLOW_BUS")]
    bus: shopflow::shop::BusConfig,
    /// The databases: `sqlite` (one file per service in <data-dir>) or
    /// `postgres://user@host:port/db[?schema_prefix=shopflow_]` (one schema per service).
    #[arg(long, default_value = "sqlite", env = "SHOPFLOW_DB")]
    db: shopflow::shop::DbConfig,
    /// The card vault's keys: a file of `token-secret <base64>` and `key <id> <base64>` lines
    /// (every payment process of a deployment needs the same). Default: <data-dir>/payment/vault.keys,
    /// created on first start. The text itself can be given in SHOPFLOW_VAULT_KEYS.
    #[arg(long)]
    vault_keys_file: Option<PathBuf>,
    /// Where a process without the payment service tokenises cards for POST /orders: base URLs
    /// of payment processes, comma-separated, tried in turn.
    #[arg(long, env = "SHOPFLOW_VAULT_URL", value_delimiter = ',')]
    vault_url: Vec<String>,
    /// How long handled event ids stay in the inboxes, in hours (a redelivery inside it changes
    /// nothing; keep it at least as long as the bus keeps records).
    #[arg(long, default_value_t = 168)]
    inbox_retention_hours: u64,
    /// Snapshot an order every this many events (0: never).
    #[arg(long, default_value_t = 50)]
    snapshot_every: u64,
    /// The operator's token for the admin routes (`Authorization: Bearer …`; at least 16
    /// characters). Default: the one in <data-dir>/admin.token, generated and printed on first
    /// start. Every process of a distributed deployment should get the same one.
    #[arg(long, env = "SHOPFLOW_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Seconds a client may take to send a request's head; also how long an idle keep-alive
    /// connection is kept.
    #[arg(long, default_value_t = 10)]
    header_timeout_secs: u64,
    /// Seconds a request may take before it is answered 503.
    #[arg(long, default_value_t = 30)]
    request_timeout_secs: u64,
    /// Open HTTP connections at most (also bounded by the open-file limit); beyond: 503.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// HTTP requests handled at once at most; beyond: 503 with Retry-After.
    #[arg(long, default_value_t = 1024)]
    max_in_flight: usize,
    #[command(flatten)]
    cdc: shopflow::cdc::CdcArgs,
    /// The inventory follows a legacy catalog through change data capture: the changes of its
    /// `products` and `stock` tables on `<prefix>.products` and `<prefix>.stock`
    /// (docs/MIGRATING.md), e.g. `cdc.legacy`.
    #[arg(long, env = "SHOPFLOW_LEGACY_CATALOG")]
    legacy_catalog: Option<String>,
    /// Run the strangler-fig gateway beside the shop with this routes file (docs/MIGRATING.md);
    /// its `new` side is this shop.
    #[arg(long)]
    routes: Option<PathBuf>,
    /// Where the gateway listens (with --routes).
    #[arg(long, default_value = "127.0.0.1:8000")]
    gateway_listen: SocketAddr,
}

impl RunArgs {
    fn config(self) -> anyhow::Result<ShopConfig> {
        let mut saga_timeouts = shopflow_order::saga::SagaTimeouts::default();
        if let Some(s) = self.saga_step_timeout_secs {
            let d = std::time::Duration::from_secs(s.max(1));
            saga_timeouts.payment = d;
            saga_timeouts.stock = d;
            saga_timeouts.shipping = d;
        }
        let vault_keys = match (&self.vault_keys_file, std::env::var("SHOPFLOW_VAULT_KEYS")) {
            (Some(path), _) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("--vault-keys-file {}: {e}", path.display()))?,
            ),
            (None, Ok(text)) if !text.trim().is_empty() => Some(text),
            _ => None,
        };
        let cdc_config = self.cdc.config(self.partitions).map(|mut c| {
            c.replication_factor = self.bus.replication_factor();
            c
        });
        Ok(ShopConfig {
            partitions: self.partitions,
            smtp: self.smtp,
            gateway_latency: std::time::Duration::from_millis(self.gateway_latency_ms),
            runner: shopflow_runtime::RunnerConfig {
                retry: shopflow_runtime::RetryPolicy {
                    max_attempts: self.max_attempts,
                    initial: std::time::Duration::from_millis(self.retry_initial_ms),
                    ..Default::default()
                },
                lanes: self.lanes,
                commit_interval: std::time::Duration::from_millis(self.commit_interval_ms),
                ..Default::default()
            },
            breaker: shopflow_runtime::BreakerConfig {
                failure_threshold: self.breaker_failures,
                open_for: std::time::Duration::from_millis(self.breaker_open_ms),
                ..Default::default()
            },
            saga: self.saga,
            saga_timeouts,
            bus: self.bus,
            db: self.db,
            vault_keys,
            inbox_retention: shopflow_runtime::retention::InboxRetention {
                window: std::time::Duration::from_secs(self.inbox_retention_hours.max(1) * 3600),
                ..Default::default()
            },
            order_snapshots: match self.snapshot_every {
                0 => shopflow_eventsourcing::SnapshotPolicy::Never,
                n => shopflow_eventsourcing::SnapshotPolicy::Every(n),
            },
            vault_urls: self
                .vault_url
                .into_iter()
                .filter(|u| !u.trim().is_empty())
                .collect(),
            admin_token: self.admin_token,
            http_limits: shopflow_http::serve::Limits {
                header_read_timeout: std::time::Duration::from_secs(
                    self.header_timeout_secs.max(1),
                ),
                request_timeout: std::time::Duration::from_secs(self.request_timeout_secs.max(1)),
                max_connections: self.max_connections.max(1),
                max_in_flight: self.max_in_flight.max(1),
            },
            cdc: cdc_config,
            legacy_catalog: self.legacy_catalog,
            gateway: match &self.routes {
                Some(path) => Some((
                    shopflow::gateway::load_routes(path, None, None)?,
                    self.gateway_listen,
                )),
                None => None,
            },
            ..ShopConfig::new(&self.data_dir, self.listen)
        })
    }
}

#[derive(Debug, Subcommand)]
enum RoutesAction {
    /// The routes and where each goes now.
    List,
    /// Move a route: `shopflow routes switch GET /products shadow --serve legacy`.
    Switch {
        /// One of the route's methods.
        method: String,
        /// The route's path pattern, as in the routes file.
        path: String,
        /// legacy, new or shadow.
        to: String,
        /// For shadow: the side clients get answers from (legacy or new).
        #[arg(long)]
        serve: Option<String>,
    },
    /// The latest shadow differences, with both bodies.
    Differences {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
enum Projections {
    /// Rebuild a read model from the event store while the shop keeps serving.
    Rebuild {
        /// The projection (`orders`).
        name: String,
        #[command(flatten)]
        common: admin::Common,
    },
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    anyhow::ensure!(
        cli.sqlite_memory_mib >= 0,
        "--sqlite-memory-mib must be 0 (no bound) or a positive number of MiB"
    );
    shopflow_store::set_sqlite_memory_budget(cli.sqlite_memory_mib.saturating_mul(1024 * 1024));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Bench(b) => bench::run(b).await,
            Command::Openapi => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(shopflow::openapi::document())?
                );
                Ok(())
            }
            Command::Schemas(Schemas::Check { dir }) => {
                let report =
                    shopflow_envelope::catalog::check(&shopflow::services::registry(), &dir);
                println!("{report}");
                if !report.passed() {
                    std::process::exit(1);
                }
                Ok(())
            }
            Command::Schemas(Schemas::Write { dir }) => {
                let written =
                    shopflow_envelope::catalog::write(&shopflow::services::registry(), &dir)?;
                for path in &written {
                    println!("wrote {}", path.display());
                }
                println!(
                    "{} schema files written to {}",
                    written.len(),
                    dir.display()
                );
                Ok(())
            }
            Command::Verify {
                data_dir,
                settled,
                json,
                db,
            } => {
                let dbs = shopflow::verify::Databases::open(&data_dir, &db).await?;
                let report = shopflow::verify::verify(&dbs, settled).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    report.print();
                }
                if !report.ok() {
                    std::process::exit(1);
                }
                Ok(())
            }
            Command::Migrate { from, to, db, json } => {
                let kafka = shopflow_kafka::KafkaConfig::from_url(&to)
                    .map_err(|e| anyhow::anyhow!("--to: {e}"))?;
                let moved = shopflow::migrate::migrate(&from, kafka, &db).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&moved)?);
                } else {
                    let rows: u64 = moved.rows.values().sum();
                    let records: u64 = moved.records.values().sum();
                    println!(
                        "moved {rows} rows in {} tables, {records} records in {} topics, the positions of {} consumer groups",
                        moved.rows.len(),
                        moved.records.len(),
                        moved.groups.len()
                    );
                    println!(
                        "the card vault's keys stay in {}: give them to the new deployment (--vault-keys-file, or SHOPFLOW_VAULT_KEYS), or the cards of the orders in flight cannot be charged",
                        from.join("payment/vault.keys").display()
                    );
                    println!("now run: shopflow up --bus {to} --db <the same --db> --vault-keys-file <that file>");
                }
                Ok(())
            }
            Command::Dlq(cmd) => tokio::task::spawn_blocking(move || admin::dlq(cmd)).await?,
            Command::Orders(cmd) => {
                tokio::task::spawn_blocking(move || history::orders(cmd)).await?
            }
            Command::Events(cmd) => {
                tokio::task::spawn_blocking(move || history::events(cmd)).await?
            }
            Command::Sagas(cmd) => tokio::task::spawn_blocking(move || admin::sagas(cmd)).await?,
            Command::Lag { all, common } => {
                tokio::task::spawn_blocking(move || admin::lag(common, all)).await?
            }
            Command::Projections(Projections::Rebuild { name, common }) => {
                if name != "orders" {
                    anyhow::bail!("unknown projection `{name}` (known: orders)");
                }
                let out = tokio::task::spawn_blocking(move || {
                    common.call("POST", "/admin/projections/orders/rebuild", &[], None)
                })
                .await??;
                println!("{out}");
                Ok(())
            }
            Command::Up(run) => up(run.config()?).await,
            Command::Service { name, run } => {
                up(ShopConfig {
                    services: vec![name],
                    ..run.config()?
                })
                .await
            }
            Command::Cdc {
                cdc,
                data_dir,
                bus,
                db,
                listen,
                partitions,
            } => run_cdc(cdc, data_dir, bus, db, listen, partitions).await,
            Command::Gateway {
                routes,
                listen,
                legacy,
                new,
                data_dir,
                bus,
                db,
                admin_token,
                partitions,
            } => {
                run_gateway(
                    routes, listen, legacy, new, data_dir, bus, db, admin_token, partitions,
                )
                .await
            }
            Command::Routes {
                action,
                gateway,
                admin_token,
                data_dir,
            } => {
                let token = shopflow::security::client_token(admin_token.as_deref(), &data_dir);
                routes_cli(action, &gateway, token.as_deref())
            }
            Command::Load {
                orders,
                rate,
                concurrency,
                target,
                users_target,
                products_target,
                no_seed,
                decline_every,
                bad_country_every,
                retry_for_secs,
                json,
                admin_token,
                data_dir,
            } => {
                let cfg = shopflow::load::LoadConfig {
                    target,
                    users_target,
                    products_target,
                    admin_token: shopflow::security::client_token(
                        admin_token.as_deref(),
                        &data_dir,
                    ),
                    orders,
                    rate,
                    concurrency,
                    seed: !no_seed,
                    decline_every,
                    bad_country_every,
                    retry_for: std::time::Duration::from_secs(retry_for_secs),
                    progress: !json,
                    ..Default::default()
                };
                let report =
                    tokio::task::spawn_blocking(move || shopflow::load::run(&cfg)).await??;
                if json {
                    println!("{}", report.to_json());
                } else {
                    report.print();
                }
                Ok(())
            }
        }
    })
}

async fn up(config: ShopConfig) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let style = config.saga;
    let given_token = config.admin_token.is_some();
    let shop = Shop::start(config).await?;
    println!(
        "shopflow is up: http://{} (OpenAPI at /openapi.json), data in {}, sagas by {style}",
        shop.addr,
        data_dir.display()
    );
    match &shop.admin_token_created {
        // Printed this once; afterwards it is only in the file.
        Some(path) => println!(
            "admin token (for /admin/*, PUT /products, GET /orders, /sagas; kept in {}): {}",
            path.display(),
            shop.admin_token.as_str()
        ),
        None if given_token => println!("admin token: as given"),
        None => println!(
            "admin token: in {}",
            data_dir.join(shopflow::security::TOKEN_FILE).display()
        ),
    }
    println!("press Ctrl-C to stop");
    wait_for_signal().await;
    println!("stopping…");
    shop.stop().await?;
    println!("stopped cleanly");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn run_gateway(
    routes: PathBuf,
    listen: SocketAddr,
    legacy: Option<String>,
    new: Option<String>,
    data_dir: PathBuf,
    bus: shopflow::shop::BusConfig,
    db: shopflow::shop::DbConfig,
    admin_token: Option<String>,
    partitions: u32,
) -> anyhow::Result<()> {
    let file = shopflow::gateway::load_routes(&routes, legacy.as_deref(), new.as_deref())?;
    std::fs::create_dir_all(&data_dir)?;
    let _metrics = shopflow::ops::metrics_handle();
    let (token, created) = shopflow::security::admin_token(admin_token.as_deref(), &data_dir)?;
    let service = shopflow::alone::start(
        &shopflow::gateway::SERVICE,
        shopflow::gateway::GatewaySettings {
            routes: file.clone(),
            listen,
            token: token.clone(),
            limits: shopflow_http::serve::Limits::default(),
        },
        &data_dir,
        &bus,
        &db,
        partitions,
    )
    .await?;
    let running = service
        .export::<shopflow::gateway::Running>()
        .ok_or_else(|| anyhow::anyhow!("the gateway did not start"))?;
    println!(
        "gateway on http://{}: legacy {} · new {} · {} routes (admin API at /admin/gateway/routes)",
        running.addr,
        file.legacy.url,
        file.new.url,
        running.gateway.routes().len()
    );
    if let Some(path) = created {
        println!(
            "admin token (kept in {}): {}",
            path.display(),
            token.as_str()
        );
    }
    wait_for_signal().await;
    println!("stopping…");
    service.stop().await?;
    println!("stopped cleanly");
    Ok(())
}

fn routes_cli(action: RoutesAction, gateway: &str, token: Option<&str>) -> anyhow::Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let base = gateway.trim_end_matches('/');
    let auth = token.map(|t| format!("Bearer {t}")).unwrap_or_default();
    let (status, body) = match action {
        RoutesAction::List => {
            let mut r = agent
                .get(format!("{base}/admin/gateway/routes"))
                .header("Authorization", &auth)
                .call()?;
            (r.status().as_u16(), r.body_mut().read_to_string()?)
        }
        RoutesAction::Switch {
            method,
            path,
            to,
            serve,
        } => {
            let mut r = agent
                .put(format!("{base}/admin/gateway/routes"))
                .header("Authorization", &auth)
                .send_json(
                    serde_json::json!({"method": method, "path": path, "to": to, "serve": serve}),
                )?;
            (r.status().as_u16(), r.body_mut().read_to_string()?)
        }
        RoutesAction::Differences { limit } => {
            let mut r = agent
                .get(format!("{base}/admin/gateway/differences?limit={limit}"))
                .header("Authorization", &auth)
                .call()?;
            (r.status().as_u16(), r.body_mut().read_to_string()?)
        }
    };
    let pretty = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(body);
    println!("{pretty}");
    if status >= 300 {
        anyhow::bail!("the gateway answered {status}");
    }
    Ok(())
}

async fn run_cdc(
    args: shopflow::cdc::CdcArgs,
    data_dir: PathBuf,
    bus: shopflow::shop::BusConfig,
    db: shopflow::shop::DbConfig,
    listen: SocketAddr,
    partitions: u32,
) -> anyhow::Result<()> {
    let mut config = args
        .config(partitions)
        .ok_or_else(|| anyhow::anyhow!("--cdc-source (or SHOPFLOW_CDC_SOURCE) is required"))?;
    config.replication_factor = bus.replication_factor();
    let metrics = shopflow::ops::metrics_handle();
    let banner = format!(
        "change data capture: {} (publication {}, slot {}) → {}",
        config.db.split('@').next_back().unwrap_or(""),
        config.publication,
        config.slot,
        match &bus {
            shopflow::shop::BusConfig::Embedded =>
                format!("the log in {}", data_dir.join("log").display()),
            shopflow::shop::BusConfig::Kafka(k) => format!("Kafka at {}", k.brokers),
        },
    );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let service = shopflow::alone::start(
        &shopflow::cdc::SERVICE,
        shopflow::cdc::CdcSettings(config),
        &data_dir,
        &bus,
        &db,
        partitions,
    )
    .await?;
    let status = service
        .export::<shopflow::cdc::CdcStatus>()
        .unwrap_or_default();
    let app = service
        .router
        .clone()
        .merge(shopflow::cdc::router(status, metrics));
    println!(
        "{banner}; health and metrics at http://{}",
        listener.local_addr()?
    );
    let s = service.shutdown.clone();
    let server = tokio::spawn(async move {
        shopflow_http::serve::serve(
            listener,
            app,
            shopflow_http::serve::Limits::default(),
            s.wait(),
        )
        .await;
    });
    wait_for_signal().await;
    println!("stopping…");
    service.stop().await?;
    server.await?;
    println!("stopped cleanly");
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
