//! `Shop`: the six services (or those this process runs), their consumers and relays, the order
//! projection and the HTTP API, on the embedded log or Kafka, with SQLite files or PostgreSQL.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::get;
use shopflow_bus::{Bus, TopicSpec};
use shopflow_http::ApiError;
use shopflow_inventory::Inventory;
use shopflow_inventory::StockCommands;
use shopflow_kafka::{KafkaBus, KafkaConfig};
use shopflow_log::Log;

use crate::anybus::AnyBus;
use shopflow_notification::{Delivery, Notifications, Smtp, Spool};
use shopflow_order::Orders;
use shopflow_order::saga::SagaTimeouts;
use shopflow_payment::PaymentCommands;
use shopflow_payment::{Payments, Simulator};
use shopflow_runtime::dlq::Indexer;
use shopflow_runtime::{BreakerConfig, Handler, Runner, RunnerConfig, Shutdown, ShutdownTrigger};
use shopflow_saga::{Orchestrator, SagaHandler, SystemClock};
use shopflow_shipping::{Shipping, ShippingCommands};
use shopflow_store::Db;
use shopflow_store::outbox::{Relay, RelayConfig};
use shopflow_users::Users;
use tokio::task::JoinHandle;

/// How to run the shop.
#[derive(Clone, Debug)]
pub struct ShopConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Partitions per topic.
    pub partitions: u32,
    /// Latency of the simulated payment gateway.
    pub gateway_latency: Duration,
    /// `smtp://host:port` to send e-mail over SMTP instead of to `<data-dir>/mail`.
    pub smtp: Option<String>,
    /// Retry policy and batch size of every consumer.
    pub runner: RunnerConfig,
    /// Thresholds of the circuit breakers around the payment gateway and message delivery.
    pub breaker: BreakerConfig,
    /// How the order flow is coordinated.
    pub saga: SagaStyle,
    /// Step timeouts of the orchestrated saga.
    pub saga_timeouts: SagaTimeouts,
    /// The embedded log under the data directory, or Kafka.
    pub bus: BusConfig,
    /// SQLite files under the data directory, or PostgreSQL.
    pub db: DbConfig,
    /// The services this process runs (all of them by default).
    pub services: Vec<Service>,
}

/// Which bus.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum BusConfig {
    /// The embedded durable log in `<data-dir>/log`.
    #[default]
    Embedded,
    Kafka(KafkaConfig),
}

impl std::str::FromStr for BusConfig {
    type Err = String;
    /// `embedded` or `kafka://host:port[,…][?replication=N&…]`.
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "embedded" {
            Ok(BusConfig::Embedded)
        } else {
            KafkaConfig::from_url(s).map(BusConfig::Kafka)
        }
    }
}

/// Which databases.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DbConfig {
    /// One SQLite file per service under the data directory.
    #[default]
    Sqlite,
    /// One schema per service (`<prefix><service>`) in one PostgreSQL database.
    Postgres { url: String, schema_prefix: String },
}

impl std::str::FromStr for DbConfig {
    type Err = String;
    /// `sqlite` or `postgres://user@host:port/db[?schema_prefix=p_]`.
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "sqlite" {
            return Ok(DbConfig::Sqlite);
        }
        if !(s.starts_with("postgres://") || s.starts_with("postgresql://")) {
            return Err(format!("`{s}`: expected sqlite or postgres://…"));
        }
        let (url, prefix) = match s.split_once("schema_prefix=") {
            Some((before, p)) => {
                let p = p.split('&').next().unwrap_or("");
                let url = before.trim_end_matches(['?', '&']).to_owned();
                (url, p.to_owned())
            }
            None => (s.to_owned(), "shopflow_".to_owned()),
        };
        Ok(DbConfig::Postgres {
            url,
            schema_prefix: prefix,
        })
    }
}

impl DbConfig {
    /// Opens (creating if needed) the database named `name` (a service, or `ops`): the SQLite
    /// file `<data-dir>/<name>/<name>.db`, or the schema `<prefix><name>`.
    pub async fn open(&self, data_dir: &std::path::Path, name: &str) -> anyhow::Result<Db> {
        match self {
            DbConfig::Sqlite => Db::open_sqlite(data_dir.join(name).join(format!("{name}.db")))
                .with_context(|| format!("opening the {name} database")),
            DbConfig::Postgres { url, schema_prefix } => {
                Db::connect_postgres(url, &format!("{schema_prefix}{name}"))
                    .await
                    .with_context(|| format!("connecting the {name} database to PostgreSQL"))
            }
        }
    }

    /// Like [`DbConfig::open`] for a deployment that must exist already: a missing SQLite file
    /// is an error instead of a new, empty database.
    pub async fn open_existing(
        &self,
        data_dir: &std::path::Path,
        name: &str,
    ) -> anyhow::Result<Db> {
        if *self == DbConfig::Sqlite {
            let path = data_dir.join(name).join(format!("{name}.db"));
            if !path.exists() {
                anyhow::bail!(
                    "{} does not exist: is {} a shopflow data directory?",
                    path.display(),
                    data_dir.display()
                );
            }
        }
        self.open(data_dir, name).await
    }
}

/// A service of the shop (`shopflow service <name>` runs one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    Users,
    Inventory,
    Payment,
    Shipping,
    Notification,
    Order,
}

impl Service {
    pub const ALL: [Service; 6] = [
        Service::Users,
        Service::Inventory,
        Service::Payment,
        Service::Shipping,
        Service::Notification,
        Service::Order,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Service::Users => "users",
            Service::Inventory => "inventory",
            Service::Payment => "payment",
            Service::Shipping => "shipping",
            Service::Notification => "notification",
            Service::Order => "order",
        }
    }
}

impl std::str::FromStr for Service {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Service::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| {
                format!("unknown service `{s}` (users, inventory, payment, shipping, notification, order)")
            })
    }
}

/// The two saga styles of the seed: every service reacts to events (choreography), or the
/// order-fulfilment orchestrator sends commands and advances on the replies (orchestration).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SagaStyle {
    #[default]
    Choreography,
    Orchestration,
}

impl std::str::FromStr for SagaStyle {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "choreography" => Ok(SagaStyle::Choreography),
            "orchestration" => Ok(SagaStyle::Orchestration),
            other => Err(format!(
                "unknown saga style `{other}` (choreography, orchestration)"
            )),
        }
    }
}

impl std::fmt::Display for SagaStyle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SagaStyle::Choreography => "choreography",
            SagaStyle::Orchestration => "orchestration",
        })
    }
}

impl ShopConfig {
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen,
            partitions: 4,
            gateway_latency: Duration::ZERO,
            smtp: None,
            runner: RunnerConfig::default(),
            breaker: BreakerConfig::default(),
            saga: SagaStyle::default(),
            saga_timeouts: SagaTimeouts::default(),
            bus: BusConfig::default(),
            db: DbConfig::default(),
            services: Service::ALL.to_vec(),
        }
    }
}

/// A running shop.
#[derive(Debug)]
pub struct Shop {
    pub addr: SocketAddr,
    /// The bus (named `log` since the embedded log came first).
    pub log: AnyBus,
    pub gateway: Arc<Simulator>,
    pub dbs: Vec<(&'static str, Db)>,
    pub ops: crate::ops::Ops,
    trigger: ShutdownTrigger,
    tasks: Vec<JoinHandle<()>>,
}

/// What every runner of a shop shares.
struct Spawner<'a> {
    tasks: &'a mut Vec<JoinHandle<()>>,
    groups: Vec<&'static str>,
    log: &'a AnyBus,
    registry: &'a Arc<shopflow_envelope::Registry>,
    shutdown: &'a Shutdown,
    config: RunnerConfig,
}

impl Spawner<'_> {
    fn runner<H: Handler>(&mut self, db: &Db, handler: H) {
        self.groups.push(handler.name());
        let runner = Runner::new(
            self.log.clone(),
            db.clone(),
            Arc::new(handler),
            self.registry.clone(),
            self.config.clone(),
        );
        self.tasks
            .push(tokio::spawn(runner.run(self.shutdown.clone())));
    }
}

impl Shop {
    pub async fn start(config: ShopConfig) -> anyhow::Result<Shop> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let runs = |s: Service| config.services.contains(&s);
        let log = match &config.bus {
            BusConfig::Embedded => AnyBus::Embedded(
                Log::open(
                    dir.join("log"),
                    shopflow_log::Config {
                        default_partitions: config.partitions,
                        ..Default::default()
                    },
                )
                .with_context(|| {
                    format!("opening the event log in {}", dir.join("log").display())
                })?,
            ),
            BusConfig::Kafka(k) => AnyBus::Kafka(
                KafkaBus::connect(k.clone())
                    .with_context(|| format!("connecting to Kafka at {}", k.brokers))?,
            ),
        };
        let spec = TopicSpec {
            replication_factor: match &config.bus {
                BusConfig::Kafka(k) => k.replication_factor,
                BusConfig::Embedded => 1,
            },
            ..TopicSpec::new(config.partitions)
        };
        for topic in shopflow_contracts::all_topics() {
            log.create_topic(&topic, &spec)
                .await
                .with_context(|| format!("creating topic {topic}"))?;
            log.create_topic(&shopflow_envelope::dlq_topic(&topic), &spec)
                .await
                .with_context(|| format!("creating topic {topic}.dlq"))?;
        }
        crate::ops::metrics_handle();
        let db = |name: &'static str| config.db.open(dir, name);

        let (trigger, shutdown) = Shutdown::new();
        let mut tasks = Vec::new();
        let mut dbs: Vec<(&'static str, Db)> = Vec::new();
        let mut app = Router::new();
        let mut breakers = Vec::new();
        let mut sagas = None;
        let gateway = Arc::new(Simulator::new(config.gateway_latency));
        let registry = Arc::new(shopflow_order::registry());
        let mut spawn = Spawner {
            tasks: &mut tasks,
            groups: Vec::new(),
            log: &log,
            registry: &registry,
            shutdown: &shutdown,
            config: config.runner.clone(),
        };
        let orchestrated = config.saga == SagaStyle::Orchestration;
        // The same services take part in either style; only what they subscribe to differs.
        if runs(Service::Users) {
            let users = Users::open(db("users").await?).await?;
            app = app.merge(users.router());
            dbs.push(("users", users.db().clone()));
        }
        if runs(Service::Inventory) {
            let inventory = Inventory::open(db("inventory").await?).await?;
            if orchestrated {
                spawn.runner(inventory.db(), StockCommands);
            } else {
                spawn.runner(inventory.db(), inventory.handler());
            }
            app = app.merge(inventory.router());
            dbs.push(("inventory", inventory.db().clone()));
        }
        if runs(Service::Payment) {
            let payments = Payments::open(db("payment").await?, gateway.clone())
                .await?
                .with_breaker(config.breaker.clone());
            if orchestrated {
                spawn.runner(payments.db(), PaymentCommands(payments.clone()));
            } else {
                spawn.runner(payments.db(), payments.clone());
            }
            breakers.push(payments.breaker().clone());
            app = app.merge(payments.router()).route(
                "/admin/payment-gateway",
                axum::routing::put(set_gateway).with_state(gateway.clone()),
            );
            dbs.push(("payment", payments.db().clone()));
        }
        if runs(Service::Shipping) {
            let shipping = Shipping::open(db("shipping").await?).await?;
            if orchestrated {
                spawn.runner(shipping.db(), ShippingCommands);
            } else {
                spawn.runner(shipping.db(), shipping.clone());
            }
            app = app.merge(shipping.router());
            dbs.push(("shipping", shipping.db().clone()));
        }
        if runs(Service::Notification) {
            let delivery = match &config.smtp {
                Some(url) => {
                    Delivery::Smtp(Smtp::new(url, dir).map_err(|e| anyhow::anyhow!("--smtp: {e}"))?)
                }
                None => Delivery::Spool(Spool::new(dir)),
            };
            let notifications = Notifications::open(db("notification").await?, Arc::new(delivery))
                .await?
                .with_breaker(config.breaker.clone());
            spawn.runner(notifications.db(), notifications.clone());
            breakers.push(notifications.breaker().clone());
            app = app.merge(notifications.router());
            dbs.push(("notification", notifications.db().clone()));
        }
        if runs(Service::Order) {
            let orders = Orders::open(db("order").await?).await?;
            let orchestrator = Arc::new(Orchestrator::new(
                shopflow_order::saga::fulfilment(&config.saga_timeouts),
                Arc::new(SystemClock),
            ));
            if orchestrated {
                spawn.runner(orders.db(), orders.command_handler());
                spawn.runner(orders.db(), SagaHandler(orchestrator.clone()));
                spawn
                    .tasks
                    .push(tokio::spawn(orchestrator.clone().run_timers(
                        orders.db().clone(),
                        Duration::from_millis(200),
                        shutdown.clone(),
                    )));
            } else {
                spawn.runner(orders.db(), orders.handler());
            }
            let o = orders.clone();
            let s = shutdown.clone();
            spawn
                .tasks
                .push(tokio::spawn(async move { o.run_projector(s).await }));
            sagas = Some(crate::ops::Sagas {
                style: config.saga,
                orchestrator,
                db: orders.db().clone(),
            });
            app = app.merge(orders.router());
            dbs.push(("order", orders.db().clone()));
        }
        let mut groups = std::mem::take(&mut spawn.groups);
        groups.push(Indexer::<AnyBus>::GROUP);

        // Every process indexes dead letters (as one consumer group) and serves the ops API.
        let ops_db = db("ops").await?;
        ops_db
            .migrate_service("ops", shopflow_runtime::dlq::MIGRATIONS)
            .await?;
        dbs.push(("ops", ops_db.clone()));
        for (_, db) in &dbs {
            let relay = Relay::new(db.clone(), log.clone(), RelayConfig::default());
            let s = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                let _ = relay.run(s.wait()).await;
            }));
        }
        let dlq_topics = shopflow_contracts::all_topics()
            .iter()
            .map(|t| shopflow_envelope::dlq_topic(t))
            .collect();
        tasks.push(tokio::spawn(
            Indexer::new(log.clone(), ops_db.clone(), dlq_topics).run(shutdown.clone()),
        ));
        let ops = crate::ops::Ops {
            db: ops_db.clone(),
            log: log.clone(),
            groups,
            breakers,
            outboxes: dbs.clone(),
            sagas,
        };

        let app = app
            .merge(ops.clone().router())
            .route(
                "/health",
                get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
            )
            .route(
                "/openapi.json",
                get(|| async { axum::Json(crate::openapi::document()) }),
            )
            .fallback(|| async {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no such endpoint here; see /openapi.json",
                )
            })
            .layer(DefaultBodyLimit::max(shopflow_http::MAX_BODY_BYTES))
            .layer(axum::middleware::from_fn(shopflow_http::correlate));
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let s = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(s.wait())
                .await
            {
                tracing::error!(error = %e, "HTTP server failed");
            }
        }));
        Ok(Shop {
            addr,
            log,
            gateway,
            dbs,
            ops,
            trigger,
            tasks,
        })
    }

    /// Stops accepting requests, lets consumers and relays finish their round, closes the log.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.trigger.trigger();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        self.log.close().await?;
        Ok(())
    }

    /// The services' databases, for `verify` (this process must run every service).
    pub fn databases(&self) -> crate::verify::Databases {
        let db = |n: &str| self.db(n).cloned().expect("every service has a database");
        crate::verify::Databases {
            users: db("users"),
            inventory: db("inventory"),
            payment: db("payment"),
            shipping: db("shipping"),
            notification: db("notification"),
            order: db("order"),
        }
    }

    pub fn db(&self, service: &str) -> Option<&Db> {
        self.dbs.iter().find(|(n, _)| *n == service).map(|(_, d)| d)
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayMode {
    outage: bool,
}

/// Takes the simulated payment gateway down or brings it back (for reliability drills).
async fn set_gateway(
    axum::extract::State(g): axum::extract::State<Arc<Simulator>>,
    shopflow_http::Json(mode): shopflow_http::Json<GatewayMode>,
) -> axum::Json<serde_json::Value> {
    g.set_outage(mode.outage);
    tracing::warn!(outage = mode.outage, "payment gateway simulator switched");
    axum::Json(serde_json::json!({"outage": mode.outage}))
}
