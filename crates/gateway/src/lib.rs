//! The strangler-fig gateway: one front door while a legacy system is replaced route by route.
//! Each route goes to `legacy`, to `new` (the shopflow services), or to `shadow`: served by
//! one side while a copy goes to the other, whose answer is compared (status and JSON body, with
//! ignored fields) and every difference recorded with both bodies — GitHub's Scientist, at the
//! HTTP edge. Routes switch at run time ([`Gateway::switch`]) without a restart.
//!
//! Proxying is hyper's pooled client (hyper-util): request and response bodies stream through
//! unbuffered except on shadowed routes, which compare bodies up to `max_compare_bytes`. Per
//! side: a timeout until the response head, retries for idempotent requests without a body
//! (GET, HEAD, OPTIONS, PUT, DELETE) on connection failures, timeouts and 502/503/504, and a
//! circuit breaker that answers 503 at once while the side is down. Hop-by-hop headers (and those
//! named in `Connection`) are dropped both ways; `X-Forwarded-For/-Proto/-Host` are set; the
//! request's correlation id (`x-correlation-id`) is kept, or one is added, and returned.

pub mod compare;
pub mod config;
pub mod pattern;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use shopflow_http::ApiError;
use shopflow_runtime::{BreakerConfig, CircuitBreaker};

pub use config::{RouteSpec, RoutesFile, Side, TargetKind, UpstreamSpec};
use pattern::Pattern;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the routes file: {0}")]
    Config(String),
    #[error("no route {method} {path} in the table (routes are declared in the routes file)")]
    NoSuchRoute { method: String, path: String },
    #[error("{0}")]
    Invalid(String),
    #[error("recording the switch failed: {0}")]
    Record(String),
}

/// A route as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteView {
    pub methods: Vec<String>,
    pub path: String,
    pub target: TargetKind,
    /// For `shadow`: the side whose answer the client gets.
    pub serve: Option<Side>,
    pub ignore: Vec<String>,
}

/// Two answers that differed on a shadowed route.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Difference {
    /// When, RFC 3339 UTC.
    pub at: String,
    pub method: String,
    /// The request's path and query.
    pub uri: String,
    /// The route's pattern.
    pub route: String,
    pub correlation_id: String,
    /// The side the client got its answer from.
    pub served: Side,
    /// What differs first (`status 200 vs 404`, `/0/price: 5 vs 6`).
    pub reason: String,
    pub legacy_status: u16,
    #[schema(value_type = Object)]
    pub legacy_body: serde_json::Value,
    pub new_status: u16,
    #[schema(value_type = Object)]
    pub new_body: serde_json::Value,
}

/// A route moved from one target to another.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Switched {
    pub method: String,
    pub path: String,
    pub from: TargetKind,
    pub to: TargetKind,
    pub serve: Option<Side>,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where the gateway keeps what it observed and what operators changed (the app: a database,
/// system events, metrics).
pub trait Recorder: Send + Sync + 'static {
    fn difference(&self, d: Difference) -> BoxFuture<'_, ()>;
    fn switched(&self, s: Switched) -> BoxFuture<'_, Result<(), String>>;
}

#[derive(Clone, Debug)]
struct Route {
    methods: Vec<String>,
    path: String,
    pattern: Pattern,
    target: TargetKind,
    serve: Side,
    ignore: Arc<Vec<String>>,
    shadow_writes: bool,
}

impl Route {
    fn view(&self) -> RouteView {
        RouteView {
            methods: self.methods.clone(),
            path: self.path.clone(),
            target: self.target,
            serve: (self.target == TargetKind::Shadow).then_some(self.serve),
            ignore: self.ignore.to_vec(),
        }
    }
    fn has(&self, method: &Method) -> bool {
        self.methods
            .iter()
            .any(|m| m == "*" || m.eq_ignore_ascii_case(method.as_str()))
    }
}

#[derive(Debug)]
struct Upstream {
    scheme_authority: String,
    authority: HeaderValue,
    prefix: String,
    timeout: Duration,
    retries: u32,
    breaker: CircuitBreaker,
}

struct Inner {
    routes: RwLock<Vec<Route>>,
    default: TargetKind,
    legacy: Upstream,
    new: Upstream,
    client: Client<HttpConnector, Body>,
    recorder: Arc<dyn Recorder>,
    max_compare: usize,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("legacy", &self.legacy.scheme_authority)
            .field("new", &self.new.scheme_authority)
            .finish()
    }
}

/// The gateway. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Gateway {
    inner: Arc<Inner>,
}

fn upstream(side: Side, spec: &UpstreamSpec) -> Result<Upstream, Error> {
    let uri: Uri = spec
        .url
        .parse()
        .map_err(|_| Error::Config(format!("{} url `{}`", side.as_str(), spec.url)))?;
    let authority = uri
        .authority()
        .ok_or_else(|| Error::Config(format!("{} url `{}` has no host", side.as_str(), spec.url)))?
        .to_string();
    Ok(Upstream {
        scheme_authority: format!("http://{authority}"),
        authority: HeaderValue::from_str(&authority).map_err(|e| Error::Config(e.to_string()))?,
        prefix: uri.path().trim_end_matches('/').to_owned(),
        timeout: spec.timeout(),
        retries: spec.retries,
        breaker: CircuitBreaker::new(
            format!("gateway-{}", side.as_str()),
            BreakerConfig {
                failure_threshold: spec.breaker_failures.max(1),
                open_for: Duration::from_millis(spec.breaker_open_ms.max(1)),
                ..Default::default()
            },
        ),
    })
}

/// Hop-by-hop headers (RFC 9110 §7.6.1): meaningful for one connection only, never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including the ones `Connection` names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(*n);
    }
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

fn bodiless(h: &HeaderMap) -> bool {
    !h.contains_key(header::TRANSFER_ENCODING)
        && h.get(header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0")
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Why a side did not answer.
enum Failure {
    Open(Duration),
    Timeout,
    Connect(String),
}

impl Failure {
    fn response(&self, side: Side) -> Response {
        let s = side.as_str();
        match self {
            Failure::Open(wait) => {
                let mut r = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream_unavailable",
                    format!(
                        "the {s} side is failing and its circuit breaker is open; retry in {} s",
                        wait.as_secs().max(1)
                    ),
                )
                .into_response();
                if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                r
            }
            Failure::Timeout => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!("the {s} side did not answer in time"),
            )
            .into_response(),
            Failure::Connect(e) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                format!("the {s} side could not be reached: {e}"),
            )
            .into_response(),
        }
    }
}

impl Gateway {
    pub fn new(file: &RoutesFile, recorder: Arc<dyn Recorder>) -> Result<Self, Error> {
        let mut routes = Vec::new();
        for r in &file.routes {
            routes.push(Route {
                methods: r.methods.iter().map(|m| m.to_uppercase()).collect(),
                path: r.path.clone(),
                pattern: Pattern::parse(&r.path).map_err(Error::Config)?,
                target: r.target,
                serve: r.serve.unwrap_or(Side::Legacy),
                ignore: Arc::new(r.ignore.clone()),
                shadow_writes: r.shadow_writes,
            });
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self {
            inner: Arc::new(Inner {
                routes: RwLock::new(routes),
                default: file.defaults.target,
                legacy: upstream(Side::Legacy, &file.legacy)?,
                new: upstream(Side::New, &file.new)?,
                client,
                recorder,
                max_compare: file.defaults.max_compare_bytes,
            }),
        })
    }

    pub fn routes(&self) -> Vec<RouteView> {
        self.inner
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(Route::view)
            .collect()
    }

    /// The circuit breakers of both sides (for metrics and the dashboard).
    pub fn breakers(&self) -> [(&'static str, shopflow_runtime::BreakerState); 2] {
        [
            ("legacy", self.inner.legacy.breaker.state()),
            ("new", self.inner.new.breaker.state()),
        ]
    }

    /// Sets a route's target without recording it (restoring switches made before a restart).
    pub fn set(
        &self,
        method: &str,
        path: &str,
        to: TargetKind,
        serve: Option<Side>,
    ) -> Result<Switched, Error> {
        let method = method.to_uppercase();
        let mut routes = self.inner.routes.write().unwrap_or_else(|p| p.into_inner());
        let r = routes
            .iter_mut()
            .find(|r| r.path == path && r.methods.iter().any(|m| *m == method || m == "*"))
            .ok_or_else(|| Error::NoSuchRoute {
                method: method.clone(),
                path: path.to_owned(),
            })?;
        let from = r.target;
        r.target = to;
        if let Some(s) = serve {
            r.serve = s;
        }
        Ok(Switched {
            method,
            path: path.to_owned(),
            from,
            to,
            serve: (to == TargetKind::Shadow).then_some(r.serve),
        })
    }

    /// Moves a route (named by one of its methods and its path, as in the routes file) to
    /// another target, at once for every request that arrives after it, and records the switch.
    pub async fn switch(
        &self,
        method: &str,
        path: &str,
        to: TargetKind,
        serve: Option<Side>,
    ) -> Result<Switched, Error> {
        let before = self.routes().into_iter().find(|r| {
            r.path == path
                && r.methods
                    .iter()
                    .any(|m| m.eq_ignore_ascii_case(method) || m == "*")
        });
        let s = self.set(method, path, to, serve)?;
        if let Err(e) = self.inner.recorder.switched(s.clone()).await {
            // Not recorded, not switched: a restart would lose it without anyone knowing.
            if let Some(r) = before {
                let _ = self.set(method, path, r.target, r.serve);
            }
            return Err(Error::Record(e));
        }
        tracing::info!(method = s.method, path = s.path, from = ?s.from, to = ?s.to, "gateway route switched");
        Ok(s)
    }

    fn pick(
        &self,
        method: &Method,
        path: &str,
    ) -> (String, TargetKind, Side, Arc<Vec<String>>, bool) {
        let routes = self.inner.routes.read().unwrap_or_else(|p| p.into_inner());
        match routes
            .iter()
            .find(|r| r.has(method) && r.pattern.matches(path))
        {
            Some(r) => (
                r.path.clone(),
                r.target,
                r.serve,
                r.ignore.clone(),
                r.shadow_writes,
            ),
            None => (
                "(default)".to_owned(),
                self.inner.default,
                Side::Legacy,
                Arc::new(Vec::new()),
                false,
            ),
        }
    }

    fn side(&self, s: Side) -> &Upstream {
        match s {
            Side::Legacy => &self.inner.legacy,
            Side::New => &self.inner.new,
        }
    }

    /// Answers one request: from the side its route names, or (shadow) from one side while the
    /// other's answer is compared.
    pub async fn handle(&self, req: Request<Body>, peer: Option<SocketAddr>) -> Response {
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path().to_owned();
        let (route, target, serve, ignore, shadow_writes) = self.pick(&parts.method, &path);
        let correlation = shopflow_http::correlation(&parts.headers)
            .as_str()
            .to_owned();
        prepare_headers(&mut parts.headers, peer, &correlation);
        let label = match target {
            TargetKind::Legacy => "legacy",
            TargetKind::New => "new",
            TargetKind::Shadow => "shadow",
        };
        metrics::counter!("shopflow_gateway_requests_total", "route" => route.clone(), "target" => label).increment(1);
        let started = std::time::Instant::now();
        let mut resp = match target {
            TargetKind::Legacy => self.forward(Side::Legacy, parts, body).await,
            TargetKind::New => self.forward(Side::New, parts, body).await,
            TargetKind::Shadow => {
                let safe = matches!(parts.method, Method::GET | Method::HEAD);
                if safe || shadow_writes {
                    self.shadow(
                        serve,
                        parts,
                        body,
                        route.clone(),
                        ignore,
                        correlation.clone(),
                    )
                    .await
                } else {
                    // A write would run twice: it is served by one side only.
                    self.forward(serve, parts, body).await
                }
            }
        };
        metrics::histogram!("shopflow_gateway_seconds", "target" => label)
            .record(started.elapsed().as_secs_f64());
        strip_hop_by_hop(resp.headers_mut());
        if let Ok(v) = HeaderValue::from_str(&correlation) {
            resp.headers_mut()
                .insert(shopflow_http::CORRELATION_HEADER, v);
        }
        resp
    }

    fn build(&self, up: &Upstream, parts: &http::request::Parts, body: Body) -> Request<Body> {
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = format!("{}{}{}", up.scheme_authority, up.prefix, pq);
        let mut b = Request::builder()
            .method(parts.method.clone())
            .uri(uri)
            .version(http::Version::HTTP_11);
        if let Some(h) = b.headers_mut() {
            *h = parts.headers.clone();
            h.insert(header::HOST, up.authority.clone());
        }
        b.body(body).unwrap_or_else(|_| Request::new(Body::empty()))
    }

    /// One request to one side: the breaker, the timeout, and retries when allowed.
    async fn send(
        &self,
        side: Side,
        parts: &http::request::Parts,
        body: Body,
    ) -> Result<Response<hyper::body::Incoming>, Failure> {
        let up = self.side(side);
        let retryable = idempotent(&parts.method) && bodiless(&parts.headers);
        let attempts = if retryable { 1 + up.retries } else { 1 };
        let mut body = Some(body);
        let mut last = Failure::Connect("no attempt".into());
        for attempt in 0..attempts {
            if let Err(wait) = up.breaker.try_acquire() {
                metrics::counter!("shopflow_gateway_rejected_total", "side" => side.as_str())
                    .increment(1);
                return Err(Failure::Open(wait));
            }
            if attempt > 0 {
                metrics::counter!("shopflow_gateway_retries_total", "side" => side.as_str())
                    .increment(1);
            }
            let b = body.take().unwrap_or_else(Body::empty);
            let req = self.build(up, parts, b);
            match tokio::time::timeout(up.timeout, self.inner.client.request(req)).await {
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    let down = matches!(
                        status,
                        StatusCode::BAD_GATEWAY
                            | StatusCode::SERVICE_UNAVAILABLE
                            | StatusCode::GATEWAY_TIMEOUT
                    );
                    if down {
                        up.breaker.on_failure();
                        if retryable && attempt + 1 < attempts {
                            tokio::time::sleep(backoff(attempt)).await;
                            continue;
                        }
                    } else {
                        up.breaker.on_success();
                    }
                    return Ok(resp);
                }
                Ok(Err(e)) => {
                    up.breaker.on_failure();
                    last = Failure::Connect(error_chain(&e));
                }
                Err(_) => {
                    up.breaker.on_failure();
                    last = Failure::Timeout;
                }
            }
            if attempt + 1 < attempts {
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
        metrics::counter!("shopflow_gateway_failures_total", "side" => side.as_str()).increment(1);
        Err(last)
    }

    async fn forward(&self, side: Side, parts: http::request::Parts, body: Body) -> Response {
        match self.send(side, &parts, body).await {
            Ok(resp) => {
                let (p, b) = resp.into_parts();
                Response::from_parts(p, Body::new(b))
            }
            Err(f) => f.response(side),
        }
    }

    async fn shadow(
        &self,
        serve: Side,
        parts: http::request::Parts,
        body: Body,
        route: String,
        ignore: Arc<Vec<String>>,
        correlation: String,
    ) -> Response {
        let max = self.inner.max_compare;
        if content_length(&parts.headers).is_some_and(|n| n > max as u64) {
            metrics::counter!("shopflow_gateway_shadow_total", "route" => route, "result" => "too_large").increment(1);
            return self.forward(serve, parts, body).await;
        }
        let request_body = match Limited::new(body, max).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("a shadowed route takes request bodies up to {max} bytes"),
                )
                .into_response();
            }
        };
        let other = serve.other();
        let copy = {
            let gw = self.clone();
            let parts = clone_parts(&parts);
            let b = request_body.clone();
            tokio::spawn(async move {
                match gw.send(other, &parts, Body::from(b)).await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        match Limited::new(r.into_body(), max).collect().await {
                            Ok(b) => Ok((status, b.to_bytes())),
                            Err(_) => Err(format!(
                                "the {} answer is larger than {max} bytes",
                                other.as_str()
                            )),
                        }
                    }
                    Err(f) => {
                        let r = f.response(other);
                        let status = r.status().as_u16();
                        let b = r
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        Ok((status, b))
                    }
                }
            })
        };
        let served = match self.send(serve, &parts, Body::from(request_body)).await {
            Ok(r) => r,
            Err(f) => {
                copy.abort();
                return f.response(serve);
            }
        };
        let (head, b) = served.into_parts();
        let served_body = match Limited::new(b, max).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                copy.abort();
                return ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "too_large",
                    format!("a shadowed route's answers are compared up to {max} bytes"),
                )
                .into_response();
            }
        };
        let status = head.status.as_u16();
        let recorder = self.inner.recorder.clone();
        let method = parts.method.to_string();
        let uri = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let mine = served_body.clone();
        tokio::spawn(async move {
            let theirs = match copy.await {
                Ok(Ok(x)) => x,
                Ok(Err(reason)) => {
                    metrics::counter!("shopflow_gateway_shadow_total", "route" => route, "result" => "too_large").increment(1);
                    tracing::info!(reason, "shadow answer not compared");
                    return;
                }
                Err(_) => return,
            };
            let (legacy, new) = match serve {
                Side::Legacy => ((status, mine), theirs),
                Side::New => (theirs, (status, mine)),
            };
            match compare::difference(legacy.0, &legacy.1, new.0, &new.1, &ignore) {
                None => {
                    metrics::counter!("shopflow_gateway_shadow_total", "route" => route, "result" => "equal").increment(1);
                }
                Some(reason) => {
                    metrics::counter!("shopflow_gateway_shadow_total", "route" => route.clone(), "result" => "different").increment(1);
                    recorder
                        .difference(Difference {
                            at: chrono::Utc::now()
                                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                            method,
                            uri,
                            route,
                            correlation_id: correlation,
                            served: serve,
                            reason,
                            legacy_status: legacy.0,
                            legacy_body: compare::readable(&legacy.1),
                            new_status: new.0,
                            new_body: compare::readable(&new.1),
                        })
                        .await;
                }
            }
        });
        Response::from_parts(head, Body::from(served_body))
    }
}

fn clone_parts(p: &http::request::Parts) -> http::request::Parts {
    let mut b = Request::builder()
        .method(p.method.clone())
        .uri(p.uri.clone())
        .version(p.version);
    if let Some(h) = b.headers_mut() {
        *h = p.headers.clone();
    }
    b.body(()).unwrap_or_default().into_parts().0
}

fn prepare_headers(h: &mut HeaderMap, peer: Option<SocketAddr>, correlation: &str) {
    let host = h.get(header::HOST).cloned();
    strip_hop_by_hop(h);
    if let Some(ip) = peer.map(|p| p.ip().to_string()) {
        let v = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prior) => format!("{prior}, {ip}"),
            None => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert("x-forwarded-for", v);
        }
    }
    if !h.contains_key("x-forwarded-proto") {
        h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    if let (Some(host), false) = (host, h.contains_key("x-forwarded-host")) {
        h.insert("x-forwarded-host", host);
    }
    if let Ok(v) = HeaderValue::from_str(correlation) {
        h.insert(shopflow_http::CORRELATION_HEADER, v);
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50 * (1 << attempt.min(5)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Connections [`serve`] keeps open at once.
pub const MAX_CONNECTIONS: usize = 4096;

/// Serves the gateway's router on `listener` until `shutdown`, then lets open requests finish
/// (up to 10 s). Unlike the shop's server this neither buffers nor caps request bodies — they
/// stream to the upstream — and it hands each request its peer address (`ConnectInfo`), for
/// `X-Forwarded-For`. Request heads must arrive within `header_timeout`; at most
/// [`MAX_CONNECTIONS`] are open at once.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Open connections at most; one more is closed at once (each holds a file handle).
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "gateway: accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics::counter!("shopflow_gateway_connections_refused_total").increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            router.clone().oneshot(req.map(Body::new))
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(true);
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "gateway: a connection ended with an error");
            }
            drop(permit);
        });
    }
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("gateway: connections still open after 10 s; closing them");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_headers_append_and_keep_the_correlation() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("shop.example"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        prepare_headers(&mut h, Some("192.0.2.7:5000".parse().unwrap()), "c-1");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.example");
        assert_eq!(h[shopflow_http::CORRELATION_HEADER], "c-1");
    }

    #[test]
    fn only_idempotent_requests_without_a_body_are_retried() {
        let mut h = HeaderMap::new();
        assert!(idempotent(&Method::GET) && bodiless(&h));
        assert!(!idempotent(&Method::POST) && !idempotent(&Method::PATCH));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert!(!bodiless(&h));
    }
}
