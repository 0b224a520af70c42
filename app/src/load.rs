//! `shopflow load`: places orders against a running shop and measures placed → final.
//!
//! Latency is measured from just before the `POST /orders` to the timestamp of the order's final
//! event (`updatedAt` in the read model), both on this machine's UTC clock, into an HDR histogram.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// The shop's base URL: `POST /orders` and `GET /orders…` go here.
    pub target: String,
    /// Where `POST /users` goes, when the users service runs on its own (default: `target`).
    pub users_target: Option<String>,
    /// Where `PUT /products/…` goes, when the inventory service runs on its own (default:
    /// `target`).
    pub products_target: Option<String>,
    pub orders: u64,
    /// Orders per second; `None` places as fast as the workers can.
    pub rate: Option<f64>,
    pub concurrency: usize,
    /// Create the catalog and a customer first.
    pub seed: bool,
    pub skus: usize,
    /// Every `n`-th order uses a declining card, every `m`-th an unsupported country (0 = never).
    pub decline_every: u64,
    pub bad_country_every: u64,
    pub progress: bool,
    /// How long a request is retried while the shop is unreachable or answers 503 (a restart, a
    /// crash): orders are retried with the same `Idempotency-Key`, so a retry never places a
    /// second order. Zero fails at the first error.
    pub retry_for: Duration,
    /// Sent as `Authorization: Bearer …` (creating the catalog needs it).
    pub admin_token: Option<String>,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            target: "http://127.0.0.1:8080".into(),
            users_target: None,
            products_target: None,
            orders: 1000,
            rate: None,
            concurrency: 32,
            seed: true,
            skus: 20,
            decline_every: 0,
            bad_country_every: 0,
            progress: true,
            retry_for: Duration::ZERO,
            admin_token: None,
        }
    }
}

/// What happened.
#[derive(Debug)]
pub struct LoadReport {
    pub placed: u64,
    pub rejected: u64,
    /// Requests repeated because the shop was unreachable or unavailable.
    pub retried: u64,
    pub place_secs: f64,
    pub total_secs: f64,
    pub outcomes: HashMap<String, u64>,
    pub latency_ms: hdrhistogram::Histogram<u64>,
    pub accept_ms: hdrhistogram::Histogram<u64>,
}

impl LoadReport {
    /// The report as one JSON object (for scripts and tests).
    pub fn to_json(&self) -> Value {
        let q = |h: &hdrhistogram::Histogram<u64>, p: f64| h.value_at_quantile(p);
        json!({
            "placed": self.placed,
            "rejected": self.rejected,
            "retried": self.retried,
            "placeSecs": self.place_secs,
            "totalSecs": self.total_secs,
            "outcomes": self.outcomes,
            "placedToFinalMs": {
                "p50": q(&self.latency_ms, 0.5), "p90": q(&self.latency_ms, 0.9),
                "p99": q(&self.latency_ms, 0.99), "max": self.latency_ms.max()
            },
            "acceptMs": {"p50": q(&self.accept_ms, 0.5), "p99": q(&self.accept_ms, 0.99)},
        })
    }

    pub fn print(&self) {
        let q = |h: &hdrhistogram::Histogram<u64>, p: f64| h.value_at_quantile(p);
        println!(
            "placed      {} orders in {:.2} s ({:.0} orders/s accepted), {} rejected",
            self.placed,
            self.place_secs,
            self.placed as f64 / self.place_secs,
            self.rejected
        );
        if self.retried > 0 {
            println!(
                "retried     {} requests while the shop was unreachable",
                self.retried
            );
        }
        println!(
            "completed   all in {:.2} s: {:.0} orders/s through the whole saga",
            self.total_secs,
            self.placed as f64 / self.total_secs
        );
        println!(
            "placed→final  p50 {} ms  p90 {} ms  p99 {} ms  max {} ms",
            q(&self.latency_ms, 0.5),
            q(&self.latency_ms, 0.9),
            q(&self.latency_ms, 0.99),
            self.latency_ms.max()
        );
        println!(
            "POST /orders  p50 {} ms  p99 {} ms",
            q(&self.accept_ms, 0.5),
            q(&self.accept_ms, 0.99)
        );
        let mut o: Vec<_> = self.outcomes.iter().collect();
        o.sort();
        println!(
            "outcomes    {}",
            o.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

fn agent() -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .max_idle_connections_per_host(256)
        // The shop's answers are small: 128 KiB buffers each way (ureq's default) took 64
        // clients to 16 MiB, which `bench e2e` counted as the shop's resident memory.
        .input_buffer_size(16 * 1024)
        .output_buffer_size(16 * 1024)
        .build();
    ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::default(),
        Literals::default(),
    )
}

/// ureq's resolver, except for address literals. With a deadline set, ureq's own resolver
/// hands every lookup to a new thread, even of `127.0.0.1:8080`, for every request (a pooled
/// connection is looked up again too): callgrind put that at ~32,000 instructions per request,
/// counted in `bench e2e`'s CPU per order. A literal needs no lookup.
#[derive(Debug, Default)]
struct Literals(ureq::unversioned::resolver::DefaultResolver);

impl ureq::unversioned::resolver::Resolver for Literals {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let literal = uri.authority().and_then(|a| {
            let host = a.host().trim_start_matches('[').trim_end_matches(']');
            let ip: std::net::IpAddr = host.parse().ok()?;
            let port = a.port_u16().or(match uri.scheme_str() {
                Some("https") => Some(443),
                Some("http") => Some(80),
                _ => None,
            })?;
            Some(std::net::SocketAddr::new(ip, port))
        });
        match literal {
            Some(addr) => {
                let mut addrs = self.0.empty();
                addrs.push(addr);
                Ok(addrs)
            }
            None => self.0.resolve(uri, config, timeout),
        }
    }
}

fn call_with(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<&Value>,
    idempotency_key: Option<&str>,
    admin_token: Option<&str>,
) -> anyhow::Result<(u16, Value)> {
    let bearer = admin_token.map(|t| format!("Bearer {t}"));
    let mut resp = match (method, body) {
        ("GET", _) => {
            let mut req = agent.get(url);
            if let Some(b) = &bearer {
                req = req.header("authorization", b);
            }
            req.call()
        }
        ("POST", Some(b)) => {
            let mut req = agent.post(url).header("content-type", "application/json");
            if let Some(k) = idempotency_key {
                req = req.header("idempotency-key", k);
            }
            req.send(b.to_string().as_bytes())
        }
        ("PUT", Some(b)) => {
            let mut req = agent.put(url).header("content-type", "application/json");
            if let Some(b) = &bearer {
                req = req.header("authorization", b);
            }
            req.send(b.to_string().as_bytes())
        }
        _ => bail!("unsupported call {method}"),
    }
    .with_context(|| format!("{method} {url}"))?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// Retries while the shop cannot answer (transport errors, 503) for up to `retry_for`.
struct Retrying<'a> {
    agent: &'a ureq::Agent,
    retry_for: Duration,
    retried: &'a AtomicU64,
    /// Sent with the operator's calls (the catalog, the order list).
    admin_token: Option<&'a str>,
}

impl Retrying<'_> {
    fn call(
        &self,
        method: &str,
        url: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        let give_up = Instant::now() + self.retry_for;
        let mut pause = Duration::from_millis(50);
        loop {
            // The operator's calls: the catalog (PUT) and the order list it follows outcomes by.
            let token = if method == "POST" {
                None
            } else {
                self.admin_token
            };
            let r = call_with(self.agent, method, url, body, key, token);
            let retry = match &r {
                Err(_) => true,
                Ok((503, _)) => true,
                Ok(_) => false,
            };
            if !retry || Instant::now() >= give_up {
                return r;
            }
            self.retried.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}

fn order_body(customer: &str, i: u64, cfg: &LoadConfig) -> Value {
    let card = if cfg.decline_every > 0 && i.is_multiple_of(cfg.decline_every) {
        "4000000000000002"
    } else {
        "4242424242424242"
    };
    let country = if cfg.bad_country_every > 0 && i % cfg.bad_country_every == 1 {
        "XX"
    } else {
        "DE"
    };
    json!({
        "customerId": customer,
        "items": [{"sku": format!("LOAD-{}", i % cfg.skus as u64), "quantity": 1 + (i % 3)}],
        "payment": {"cardNumber": card},
        "shippingAddress": {"name": "Load Test", "line1": "1 Bench St", "city": "Berlin", "postalCode": "10115", "country": country}
    })
}

fn ms_of(rfc3339: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Orders per page of the listing the wait for final states reads; with at most this many
/// orders still on their way, it reads each of them alone instead.
const PAGE: usize = 500;

/// An order's final status and when it got there, from its view (`None` while it is on its way).
fn final_state(o: &Value) -> Option<(&'static str, i64)> {
    let status = match o["status"].as_str() {
        Some("SHIPPED") => "SHIPPED",
        Some("CANCELLED") => "CANCELLED",
        _ => return None,
    };
    Some((status, o["updatedAt"].as_str().and_then(ms_of).unwrap_or(0)))
}

/// Runs the load (blocking: call it from a plain thread or `spawn_blocking`).
pub fn run(cfg: &LoadConfig) -> anyhow::Result<LoadReport> {
    let agent = agent();
    let retried = Arc::new(AtomicU64::new(0));
    let retrying = Retrying {
        agent: &agent,
        retry_for: cfg.retry_for,
        retried: &retried,
        admin_token: cfg.admin_token.as_deref(),
    };
    let base = cfg.target.trim_end_matches('/').to_owned();
    let users_base = cfg
        .users_target
        .as_deref()
        .unwrap_or(&cfg.target)
        .trim_end_matches('/')
        .to_owned();
    let products_base = cfg
        .products_target
        .as_deref()
        .unwrap_or(&cfg.target)
        .trim_end_matches('/')
        .to_owned();
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let (s, _) = retrying
        .call("GET", &format!("{base}/health"), None, None)
        .context("is the shop running? (shopflow up)")?;
    if s != 200 {
        bail!("{base}/health answered {s}");
    }
    let email = format!("load-{}@example.com", chrono::Utc::now().timestamp_micros());
    let (s, user) = retrying.call(
        "POST",
        &format!("{users_base}/users"),
        Some(&json!({"email": email, "name": "Load Test"})),
        None,
    )?;
    if s != 201 {
        bail!("registering the load customer failed: {s} {user}");
    }
    let customer = user["userId"].as_str().unwrap_or_default().to_owned();
    if cfg.seed {
        for k in 0..cfg.skus {
            let (s, b) = retrying.call(
                "PUT",
                &format!("{products_base}/products/LOAD-{k}"),
                Some(
                    &json!({"name": format!("Load item {k}"), "priceMinor": 500 + k as i64, "currency": "EUR", "stock": 1_000_000_000}),
                ),
                None,
            )?;
            if s == 401 {
                bail!(
                    "seeding the catalog needs the admin token: --admin-token, SHOPFLOW_ADMIN_TOKEN, or --data-dir of the shop (its admin.token); or --no-seed"
                );
            }
            if s != 200 && s != 201 {
                bail!("seeding LOAD-{k} failed: {s} {b}");
            }
        }
    }
    // Wait until the order service's copies know the customer and every sku (they are fed by
    // events).
    let end = Instant::now() + Duration::from_secs(30);
    'ready: loop {
        for k in 0..cfg.skus {
            // The first line is priced from the catalog copy (or is an unknown sku); the second,
            // with quantity 0, then makes the probe fail without placing an order.
            let probe = json!({"customerId": customer, "items": [{"sku": format!("LOAD-{k}"), "quantity": 1}, {"sku": format!("LOAD-{k}"), "quantity": 0}], "payment": {"cardNumber": "4242424242424242"}, "shippingAddress": {"name": "x", "line1": "x", "city": "x", "postalCode": "x", "country": "DE"}});
            let (_, b) = retrying.call("POST", &format!("{base}/orders"), Some(&probe), None)?;
            if b["message"]
                .as_str()
                .is_some_and(|m| m.contains("unknown sku") || m.contains("unknown customer"))
            {
                if Instant::now() > end {
                    bail!("the catalog or the customer never reached the order service: {b}");
                }
                std::thread::sleep(Duration::from_millis(50));
                continue 'ready;
            }
        }
        break;
    }

    let next = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let placed: Arc<Mutex<Vec<(String, i64)>>> =
        Arc::new(Mutex::new(Vec::with_capacity(cfg.orders as usize)));
    let accept = Arc::new(Mutex::new(hdrhistogram::Histogram::<u64>::new_with_bounds(
        1, 600_000, 3,
    )?));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..cfg.concurrency.max(1) {
        let (next, rejected, placed, accept) = (
            next.clone(),
            rejected.clone(),
            placed.clone(),
            accept.clone(),
        );
        let (cfg, base, customer, agent, retried, run_id) = (
            cfg.clone(),
            base.clone(),
            customer.clone(),
            agent.clone(),
            retried.clone(),
            run_id.clone(),
        );
        workers.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let retrying = Retrying {
                agent: &agent,
                retry_for: cfg.retry_for,
                retried: &retried,
                admin_token: None,
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= cfg.orders {
                    return Ok(());
                }
                if let Some(rate) = cfg.rate {
                    let due = started + Duration::from_secs_f64(i as f64 / rate);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                let at = chrono::Utc::now().timestamp_millis();
                let t = Instant::now();
                let key = format!("load-{run_id}-{i}");
                let (s, b) = retrying.call(
                    "POST",
                    &format!("{base}/orders"),
                    Some(&order_body(&customer, i, &cfg)),
                    Some(&key),
                )?;
                let _ = accept
                    .lock()
                    .expect("histogram")
                    .record(t.elapsed().as_millis().max(1) as u64);
                if s == 202 || s == 200 {
                    placed
                        .lock()
                        .expect("placed")
                        .push((b["orderId"].as_str().unwrap_or_default().to_owned(), at));
                } else {
                    rejected.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    while workers.iter().any(|w| !w.is_finished()) {
        std::thread::sleep(Duration::from_millis(200));
        if cfg.progress {
            bar(
                "placing",
                next.load(Ordering::Relaxed).min(cfg.orders),
                cfg.orders,
            );
        }
    }
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("a load worker panicked"))??;
    }
    let place_secs = started.elapsed().as_secs_f64();
    let placed = std::mem::take(&mut *placed.lock().expect("placed"));
    // One copy of each order id (a 200,000-order run keeps them all): its index into `orders`,
    // which holds when it was placed and, once seen, its final status and when it got there.
    let first_placed = placed.iter().map(|p| p.1).min().unwrap_or(0);
    let placed_count = placed.len();
    let mut orders: Vec<(i64, Option<(&'static str, i64)>)> = Vec::with_capacity(placed_count);
    let mut index: HashMap<String, usize> = HashMap::with_capacity(placed_count);
    let mut ids: Vec<String> = Vec::with_capacity(placed_count);
    for (id, at) in placed {
        // An id answered twice (a retried request of the same key) is one order.
        if let std::collections::hash_map::Entry::Vacant(e) = index.entry(id) {
            ids.push(e.key().clone());
            e.insert(orders.len());
            orders.push((at, None));
        }
    }
    let mut finished = 0usize;

    // Wait for every order to reach a final state, reading the read model: page by page while
    // many are on their way, then each of the few left alone — re-reading every order of the
    // run each round cost the shop more CPU than the orders still moving (a 10,000-order run
    // lists 20 pages of 500 per round).
    let deadline = Instant::now() + Duration::from_secs(300);
    while finished < orders.len() {
        if orders.len() - finished <= PAGE {
            for (i, id) in ids.iter().enumerate() {
                if orders[i].1.is_some() {
                    continue;
                }
                let (s, o) = retrying.call("GET", &format!("{base}/orders/{id}"), None, None)?;
                if s == 404 {
                    continue; // accepted, not readable yet
                }
                if s != 200 {
                    bail!("reading order {id} failed: {s} {o}");
                }
                if let Some(done) = final_state(&o) {
                    orders[i].1 = Some(done);
                    finished += 1;
                }
            }
        }
        let mut cursor: Option<String> = None;
        while orders.len() - finished > PAGE {
            let url = match &cursor {
                Some(c) => format!("{base}/orders?customerId={customer}&limit={PAGE}&cursor={c}"),
                None => format!("{base}/orders?customerId={customer}&limit={PAGE}"),
            };
            let (s, page) = retrying.call("GET", &url, None, None)?;
            if s != 200 {
                bail!("listing orders failed: {s} {page}");
            }
            for o in page["orders"].as_array().into_iter().flatten() {
                let Some(done) = final_state(o) else { continue };
                let Some(&i) = o["orderId"].as_str().and_then(|id| index.get(id)) else {
                    continue; // an order of another run of the same customer
                };
                if orders[i].1.is_none() {
                    finished += 1;
                }
                orders[i].1 = Some(done);
            }
            match page["nextCursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        if cfg.progress {
            bar("completing", finished as u64, orders.len() as u64);
        }
        if finished < orders.len() {
            if Instant::now() > deadline {
                bail!(
                    "{} orders did not reach a final state within 5 minutes",
                    orders.len() - finished
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if cfg.progress {
        eprintln!();
    }
    let mut latency = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000, 3)?;
    let mut outcomes: HashMap<String, u64> = HashMap::new();
    let mut last_final = 0i64;
    for (at, done) in &orders {
        let Some((status, done)) = done else {
            continue;
        };
        *outcomes.entry((*status).to_owned()).or_default() += 1;
        latency.record((done - at).max(1) as u64)?;
        last_final = last_final.max(*done);
    }
    let total_secs = ((last_final - first_placed) as f64 / 1000.0).max(place_secs.min(0.001));
    let accept_ms = accept.lock().expect("histogram").clone();
    Ok(LoadReport {
        placed: placed_count as u64,
        rejected: rejected.load(Ordering::Relaxed),
        retried: retried.load(Ordering::Relaxed),
        place_secs,
        total_secs,
        outcomes,
        latency_ms: latency,
        accept_ms,
    })
}

fn bar(what: &str, done: u64, total: u64) {
    let width = 30usize;
    let filled = (done.min(total) * width as u64)
        .checked_div(total)
        .map_or(width, |f| f as usize);
    eprint!(
        "\r{what:<10} [{}{}] {done}/{total}   ",
        "#".repeat(filled),
        " ".repeat(width - filled)
    );
    let _ = std::io::stderr().flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use ureq::unversioned::resolver::Resolver;
    use ureq::unversioned::transport::NextTimeout;

    fn resolve(url: &str) -> Result<Vec<std::net::SocketAddr>, ureq::Error> {
        let uri: ureq::http::Uri = url.parse().unwrap();
        let config = ureq::config::Config::default();
        let timeout = NextTimeout {
            after: ureq::unversioned::transport::time::Duration::from(Duration::from_secs(5)),
            reason: ureq::Timeout::Resolve,
            ..NextTimeout::default()
        };
        Literals::default()
            .resolve(&uri, &config, timeout)
            .map(|a| a.iter().copied().collect())
    }

    #[test]
    fn address_literals_resolve_without_a_lookup_and_names_go_to_ureq() {
        assert_eq!(
            resolve("http://127.0.0.1:8080/orders").unwrap(),
            vec!["127.0.0.1:8080".parse().unwrap()]
        );
        assert_eq!(
            resolve("http://[::1]/health").unwrap(),
            vec!["[::1]:80".parse().unwrap()]
        );
        // A name takes ureq's own resolver: an unresolvable one is its error, not ours.
        assert!(resolve("http://no-such-host.invalid:1/").is_err());
    }
}
