//! `Shop`: the six services, their consumers and relays, the order projection and the HTTP API,
//! in one process on the embedded log and one SQLite file per service.

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
use shopflow_log::Log;
use shopflow_notification::{Delivery, Notifications, Smtp, Spool};
use shopflow_order::Orders;
use shopflow_payment::{Payments, Simulator};
use shopflow_runtime::{Handler, Runner, RunnerConfig, Shutdown, ShutdownTrigger};
use shopflow_shipping::Shipping;
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
}

impl ShopConfig {
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen,
            partitions: 4,
            gateway_latency: Duration::ZERO,
            smtp: None,
        }
    }
}

/// A running shop.
#[derive(Debug)]
pub struct Shop {
    pub addr: SocketAddr,
    pub log: Log,
    pub gateway: Arc<Simulator>,
    pub dbs: Vec<(&'static str, Db)>,
    trigger: ShutdownTrigger,
    tasks: Vec<JoinHandle<()>>,
}

fn spawn_runner<H: Handler>(
    tasks: &mut Vec<JoinHandle<()>>,
    log: &Log,
    db: &Db,
    handler: H,
    registry: &Arc<shopflow_envelope::Registry>,
    shutdown: &Shutdown,
) {
    let runner = Runner::new(
        log.clone(),
        db.clone(),
        Arc::new(handler),
        registry.clone(),
        RunnerConfig::default(),
    );
    tasks.push(tokio::spawn(runner.run(shutdown.clone())));
}

impl Shop {
    pub async fn start(config: ShopConfig) -> anyhow::Result<Shop> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = Log::open(
            dir.join("log"),
            shopflow_log::Config {
                default_partitions: config.partitions,
                ..Default::default()
            },
        )
        .with_context(|| format!("opening the event log in {}", dir.join("log").display()))?;
        for topic in shopflow_contracts::topics() {
            log.create_topic(&topic, &TopicSpec::new(config.partitions))
                .await?;
        }
        let db = |name: &str| -> anyhow::Result<Db> {
            Db::open_sqlite(dir.join(name).join(format!("{name}.db")))
                .with_context(|| format!("opening the {name} database"))
        };
        let users = Users::open(db("users")?).await?;
        let inventory = Inventory::open(db("inventory")?).await?;
        let gateway = Arc::new(Simulator::new(config.gateway_latency));
        let payments = Payments::open(db("payment")?, gateway.clone()).await?;
        let shipping = Shipping::open(db("shipping")?).await?;
        let delivery = match &config.smtp {
            Some(url) => {
                Delivery::Smtp(Smtp::new(url, dir).map_err(|e| anyhow::anyhow!("--smtp: {e}"))?)
            }
            None => Delivery::Spool(Spool::new(dir)),
        };
        let notifications = Notifications::open(db("notification")?, Arc::new(delivery)).await?;
        let orders = Orders::open(db("order")?).await?;
        let registry = orders.registry();

        let (trigger, shutdown) = Shutdown::new();
        let mut tasks = Vec::new();
        spawn_runner(
            &mut tasks,
            &log,
            inventory.db(),
            inventory.handler(),
            &registry,
            &shutdown,
        );
        spawn_runner(
            &mut tasks,
            &log,
            payments.db(),
            payments.clone(),
            &registry,
            &shutdown,
        );
        spawn_runner(
            &mut tasks,
            &log,
            shipping.db(),
            shipping.clone(),
            &registry,
            &shutdown,
        );
        spawn_runner(
            &mut tasks,
            &log,
            notifications.db(),
            notifications.clone(),
            &registry,
            &shutdown,
        );
        spawn_runner(
            &mut tasks,
            &log,
            orders.db(),
            orders.handler(),
            &registry,
            &shutdown,
        );

        let dbs: Vec<(&'static str, Db)> = vec![
            ("users", users.db().clone()),
            ("inventory", inventory.db().clone()),
            ("payment", payments.db().clone()),
            ("shipping", shipping.db().clone()),
            ("notification", notifications.db().clone()),
            ("order", orders.db().clone()),
        ];
        for (_, db) in &dbs {
            let relay = Relay::new(db.clone(), log.clone(), RelayConfig::default());
            let s = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                let _ = relay.run(s.wait()).await;
            }));
        }
        let o = orders.clone();
        let s = shutdown.clone();
        tasks.push(tokio::spawn(async move { o.run_projector(s).await }));

        let app = Router::new()
            .merge(users.router())
            .merge(inventory.router())
            .merge(payments.router())
            .merge(shipping.router())
            .merge(notifications.router())
            .merge(orders.router())
            .route(
                "/health",
                get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
            )
            .route(
                "/admin/payment-gateway",
                axum::routing::put(set_gateway).with_state(gateway.clone()),
            )
            .route(
                "/openapi.json",
                get(|| async { axum::Json(crate::openapi::document()) }),
            )
            .fallback(|| async {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no such endpoint; see /openapi.json",
                )
            })
            .layer(DefaultBodyLimit::max(shopflow_http::MAX_BODY_BYTES));
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
