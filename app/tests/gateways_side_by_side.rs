//! Gateways side by side: several `shopflow gateway` processes sharing one database (the
//! distributed deployment behind a load balancer). A switch made through one reaches the others
//! within a few seconds, without a restart, and never undoes a newer one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shopflow::gateway::{GatewaySettings, Running, SERVICE};
use shopflow_gateway::{RoutesFile, Side, TargetKind};
use shopflow_runtime::Shutdown;

const ROUTES: &str = r#"
[legacy]
url = "http://127.0.0.1:1"
[new]
url = "http://127.0.0.1:1"
[[route]]
methods = ["GET"]
path = "/products"
target = "legacy"
[[route]]
methods = ["POST"]
path = "/orders"
target = "legacy"
"#;

/// Where the gateways keep their records: one SQLite file (a handle per gateway), or one
/// PostgreSQL schema (a connection pool per gateway, as separate processes have).
#[derive(Clone)]
enum Shared {
    Sqlite,
    Postgres { url: String, schema: String },
}

async fn gateway(
    dir: &std::path::Path,
    shared: &Shared,
    shutdown: Shutdown,
) -> (Running, Vec<tokio::task::JoinHandle<()>>) {
    let db = match shared {
        Shared::Sqlite => shopflow_store::Db::open_sqlite(dir.join("gateway.db")).unwrap(),
        Shared::Postgres { url, schema } => shopflow_store::Db::connect_postgres(url, schema)
            .await
            .unwrap(),
    };
    SERVICE.migrate(&db).await.unwrap();
    let settings = shopflow_service::Settings::new(
        dir,
        Default::default(),
        shopflow_runtime::BreakerConfig::default(),
    )
    .with(GatewaySettings {
        routes: RoutesFile::parse(ROUTES).unwrap(),
        listen: "127.0.0.1:0".parse().unwrap(),
        token: shopflow_http::auth::AdminToken::new("sfa_test_0123456789abcdef0123456789abcdef")
            .unwrap(),
        limits: Default::default(),
    });
    let bus = shopflow_log::Log::open(dir.join(format!("log-{}", uuid_ish())), Default::default())
        .unwrap();
    let started = (SERVICE.start)(shopflow_service::Context {
        db,
        settings: Arc::new(settings),
        shutdown,
        bus: Arc::new(bus),
    })
    .await
    .unwrap();
    let running = started.exports.get::<Running>().unwrap().clone();
    (
        running,
        started.tasks.into_iter().map(tokio::spawn).collect(),
    )
}

fn uuid_ish() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn target_of(r: &Running, path: &str) -> (TargetKind, Option<Side>) {
    let v = r
        .gateway
        .routes()
        .into_iter()
        .find(|v| v.path == path)
        .unwrap();
    (v.target, v.serve)
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_through_one_gateway_reaches_the_others() {
    side_by_side(&Shared::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_on_postgresql() {
    let Some(url) = shopflow_store::test_postgres_url("gateways sharing a database") else {
        return;
    };
    let schema = format!("gw_side_{}", std::process::id());
    side_by_side(&Shared::Postgres {
        url: url.clone(),
        schema: schema.clone(),
    })
    .await;
    let (sql, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    sql.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
}

async fn side_by_side(shared: &Shared) {
    let dir = tempfile::tempdir().unwrap();
    let (trigger, shutdown) = Shutdown::new();
    let (a, mut tasks) = gateway(dir.path(), shared, shutdown.clone()).await;
    let (b, more) = gateway(dir.path(), shared, shutdown.clone()).await;
    tasks.extend(more);
    assert_eq!(target_of(&b, "/products").0, TargetKind::Legacy);

    a.gateway
        .switch("GET", "/products", TargetKind::Shadow, Some(Side::Legacy))
        .await
        .unwrap();
    until("b follows a's switch to shadow", || {
        target_of(&b, "/products") == (TargetKind::Shadow, Some(Side::Legacy))
    })
    .await;

    // Back the other way, and a second route: b's switches reach a; a's earlier one is not
    // applied over them.
    b.gateway
        .switch("GET", "/products", TargetKind::New, None)
        .await
        .unwrap();
    b.gateway
        .switch("POST", "/orders", TargetKind::New, None)
        .await
        .unwrap();
    until("a follows b's switches", || {
        target_of(&a, "/products").0 == TargetKind::New
            && target_of(&a, "/orders").0 == TargetKind::New
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for g in [&a, &b] {
        assert_eq!(target_of(g, "/products").0, TargetKind::New, "stays new");
        assert_eq!(target_of(g, "/orders").0, TargetKind::New, "stays new");
    }

    // Two switches at the same moment through two gateways (on PostgreSQL they take turns):
    // both reach both.
    let (x, y) = tokio::join!(
        a.gateway
            .switch("GET", "/products", TargetKind::Legacy, None),
        b.gateway
            .switch("POST", "/orders", TargetKind::Legacy, None)
    );
    x.unwrap();
    y.unwrap();
    until("both concurrent switches reach both gateways", || {
        [&a, &b].iter().all(|g| {
            target_of(g, "/products").0 == TargetKind::Legacy
                && target_of(g, "/orders").0 == TargetKind::Legacy
        })
    })
    .await;

    // A gateway started later takes the recorded switches at once.
    let (c, more) = gateway(dir.path(), shared, shutdown).await;
    tasks.extend(more);
    assert_eq!(target_of(&c, "/products").0, TargetKind::Legacy);
    assert_eq!(target_of(&c, "/orders").0, TargetKind::Legacy);

    trigger.trigger();
    for t in tasks {
        t.await.unwrap();
    }
}
