//! Serving a router with limits on every connection: how long a client may take to send its
//! request head (which also bounds how long an idle keep-alive connection is kept), how long a
//! request may run, how many connections are open and how many requests are in flight at once —
//! with `503` + `Retry-After` beyond the caps, never a silent stall.
//!
//! Built from hyper's HTTP/1 connection builder (its header-read timer) and tower's layers
//! (`GlobalConcurrencyLimit`, `LoadShed`, `Timeout`), not by hand.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::http::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tower::ServiceBuilder;

use crate::ApiError;

/// What one process accepts.
#[derive(Clone, Debug)]
pub struct Limits {
    /// From the moment a connection waits for a request until its head is read: a client that
    /// sends nothing (or trickles its headers) is cut off, and an idle keep-alive connection is
    /// closed after this long.
    pub header_read_timeout: Duration,
    /// A request that takes longer is answered 503.
    pub request_timeout: Duration,
    /// Open connections at most; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Requests being handled at once at most; one more is answered 503 at once.
    pub max_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_in_flight: 1024,
        }
    }
}

impl Limits {
    /// The connection cap this process can keep: at most `max_connections`, and at most the
    /// open-file limit less a reserve for the process's own files (databases, log segments).
    pub fn effective_max_connections(&self) -> usize {
        let files = open_file_limit().unwrap_or(1024);
        self.max_connections.min(files.saturating_sub(256).max(64))
    }
}

/// Raises the soft open-file limit to the hard one (what a server is allowed), and returns it.
pub fn raise_open_file_limit() -> Option<usize> {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if let (Some(cur), Some(max)) = (lim.current, lim.maximum)
        && cur < max
    {
        let raised = rustix::process::Rlimit {
            current: Some(max),
            maximum: Some(max),
        };
        if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Nofile, raised) {
            tracing::warn!(error = %e, "could not raise the open-file limit");
        }
    }
    open_file_limit()
}

fn open_file_limit() -> Option<usize> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// `router` with the request-level limits: a global cap on requests in flight (shed with 503
/// beyond it) and a time limit per request (503).
pub fn limit_requests(router: Router, limits: &Limits) -> Router {
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
    router.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(|e: tower::BoxError| async move {
                if e.is::<tower::load_shed::error::Overloaded>() {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "overloaded",
                        "too many requests in flight; try again shortly",
                    )
                } else if e.is::<tower::timeout::error::Elapsed>() {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "timeout",
                        "the request took too long; try again shortly",
                    )
                } else {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                }
            }))
            .layer(tower::load_shed::LoadShedLayer::new())
            .layer(tower::limit::GlobalConcurrencyLimitLayer::with_semaphore(
                in_flight,
            ))
            .layer(tower::timeout::TimeoutLayer::new(limits.request_timeout)),
    )
}

/// The answer to a connection past the cap: written, then the connection is closed.
fn refusal() -> Vec<u8> {
    let body = serde_json::json!({
        "code": "overloaded",
        "message": "too many connections; try again shortly",
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The open connections: whether each is handling a request, and how to close it.
#[derive(Default)]
struct Open {
    next: u64,
    /// By age (ids increase): in flight count, and the signal that closes it.
    conns: std::collections::BTreeMap<u64, (Arc<AtomicUsize>, Arc<Notify>)>,
}

impl Open {
    /// Closes the oldest connection that handles no request (an idle keep-alive one, or one
    /// still sending its head): at the cap, a new client is served rather than an idle one kept.
    fn evict_idle(&self) -> bool {
        match self
            .conns
            .values()
            .find(|(busy, _)| busy.load(Ordering::SeqCst) == 0)
        {
            Some((_, close)) => {
                close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Reads the whole body (at most [`crate::MAX_BODY_BYTES`], within `timeout`) before the
/// request is handled. A handler that answers without reading a body it did not expect (an
/// action route sent `{}`) otherwise left hyper unable to drain it, and hyper closed the
/// keep-alive connection after the answer — without `Connection: close`, so a client sending
/// its next request on that connection met a closed socket.
async fn read_body(
    req: axum::http::Request<hyper::body::Incoming>,
    timeout: Duration,
) -> Result<axum::http::Request<axum::body::Body>, axum::response::Response> {
    use axum::response::IntoResponse;
    let (parts, body) = req.into_parts();
    let body = axum::body::Body::new(body);
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, crate::MAX_BODY_BYTES)).await {
        Ok(Ok(bytes)) => Ok(axum::http::Request::from_parts(
            parts,
            axum::body::Body::from(bytes),
        )),
        Ok(Err(_)) => Err(ApiError::body_too_large().into_response()),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!("the body did not arrive within {} s", timeout.as_secs()),
        )
        .into_response()),
    }
}

/// Serves `router` on `listener` with `limits` until `shutdown` completes; then stops accepting
/// and gives open requests up to 10 s to finish.
///
/// At the connection cap, the oldest connection that is not handling a request is closed to make
/// room (as a web server reuses idle keep-alive connections); only when every connection is busy
/// is the new one answered 503 + `Retry-After`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let max = limits.effective_max_connections();
    let connections = Arc::new(Semaphore::new(max));
    // Refusing costs a socket for a moment too: a few at a time, the rest are closed at once.
    let refusing = Arc::new(Semaphore::new(64));
    let open = Arc::new(Mutex::new(Open::default()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let router = limit_requests(router, &limits);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file handles (or a connection reset before accept): back off a moment
                // rather than spin; the connections we hold time out and free handles.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        while tasks.try_join_next().is_some() {}
        let permit = match connections.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                let evicted = open.lock().map(|o| o.evict_idle()).unwrap_or(false);
                if evicted {
                    metrics::counter!("shopflow_http_idle_connections_evicted_total").increment(1);
                    tokio::time::timeout(
                        Duration::from_millis(100),
                        connections.clone().acquire_owned(),
                    )
                    .await
                    .ok()
                    .and_then(Result::ok)
                } else {
                    None
                }
            }
        };
        let Some(permit) = permit else {
            metrics::counter!("shopflow_http_connections_refused_total").increment(1);
            if let Ok(r) = refusing.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    let mut stream = stream;
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        let _ = stream.write_all(&refusal()).await;
                        let _ = stream.shutdown().await;
                    })
                    .await;
                    drop(r);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let busy = Arc::new(AtomicUsize::new(0));
        let close = Arc::new(Notify::new());
        let id = match open.lock() {
            Ok(mut o) => {
                o.next += 1;
                let id = o.next;
                o.conns.insert(id, (busy.clone(), close.clone()));
                id
            }
            Err(_) => continue,
        };
        let service = {
            let (router, busy) = (router.clone(), busy.clone());
            let body_timeout = limits.request_timeout;
            hyper::service::service_fn(move |req: axum::http::Request<hyper::body::Incoming>| {
                let (router, busy) = (router.clone(), busy.clone());
                async move {
                    busy.fetch_add(1, Ordering::SeqCst);
                    let resp = match read_body(req, body_timeout).await {
                        Ok(req) => tower::ServiceExt::oneshot(router, req).await,
                        Err(refused) => Ok(refused),
                    };
                    busy.fetch_sub(1, Ordering::SeqCst);
                    resp
                }
            })
        };
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let (open, mut stop_rx) = (open.clone(), stop_rx.clone());
        tasks.spawn(async move {
            tokio::pin!(conn);
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    // Evicted: only while it handles nothing (it may have started meanwhile).
                    () = close.notified() => {
                        if busy.load(Ordering::SeqCst) == 0 {
                            break;
                        }
                    }
                    _ = stop_rx.changed() => conn.as_mut().graceful_shutdown(),
                }
            }
            if let Ok(mut o) = open.lock() {
                o.conns.remove(&id);
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("requests still open 10 s after shutdown: closing them");
        tasks.abort_all();
    }
}
