//! The connection limits, probed the way a hostile or broken client would: a client that
//! trickles its headers or sends nothing is cut off, connections past the cap and requests past
//! the in-flight cap are answered 503 with Retry-After, and hundreds of idle sockets do not
//! keep `/health` from answering quickly.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use shopflow_http::serve::{Limits, raise_open_file_limit, serve};

async fn start(limits: Limits) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let router = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                "done"
            }),
        )
        .route("/ping", axum::routing::post(|| async { "pong" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, router, limits, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// Everything the server sends until it closes (or `within` passes); and whether it closed.
fn read_until_closed(s: &mut TcpStream, within: Duration) -> (String, bool) {
    s.set_read_timeout(Some(within)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&out).into_owned(), true);
            }
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

/// `GET path` on a connection of its own: the whole answer, and how long it took.
fn fetch(addr: SocketAddr, path: &str) -> (String, Duration) {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let (text, _) = read_until_closed(&mut s, Duration::from_secs(5));
    (text, t.elapsed())
}

fn get_health(addr: SocketAddr) -> (String, Duration) {
    fetch(addr, "/health")
}

/// `n` requests to `/slow` at once, each on its own connection and thread; join for the answers.
fn slow_requests(addr: SocketAddr, n: usize) -> Vec<std::thread::JoinHandle<String>> {
    (0..n)
        .map(|_| std::thread::spawn(move || fetch(addr, "/slow").0))
        .collect()
}

/// The slowest of 20 `/health` calls, each of which must answer 200.
fn worst_health(addr: SocketAddr) -> Duration {
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let (text, took) = get_health(addr);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        worst = worst.max(took);
    }
    worst
}

fn short_headers() -> Limits {
    Limits {
        header_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_header_client_is_cut_off() {
    let (addr, _stop) = start(short_headers()).await;
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let t = Instant::now();
        s.write_all(b"GET /health HTTP/1.1\r\nHo").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let _ = s.write_all(b"st: x\r\n");
        let (_, closed) = read_until_closed(&mut s, Duration::from_secs(3));
        assert!(closed, "the connection is closed");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_and_a_kept_alive_one_too() {
    let (addr, _stop) = start(short_headers()).await;
    tokio::task::spawn_blocking(move || {
        // Sends nothing at all.
        let mut s = TcpStream::connect(addr).unwrap();
        let t = Instant::now();
        let (_, closed) = read_until_closed(&mut s, Duration::from_secs(3));
        assert!(
            closed && t.elapsed() < Duration::from_secs(2),
            "{:?}",
            t.elapsed()
        );

        // One request, then idle on a keep-alive connection.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let t = Instant::now();
        let (text, closed) = read_until_closed(&mut s, Duration::from_secs(3));
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            closed && t.elapsed() < Duration::from_secs(2),
            "{:?}",
            t.elapsed()
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_an_idle_connection_makes_room() {
    let (addr, _stop) = start(Limits {
        max_connections: 4,
        ..Limits::default()
    })
    .await;
    tokio::task::spawn_blocking(move || {
        let mut held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(200));
        let (text, took) = get_health(addr);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(took < Duration::from_millis(500), "{took:?}");
        // The oldest idle one was closed for it.
        let (_, closed) = read_until_closed(&mut held[0], Duration::from_secs(2));
        assert!(closed, "the oldest idle connection is closed");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_of_busy_ones_get_503_and_retry_after() {
    let (addr, _stop) = start(Limits {
        max_connections: 4,
        ..Limits::default()
    })
    .await;
    tokio::task::spawn_blocking(move || {
        // Four connections, each handling a slow request: none can make room.
        let busy = slow_requests(addr, 4);
        std::thread::sleep(Duration::from_millis(300));
        let (text, _) = get_health(addr);
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        assert!(
            text.to_ascii_lowercase().contains("retry-after: 1"),
            "{text}"
        );
        assert!(text.contains("\"code\":\"overloaded\""), "{text}");
        for b in busy {
            assert!(
                b.join().unwrap().starts_with("HTTP/1.1 200"),
                "the busy ones finish"
            );
        }
        let (text, _) = get_health(addr);
        assert!(text.starts_with("HTTP/1.1 200"), "freed again: {text}");
    })
    .await
    .unwrap();
}

/// The file-handle probe: more idle sockets than the process may hold (a cap of 100 here
/// stands for a 1,024-handle limit less the process's own files); `/health` still answers 200
/// within 100 ms, because idle connections make room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_idle_sockets_than_the_cap_do_not_take_health_down() {
    let (addr, _stop) = start(Limits {
        max_connections: 100,
        ..Limits::default()
    })
    .await;
    tokio::task::spawn_blocking(move || {
        let idle: Vec<TcpStream> = (0..300)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let worst = worst_health(addr);
        assert!(
            worst < Duration::from_millis(100),
            "worst /health {worst:?}"
        );
        drop(idle);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_in_flight_cap_get_503_at_once() {
    let (addr, _stop) = start(Limits {
        max_in_flight: 2,
        ..Limits::default()
    })
    .await;
    tokio::task::spawn_blocking(move || {
        let slow = slow_requests(addr, 2);
        std::thread::sleep(Duration::from_millis(300));
        let (text, took) = get_health(addr);
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        assert!(
            text.to_ascii_lowercase().contains("retry-after: 1"),
            "{text}"
        );
        assert!(took < Duration::from_millis(500), "shed at once: {took:?}");
        for s in slow {
            assert!(s.join().unwrap().starts_with("HTTP/1.1 200"));
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_time_gets_503() {
    let (addr, _stop) = start(Limits {
        request_timeout: Duration::from_millis(200),
        ..Limits::default()
    })
    .await;
    tokio::task::spawn_blocking(move || {
        let (text, _) = fetch(addr, "/slow");
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        assert!(text.contains("\"code\":\"timeout\""), "{text}");
    })
    .await
    .unwrap();
}

/// The probes of the hardening issue: 400 slow clients, then 900 idle sockets (more than a
/// 1,024-handle process could hold beside its own files); `/health` answers within 100 ms
/// throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_fast_beside_hundreds_of_idle_and_slow_sockets() {
    raise_open_file_limit();
    let (addr, _stop) = start(Limits::default()).await;
    tokio::task::spawn_blocking(move || {
        let mut slow = Vec::new();
        for _ in 0..400 {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\nHost").unwrap();
            slow.push(s);
        }
        let mut idle = Vec::new();
        for _ in 0..900 {
            idle.push(TcpStream::connect(addr).unwrap());
        }
        std::thread::sleep(Duration::from_millis(200));
        let worst = worst_health(addr);
        assert!(
            worst < Duration::from_millis(100),
            "worst /health {worst:?}"
        );
        drop((slow, idle));
    })
    .await
    .unwrap();
}

/// A route that takes no body, sent one that arrives after the head (`POST /health` with `{}`
/// written a moment later): the answer must leave the keep-alive connection usable for the next
/// request. Before the server read bodies first, hyper answered before the body came, could not
/// drain it, and closed the connection without saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_the_handler_ignores_does_not_close_the_connection() {
    let (addr, _stop) = start(Limits::default()).await;
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut answers = String::new();
        for _ in 0..3 {
            s.write_all(b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
                .unwrap();
            std::thread::sleep(Duration::from_millis(100));
            s.write_all(b"{}").unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "the connection was closed instead of answered");
            answers.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert_eq!(answers.matches("HTTP/1.1 200").count(), 3, "{answers}");
        assert_eq!(answers.matches("pong").count(), 3, "{answers}");
    })
    .await
    .unwrap();
}
