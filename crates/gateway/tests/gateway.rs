//! The gateway between two real HTTP servers on loopback: routing, run-time switches under
//! load, shadow comparison, an outage opening a breaker, hop-by-hop headers, a large body
//! streamed both ways.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use shopflow_gateway::{
    BoxFuture, Difference, Gateway, Recorder, RoutesFile, Side, Switched, TargetKind,
};

#[derive(Default)]
struct Memory {
    differences: Mutex<Vec<Difference>>,
    switches: Mutex<Vec<Switched>>,
}

impl Recorder for Memory {
    fn difference(&self, d: Difference) -> BoxFuture<'_, ()> {
        self.differences.lock().unwrap().push(d);
        Box::pin(async {})
    }
    fn switched(&self, s: Switched) -> BoxFuture<'_, Result<(), String>> {
        self.switches.lock().unwrap().push(s);
        Box::pin(async { Ok(()) })
    }
}

async fn serve(app: Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(l, app.into_make_service_with_connect_info::<SocketAddr>())
            .await
            .unwrap();
    });
    addr
}

/// A side: its products (price differs per side when `planted`), an echo of the headers it got,
/// a byte counter and a large streamed answer.
fn side(name: &'static str, planted: bool, hits: Arc<AtomicU64>) -> Router {
    let h1 = hits.clone();
    Router::new()
        .route(
            "/products",
            get(move || {
                h1.fetch_add(1, Ordering::Relaxed);
                async move {
                    axum::Json(json!([{"sku": "A", "price": 5, "servedBy": name}, {"sku": "B", "price": if planted { 6 } else { 5 }, "servedBy": name}]))
                }
            }),
        )
        .route("/products/{sku}", get(move || async move { axum::Json(json!({"sku": "A", "price": 5})) }))
        .route(
            "/echo",
            get(|req: Request| async move {
                let h: serde_json::Map<String, Value> = req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
                    .collect();
                ([("connection", "x-upstream-hop"), ("x-upstream-hop", "1"), ("keep-alive", "timeout=9")], axum::Json(Value::Object(h)))
            }),
        )
        .route(
            "/upload",
            post(|body: Body| async move {
                let mut n = 0u64;
                let mut s = body.into_data_stream();
                use futures_util::StreamExt;
                while let Some(c) = s.next().await {
                    n += c.unwrap().len() as u64;
                }
                axum::Json(json!({"bytes": n}))
            }),
        )
        .route(
            "/download",
            get(|| async move {
                let chunks = futures_util::stream::iter((0..512).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![7u8; 64 * 1024]))));
                Body::from_stream(chunks)
            }),
        )
        .route("/who", get(move || async move { name }))
}

struct Setup {
    gw: Gateway,
    addr: SocketAddr,
    rec: Arc<Memory>,
    legacy_hits: Arc<AtomicU64>,
    new_hits: Arc<AtomicU64>,
}

async fn setup(planted: bool, legacy_url: Option<String>) -> Setup {
    let legacy_hits = Arc::new(AtomicU64::new(0));
    let new_hits = Arc::new(AtomicU64::new(0));
    let legacy = serve(side("legacy", false, legacy_hits.clone())).await;
    let new = serve(side("new", planted, new_hits.clone())).await;
    let legacy_url = legacy_url.unwrap_or(format!("http://{legacy}"));
    let file = RoutesFile::parse(&format!(
        r#"
        [legacy]
        url = "{legacy_url}"
        timeout_ms = 2000
        retries = 1
        breaker_failures = 3
        breaker_open_ms = 60000
        [new]
        url = "http://{new}"
        [defaults]
        target = "legacy"
        [[route]]
        methods = ["GET"]
        path = "/products"
        target = "legacy"
        ignore = ["servedBy"]
        [[route]]
        methods = ["GET"]
        path = "/products/{{sku}}"
        target = "new"
        [[route]]
        methods = ["GET"]
        path = "/who"
        target = "legacy"
        "#
    ))
    .unwrap();
    let rec = Arc::new(Memory::default());
    let gw = Gateway::new(&file, rec.clone()).unwrap();
    let g = gw.clone();
    let app = Router::new().fallback(
        move |ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request| {
            let g = g.clone();
            async move { g.handle(req, Some(peer)).await }
        },
    );
    let addr = serve(app).await;
    Setup {
        gw,
        addr,
        rec,
        legacy_hits,
        new_hits,
    }
}

fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

async fn get_json(c: &Client<HttpConnector, Body>, url: String) -> (u16, Value, http::HeaderMap) {
    let r = c
        .request(http::Request::get(url).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let b = r.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&b)
            .unwrap_or(Value::String(String::from_utf8_lossy(&b).into_owned())),
        headers,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_each_request_by_its_route_and_the_default() {
    let s = setup(false, None).await;
    let c = client();
    let (st, body, h) = get_json(&c, format!("http://{}/products", s.addr)).await;
    assert_eq!(st, 200);
    assert_eq!(body[0]["servedBy"], "legacy");
    assert!(
        h.contains_key("x-correlation-id"),
        "a correlation id is added"
    );
    let (_, body, _) = get_json(&c, format!("http://{}/products/A", s.addr)).await;
    assert_eq!(body["sku"], "A");
    assert_eq!(
        s.new_hits.load(Ordering::Relaxed),
        0,
        "/products/{{sku}} is served by new without its list route"
    );
    let (st, body, _) = get_json(&c, format!("http://{}/who", s.addr)).await;
    assert_eq!((st, body), (200, json!("legacy")));
    // No route: the default (legacy); it has no /nothing: its 404 comes back as it is.
    let (st, _, _) = get_json(&c, format!("http://{}/nothing", s.addr)).await;
    assert_eq!(st, 404);
    assert_eq!(s.gw.routes().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_routes_under_load_fails_no_request() {
    let s = setup(false, None).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (addr, stop, ok) = (s.addr, stop.clone(), ok.clone());
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut failed = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (st, body, _) = get_json(&c, format!("http://{addr}/products")).await;
                if st == 200 && body.as_array().is_some_and(|a| a.len() == 2) {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.push((st, body));
                }
            }
            failed
        }));
    }
    for (to, serve) in [
        (TargetKind::Shadow, Some(Side::Legacy)),
        (TargetKind::Shadow, Some(Side::New)),
        (TargetKind::New, None),
        (TargetKind::Legacy, None),
        (TargetKind::New, None),
    ] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.gw.switch("GET", "/products", to, serve).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let failed = w.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
    }
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "load ran: {}",
        ok.load(Ordering::Relaxed)
    );
    assert!(s.legacy_hits.load(Ordering::Relaxed) > 0 && s.new_hits.load(Ordering::Relaxed) > 0);
    let switches = s.rec.switches.lock().unwrap().clone();
    assert_eq!(switches.len(), 5);
    assert_eq!(
        (switches[0].from, switches[0].to),
        (TargetKind::Legacy, TargetKind::Shadow)
    );
    assert_eq!(s.gw.routes()[0].target, TargetKind::New);
    // Equal answers (servedBy is ignored): no difference recorded.
    assert!(s.rec.differences.lock().unwrap().is_empty());
    // An unknown route is refused with its name.
    let e =
        s.gw.switch("GET", "/nope", TargetKind::New, None)
            .await
            .unwrap_err();
    assert!(e.to_string().contains("no route GET /nope"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_records_a_planted_difference_with_both_bodies() {
    let s = setup(true, None).await;
    s.gw.switch("GET", "/products", TargetKind::Shadow, Some(Side::Legacy))
        .await
        .unwrap();
    let c = client();
    let (st, body, _) = get_json(&c, format!("http://{}/products", s.addr)).await;
    assert_eq!(st, 200);
    assert_eq!(
        body[1]["price"], 5,
        "the client gets the served side's answer"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.rec.differences.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no difference recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let d = s.rec.differences.lock().unwrap()[0].clone();
    assert_eq!(d.reason, "/1/price: 5 vs 6");
    assert_eq!(d.served, Side::Legacy);
    assert_eq!(d.legacy_body[1]["price"], 5);
    assert_eq!(d.new_body[1]["price"], 6);
    assert_eq!(d.route, "/products");
    assert!(!d.correlation_id.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_opens_the_sides_breaker() {
    // Nothing listens on the legacy side.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let s = setup(false, Some(format!("http://127.0.0.1:{port}"))).await;
    let c = client();
    let mut codes = Vec::new();
    for _ in 0..4 {
        let (st, body, _) = get_json(&c, format!("http://{}/who", s.addr)).await;
        codes.push((st, body["code"].as_str().unwrap_or("").to_owned()));
    }
    // Two attempts per request (one retry): the third failure opens it during request 2.
    assert_eq!(codes[0], (502, "bad_gateway".to_owned()), "{codes:?}");
    assert!(
        codes[2..]
            .iter()
            .all(|c| *c == (503, "upstream_unavailable".to_owned())),
        "{codes:?}"
    );
    let started = Instant::now();
    let (st, _, h) = get_json(&c, format!("http://{}/who", s.addr)).await;
    assert_eq!(st, 503);
    assert!(h.contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "an open breaker answers at once"
    );
    assert_eq!(s.gw.breakers()[0].1, shopflow_runtime::BreakerState::Open);
    // The other side is not affected.
    let (st, _, _) = get_json(&c, format!("http://{}/products/A", s.addr)).await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_stop_at_the_gateway_both_ways() {
    let s = setup(false, None).await;
    s.gw.set("GET", "/who", TargetKind::Legacy, None).unwrap();
    let c = client();
    let req = http::Request::get(format!("http://{}/echo", s.addr))
        .header("connection", "x-client-hop")
        .header("x-client-hop", "secret")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("x-correlation-id", "corr-42")
        .header("x-end-to-end", "kept")
        .body(Body::empty())
        .unwrap();
    let r = c.request(req).await.unwrap();
    let h = r.headers().clone();
    let seen: Value =
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
    for gone in ["x-client-hop", "proxy-authorization", "te"] {
        assert!(
            seen.get(gone).is_none(),
            "{gone} reached the upstream: {seen}"
        );
    }
    assert_eq!(seen["x-end-to-end"], "kept");
    assert_eq!(seen["x-correlation-id"], "corr-42");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], s.addr.to_string());
    assert!(
        seen["host"].as_str().unwrap() != s.addr.to_string(),
        "Host names the upstream"
    );
    assert!(
        !h.contains_key("x-upstream-hop") && !h.contains_key("keep-alive"),
        "{h:?}"
    );
    assert_eq!(h["x-correlation-id"], "corr-42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_through_both_ways() {
    let s = setup(false, None).await;
    let c = client();
    // 48 MiB up, in chunks, without a length: the upstream counts what arrives.
    let chunks = futures_util::stream::iter(
        (0..768).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![1u8; 64 * 1024]))),
    );
    let req = http::Request::post(format!("http://{}/upload", s.addr))
        .body(Body::from_stream(chunks))
        .unwrap();
    let r = c.request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value =
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["bytes"], 768 * 64 * 1024);
    // 32 MiB down: the first bytes arrive before the whole answer could have been buffered.
    let r = c
        .request(
            http::Request::get(format!("http://{}/download", s.addr))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.into_body();
    let mut n = 0usize;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            n += d.len();
        }
    }
    assert_eq!(n, 512 * 64 * 1024);
}

/// A recorder that cannot keep switches (its database is down).
struct Broken;

impl Recorder for Broken {
    fn difference(&self, _: Difference) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn switched(&self, _: Switched) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Err("the database is down".to_owned()) })
    }
}

/// A switch that cannot be recorded is not made: the caller gets the reason and every request
/// keeps going where it went (a restart would otherwise undo a switch nobody knows was lost).
#[tokio::test]
async fn a_switch_that_cannot_be_recorded_is_undone() {
    let file = RoutesFile::parse(
        r#"
        [legacy]
        url = "http://127.0.0.1:1"
        [new]
        url = "http://127.0.0.1:1"
        [[route]]
        methods = ["GET"]
        path = "/products"
        target = "shadow"
        serve = "new"
        "#,
    )
    .unwrap();
    let gw = Gateway::new(&file, Arc::new(Broken)).unwrap();
    let err = gw
        .switch("GET", "/products", TargetKind::Legacy, Some(Side::Legacy))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("the database is down"), "{err}");
    let r = gw
        .routes()
        .into_iter()
        .find(|r| r.path == "/products")
        .unwrap();
    assert_eq!(r.target, TargetKind::Shadow);
    assert_eq!(r.serve, Some(Side::New));
}
