//! `Shop`: the services this process runs (every one of [`SERVICES`] by default), their
//! consumers and relays, the dead-letter indexer and one HTTP API, on the embedded log or Kafka,
//! with SQLite files or PostgreSQL.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::get;
use shopflow_anybus::AnyBus;
use shopflow_bus::{Bus, TopicSpec};
use shopflow_contracts::audit::Facts;
use shopflow_eventsourcing::SnapshotPolicy;
use shopflow_http::ApiError;
use shopflow_http::auth::AdminToken;
use shopflow_order::saga::SagaTimeouts;
use shopflow_payment::edge::CardVault;
use shopflow_runtime::dlq::Indexer;
use shopflow_runtime::retention::InboxRetention;
use shopflow_runtime::{BreakerConfig, Runner, RunnerConfig, Shutdown, ShutdownTrigger, system};
use shopflow_service::{Context, Service, Settings};
use shopflow_store::Db;
use shopflow_store::outbox::{Relay, RelayConfig};
use tokio::task::JoinHandle;

use crate::services::{self, OPS, SERVICES};

/// Which bus: `embedded` or `kafka://…` (the toolkit's [`shopflow_anybus::BusUrl`]).
pub use shopflow_anybus::BusUrl as BusConfig;
/// How the order flow is coordinated.
pub use shopflow_service::SagaStyle;
/// Which databases: `sqlite` or `postgres://…` (the store's [`shopflow_store::DbUrl`]).
pub use shopflow_store::DbUrl as DbConfig;

/// How long start-up waits for a Kafka broker to answer before it gives up.
const BUS_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

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
    /// Retry policy, batch size and lanes of every consumer (lanes `None`: 1 on SQLite, whose
    /// one writer takes transactions one after another, the partition count on PostgreSQL).
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
    /// The services this process runs, by name (all of them by default).
    pub services: Vec<&'static str>,
    /// The text of the card vault's key file (`SHOPFLOW_VAULT_KEYS`); without it the payment
    /// service keeps its keys in `<data-dir>/payment/vault.keys`.
    pub vault_keys: Option<String>,
    /// Where the edge of a process without the payment service tokenises cards: base URLs of
    /// processes that run it.
    pub vault_urls: Vec<String>,
    /// How long handled event ids stay in the inboxes (keep it at least the bus's retention).
    pub inbox_retention: InboxRetention,
    /// How often the order aggregate is snapshotted.
    pub order_snapshots: SnapshotPolicy,
    /// The operator's token (`--admin-token`); `None`: the one in `<data-dir>/admin.token`,
    /// generated on first start.
    pub admin_token: Option<String>,
    /// Timeouts and caps of the HTTP API's connections and requests.
    pub http_limits: shopflow_http::serve::Limits,
    /// Capture a PostgreSQL database's row changes onto this shop's bus (`--cdc-source`).
    pub cdc: Option<shopflow_cdc::Config>,
    /// The inventory follows a legacy catalog's changes on `<prefix>.products` and
    /// `<prefix>.stock` (`--legacy-catalog cdc.legacy`).
    pub legacy_catalog: Option<String>,
    /// A strangler-fig gateway beside the shop (`--routes`, `--gateway-listen`): its routes,
    /// with this shop as the `new` side, and where it listens.
    pub gateway: Option<(shopflow_gateway::RoutesFile, SocketAddr)>,
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
            services: services::names(),
            vault_keys: None,
            vault_urls: Vec::new(),
            inbox_retention: InboxRetention::default(),
            order_snapshots: shopflow_order::DEFAULT_SNAPSHOTS,
            admin_token: None,
            http_limits: shopflow_http::serve::Limits::default(),
            cdc: None,
            legacy_catalog: None,
            gateway: None,
        }
    }

    /// What every service is told.
    fn settings(&self) -> Settings {
        let mut s = Settings::new(&self.data_dir, self.saga, self.breaker.clone())
            .with(shopflow_payment::GatewayLatency(self.gateway_latency))
            .with(self.saga_timeouts.clone())
            .with(shopflow_order::OrderSnapshots(self.order_snapshots));
        if let Some(url) = &self.smtp {
            s = s.with(shopflow_notification::SmtpRelay(url.clone()));
        }
        if let Some(keys) = &self.vault_keys {
            s = s.with(shopflow_payment::VaultKeyText(keys.clone()));
        }
        if let Some(prefix) = &self.legacy_catalog {
            s = s.with(shopflow_inventory::legacy::LegacyCatalog(prefix.clone()));
        }
        s
    }
}

/// A running shop.
#[derive(Debug)]
pub struct Shop {
    pub addr: SocketAddr,
    /// The bus (named `log` since the embedded log came first).
    pub log: AnyBus,
    /// Every database of this process, by owner (each service's, and `ops`).
    pub dbs: Vec<(&'static str, Db)>,
    pub ops: crate::ops::Ops,
    /// Every consumer this process runs: its group and the topics it reads.
    pub consumers: Vec<(&'static str, Vec<String>)>,
    /// What the admin routes ask for (see [`crate::security`]).
    pub admin_token: AdminToken,
    /// Where the token was written, when this start generated it (to be printed once).
    pub admin_token_created: Option<PathBuf>,
    /// The change data capture connector, when this process runs one.
    pub cdc: crate::cdc::CdcStatus,
    /// Where the strangler-fig gateway listens, when this process runs one.
    pub gateway_addr: Option<SocketAddr>,
    trigger: ShutdownTrigger,
    tasks: Vec<JoinHandle<()>>,
}

impl Shop {
    pub async fn start(config: ShopConfig) -> anyhow::Result<Shop> {
        // Every file the shop creates (databases, the log, the spool, keys) is its user's alone.
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
        // A server's share of file handles: every connection costs one.
        shopflow_http::serve::raise_open_file_limit();
        // A registry that cannot bring every version of an event to its current one would
        // dead-letter old events at run time; refuse to start instead, naming the missing steps.
        let registry = services::registry();
        registry
            .validate()
            .context("the shop's events cannot all be read")?;
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (admin_token, admin_token_created) =
            crate::security::admin_token(config.admin_token.as_deref(), dir)?;
        let log =
            AnyBus::open(&config.bus, &dir.join("log"), config.partitions).with_context(|| {
                match &config.bus {
                    BusConfig::Embedded => {
                        format!("opening the event log in {}", dir.join("log").display())
                    }
                    BusConfig::Kafka(k) => format!("connecting to Kafka at {}", k.brokers),
                }
            })?;
        // A broker that is not there fails the start (librdkafka alone would retry forever).
        if let AnyBus::Kafka(k) = &log {
            k.ping(BUS_CONNECT_TIMEOUT).await?;
        }
        let spec = TopicSpec {
            replication_factor: config.bus.replication_factor(),
            ..TopicSpec::new(config.partitions)
        };
        let mut topics = services::topics();
        for topic in &topics {
            log.create_topic(topic, &spec)
                .await
                .with_context(|| format!("creating topic {topic}"))?;
            log.create_topic(&shopflow_envelope::dlq_topic(topic), &spec)
                .await
                .with_context(|| format!("creating topic {topic}.dlq"))?;
        }
        crate::ops::metrics_handle();

        let (trigger, shutdown) = Shutdown::new();
        // The API's listener is bound first: its address is the gateway's `new` side.
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let mut settings = config.settings();
        // The components that connect the shop to a system it replaces run as services too,
        // when asked for: change data capture and the strangler-fig gateway.
        let mut edge: Vec<&'static Service<Facts>> = Vec::new();
        if let Some(c) = &config.cdc {
            settings = settings.with(crate::cdc::CdcSettings(c.clone()));
            edge.push(&crate::cdc::SERVICE);
        }
        if let Some((file, listen)) = &config.gateway {
            let mut routes = file.clone();
            routes.new.url = format!("http://{addr}");
            settings = settings.with(crate::gateway::GatewaySettings {
                routes,
                listen: *listen,
                token: admin_token.clone(),
                limits: config.http_limits.clone(),
            });
            edge.push(&crate::gateway::SERVICE);
        }
        let settings = Arc::new(settings);
        let runner_config = RunnerConfig {
            lanes: Some(config.runner.lanes.unwrap_or(match config.db {
                DbConfig::Sqlite => 1,
                DbConfig::Postgres { .. } => config.partitions as usize,
            })),
            ..config.runner.clone()
        };
        let registry = Arc::new(registry);
        let mut tasks = Vec::new();
        let mut dbs: Vec<(&'static str, Db)> = Vec::new();
        let mut app = Router::new();
        let mut groups = Vec::new();
        let mut consumers = Vec::new();
        let mut runner_stats = Vec::new();
        let mut relays = Vec::new();
        let mut services_run = Vec::new();
        let mut breakers = Vec::new();
        let mut hooks = Vec::new();
        let mut vault = None;
        let mut cdc = crate::cdc::CdcStatus::default();
        let mut gateway = None;
        for service in SERVICES
            .iter()
            .copied()
            .filter(|s| config.services.contains(&s.name))
            .chain(edge)
        {
            let db = config.db.open(dir, service.name).await?;
            service
                .migrate(&db)
                .await
                .with_context(|| format!("migrating the {} database", service.name))?;
            let started = (service.start)(Context {
                db: db.clone(),
                settings: settings.clone(),
                shutdown: shutdown.clone(),
                bus: Arc::new(log.clone()),
            })
            .await
            .with_context(|| format!("starting the {} service", service.name))?;
            let names: Vec<String> = started
                .handlers
                .iter()
                .map(|h| shopflow_runtime::Handler::name(h).to_owned())
                .collect();
            services_run.push(crate::ops::ServiceRun {
                name: service.name,
                groups: started
                    .handlers
                    .iter()
                    .map(shopflow_runtime::Handler::name)
                    .collect(),
                breakers: started.breakers.clone(),
            });
            // Each breaker announces when the consumers that depend on it pause and resume.
            for b in &started.breakers {
                let dependents = system::dependents(b, &started.handlers);
                tasks.push(tokio::spawn(system::watch_breaker(
                    b.clone(),
                    dependents,
                    db.clone(),
                    shutdown.clone(),
                )));
            }
            for handler in started.handlers {
                let name = shopflow_runtime::Handler::name(&handler);
                // Topics a handler reads beyond the shop's own (a legacy catalog's changes):
                // made here, with their dead-letter topics, so the consumer can start first.
                for t in shopflow_runtime::Handler::topics(&handler) {
                    if !topics.contains(&t) {
                        log.create_topic(&t, &spec)
                            .await
                            .with_context(|| format!("creating topic {t}"))?;
                        log.create_topic(&shopflow_envelope::dlq_topic(&t), &spec)
                            .await
                            .with_context(|| format!("creating topic {t}.dlq"))?;
                        topics.push(t);
                    }
                }
                groups.push(name);
                consumers.push((name, shopflow_runtime::Handler::topics(&handler)));
                let runner = Runner::new(
                    log.clone(),
                    db.clone(),
                    Arc::new(handler),
                    registry.clone(),
                    runner_config.clone(),
                );
                runner_stats.push((name, runner.stats()));
                tasks.push(tokio::spawn(runner.run(shutdown.clone())));
            }
            tasks.extend(started.tasks.into_iter().map(tokio::spawn));
            breakers.extend(started.breakers);
            hooks.extend(started.metrics);
            vault = vault.or(started.exports.get::<CardVault>().cloned());
            if let Some(status) = started.exports.get::<crate::cdc::CdcStatus>() {
                cdc = status.clone();
            }
            if let Some(running) = started.exports.get::<crate::gateway::Running>() {
                gateway = Some(running.clone());
            }
            app = app.merge(started.router);
            announce_started(&db, service.name, names).await?;
            dbs.push((service.name, db));
        }
        groups.push(shopflow_runtime::dlq::GROUP);
        // Cards are swapped for the vault's tokens at the edge, before the order service sees
        // them: by the vault in this process, or by a payment process's API.
        let vault = match vault {
            Some(v) => Some(v),
            None if !config.vault_urls.is_empty() => Some(CardVault::Remote {
                bases: config.vault_urls.clone(),
            }),
            None if config.services.contains(&shopflow_order::NAME) => anyhow::bail!(
                "the order service takes cards only through the payment service's vault: run the payment service in this process, or give --vault-url http://<a payment process>"
            ),
            None => None,
        };

        // Every process indexes dead letters (as one consumer group) and serves the ops API.
        let ops_db = config.db.open(dir, OPS).await?;
        ops_db
            .migrate_service(OPS, shopflow_runtime::dlq::MIGRATIONS)
            .await?;
        dbs.push((OPS, ops_db.clone()));
        for (owner, db) in &dbs {
            tasks.push(tokio::spawn(shopflow_runtime::retention::run(
                db.clone(),
                config.inbox_retention,
                shutdown.clone(),
            )));
            let relay = Relay::new(db.clone(), log.clone(), RelayConfig::default());
            relays.push((*owner, relay.stats()));
            let s = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                let _ = relay.run(s.wait()).await;
            }));
        }
        let dlq_topics = topics
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
            hooks,
            consumers: runner_stats,
            relays,
            services: services_run,
            history: Arc::new(crate::ops::History::default()),
            migration: Arc::new(crate::gateway::InProcess::new(cdc.clone(), gateway.clone())),
        };
        // The last minutes of throughput and lag, for the dashboard's charts.
        tasks.push(tokio::spawn(ops.clone().sample_history(shutdown.clone())));

        let app = app
            .merge(ops.clone().router())
            .route("/health", get(crate::ops::health))
            .merge(crate::dashboard::router())
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
            .layer(DefaultBodyLimit::max(shopflow_http::MAX_BODY_BYTES));
        let app = match vault {
            Some(v) => app.layer(axum::middleware::from_fn_with_state(
                v,
                shopflow_payment::edge::tokenize_cards,
            )),
            None => app,
        }
        .layer(axum::middleware::from_fn_with_state(
            (
                admin_token.clone(),
                crate::security::needs_admin as shopflow_http::auth::Policy,
            ),
            shopflow_http::auth::require_admin,
        ))
        .layer(axum::middleware::from_fn(shopflow_http::correlate));
        let s = shutdown.clone();
        let limits = config.http_limits.clone();
        tasks.push(tokio::spawn(async move {
            shopflow_http::serve::serve(listener, app, limits, s.wait()).await;
        }));
        let gateway_addr = gateway.map(|g| g.addr);
        Ok(Shop {
            gateway_addr,
            addr,
            log,
            dbs,
            ops,
            consumers,
            admin_token,
            admin_token_created,
            cdc,
            trigger,
            tasks,
        })
    }

    /// Stops accepting requests, lets consumers and relays finish their round, closes the log.
    /// Each service announces that it stops (ServiceStopped) before the relays end.
    pub async fn stop(self) -> anyhow::Result<()> {
        let services: Vec<_> = self
            .dbs
            .iter()
            .filter(|(n, _)| *n != OPS)
            .cloned()
            .collect();
        announce_stopped(&services).await;
        drain_outboxes(&self.dbs).await;
        self.trigger.trigger();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        self.log.close().await?;
        Ok(())
    }

    /// The services' databases, for `verify`.
    pub fn databases(&self) -> crate::verify::Databases {
        crate::verify::Databases(
            self.dbs
                .iter()
                .filter(|(n, _)| *n != OPS)
                .cloned()
                .collect(),
        )
    }

    pub fn db(&self, service: &str) -> Option<&Db> {
        self.dbs.iter().find(|(n, _)| *n == service).map(|(_, d)| d)
    }
}

/// Announces, through its outbox, that `service` runs in this process with these consumers
/// (`ServiceStarted`).
pub(crate) async fn announce_started(
    db: &Db,
    service: &'static str,
    consumers: Vec<String>,
) -> anyhow::Result<()> {
    let fact = system::ServiceStarted {
        service: service.to_owned(),
        instance: system::instance(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        consumers,
    };
    system::publish(db, system::outgoing(&fact, service, service)?)
        .await
        .with_context(|| format!("announcing that {service} started"))
}

/// Announces that each service stops (`ServiceStopped`, through its outbox).
pub(crate) async fn announce_stopped(services: &[(&'static str, Db)]) {
    let instance = system::instance();
    for (name, db) in services {
        let fact = system::ServiceStopped {
            service: (*name).to_owned(),
            instance: instance.clone(),
        };
        let written = match system::outgoing(&fact, name, name) {
            Ok(out) => system::publish(db, out).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = written {
            tracing::warn!(service = name, error = %e, "ServiceStopped was not written");
        }
    }
}

/// Gives the relays up to 3 s in all to publish what the outboxes of `dbs` hold.
pub(crate) async fn drain_outboxes(dbs: &[(&'static str, Db)]) {
    let end = std::time::Instant::now() + Duration::from_secs(3);
    for (_, db) in dbs {
        while std::time::Instant::now() < end
            && shopflow_store::outbox::backlog(db).await.unwrap_or(0) > 0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
