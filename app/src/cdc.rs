//! Change data capture in the app, as a service of the deployment ([`SERVICE`], `cdc`): its
//! own database (the connector's record of its slot), started with the others by `up
//! --cdc-source …` (inside the embedded shop, which owns the log) or as a process of its own,
//! `shopflow cdc` (the distributed deployment). Either way it runs [`shopflow_cdc::Connector`]
//! and restarts it after a failure; its position lives in the source's replication slot, so a
//! restart loses nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use shopflow_bus::Publisher;
use shopflow_contracts::audit::Facts;
use shopflow_envelope::Registry;
use shopflow_runtime::Shutdown;
use shopflow_service::{BoxFuture, Context, Service, Started};
use shopflow_store::Db;

/// The service's name: its database, its logs, `ServiceStarted`.
pub const NAME: &str = "cdc";

/// The connector as a service of the deployment. Without [`CdcSettings`] it starts nothing.
pub static SERVICE: Service<Facts> = Service {
    about: "change data capture: a PostgreSQL database's row changes onto the bus (--cdc-source)",
    migrations: &[("cdc", shopflow_cdc::MIGRATIONS)],
    register: register_events,
    start,
    ..Service::named(NAME)
};

/// What the deployment tells the connector (from `--cdc-source` and its companions).
#[derive(Clone, Debug)]
pub struct CdcSettings(pub shopflow_cdc::Config);

fn register_events(r: &mut Registry) {
    r.register::<shopflow_cdc::RowChanged>();
}

/// Starts the connector (restarted after failures) as the service's background task, and
/// exports its [`CdcStatus`] for health and the operations API.
fn start(ctx: Context) -> BoxFuture<'static, shopflow_service::Result<Started>> {
    Box::pin(async move {
        let status = CdcStatus::default();
        let mut started = Started::new(Router::new());
        match ctx.settings.get::<CdcSettings>() {
            Some(CdcSettings(config)) => {
                started.tasks.push(Box::pin(run(
                    config,
                    ctx.bus,
                    ctx.db,
                    ctx.shutdown,
                    status.clone(),
                )));
            }
            None => {
                tracing::warn!("the cdc service has no source (--cdc-source): it captures nothing")
            }
        }
        started.exports.insert(status);
        Ok(started)
    })
}

/// Where to capture changes from (the options `up` and `cdc` share).
#[derive(Clone, Debug, clap::Args)]
pub struct CdcArgs {
    /// Capture row changes from this PostgreSQL database (`postgres://user@host:port/db`, a
    /// role allowed to replicate; wal_level = logical) onto the bus.
    #[arg(long = "cdc-source", env = "SHOPFLOW_CDC_SOURCE")]
    pub source: Option<String>,
    /// The publication naming the captured tables.
    #[arg(long = "cdc-publication", default_value = "shopflow_cdc")]
    pub publication: String,
    /// The replication slot the connector owns (created on first start).
    #[arg(long = "cdc-slot", default_value = "shopflow_cdc")]
    pub slot: String,
    /// Topic prefix: changes of schema.table go to <prefix>.<schema>.<table>.
    #[arg(long = "cdc-prefix", default_value = "cdc")]
    pub prefix: String,
    /// Do not read the tables' current rows first (stream changes from now on only).
    #[arg(long = "cdc-no-snapshot")]
    pub no_snapshot: bool,
    /// Seconds between heartbeats written into the source's WAL while the captured tables are
    /// quiet (so the slot does not keep WAL for them); 0 turns them off.
    #[arg(long = "cdc-heartbeat-secs", default_value_t = 10)]
    pub heartbeat_secs: u64,
}

impl CdcArgs {
    pub fn config(&self, partitions: u32) -> Option<shopflow_cdc::Config> {
        let source = self.source.as_ref()?;
        let mut c = shopflow_cdc::Config::new(source, &self.publication, &self.slot);
        c.prefix = self.prefix.clone();
        c.partitions = partitions;
        c.snapshot = !self.no_snapshot;
        c.heartbeat = (self.heartbeat_secs > 0).then(|| Duration::from_secs(self.heartbeat_secs));
        Some(c)
    }
}

/// The running connector's status, shared with whoever reports it.
#[derive(Clone, Debug, Default)]
pub struct CdcStatus(Arc<std::sync::Mutex<Option<Arc<shopflow_cdc::Status>>>>);

impl CdcStatus {
    pub fn get(&self) -> Option<Arc<shopflow_cdc::Status>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Runs the connector until `shutdown`, starting it again (after 1 s, doubling to 30 s) whenever
/// it stops with an error: a source that is down or restarting is waited for.
pub async fn run(
    config: shopflow_cdc::Config,
    bus: Arc<dyn Publisher>,
    db: Db,
    shutdown: Shutdown,
    status: CdcStatus,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        if shutdown.is_triggered() {
            return;
        }
        let connector =
            match shopflow_cdc::Connector::new(config.clone(), bus.clone(), db.clone()).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "change data capture cannot start");
                    return;
                }
            };
        *status.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(connector.status());
        let started = std::time::Instant::now();
        match connector.run(shutdown.clone().wait()).await {
            Ok(()) => return,
            Err(e) => {
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                }
                tracing::error!(error = %e, retry_in = ?backoff, "change data capture stopped; starting it again");
                metrics::counter!("shopflow_cdc_restarts_total").increment(1);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.clone().wait() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// A data directory argument's default.
pub fn default_dir() -> PathBuf {
    PathBuf::from("./data")
}

/// What `GET /health` of `shopflow cdc` says.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CdcHealth {
    /// `ok` while streaming; `starting` or `snapshot` before; `down` after a failure, while
    /// the connector waits to start again.
    pub status: &'static str,
    pub phase: &'static str,
    pub snapshot_rows: u64,
    pub changes: u64,
    pub transactions: u64,
    pub confirmed_lsn: u64,
    pub lag_bytes: u64,
}

impl CdcStatus {
    pub fn health(&self) -> CdcHealth {
        use std::sync::atomic::Ordering::Relaxed;
        match self.get() {
            None => CdcHealth {
                status: "starting",
                phase: "starting",
                snapshot_rows: 0,
                changes: 0,
                transactions: 0,
                confirmed_lsn: 0,
                lag_bytes: 0,
            },
            Some(s) => {
                let phase = s.phase();
                CdcHealth {
                    status: match phase {
                        "streaming" => "ok",
                        "stopped" => "down",
                        p => p,
                    },
                    phase,
                    snapshot_rows: s.snapshot_rows.load(Relaxed),
                    changes: s.changes.load(Relaxed),
                    transactions: s.transactions.load(Relaxed),
                    confirmed_lsn: s.confirmed_lsn.load(Relaxed),
                    lag_bytes: s.lag_bytes.load(Relaxed),
                }
            }
        }
    }
}

/// `/health` (503 unless streaming) and `/metrics` of a `shopflow cdc` process.
pub fn router(
    status: CdcStatus,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/health",
            get(move || {
                let h = status.health();
                async move {
                    let code = if h.status == "ok" {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (code, axum::Json(h))
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let text = metrics.as_ref().map(|m| m.render()).unwrap_or_default();
                async move { text }
            }),
        )
}
