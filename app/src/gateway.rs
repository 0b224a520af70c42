//! The strangler-fig gateway in the app: `shopflow gateway --routes routes.toml` (a process of
//! its own) and `up --routes routes.toml --gateway-listen …` (beside the embedded shop, whose
//! address is then the `new` side). Route switches are kept in the gateway's database (so a
//! restart keeps them) and announced as `RouteSwitched` system events through its outbox;
//! shadow differences are kept there with both bodies. Its admin API (admin token):
//! `GET /admin/gateway/routes`, `PUT /admin/gateway/routes`, `GET /admin/gateway/differences`;
//! everything else is proxied.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::routing::get;
use serde::Deserialize;
use shopflow_gateway::{
    BoxFuture, Difference, Gateway, Recorder, RouteView, RoutesFile, Side, Switched, TargetKind,
};
use shopflow_http::auth::AdminToken;
use shopflow_http::{ApiError, Json};
use shopflow_runtime::system;
use shopflow_store::{Db, Migration, params};

pub const NAME: &str = "gateway";

pub const MIGRATIONS: &[Migration] = &[Migration::portable(
    1,
    "gateway",
    "CREATE TABLE gateway_routes (
        method     TEXT   NOT NULL,
        path       TEXT   NOT NULL,
        target     TEXT   NOT NULL,
        serve      TEXT,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (method, path)
    );
    CREATE TABLE gateway_differences (
        id     TEXT   PRIMARY KEY,
        at     BIGINT NOT NULL,
        route  TEXT   NOT NULL,
        record TEXT   NOT NULL
    );",
)];

/// Serializes the recording of switches (PostgreSQL; SQLite has one writer anyway).
const SWITCH_LOCK_CLASS: i32 = 0x5346_4757; // "SFGW"

/// How often a gateway looks for switches made by others sharing its database.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// How long differences are kept.
const KEEP_DIFFERENCES_MS: i64 = 7 * 24 * 3600 * 1000;

/// The gateway's records in its database.
#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
}

impl Store {
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Applies the switches recorded after `since` over the routes as they stand, and
    /// returns the newest one's time. At start (`since` = `i64::MIN`) that is every recorded
    /// switch: those made before a restart; afterwards, those made through another gateway
    /// sharing this database (this gateway's own change nothing).
    pub async fn follow(&self, gw: &Gateway, since: i64) -> anyhow::Result<i64> {
        let current = gw.routes();
        let mut newest = since;
        for r in self
            .db
            .query(
                "SELECT method, path, target, serve, updated_at FROM gateway_routes WHERE updated_at > $1 ORDER BY updated_at",
                params![since],
            )
            .await?
        {
            let (method, path) = (r.str(0)?, r.str(1)?);
            newest = newest.max(r.i64(4)?);
            let to = target(r.str(2)?).map_err(|e| anyhow::anyhow!(e.message))?;
            let serve = r
                .opt_str(3)?
                .map(side)
                .transpose()
                .map_err(|e| anyhow::anyhow!(e.message))?;
            let Some(before) = current.iter().find(|v| {
                v.path == path
                    && v.methods
                        .iter()
                        .any(|m| m.eq_ignore_ascii_case(method) || m == "*")
            }) else {
                tracing::warn!(
                    method,
                    path,
                    "a recorded switch names a route the routes file no longer has"
                );
                continue;
            };
            if before.target != to || (serve.is_some() && before.serve != serve) {
                gw.set(method, path, to, serve)?;
                tracing::info!(method, path, to = kind(to), "a recorded route switch applied");
            }
        }
        Ok(newest)
    }

    pub async fn differences(&self, limit: i64) -> Result<Vec<serde_json::Value>, ApiError> {
        let rows = self
            .db
            .query(
                "SELECT record FROM gateway_differences ORDER BY id DESC LIMIT $1",
                params![limit],
            )
            .await?;
        rows.iter()
            .map(|r| {
                serde_json::from_str(r.str(0)?).map_err(|e| {
                    ApiError::new(
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        format!("a recorded difference: {e}"),
                    )
                })
            })
            .collect()
    }
}

impl Recorder for Store {
    fn difference(&self, d: Difference) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let now = chrono::Utc::now().timestamp_millis();
            let id = shopflow_envelope::sim::uuid_v7().to_string();
            let record = serde_json::to_string(&d).unwrap_or_default();
            let r = async {
                let mut tx = self.db.begin().await?;
                tx.execute(
                    "INSERT INTO gateway_differences (id, at, route, record) VALUES ($1, $2, $3, $4)",
                    params![id, now, d.route.as_str(), record],
                )
                .await?;
                tx.execute(
                    "DELETE FROM gateway_differences WHERE at < $1",
                    params![now - KEEP_DIFFERENCES_MS],
                )
                .await?;
                tx.commit().await
            };
            if let Err(e) = r.await {
                tracing::error!(error = %e, "recording a shadow difference failed");
            }
            tracing::info!(route = d.route, reason = d.reason, "shadow answers differ");
        })
    }

    fn switched(&self, s: Switched) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let fact = system::RouteSwitched {
                method: s.method.clone(),
                path: s.path.clone(),
                from: kind(s.from).to_owned(),
                to: kind(s.to).to_owned(),
                serve: s.serve.map(|v| v.as_str().to_owned()),
                instance: system::instance(),
            };
            let r = async {
                let mut tx = self.db.begin().await?;
                // Strictly after every switch recorded before, whatever the writers' clocks:
                // gateways sharing this database follow switches newer than the last one they
                // saw. Switches through several gateways at once take turns here, so no two
                // get the same time.
                tx.lock(SWITCH_LOCK_CLASS, "gateway_routes").await?;
                let last = tx
                    .query("SELECT MAX(updated_at) FROM gateway_routes", &[])
                    .await?
                    .first()
                    .map(|r| r.opt_i64(0))
                    .transpose()?
                    .flatten()
                    .unwrap_or(0);
                let at = chrono::Utc::now().timestamp_millis().max(last + 1);
                tx.execute(
                    "DELETE FROM gateway_routes WHERE method = $1 AND path = $2",
                    params![s.method.as_str(), s.path.as_str()],
                )
                .await?;
                tx.execute(
                    "INSERT INTO gateway_routes (method, path, target, serve, updated_at) VALUES ($1, $2, $3, $4, $5)",
                    params![
                        s.method.as_str(),
                        s.path.as_str(),
                        kind(s.to),
                        s.serve.map(|v| v.as_str()),
                        at
                    ],
                )
                .await?;
                let out = system::outgoing(&fact, NAME, &s.path).map_err(|e| {
                    shopflow_store::Error::Corrupt {
                        what: "route switch",
                        reason: e.to_string(),
                    }
                })?;
                shopflow_store::emit(&mut tx, vec![out]).await?;
                tx.commit().await
            };
            r.await.map_err(|e| e.to_string())
        })
    }
}

fn kind(k: TargetKind) -> &'static str {
    match k {
        TargetKind::Legacy => "legacy",
        TargetKind::New => "new",
        TargetKind::Shadow => "shadow",
    }
}

fn target(s: &str) -> Result<TargetKind, ApiError> {
    match s {
        "legacy" => Ok(TargetKind::Legacy),
        "new" => Ok(TargetKind::New),
        "shadow" => Ok(TargetKind::Shadow),
        o => Err(ApiError::invalid(format!(
            "target `{o}` is not legacy, new or shadow"
        ))),
    }
}

fn side(s: &str) -> Result<Side, ApiError> {
    match s {
        "legacy" => Ok(Side::Legacy),
        "new" => Ok(Side::New),
        o => Err(ApiError::invalid(format!(
            "serve `{o}` is not legacy or new"
        ))),
    }
}

/// `PUT /admin/gateway/routes`: move one route.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SwitchRoute {
    /// One of the route's methods, as in the routes file.
    pub method: String,
    /// The route's path pattern, as in the routes file (`/products/{sku}`).
    pub path: String,
    /// `legacy`, `new` or `shadow`.
    pub to: String,
    /// For `shadow`: the side whose answer clients get (`legacy` or `new`).
    pub serve: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct Limit {
    /// How many, newest first: 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[derive(Clone, Debug)]
struct Admin {
    gw: Gateway,
    store: Store,
}

#[utoipa::path(get, path = "/admin/gateway/routes", tag = "gateway", operation_id = "listGatewayRoutes",
    security(("adminToken" = [])),
    responses(
        shopflow_http::responses::NeedsAdmin,
        (status = 200, description = "The routes, in matching order, and where each goes now", body = Vec<RouteView>),
    ))]
async fn list_routes(State(a): State<Arc<Admin>>) -> axum::Json<Vec<RouteView>> {
    axum::Json(a.gw.routes())
}

/// What a switch did.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SwitchedView {
    pub method: String,
    pub path: String,
    pub from: String,
    pub to: String,
    pub serve: Option<String>,
}

#[utoipa::path(put, path = "/admin/gateway/routes", tag = "gateway", operation_id = "switchGatewayRoute",
    security(("adminToken" = [])),
    request_body = SwitchRoute,
    responses(
        shopflow_http::responses::JsonBody,
        shopflow_http::responses::NeedsAdmin,
        shopflow_http::responses::Unavailable,
        (status = 200, description = "Switched (and recorded as a RouteSwitched system event)", body = SwitchedView),
        (status = 404, description = "No such route in the routes file", body = shopflow_http::ErrorBody),
    ))]
async fn switch_route(
    State(a): State<Arc<Admin>>,
    Json(req): Json<SwitchRoute>,
) -> Result<axum::Json<SwitchedView>, ApiError> {
    let to = target(&req.to)?;
    let serve = req.serve.as_deref().map(side).transpose()?;
    let s =
        a.gw.switch(&req.method, &req.path, to, serve)
            .await
            .map_err(|e| match e {
                shopflow_gateway::Error::NoSuchRoute { .. } => ApiError::new(
                    axum::http::StatusCode::NOT_FOUND,
                    "not_found",
                    e.to_string(),
                ),
                // Recording the switch failed (its database): nothing was switched for good.
                e => ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    e.to_string(),
                ),
            })?;
    Ok(axum::Json(SwitchedView {
        method: s.method,
        path: s.path,
        from: kind(s.from).to_owned(),
        to: kind(s.to).to_owned(),
        serve: s.serve.map(|v| v.as_str().to_owned()),
    }))
}

#[utoipa::path(get, path = "/admin/gateway/differences", tag = "gateway", operation_id = "listGatewayDifferences",
    security(("adminToken" = [])),
    params(Limit),
    responses(
        shopflow_http::responses::NeedsAdmin,
        shopflow_http::responses::Unavailable,
        (status = 200, description = "Shadow differences, newest first, with both bodies", body = Vec<Difference>),
        (status = 400, description = "Bad query", body = shopflow_http::ErrorBody),
        (status = 422, description = "limit out of range", body = shopflow_http::ErrorBody),
    ))]
async fn list_differences(
    State(a): State<Arc<Admin>>,
    shopflow_http::Query(q): shopflow_http::Query<Limit>,
) -> Result<axum::Json<Vec<serde_json::Value>>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be between 1 and 1000"));
    }
    Ok(axum::Json(a.store.differences(limit).await?))
}

fn gateway_admin(method: &axum::http::Method, path: &str) -> bool {
    let _ = method;
    path.starts_with("/admin/gateway")
}

/// What `/gateway/health` says.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct GatewayHealth {
    pub status: &'static str,
    /// Each side's circuit breaker: closed, open or halfopen.
    pub breakers: std::collections::BTreeMap<String, String>,
}

#[utoipa::path(get, path = "/gateway/health", tag = "gateway", operation_id = "gatewayHealth",
    responses((status = 200, description = "Alive, with each side's breaker", body = GatewayHealth)))]
async fn gateway_health(State(gw): State<Gateway>) -> axum::Json<GatewayHealth> {
    axum::Json(GatewayHealth {
        status: "ok",
        breakers: gw
            .breakers()
            .iter()
            .map(|(s, st)| ((*s).to_owned(), format!("{st:?}").to_lowercase()))
            .collect(),
    })
}

#[utoipa::path(get, path = "/gateway/metrics", tag = "gateway", operation_id = "gatewayMetrics",
    responses((status = 200, description = "Prometheus text", body = String, content_type = "text/plain")))]
async fn gateway_metrics() -> String {
    crate::ops::metrics_handle()
        .map(|m| m.render())
        .unwrap_or_default()
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        list_routes,
        switch_route,
        list_differences,
        gateway_health,
        gateway_metrics
    ),
    components(schemas(
        RouteView,
        SwitchRoute,
        SwitchedView,
        Difference,
        GatewayHealth,
        shopflow_gateway::TargetKind,
        shopflow_gateway::Side,
        shopflow_http::ErrorBody
    ))
)]
struct GatewayApi;

/// The gateway's own API (served at `/gateway/openapi.json`; every other path is proxied).
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::json!({
        "openapi": "3.1.0",
        "info": {"title": "shopflow gateway", "version": env!("CARGO_PKG_VERSION"),
                 "description": "The strangler-fig gateway's own routes; every other request is proxied."},
        "paths": {},
        "components": {"schemas": {}, "securitySchemes": {
            shopflow_service::openapi::ADMIN_SECURITY: {"type": "http", "scheme": "bearer"}
        }}
    });
    shopflow_service::openapi::merge(
        &mut doc,
        &shopflow_service::openapi::generated(<GatewayApi as utoipa::OpenApi>::openapi()),
    );
    doc
}

/// The gateway's listener: its admin API (behind the token), `/gateway/health`, and every
/// other request proxied.
pub fn router(gw: Gateway, store: Store, token: AdminToken) -> Router {
    let admin = Arc::new(Admin {
        gw: gw.clone(),
        store,
    });
    let api = Router::new()
        .route("/admin/gateway/routes", get(list_routes).put(switch_route))
        .route("/admin/gateway/differences", get(list_differences))
        .with_state(admin)
        .layer(axum::middleware::from_fn_with_state(
            (token, gateway_admin as shopflow_http::auth::Policy),
            shopflow_http::auth::require_admin,
        ));
    api.route(
        "/gateway/health",
        get(gateway_health).with_state(gw.clone()),
    )
    .route("/gateway/metrics", get(gateway_metrics))
    .route(
        "/gateway/openapi.json",
        get(|| async { axum::Json(document()) }),
    )
    .fallback(
        move |ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request| {
            let gw = gw.clone();
            async move { gw.handle(req, Some(peer)).await }
        },
    )
}

/// Reads and checks a routes file, with the sides' URLs overridden when given.
pub fn load_routes(
    path: &std::path::Path,
    legacy: Option<&str>,
    new: Option<&str>,
) -> anyhow::Result<RoutesFile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading the routes file {}: {e}", path.display()))?;
    let mut f = RoutesFile::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if let Some(u) = legacy {
        f.legacy.url = u.to_owned();
    }
    if let Some(u) = new {
        f.new.url = u.to_owned();
    }
    Ok(f)
}

/// The gateway as a service of the deployment ([`SERVICE`]): its own database (routes as
/// switched, shadow differences, its outbox), started with the others by `up --routes …` or as
/// a process of its own, `shopflow gateway`. Without [`GatewaySettings`] it starts nothing.
pub static SERVICE: shopflow_service::Service<shopflow_contracts::audit::Facts> =
    shopflow_service::Service {
        about: "the strangler-fig gateway: each route to the legacy system, the shop, or both compared (--routes)",
        migrations: &[(NAME, MIGRATIONS)],
        start: start_service,
        ..shopflow_service::Service::named(NAME)
    };

/// What the deployment tells the gateway: its routes, where it listens, the admin token of
/// its admin API, the HTTP limits of its listener.
#[derive(Clone, Debug)]
pub struct GatewaySettings {
    pub routes: RoutesFile,
    pub listen: SocketAddr,
    pub token: AdminToken,
    pub limits: shopflow_http::serve::Limits,
}

/// The running gateway, as the service exports it (the shop's `/admin/migration`, the
/// process's banner).
#[derive(Clone, Debug)]
pub struct Running {
    pub gateway: Gateway,
    pub store: Store,
    /// Where it listens (the port, when the settings asked for port 0).
    pub addr: SocketAddr,
}

fn start_service(
    ctx: shopflow_service::Context,
) -> shopflow_service::BoxFuture<'static, shopflow_service::Result<shopflow_service::Started>> {
    Box::pin(async move {
        let mut started = shopflow_service::Started::new(Router::new());
        let Some(settings) = ctx.settings.get::<GatewaySettings>() else {
            tracing::warn!("the gateway service has no routes (--routes): it serves nothing");
            return Ok(started);
        };
        let config = |reason: String| shopflow_service::Error::Config {
            what: "the gateway",
            reason,
        };
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|e| config(format!("listening on {}: {e}", settings.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| config(format!("its listening address: {e}")))?;
        let store = Store { db: ctx.db };
        let gw = Gateway::new(&settings.routes, Arc::new(store.clone()))
            .map_err(|e| config(e.to_string()))?;
        let since = store
            .follow(&gw, i64::MIN)
            .await
            .map_err(|e| config(format!("restoring recorded switches: {e:#}")))?;
        let app = router(gw.clone(), store.clone(), settings.token);
        let header_timeout = settings.limits.header_read_timeout;
        let shutdown = ctx.shutdown;
        // Gateways side by side (one database, several processes): each applies the others'
        // switches within a couple of seconds.
        let (follower, follow_gw, stop) = (store.clone(), gw.clone(), shutdown.clone());
        started.tasks.push(Box::pin(async move {
            let mut since = since;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(FOLLOW_EVERY) => {}
                    () = stop.clone().wait() => return,
                }
                match follower.follow(&follow_gw, since).await {
                    Ok(newest) => since = newest,
                    Err(e) => tracing::debug!(error = %e, "reading switches of other gateways"),
                }
            }
        }));
        started.tasks.push(Box::pin(async move {
            shopflow_gateway::serve(listener, app, header_timeout, shutdown.wait()).await;
        }));
        started.exports.insert(Running {
            gateway: gw,
            store,
            addr,
        });
        Ok(started)
    })
}

/// What of a migration this process runs (for the shop's `/admin/migration` and the dashboard):
/// the change data capture connector and the gateway, when started here.
#[derive(Debug, Default)]
pub struct InProcess {
    pub cdc: crate::cdc::CdcStatus,
    gateway: Option<(Gateway, Store)>,
}

impl InProcess {
    pub fn new(cdc: crate::cdc::CdcStatus, gateway: Option<Running>) -> Self {
        Self {
            cdc,
            gateway: gateway.map(|r| (r.gateway, r.store)),
        }
    }
}

/// The gateway as the shop's dashboard shows it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayView {
    pub routes: Vec<RouteView>,
    /// Each side's circuit breaker: closed, open or halfopen.
    pub breakers: std::collections::BTreeMap<String, String>,
    /// The latest shadow differences (up to 20), newest first.
    #[schema(value_type = Vec<Difference>)]
    pub differences: Vec<serde_json::Value>,
}

/// `GET /admin/migration`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationView {
    /// The change data capture connector of this process (`--cdc-source`), or null.
    pub cdc: Option<crate::cdc::CdcHealth>,
    /// The strangler-fig gateway of this process (`--routes`), or null.
    pub gateway: Option<GatewayView>,
}

#[utoipa::path(get, path = "/admin/migration", tag = "operations", operation_id = "getMigration",
    security(("adminToken" = [])),
    responses(
        shopflow_http::responses::NeedsAdmin,
        shopflow_http::responses::Unavailable,
        (status = 200, description = "Change data capture and the gateway, as this process runs them (null when it does not)", body = MigrationView),
    ))]
pub(crate) async fn migration(
    State(ops): State<Arc<crate::ops::Ops>>,
) -> Result<axum::Json<MigrationView>, ApiError> {
    let m = &ops.migration;
    let gateway = match &m.gateway {
        None => None,
        Some((gw, store)) => Some(GatewayView {
            routes: gw.routes(),
            breakers: gw
                .breakers()
                .iter()
                .map(|(s, st)| ((*s).to_owned(), format!("{st:?}").to_lowercase()))
                .collect(),
            differences: store.differences(20).await?,
        }),
    };
    Ok(axum::Json(MigrationView {
        cdc: m.cdc.get().map(|_| m.cdc.health()),
        gateway,
    }))
}

#[utoipa::path(put, path = "/admin/migration/routes", tag = "operations", operation_id = "switchRoute",
    security(("adminToken" = [])),
    request_body = SwitchRoute,
    responses(
        shopflow_http::responses::JsonBody,
        shopflow_http::responses::NeedsAdmin,
        shopflow_http::responses::Unavailable,
        (status = 200, description = "Switched (and recorded as a RouteSwitched system event)", body = SwitchedView),
        (status = 404, description = "No gateway runs in this process, or no such route", body = shopflow_http::ErrorBody),
    ))]
pub(crate) async fn migration_switch(
    State(ops): State<Arc<crate::ops::Ops>>,
    Json(req): Json<SwitchRoute>,
) -> Result<axum::Json<SwitchedView>, ApiError> {
    let Some((gw, store)) = &ops.migration.gateway else {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            "no gateway runs in this process (start it with --routes)",
        ));
    };
    let admin = Arc::new(Admin {
        gw: gw.clone(),
        store: store.clone(),
    });
    switch_route(State(admin), Json(req)).await
}
