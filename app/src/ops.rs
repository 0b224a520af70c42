//! What the person on call touches: dead letters (list, show, redrive, discard), consumer lag,
//! circuit breakers and Prometheus metrics, under `/admin/*` and `/metrics`.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use shopflow_anybus::AnyBus;
use shopflow_bus::Bus;
use shopflow_http::{ApiError, Json, Query};
use shopflow_runtime::CircuitBreaker;
use shopflow_runtime::dlq::{self, Filter};
use shopflow_service::MetricsHook;
use shopflow_store::Db;

/// Buckets of the hop lags (relay, delivery), in seconds.
const LAG_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The process-wide Prometheus recorder (installed on first use; `None` when another recorder
/// was installed first).
pub fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("shopflow_handler_seconds".into()),
                    &[
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0, 2.5, 5.0,
                    ],
                )
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full("shopflow_outbox_lag_seconds".into()),
                    &LAG_BUCKETS,
                )
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full("shopflow_consumer_delivery_seconds".into()),
                    &LAG_BUCKETS,
                )
                .ok()?;
            match builder.install_recorder() {
                Ok(h) => {
                    // Histogram samples wait in the recorder until they are folded into their
                    // buckets: by a scrape, or here. Without it, a shop nobody scrapes would
                    // keep every handler's and hop's sample in memory.
                    let upkeep = h.clone();
                    let spawned = std::thread::Builder::new()
                        .name("shopflow-metrics".into())
                        .spawn(move || {
                            loop {
                                std::thread::sleep(std::time::Duration::from_secs(5));
                                upkeep.run_upkeep();
                            }
                        });
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "metrics upkeep thread not started");
                    }
                    Some(h)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .clone()
}

/// A 503 for a bus (or other dependency) that cannot answer now.
pub(crate) fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        e.to_string(),
    )
}

/// The operations side of a running shop.
#[derive(Clone)]
pub struct Ops {
    /// The operations database: the dead-letter index and its outbox (for redrives).
    pub db: Db,
    pub log: AnyBus,
    /// The consumer groups of the shop.
    pub groups: Vec<&'static str>,
    pub breakers: Vec<Arc<CircuitBreaker>>,
    /// Every database with an outbox, by owner.
    pub outboxes: Vec<(&'static str, Db)>,
    /// The services' hooks that set their gauges before `/metrics` renders.
    pub hooks: Vec<MetricsHook>,
    /// The consumers this process runs, with what they have done and what they wait for.
    pub consumers: Vec<(&'static str, Arc<shopflow_runtime::RunnerStats>)>,
    /// Every outbox relay of this process, by owner: what it has published.
    pub relays: Vec<(&'static str, Arc<shopflow_store::outbox::RelayStats>)>,
    /// The services this process runs.
    pub services: Vec<ServiceRun>,
    /// The last minutes of what they did (sampled by [`Ops::sample_history`]).
    pub history: Arc<History>,
    /// Change data capture and the strangler-fig gateway, when this process runs them.
    pub migration: Arc<crate::gateway::InProcess>,
}

/// Counters every [`HISTORY_EVERY`], lag every [`LAG_EVERY`], for [`HISTORY_KEEP`].
pub const HISTORY_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
pub const LAG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
pub const HISTORY_KEEP: std::time::Duration = std::time::Duration::from_secs(300);

/// The last minutes of the process's counters and lag.
#[derive(Debug, Default)]
pub struct History(std::sync::Mutex<HistoryView>);

/// What the dashboard draws its charts from.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HistoryView {
    /// Per service, events consumed and published since start, every two seconds.
    #[schema(value_type = Vec<CounterSample>)]
    counters: std::collections::VecDeque<CounterSample>,
    /// Total lag per consumer group, every ten seconds.
    #[schema(value_type = Vec<LagSample>)]
    lag: std::collections::VecDeque<LagSample>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CounterSample {
    /// Milliseconds since the epoch.
    at: i64,
    /// Per service: `[consumed, published]`.
    services: BTreeMap<String, [u64; 2]>,
    /// Per consumer group: handled (with duplicates, dead letters and parked records).
    groups: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LagSample {
    at: i64,
    groups: BTreeMap<String, u64>,
}

impl History {
    fn view(&self) -> HistoryView {
        self.0.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

fn trim<T>(q: &mut std::collections::VecDeque<T>, every: std::time::Duration) {
    let keep = (HISTORY_KEEP.as_millis() / every.as_millis()) as usize;
    while q.len() > keep {
        q.pop_front();
    }
}

impl Ops {
    /// What `service` consumed (its groups' records done with) and published (its relay's
    /// rows), since this process started.
    fn counters(&self, service: &ServiceRun) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let consumed = self
            .consumers
            .iter()
            .filter(|(g, _)| service.groups.contains(g))
            .map(|(_, s)| s.seen())
            .sum();
        let published = self
            .relays
            .iter()
            .filter(|(o, _)| *o == service.name)
            .map(|(_, r)| r.published.load(Relaxed))
            .sum();
        (consumed, published)
    }

    /// Samples the counters and the lag until shutdown (cheap: the counters are in memory, the
    /// lag is asked of the bus every ten seconds).
    pub async fn sample_history(self, shutdown: shopflow_runtime::Shutdown) {
        let stop = shutdown.wait();
        tokio::pin!(stop);
        let mut ticks: u64 = 0;
        let lag_every = (LAG_EVERY.as_millis() / HISTORY_EVERY.as_millis()) as u64;
        loop {
            let at = shopflow_envelope::sim::now().timestamp_millis();
            let groups: BTreeMap<String, u64> = self
                .consumers
                .iter()
                .map(|(g, s)| ((*g).to_owned(), s.seen()))
                .collect();
            let services = self
                .services
                .iter()
                .map(|s| {
                    let (consumed, published) = self.counters(s);
                    (s.name.to_owned(), [consumed, published])
                })
                .collect();
            let lag = if ticks.is_multiple_of(lag_every) {
                self.lag().await.ok().map(|r| LagSample {
                    at,
                    groups: r.groups,
                })
            } else {
                None
            };
            if let Ok(mut h) = self.history.0.lock() {
                h.counters.push_back(CounterSample {
                    at,
                    services,
                    groups,
                });
                trim(&mut h.counters, HISTORY_EVERY);
                if let Some(l) = lag {
                    h.lag.push_back(l);
                    trim(&mut h.lag, LAG_EVERY);
                }
            }
            ticks += 1;
            tokio::select! {
                _ = tokio::time::sleep(HISTORY_EVERY) => {}
                _ = &mut stop => return,
            }
        }
    }
}

/// The last five minutes of each service's events in and out (every two seconds) and each
/// group's lag (every ten seconds), as this process sampled them.
#[utoipa::path(get, path = "/admin/history", tag = "operations", operation_id = "getHistory",
    security(("adminToken" = [])),
    responses(
        shopflow_http::responses::NeedsAdmin,
        (status = 200, description = "The samples, oldest first", body = HistoryView),
    ))]
pub(crate) async fn history(State(ops): State<Arc<Ops>>) -> Json<HistoryView> {
    Json(ops.history.view())
}

/// A service as this process runs it.
#[derive(Clone, Debug)]
pub struct ServiceRun {
    pub name: &'static str,
    /// Its consumer groups.
    pub groups: Vec<&'static str>,
    /// The breakers around the external systems it calls.
    pub breakers: Vec<Arc<CircuitBreaker>>,
}

/// One service of this process, for the dashboard's overview.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServiceView {
    name: String,
    /// `ok`; `degraded` while one of its breakers is not closed or a consumer is paused.
    health: String,
    /// Events it consumed (handled, duplicates and dead letters), since this process started.
    consumed: u64,
    /// Events its relay published, since this process started.
    published: u64,
    outbox_backlog: u64,
    consumers: Vec<String>,
    breakers: Vec<BreakerView>,
    /// Its consumers that wait, and why.
    waiting: BTreeMap<String, shopflow_runtime::Waiting>,
}

/// The services of this process: health, what they consumed and published, outbox backlog,
/// breakers.
#[utoipa::path(get, path = "/admin/services", tag = "operations", operation_id = "listServices",
    security(("adminToken" = [])),
    responses(
        shopflow_http::responses::NeedsAdmin,
        shopflow_http::responses::Unavailable,
        (status = 200, description = "The services", body = Vec<ServiceView>),
    ))]
pub(crate) async fn services(
    State(ops): State<Arc<Ops>>,
) -> Result<Json<Vec<ServiceView>>, ApiError> {
    let mut out = Vec::new();
    for s in &ops.services {
        let (consumed, published) = ops.counters(s);
        let waiting: BTreeMap<String, shopflow_runtime::Waiting> = ops
            .consumers
            .iter()
            .filter(|(g, _)| s.groups.contains(g))
            .filter_map(|(g, stats)| stats.waiting().map(|w| ((*g).to_owned(), w)))
            .collect();
        let outbox_backlog = match ops.outboxes.iter().find(|(o, _)| *o == s.name) {
            Some((_, db)) => shopflow_store::outbox::backlog(db).await?,
            None => 0,
        };
        let breakers: Vec<BreakerView> = s.breakers.iter().map(|b| breaker_view(b)).collect();
        let degraded = breakers
            .iter()
            .any(|b| b.state != shopflow_runtime::BreakerState::Closed)
            || waiting.values().any(|w| w.kind == "paused");
        out.push(ServiceView {
            name: s.name.to_owned(),
            health: if degraded { "degraded" } else { "ok" }.to_owned(),
            consumed,
            published,
            outbox_backlog,
            consumers: s.groups.iter().map(|g| (*g).to_owned()).collect(),
            breakers,
            waiting,
        });
    }
    Ok(Json(out))
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ops")
            .field("groups", &self.groups)
            .field("breakers", &self.breakers)
            .finish_non_exhaustive()
    }
}

/// Lag of one consumer group on one partition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LagRow {
    pub group: String,
    pub topic: String,
    pub partition: u32,
    pub committed: Option<u64>,
    pub end_offset: u64,
    pub lag: u64,
}

/// Consumer lag of the whole shop.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LagReport {
    /// Total lag per group.
    pub groups: BTreeMap<String, u64>,
    /// Rows of the outbox not yet published, per owner.
    pub outbox_backlog: BTreeMap<String, i64>,
    pub partitions: Vec<LagRow>,
    /// The groups (of this process's consumers) that wait before they go on, and why.
    #[serde(default)]
    pub waiting: BTreeMap<String, shopflow_runtime::Waiting>,
}

/// Which open dead letters to redrive (a bulk redrive takes open ones only).
#[derive(Clone, Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RedriveFilter {
    /// The original topic.
    pub topic: Option<String>,
    pub event_type: Option<String>,
    pub consumer: Option<String>,
    /// A substring of the error.
    pub error: Option<String>,
    /// 1 to 1000 (default 100).
    #[schema(minimum = 1, maximum = 1000)]
    #[serde(default, deserialize_with = "shopflow_http::int::opt_u32")]
    pub limit: Option<u32>,
}

/// Which open dead letters to discard, and why (a bulk discard takes open ones only).
#[derive(Clone, Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct DiscardFilter {
    /// The original topic.
    pub topic: Option<String>,
    pub event_type: Option<String>,
    pub consumer: Option<String>,
    /// A substring of the error.
    pub error: Option<String>,
    /// 1 to 1000 (default 100).
    #[schema(minimum = 1, maximum = 1000)]
    #[serde(default, deserialize_with = "shopflow_http::int::opt_u32")]
    pub limit: Option<u32>,
    #[schema(schema_with = shopflow_http::text200)]
    pub reason: String,
}

impl From<RedriveFilter> for dlq::Filter {
    fn from(f: RedriveFilter) -> Self {
        dlq::Filter {
            topic: f.topic,
            event_type: f.event_type,
            consumer: f.consumer,
            error: f.error,
            status: None,
            limit: f.limit,
        }
    }
}

/// A circuit breaker and its state.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BreakerView {
    name: String,
    state: shopflow_runtime::BreakerState,
    failure_threshold: u32,
    open_for_ms: u64,
}

/// Why a dead letter is closed without a redrive.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiscardBody {
    #[schema(schema_with = shopflow_http::text200)]
    reason: String,
}

/// Dead letters and the counts by status.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeadLetters {
    dead_letters: Vec<dlq::DeadLetter>,
    counts: BTreeMap<String, i64>,
    /// Keys parked behind a dead letter, per consumer group of this process's services: their
    /// later records wait until the head is redriven and handled, or discarded.
    parked: Vec<dlq::Parked>,
}

/// What a redrive of one dead letter did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RedrivenOne {
    redriven: Vec<dlq::Redriven>,
}

/// The service's liveness.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Liveness: answers while the process serves.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    operation_id = "health",
    responses((status = 200, description = "Alive", body = Health))
)]
pub(crate) async fn health() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

fn dlq_error(e: dlq::Error) -> ApiError {
    match e {
        dlq::Error::NotFound(id) => ApiError::not_found("dead letter", &id),
        e @ dlq::Error::NotOpen { .. } => ApiError::conflict(e.to_string()),
        dlq::Error::Invalid(m) => ApiError::bad_request(m),
        dlq::Error::Store(e) => ApiError::from(e),
    }
}

impl Ops {
    pub fn router(self) -> Router {
        Router::new()
            .route("/admin/dlq", get(list_dlq))
            .route("/admin/dlq/redrive", post(redrive_matching))
            .route("/admin/dlq/discard", post(discard_matching))
            .route("/admin/dlq/{id}", get(show_dlq))
            .route("/admin/dlq/{id}/redrive", post(redrive_one))
            .route("/admin/dlq/{id}/discard", post(discard))
            .route("/admin/lag", get(lag))
            .route("/admin/events", get(crate::tail::handler))
            .route("/admin/breakers", get(breakers))
            .route("/admin/services", get(services))
            .route("/admin/history", get(history))
            .route("/admin/migration", get(crate::gateway::migration))
            .route(
                "/admin/migration/routes",
                axum::routing::put(crate::gateway::migration_switch),
            )
            .route("/metrics", get(metrics))
            .merge(crate::dashboard::admin_routes())
            .with_state(Arc::new(self))
    }

    /// Every key parked behind a dead letter in the consumer groups of this process's services.
    pub async fn parked(&self) -> Result<Vec<dlq::Parked>, ApiError> {
        let mut out = Vec::new();
        for (owner, db) in &self.outboxes {
            if *owner != crate::services::OPS {
                out.extend(dlq::parked(db).await.map_err(dlq_error)?);
            }
        }
        out.sort_by(|a, b| (&a.consumer, &a.key).cmp(&(&b.consumer, &b.key)));
        Ok(out)
    }

    /// Lag of every group on every partition, and the outbox backlogs.
    pub async fn lag(&self) -> Result<LagReport, ApiError> {
        let mut partitions = Vec::new();
        let mut groups = BTreeMap::new();
        for g in &self.groups {
            let rows = self.log.lag(g).await.map_err(unavailable)?;
            let mut total = 0;
            for r in rows {
                total += r.lag;
                partitions.push(LagRow {
                    group: r.group,
                    topic: r.topic,
                    partition: r.partition,
                    committed: r.committed,
                    end_offset: r.end_offset,
                    lag: r.lag,
                });
            }
            groups.insert((*g).to_owned(), total);
        }
        let mut outbox_backlog = BTreeMap::new();
        for (owner, db) in &self.outboxes {
            let n = shopflow_store::outbox::backlog(db).await?;
            outbox_backlog.insert((*owner).to_owned(), n as i64);
        }
        let waiting = self
            .consumers
            .iter()
            .filter_map(|(g, s)| s.waiting().map(|w| ((*g).to_owned(), w)))
            .collect();
        Ok(LagReport {
            groups,
            outbox_backlog,
            partitions,
            waiting,
        })
    }
}

/// Dead letters (open ones unless `status` says otherwise), oldest first, and counts by status.
#[utoipa::path(get, path = "/admin/dlq", tag = "operations", operation_id = "listDeadLetters",
    params(Filter), security(("adminToken" = [])),
    responses(
        shopflow_http::responses::NeedsAdmin,
        shopflow_http::responses::Unavailable,
        (status = 200, description = "Dead letters", body = DeadLetters),
        (status = 400, description = "A malformed filter", body = shopflow_http::ErrorBody),
    ))]
pub(crate) async fn list_dlq(
    State(ops): State<Arc<Ops>>,
    Query(filter): Query<Filter>,
) -> Result<Json<DeadLetters>, ApiError> {
    let dead_letters = dlq::list(&ops.db, &filter).await.map_err(dlq_error)?;
    let counts = dlq::counts(&ops.db).await.map_err(dlq_error)?;
    let parked = ops.parked().await?;
    Ok(Json(DeadLetters {
        dead_letters,
        counts,
        parked,
    }))
}

/// One dead letter with its record, headers and payload.
#[utoipa::path(get, path = "/admin/dlq/{id}", tag = "operations", operation_id = "getDeadLetter",
    params(("id" = String, Path, description = "The dead letter (`<dlq topic>:<partition>:<offset>`)")), security(("adminToken" = [])),
    responses(
        shopflow_http::responses::NeedsAdmin,
        shopflow_http::responses::Unavailable,
        (status = 200, description = "The dead letter", body = dlq::DeadLetterDetail),
        (status = 404, description = "No such dead letter", body = shopflow_http::ErrorBody),
    ))]
pub(crate) async fn show_dlq(
    State(ops): State<Arc<Ops>>,
    Path(id): Path<String>,
) -> Result<Json<dlq::DeadLetterDetail>, ApiError> {
    Ok(Json(dlq::show(&ops.db, &id).await.map_err(dlq_error)?))
}

/// Send an open dead letter back, to the one consumer group it failed in; a second redrive
/// sends nothing (`alreadyRedriven`).
#[utoipa::path(post, path = "/admin/dlq/{id}/redrive", tag = "operations", operation_id = "redriveDeadLetter",
    params(("id" = String, Path, description = "The dead letter (`<dlq topic>:<partition>:<offset>`)")), security(("adminToken" = [])),
    responses(
        shopflow_http::responses::NeedsAdmin,
        shopflow_http::responses::Unavailable,
        (status = 200, description = "Redriven (or it had been)", body = RedrivenOne),
        (status = 404, description = "No such dead letter", body = shopflow_http::ErrorBody),
        (status = 409, description = "It was discarded", body = shopflow_http::ErrorBody),
    ))]
pub(crate) async fn redrive_one(
    State(ops): State<Arc<Ops>>,
    Path(id): Path<String>,
) -> Result<Json<RedrivenOne>, ApiError> {
    let r = dlq::redrive(&ops.db, &id).await.map_err(dlq_error)?;
    Ok(Json(RedrivenOne { redriven: vec![r] }))
}

/// Send the oldest open dead letters matching the filter back (at most `limit`, default 100,
/// at most 1000), each to the one group it failed in; says how many remain.
#[utoipa::path(post, path = "/admin/dlq/redrive", tag = "operations", operation_id = "redriveDeadLetters",
    request_body = RedriveFilter, security(("adminToken" = [])),
    responses(
        shopflow_http::responses::JsonBody,
        shopflow_http::responses::NeedsAdmin,
        shopflow_http::responses::Unavailable,
        (status = 200, description = "What was sent back", body = dlq::BulkRedrive),
        (status = 400, description = "Not JSON, or a bad filter", body = shopflow_http::ErrorBody),
    ))]
pub(crate) async fn redrive_matching(
    State(ops): State<Arc<Ops>>,
    Json(filter): Json<RedriveFilter>,
) -> Result<Json<dlq::BulkRedrive>, ApiError> {
    dlq::redrive_matching(&ops.db, &filter.into())
        .await
        .map(Json)
        .map_err(dlq_error)
}

/// Close the oldest open dead letters matching the filter without redriving them (at most
/// `limit`, default 100, at most 1000); the reason is kept on each, and each group that parked
/// keys behind them is told to release what waited.
#[utoipa::path(post, path = "/admin/dlq/discard", tag = "operations", operation_id = "discardDeadLetters",
    request_body = DiscardFilter, security(("adminToken" = [])),
    responses(
        shopflow_http::responses::JsonBody,
        shopflow_http::responses::NeedsAdmin,
        shopflow_http::responses::Unavailable,
        (status = 200, description = "What was discarded", body = dlq::BulkDiscard),
        (status = 400, description = "Not JSON, a bad filter, or no reason", body = shopflow_http::ErrorBody),
    ))]
pub(crate) async fn discard_matching(
    State(ops): State<Arc<Ops>>,
    Json(f): Json<DiscardFilter>,
) -> Result<Json<dlq::BulkDiscard>, ApiError> {
    // As for one discard: an empty reason is the store's 400; otherwise visible text of at most
    // 200 characters.
    let reason = if f.reason.trim().is_empty() {
        f.reason
    } else {
        shopflow_http::text("reason", &f.reason, 200)?
    };
    let filter = dlq::Filter {
        topic: f.topic,
        event_type: f.event_type,
        consumer: f.consumer,
        error: f.error,
        status: None,
        limit: f.limit,
    };
    dlq::discard_matching(&ops.db, &filter, &reason)
        .await
        .map(Json)
        .map_err(dlq_error)
}

/// Close an open dead letter without redriving it; the reason is kept.
#[utoipa::path(post, path = "/admin/dlq/{id}/discard", tag = "operations", operation_id = "discardDeadLetter",
    params(("id" = String, Path, description = "The dead letter (`<dlq topic>:<partition>:<offset>`)")), request_body = DiscardBody, security(("adminToken" = [])),
    responses(
        shopflow_http::responses::JsonBody,
        shopflow_http::responses::NeedsAdmin,
        shopflow_http::responses::Unavailable,
        (status = 200, description = "Discarded", body = dlq::DeadLetter),
        (status = 400, description = "Not JSON, or no reason", body = shopflow_http::ErrorBody),
        (status = 404, description = "No such dead letter", body = shopflow_http::ErrorBody),
        (status = 409, description = "Not open", body = shopflow_http::ErrorBody),
    ))]
pub(crate) async fn discard(
    State(ops): State<Arc<Ops>>,
    Path(id): Path<String>,
    Json(body): Json<DiscardBody>,
) -> Result<Json<dlq::DeadLetter>, ApiError> {
    // An empty reason stays the store's 400; otherwise what the document says of it: visible
    // text of at most 200 characters.
    let reason = if body.reason.trim().is_empty() {
        body.reason
    } else {
        shopflow_http::text("reason", &body.reason, 200)?
    };
    Ok(Json(
        dlq::discard(&ops.db, &id, &reason)
            .await
            .map_err(dlq_error)?,
    ))
}

/// Consumer lag per group and partition, and the outbox backlogs.
#[utoipa::path(get, path = "/admin/lag", tag = "operations", operation_id = "getLag", security(("adminToken" = [])),
    responses(
        shopflow_http::responses::NeedsAdmin,
        shopflow_http::responses::Unavailable,
        (status = 200, description = "Lag", body = LagReport),
    ))]
pub(crate) async fn lag(State(ops): State<Arc<Ops>>) -> Result<Json<LagReport>, ApiError> {
    Ok(Json(ops.lag().await?))
}

/// The circuit breakers of this process and their states.
#[utoipa::path(get, path = "/admin/breakers", tag = "operations", operation_id = "listBreakers", security(("adminToken" = [])),
    responses(
        shopflow_http::responses::NeedsAdmin,
        (status = 200, description = "Breakers", body = Vec<BreakerView>),
    ))]
pub(crate) async fn breakers(State(ops): State<Arc<Ops>>) -> Json<Vec<BreakerView>> {
    Json(ops.breakers.iter().map(|b| breaker_view(b)).collect())
}

fn breaker_view(b: &CircuitBreaker) -> BreakerView {
    BreakerView {
        name: b.name().to_owned(),
        state: b.state(),
        failure_threshold: b.config().failure_threshold,
        open_for_ms: u64::try_from(b.config().open_for.as_millis()).unwrap_or(u64::MAX),
    }
}

/// Prometheus metrics (text format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "metrics",
    responses(
        (status = 200, description = "Metrics", body = String, content_type = "text/plain"),
        (status = 503, description = "No metrics recorder, or the bus cannot answer", body = shopflow_http::ErrorBody),
    ))]
pub(crate) async fn metrics(State(ops): State<Arc<Ops>>) -> Result<Response, ApiError> {
    let Some(handle) = metrics_handle() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "no metrics recorder in this process",
        ));
    };
    // Gauges that are cheapest to read when asked.
    let report = ops.lag().await?;
    for r in &report.partitions {
        metrics::gauge!(
            "shopflow_consumer_lag",
            "group" => r.group.clone(),
            "topic" => r.topic.clone(),
            "partition" => r.partition.to_string()
        )
        .set(r.lag as f64);
    }
    for (owner, n) in &report.outbox_backlog {
        metrics::gauge!("shopflow_outbox_backlog", "owner" => owner.clone()).set(*n as f64);
    }
    let counts = dlq::counts(&ops.db).await.map_err(dlq_error)?;
    for status in ["open", "redriven", "discarded"] {
        let n = counts.get(status).copied().unwrap_or(0);
        metrics::gauge!("shopflow_dead_letters", "status" => status).set(n as f64);
    }
    let mut parked: BTreeMap<String, (u64, u64)> = ops
        .groups
        .iter()
        .map(|g| ((*g).to_owned(), (0, 0)))
        .collect();
    for p in ops.parked().await? {
        let e = parked.entry(p.consumer).or_default();
        e.0 += 1;
        e.1 += p.depth;
    }
    for (group, (keys, records)) in parked {
        metrics::gauge!("shopflow_dlq_parked_keys", "consumer" => group.clone()).set(keys as f64);
        metrics::gauge!("shopflow_dlq_parked_records", "consumer" => group).set(records as f64);
    }
    for b in &ops.breakers {
        metrics::gauge!("shopflow_breaker_state", "breaker" => b.name().to_owned())
            .set(b.state().gauge());
    }
    for hook in &ops.hooks {
        hook().await;
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response())
}

/// The operations side's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        health,
        list_dlq,
        show_dlq,
        redrive_one,
        redrive_matching,
        discard_matching,
        discard,
        lag,
        breakers,
        services,
        history,
        metrics,
        crate::gateway::migration,
        crate::gateway::migration_switch,
        crate::tail::handler,
        crate::dashboard::index,
        crate::dashboard::asset,
        crate::dashboard::topics,
        crate::dashboard::records
    ),
    components(schemas(
        DeadLetters,
        dlq::DeadLetter,
        dlq::DeadLetterDetail,
        dlq::Redriven,
        dlq::BulkRedrive,
        dlq::BulkDiscard,
        DiscardFilter,
        dlq::Parked,
        RedrivenOne,
        DiscardBody,
        ServiceView,
        HistoryView,
        CounterSample,
        LagSample,
        LagReport,
        LagRow,
        shopflow_runtime::Waiting,
        BreakerView,
        shopflow_runtime::BreakerState,
        Health,
        crate::tail::Tail,
        crate::tail::TailedEvent,
        crate::dashboard::TopicView,
        crate::dashboard::PartitionView,
        crate::dashboard::PartitionRecords,
        crate::gateway::MigrationView,
        crate::gateway::GatewayView,
        crate::gateway::SwitchRoute,
        crate::gateway::SwitchedView,
        crate::cdc::CdcHealth,
        shopflow_gateway::RouteView,
        shopflow_gateway::Difference,
        shopflow_gateway::TargetKind,
        shopflow_gateway::Side,
        shopflow_http::ErrorBody
    ))
)]
pub(crate) struct Api;
