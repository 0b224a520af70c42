//! `shopflow bench gateway`: what the strangler-fig gateway adds to a request. One upstream
//! (a small JSON answer, like `GET /products/{sku}`), asked directly and through the gateway in
//! interleaved rounds by the same clients; latency percentiles of both and their difference.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use clap::Args;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::{Common, Report, histogram};

#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    #[command(flatten)]
    common: Common,
    /// Requests per side per round.
    #[arg(long, default_value_t = 2000)]
    requests: u64,
    /// Rounds (direct, then proxied, alternately).
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    concurrency: u64,
}

struct Nothing;
impl shopflow_gateway::Recorder for Nothing {
    fn difference(&self, _: shopflow_gateway::Difference) -> shopflow_gateway::BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn switched(
        &self,
        _: shopflow_gateway::Switched,
    ) -> shopflow_gateway::BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

async fn listen(app: axum::Router) -> anyhow::Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    Ok(addr)
}

pub(crate) async fn run(a: GatewayArgs) -> anyhow::Result<()> {
    let report = Report::new(&a.common, "gateway");
    report.machine(&a.common.dir)?;
    let body = serde_json::json!({"sku": "MUG-01", "name": "A mug", "priceMinor": 1299, "currency": "EUR", "available": 25, "reserved": 0, "shipped": 0});
    let upstream = listen(axum::Router::new().route(
        "/products/{sku}",
        axum::routing::get(move || {
            let b = body.clone();
            async move { axum::Json(b) }
        }),
    ))
    .await?;
    let file = shopflow_gateway::RoutesFile::parse(&format!(
        "[legacy]\nurl = \"http://{upstream}\"\n[new]\nurl = \"http://{upstream}\"\n[[route]]\nmethods = [\"GET\"]\npath = \"/products/{{sku}}\"\ntarget = \"new\"\n"
    ))?;
    let gw = shopflow_gateway::Gateway::new(&file, Arc::new(Nothing))?;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let proxy = l.local_addr()?;
    let g = gw.clone();
    let app = axum::Router::new().fallback(
        move |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
              req: axum::extract::Request| {
            let g = g.clone();
            async move { g.handle(req, Some(peer)).await }
        },
    );
    tokio::spawn(shopflow_gateway::serve(
        l,
        app,
        Duration::from_secs(10),
        std::future::pending(),
    ));
    report.note(&format!(
        "{} clients, {} requests per side per round, {} rounds, interleaved",
        a.concurrency, a.requests, a.rounds
    ));

    let mut direct = histogram();
    let mut proxied = histogram();
    let (mut direct_time, mut proxied_time) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..a.rounds {
        for (target, h, total) in [
            (upstream, &mut direct, &mut direct_time),
            (proxy, &mut proxied, &mut proxied_time),
        ] {
            let t = Instant::now();
            let per = a.requests / a.concurrency.max(1);
            let mut workers = Vec::new();
            for _ in 0..a.concurrency.max(1) {
                workers.push(tokio::spawn(async move {
                    let c: Client<HttpConnector, Body> =
                        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
                    let mut h = histogram();
                    for _ in 0..per {
                        let s = Instant::now();
                        let r = c
                            .request(
                                http::Request::get(format!("http://{target}/products/MUG-01"))
                                    .body(Body::empty())?,
                            )
                            .await?;
                        anyhow::ensure!(r.status() == 200, "status {}", r.status());
                        r.into_body().collect().await?;
                        h.record(s.elapsed().as_micros() as u64)?;
                    }
                    Ok::<_, anyhow::Error>(h)
                }));
            }
            for w in workers {
                h.add(w.await??)?;
            }
            *total += t.elapsed();
        }
    }
    for (case, h, t) in [
        ("direct", &direct, direct_time),
        ("through the gateway", &proxied, proxied_time),
    ] {
        report.row(case, "p50", h.value_at_quantile(0.50) as f64 / 1000.0, "ms");
        report.row(case, "p99", h.value_at_quantile(0.99) as f64 / 1000.0, "ms");
        report.row(
            case,
            "throughput",
            h.len() as f64 / t.as_secs_f64(),
            "req/s",
        );
    }
    report.row(
        "added by the gateway",
        "p50",
        (proxied.value_at_quantile(0.5) as f64 - direct.value_at_quantile(0.5) as f64) / 1000.0,
        "ms",
    );
    report.row(
        "added by the gateway",
        "p99",
        (proxied.value_at_quantile(0.99) as f64 - direct.value_at_quantile(0.99) as f64) / 1000.0,
        "ms",
    );
    Ok(())
}
