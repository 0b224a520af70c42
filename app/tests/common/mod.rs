//! Helpers for driving a running shop over HTTP.
#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A blocking HTTP client for one shop.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    agent: ureq::Agent,
    /// `Authorization: Bearer …` on every request, when set.
    bearer: Option<String>,
}

/// The admin token the tests give the shops they start as processes.
pub const TEST_ADMIN_TOKEN: &str = "sfa_test_0123456789abcdef0123456789abcdef";

impl Client {
    pub fn new(base: impl Into<String>) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build();
        Self {
            base: base.into(),
            agent: config.into(),
            bearer: None,
        }
    }

    /// The same client, sending the admin token.
    pub fn with_token(mut self, token: &str) -> Self {
        self.bearer = Some(format!("Bearer {token}"));
        self
    }

    /// A client of a shop started by the tests as a process (with [`TEST_ADMIN_TOKEN`]).
    pub fn admin(base: impl Into<String>) -> Self {
        Self::new(base).with_token(TEST_ADMIN_TOKEN)
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.bearer {
            Some(b) => req.header("authorization", b),
            None => req,
        }
    }

    fn finish(mut resp: ureq::http::Response<ureq::Body>) -> (u16, Value) {
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        Self::finish(
            self.auth(self.agent.get(format!("{}{path}", self.base)))
                .call()
                .expect("GET"),
        )
    }

    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut req = match method {
            "POST" => self.agent.post(url),
            "PUT" => self.agent.put(url),
            other => panic!("method {other}"),
        };
        req = self.auth(req).header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::finish(req.send(body.as_bytes()).expect("request"))
    }

    /// Like `post`, but a connection failure (the server is down) is `None` instead of a panic.
    pub fn try_post(&self, path: &str, body: &Value) -> Option<(u16, Value)> {
        let resp = self
            .auth(self.agent.post(format!("{}{path}", self.base)))
            .header("content-type", "application/json")
            .send(body.to_string().as_bytes())
            .ok()?;
        Some(Self::finish(resp))
    }

    /// Like `post` with headers, but a connection failure is `None` instead of a panic.
    pub fn try_post_with(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Option<(u16, Value)> {
        let mut req = self
            .auth(self.agent.post(format!("{}{path}", self.base)))
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send(body.to_string().as_bytes()).ok()?;
        Some(Self::finish(resp))
    }

    pub fn post(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
        self.send("POST", path, &body.to_string(), headers)
    }

    pub fn put_product(&self, sku: &str, price: i64, stock: i64) {
        let (s, b) = self.send("PUT", &format!("/products/{sku}"), &json!({"name": format!("Product {sku}"), "priceMinor": price, "currency": "EUR", "stock": stock}).to_string(), &[]);
        assert!(s == 200 || s == 201, "PUT product: {s} {b}");
    }

    pub fn register(&self, email: &str, phone: Option<&str>) -> String {
        let mut body = json!({"email": email, "name": "Ada Lovelace"});
        if let Some(p) = phone {
            body["phone"] = json!(p);
        }
        let (s, b) = self.post("/users", &body, &[]);
        assert_eq!(s, 201, "register: {b}");
        b["userId"].as_str().unwrap().to_owned()
    }

    /// Places an order; waits (up to 10 s) for the order service's copies of the catalog and the
    /// customers to know the skus and the customer, and for the card vault to answer.
    pub fn place(&self, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let (s, b) = self.post("/orders", body, headers);
            let unknown = s == 422
                && b["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("unknown sku") || m.contains("unknown customer"));
            // In a distributed deployment the card vault is the payment process's: while it
            // restarts, POST /orders answers 503 and the client tries again.
            let vault_down = s == 503
                && b["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("card vault"));
            if !(unknown || vault_down) || Instant::now() > end {
                return (s, b);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn place_ok(&self, body: &Value) -> String {
        let (s, b) = self.place(body, &[]);
        assert_eq!(s, 202, "place: {b}");
        assert_eq!(b["status"], "PENDING");
        b["orderId"].as_str().unwrap().to_owned()
    }

    /// Polls until the order is SHIPPED or CANCELLED (from the read model).
    pub fn wait_final(&self, order_id: &str) -> Value {
        self.wait_final_within(order_id, Duration::from_secs(30))
    }

    /// Polls until the order is final, up to `limit`.
    pub fn wait_final_within(&self, order_id: &str, limit: Duration) -> Value {
        let end = Instant::now() + limit;
        loop {
            let (s, b) = self.get(&format!("/orders/{order_id}"));
            assert_eq!(s, 200, "get order: {b}");
            if (b["status"] == "SHIPPED" || b["status"] == "CANCELLED")
                && b["source"] == "read-model"
            {
                return b;
            }
            assert!(
                Instant::now() < end,
                "order {order_id} never reached a final state: {b}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn order(customer: &str, sku: &str, quantity: i64, card: &str, country: &str) -> Value {
    json!({
        "customerId": customer,
        "items": [{"sku": sku, "quantity": quantity}],
        "payment": {"cardNumber": card},
        "shippingAddress": {"name": "Ada Lovelace", "line1": "1 Analytical St", "city": "London", "postalCode": "N1 9GU", "country": country}
    })
}

pub const GOOD_CARD: &str = "4242424242424242";
pub const DECLINED_CARD: &str = "4000000000000002";

/// Runs blocking client code off the async runtime.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// SIGTERM, then up to 20 s for a clean exit, then SIGKILL.
pub fn stop_gracefully(child: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Publishes every record of `topics` (4 partitions each) again, as they are: a redelivery of
/// everything. Returns how many records it republished.
pub async fn redeliver_everything(shop: &shopflow::shop::Shop, topics: Vec<String>) -> usize {
    use shopflow_bus::Bus;
    let mut n = 0;
    for topic in topics {
        for p in 0..4 {
            let tp = shopflow_bus::TopicPartition::new(topic.as_str(), p);
            let (start, end) = shop.log.watermarks(&tp).await.unwrap();
            let mut from = start;
            while from < end {
                let recs = shop.log.read(&tp, from, 1000).await.unwrap();
                let Some(last) = recs.last() else { break };
                from = last.offset + 1;
                let msgs: Vec<shopflow_bus::Message> = recs
                    .into_iter()
                    .filter(|r| r.offset < end)
                    .map(|r| shopflow_bus::Message {
                        topic: r.topic.to_string(),
                        key: r.key,
                        value: r.value,
                        headers: r.headers,
                        timestamp_ms: None,
                    })
                    .collect();
                n += msgs.len();
                shop.log.publish(msgs).await.unwrap();
            }
        }
    }
    n
}

/// Runs `shopflow verify --settled` over a stopped shop's `dir`.
pub fn verify_settled(dir: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .args(["verify", "--settled", "--data-dir", dir.to_str().unwrap()])
        .output()
        .expect("run shopflow verify")
}

/// Starts `shopflow up` on `dir` and `port` as a child process (output discarded).
pub fn up_process(dir: &std::path::Path, port: u16, extra: &[&str]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .env("SHOPFLOW_ADMIN_TOKEN", TEST_ADMIN_TOKEN)
        .args([
            "up",
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start shopflow up")
}

pub fn healthy(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    use std::io::{Read, Write};
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

/// Waits (up to 60 s) until `/health` answers on `port`; returns how long that took.
pub fn wait_healthy(port: u16) -> Duration {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        if healthy(port) {
            return t.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("shopflow up did not become healthy");
}

/// Waits up to 30 s for `f` to hold, polling every 50 ms; panics naming `what`.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A shop that gives events up quickly: two attempts 10 ms apart, and breakers that never open
/// (so a failing dependency makes dead letters instead of pausing the consumer).
pub fn give_up_fast(cfg: &mut shopflow::shop::ShopConfig) {
    cfg.runner = shopflow_runtime::RunnerConfig {
        retry: shopflow_runtime::RetryPolicy {
            max_attempts: 2,
            initial: Duration::from_millis(10),
            ..shopflow_runtime::RetryPolicy::default()
        },
        ..shopflow_runtime::RunnerConfig::default()
    };
    cfg.breaker = shopflow_runtime::BreakerConfig {
        failure_threshold: 1000,
        ..shopflow_runtime::BreakerConfig::default()
    };
}

/// Replication slots that earlier runs of the tests left behind (a test that failed half-way):
/// inactive, named like the tests' ones, not this process's. Each holds WAL back and counts
/// against `max_replication_slots`, so they are dropped before a test makes its own.
pub async fn drop_stale_slots(sql: &tokio_postgres::Client) {
    let _ = sql
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
              WHERE NOT active AND slot_name ~ '^(cdc_|legacy_|bench_cdc_)' AND slot_name NOT LIKE $1",
            &[&format!("%{}%", std::process::id())],
        )
        .await;
}

/// Whether the shop's stock books agree with a legacy stock table: per SKU, what the shop holds
/// (available + reserved + shipped) is the legacy quantity.
pub fn legacy_books_agree(shop: &Client, expected: &[(String, i64)]) -> bool {
    let (_, b) = shop.get("/products");
    expected.iter().all(|(sku, q)| {
        b.as_array().is_some_and(|a| {
            a.iter().any(|p| {
                p["sku"] == *sku
                    && p["available"].as_i64().unwrap_or(-1)
                        + p["reserved"].as_i64().unwrap_or(0)
                        + p["shipped"].as_i64().unwrap_or(0)
                        == *q
            })
        })
    })
}

/// The legacy stock table `<schema>.stock`: (sku, quantity), by sku.
pub async fn legacy_stock(sql: &tokio_postgres::Client, schema: &str) -> Vec<(String, i64)> {
    sql.query(
        &format!("SELECT sku, quantity::bigint FROM {schema}.stock ORDER BY sku"),
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// A child process killed (SIGKILL) when this is dropped — also when a test fails half-way.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until every consumer group of `shop` is at the end of its topics and every outbox is
/// empty (twice, 150 ms apart): what `verify --settled` assumes. An order can be final while a
/// fact of its history (a reservation arriving after the shipment) is still on its way.
pub async fn settle(shop: &shopflow::shop::Shop) {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let lag = shop.ops.lag().await.unwrap();
        let busy: u64 = lag.groups.values().sum::<u64>()
            + lag.outbox_backlog.values().map(|n| *n as u64).sum::<u64>();
        if busy == 0 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let again = shop.ops.lag().await.unwrap();
            if again.groups.values().sum::<u64>() == 0 {
                return;
            }
        }
        assert!(Instant::now() < end, "the shop did not settle: {lag:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
