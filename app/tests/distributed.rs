//! The distributed deployment: the shop on PostgreSQL (one schema per service), and on Kafka +
//! PostgreSQL with every service as its own OS process — orders of every scenario, a service
//! killed with SIGKILL mid-load and restarted, two payment instances sharing the load — and the
//! growth path from an embedded deployment.
//!
//! Servers come from `SHOPFLOW_TEST_POSTGRES` and `SHOPFLOW_TEST_KAFKA` (`host:port`); without
//! them a test is skipped with a printed reason, except under `CI=true`, where that fails.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, DECLINED_CARD, GOOD_CARD, blocking, free_port, order};
use shopflow::shop::{DbConfig, Shop, ShopConfig};

fn postgres() -> Option<String> {
    shopflow_store::test_postgres_url("the distributed tests")
}

fn kafka() -> Option<String> {
    shopflow_bus::conformance::test_server(
        "SHOPFLOW_TEST_KAFKA",
        "127.0.0.1:9092",
        "the distributed tests",
    )
}

/// The tests here share one broker and one PostgreSQL with everything else CI runs; one at a
/// time keeps their timing honest.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Orders cross several processes and a broker: allow for rebalances after a kill.
const FINAL_WITHIN: Duration = Duration::from_secs(120);

/// How long a killed service stays down: past the consumer session timeout (6 s), so that its
/// dead group member is gone before the restarted one joins (see the crash loop below).
const REJOIN_AFTER_MS: u64 = 7000;

/// A name no other run uses (schemas and Kafka namespaces are shared between runs).
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}{:x}{}",
        nanos & 0x00ff_ffff_ffff,
        std::process::id()
    )
}

async fn drop_schemas(url: &str, prefix: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = client
        .query(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
            &[&format!("{prefix}%")],
        )
        .await
        .unwrap();
    for r in rows {
        let name: String = r.get(0);
        client
            .batch_execute(&format!("DROP SCHEMA {name} CASCADE"))
            .await
            .unwrap();
    }
}

/// Places one order per scenario (happy, declined, out of stock — `scarce` has one unit —,
/// unsupported country) and waits for each to end as it should.
fn scenarios(c: &Client, user: &str, sku: &str, scarce: &str) -> Vec<String> {
    let cases = [
        (sku, GOOD_CARD, "DE", 1, "SHIPPED"),
        (sku, DECLINED_CARD, "DE", 1, "CANCELLED"),
        (scarce, GOOD_CARD, "DE", 5, "CANCELLED"),
        (sku, GOOD_CARD, "XX", 1, "CANCELLED"),
    ];
    let ids: Vec<(String, &str)> = cases
        .iter()
        .map(|(sku, card, country, q, want)| {
            (c.place_ok(&order(user, sku, *q, card, country)), *want)
        })
        .collect();
    for (id, want) in &ids {
        assert_eq!(
            c.wait_final_within(id, FINAL_WITHIN)["status"],
            *want,
            "order {id}"
        );
    }
    ids.into_iter().map(|(id, _)| id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_runs_on_postgresql() {
    let Some(url) = postgres() else { return };
    let _one_at_a_time = SERIAL.lock().await;
    let prefix = unique("t_pg_");
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::start(ShopConfig {
        db: DbConfig::Postgres {
            url: url.clone(),
            schema_prefix: prefix.clone(),
        },
        ..ShopConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap())
    })
    .await
    .unwrap();
    let c = Client::new(format!("http://{}", shop.addr)).with_token(shop.admin_token.as_str());
    blocking(move || {
        c.put_product("PG-1", 800, 50);
        c.put_product("PG-LOW", 900, 1);
        let user = c.register("pg@example.com", None);
        let ids = scenarios(&c, &user, "PG-1", "PG-LOW");
        assert_eq!(
            c.get(&format!("/orders/{}/payment", ids[2])).1["status"],
            "REFUNDED"
        );
    })
    .await;
    common::settle(&shop).await;
    let report = shopflow::verify::verify(&shop.databases(), true)
        .await
        .unwrap();
    assert!(report.ok(), "{:?}", report.violations);
    assert_eq!(report.orders, 4);
    shop.stop().await.unwrap();
    drop_schemas(&url, &prefix).await;
}

struct Fleet {
    dir: tempfile::TempDir,
    bus: String,
    db: String,
    vault_keys: String,
    procs: Vec<(String, u16, Child)>,
}

impl Fleet {
    /// The payment processes, running or to come back on their ports.
    fn vault_urls(&self) -> String {
        self.procs
            .iter()
            .filter(|(s, _, _)| s == "payment")
            .map(|(_, port, _)| format!("http://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, service: &str) -> u16 {
        let port = free_port();
        self.spawn_on(service, port)
    }

    fn spawn_on(&mut self, service: &str, port: u16) -> u16 {
        let child = Command::new(env!("CARGO_BIN_EXE_shopflow"))
            .env("SHOPFLOW_ADMIN_TOKEN", common::TEST_ADMIN_TOKEN)
            .args([
                "service",
                service,
                "--bus",
                &self.bus,
                "--db",
                &self.db,
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
                self.dir
                    .path()
                    .join(format!("{service}-{port}"))
                    .to_str()
                    .unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join(format!("{service}.log")))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            // Every payment process of a deployment shares the card vault's keys; the others
            // tokenise cards through whichever payment process answers.
            .env("SHOPFLOW_VAULT_KEYS", &self.vault_keys)
            .env("SHOPFLOW_VAULT_URL", self.vault_urls())
            .spawn()
            .expect("start shopflow service");
        self.procs.push((service.to_owned(), port, child));
        let c = Client::admin(format!("http://127.0.0.1:{port}"));
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && c.get("/health").0 == 200
            {
                return port;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(self.dir.path().join(format!("{service}.log")))
            .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        panic!(
            "shopflow service {service} did not start on port {port}; the end of its log:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }

    fn client(&self, service: &str) -> Client {
        let (_, port, _) = self
            .procs
            .iter()
            .find(|(s, _, _)| s == service)
            .unwrap_or_else(|| panic!("no {service} process"));
        Client::admin(format!("http://127.0.0.1:{port}"))
    }

    /// Kills the (first) process of `service` with SIGKILL; returns its port.
    fn kill(&mut self, service: &str) -> u16 {
        let i = self
            .procs
            .iter()
            .position(|(s, _, _)| s == service)
            .unwrap();
        let (_, port, mut child) = self.procs.remove(i);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        port
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (_, _, c) in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every service in its own OS process on Kafka and PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_in_its_own_process_on_kafka_and_postgresql() {
    let (Some(brokers), Some(url)) = (kafka(), postgres()) else {
        return;
    };
    let _one_at_a_time = SERIAL.lock().await;
    let prefix = unique("t_mp_");
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut fleet = Fleet {
        dir: tempfile::tempdir().unwrap(),
        bus: format!("kafka://{brokers}?namespace={prefix}."),
        db: format!("{url}{sep}schema_prefix={prefix}"),
        vault_keys: shopflow_payment::VaultKeys::generate(),
        procs: Vec::new(),
    };
    let fleet = blocking(move || {
        for s in [
            "users",
            "inventory",
            "payment",
            "shipping",
            "notification",
            "order",
        ] {
            fleet.spawn(s);
        }
        let (users, inventory, orders) = (
            fleet.client("users"),
            fleet.client("inventory"),
            fleet.client("order"),
        );
        inventory.put_product("MP-1", 700, 100_000);
        inventory.put_product("MP-LOW", 900, 1);
        let user = users.register("mp@example.com", None);
        // Every scenario reaches its final state across the processes.
        scenarios(&orders, &user, "MP-1", "MP-LOW");

        // Load, and the payment process is killed with SIGKILL in the middle of it.
        let placer = {
            let (orders, user) = (orders.clone(), user.clone());
            std::thread::spawn(move || {
                (0..120)
                    .map(|i| {
                        let card = if i % 6 == 0 { DECLINED_CARD } else { GOOD_CARD };
                        orders.place_ok(&order(&user, "MP-1", 1, card, "DE"))
                    })
                    .collect::<Vec<_>>()
            })
        };
        std::thread::sleep(Duration::from_millis(400));
        let port = fleet.kill("payment");
        std::thread::sleep(Duration::from_millis(REJOIN_AFTER_MS));
        fleet.spawn_on("payment", port);
        let placed = placer.join().unwrap();
        for id in &placed {
            orders.wait_final_within(id, FINAL_WITHIN);
        }

        // Two payment instances share the load.
        fleet.spawn("payment");
        let more: Vec<String> = (0..60)
            .map(|_| orders.place_ok(&order(&user, "MP-1", 1, GOOD_CARD, "DE")))
            .collect();
        for id in &more {
            assert_eq!(
                orders.wait_final_within(id, FINAL_WITHIN)["status"],
                "SHIPPED"
            );
        }
        // Both instances handled payments: the group split the partitions between them.
        let handled: Vec<f64> = fleet
            .procs
            .iter()
            .filter(|(s, _, _)| s == "payment")
            .map(|(_, port, _)| {
                let c = Client::admin(format!("http://127.0.0.1:{port}"));
                let text = c.get("/metrics").1.as_str().unwrap_or_default().to_owned();
                text.lines()
                    .find(|l| l.starts_with("shopflow_events_consumed_total{consumer=\"payment\"}"))
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0)
            })
            .collect();
        assert_eq!(handled.len(), 2);
        assert!(
            handled.iter().all(|n| *n > 0.0),
            "payments per instance: {handled:?}"
        );
        fleet
    })
    .await;
    // Nothing lost, nothing done twice: the invariants over every service's schema.
    let dbs =
        shopflow::verify::Databases::open(fleet.dir.path(), &fleet.db.parse::<DbConfig>().unwrap())
            .await
            .unwrap();
    let report = shopflow::verify::verify(&dbs, true).await.unwrap();
    assert!(report.ok(), "{:?}", report.violations);
    assert_eq!(report.orders, 4 + 120 + 60);
    drop(fleet);
    drop_schemas(&url, &prefix).await;
}

/// The growth path: a populated embedded deployment (finished orders and orders still in flight
/// when it stops) is moved to Kafka + PostgreSQL; every order finishes there, the orders placed
/// afterwards complete, and the invariants hold over the moved data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_an_embedded_deployment_and_the_shop_carries_on() {
    let (Some(brokers), Some(url)) = (kafka(), postgres()) else {
        return;
    };
    let _one_at_a_time = SERIAL.lock().await;
    let prefix = unique("t_mig_");
    let dir = tempfile::tempdir().unwrap();
    // The embedded shop, with history.
    let shop = Shop::start(ShopConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let c = Client::new(format!("http://{}", shop.addr)).with_token(shop.admin_token.as_str());
    let (user, before) = blocking(move || {
        c.put_product("MG-1", 600, 1000);
        c.put_product("MG-LOW", 900, 1);
        let user = c.register("mig@example.com", None);
        let mut ids = scenarios(&c, &user, "MG-1", "MG-LOW");
        // And some still in flight when it stops.
        ids.extend((0..20).map(|_| c.place_ok(&order(&user, "MG-1", 1, GOOD_CARD, "DE"))));
        (user, ids)
    })
    .await;
    shop.stop().await.unwrap();

    let kafka =
        shopflow_kafka::KafkaConfig::from_url(&format!("kafka://{brokers}?namespace={prefix}."))
            .unwrap();
    let db = DbConfig::Postgres {
        url: url.clone(),
        schema_prefix: prefix.clone(),
    };
    let moved = shopflow::migrate::migrate(dir.path(), kafka.clone(), &db)
        .await
        .unwrap();
    assert!(moved.rows["{p}order.events".replace("{p}", &prefix).as_str()] >= 4 * 2);
    // The finished orders' events were on the log; some in-flight ones may still have been in
    // the order service's outbox at the stop (moved with its table, published on Kafka later).
    assert!(moved.records["orders.order-created"] >= 4);
    assert!(moved.groups.contains_key("payment"), "{:?}", moved.groups);
    // A second run is refused rather than duplicating anything.
    assert!(
        shopflow::migrate::migrate(dir.path(), kafka.clone(), &db)
            .await
            .is_err()
    );

    // The same shop on Kafka + PostgreSQL carries on, with the card vault's keys of the embedded
    // deployment (as migrate says: the cards in flight are encrypted under them).
    let fresh = tempfile::tempdir().unwrap();
    let vault_keys = std::fs::read_to_string(dir.path().join("payment/vault.keys")).unwrap();
    let shop = Shop::start(ShopConfig {
        bus: shopflow::shop::BusConfig::Kafka(kafka),
        db: db.clone(),
        vault_keys: Some(vault_keys),
        ..ShopConfig::new(fresh.path(), "127.0.0.1:0".parse().unwrap())
    })
    .await
    .unwrap();
    let c = Client::new(format!("http://{}", shop.addr)).with_token(shop.admin_token.as_str());
    blocking(move || {
        for id in &before {
            c.wait_final_within(id, FINAL_WITHIN);
        }
        assert_eq!(
            c.get(&format!("/orders/{}", before[0])).1["status"],
            "SHIPPED"
        );
        assert_eq!(c.get("/products/MG-1").1["name"], "Product MG-1");
        let after: Vec<String> = (0..10)
            .map(|_| c.place_ok(&order(&user, "MG-1", 1, GOOD_CARD, "DE")))
            .collect();
        for id in &after {
            assert_eq!(c.wait_final_within(id, FINAL_WITHIN)["status"], "SHIPPED");
        }
    })
    .await;
    common::settle(&shop).await;
    let report = shopflow::verify::verify(&shop.databases(), true)
        .await
        .unwrap();
    assert!(report.ok(), "{:?}", report.violations);
    assert_eq!(report.orders, 4 + 20 + 10);
    shop.stop().await.unwrap();
    drop_schemas(&url, &prefix).await;
}

/// The crash loop of the distributed deployment: under continuous orders, one service process at
/// a time is killed with SIGKILL at random moments and restarted on its port, at least 10 times
/// (`SHOPFLOW_DIST_KILLS` for more). Afterwards every accepted order reaches a final state and the
/// invariants hold over every schema.
///
/// A killed service stays down for 7 s, past the consumer session timeout: on the CI broker
/// (Tansu 0.6) a group whose dead member is replaced while its session is still alive sometimes
/// never reassigns the partitions (the known coordinator bug nisshi-io/nisshi#625; the records
/// wait, nothing is lost). Apache Kafka handles an immediate restart as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_service_processes_one_at_a_time_loses_nothing() {
    let (Some(brokers), Some(url)) = (kafka(), postgres()) else {
        return;
    };
    let _one_at_a_time = SERIAL.lock().await;
    let kills: usize = std::env::var("SHOPFLOW_DIST_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let prefix = unique("t_dcl_");
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut fleet = Fleet {
        dir: tempfile::tempdir().unwrap(),
        bus: format!("kafka://{brokers}?namespace={prefix}."),
        db: format!("{url}{sep}schema_prefix={prefix}"),
        vault_keys: shopflow_payment::VaultKeys::generate(),
        procs: Vec::new(),
    };
    let fleet = blocking(move || {
        let services = [
            "users",
            "inventory",
            "payment",
            "shipping",
            "notification",
            "order",
        ];
        for s in services {
            fleet.spawn(s);
        }
        let orders = fleet.client("order");
        fleet
            .client("inventory")
            .put_product("DC-1", 500, 1_000_000);
        let user = fleet.client("users").register("dcl@example.com", None);
        orders.place_ok(&order(&user, "DC-1", 1, GOOD_CARD, "DE")); // the catalog copy is there
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let placer = {
            let (orders, user, stop) = (orders.clone(), user.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut accepted = Vec::new();
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    i += 1;
                    let card = if i.is_multiple_of(7) {
                        DECLINED_CARD
                    } else {
                        GOOD_CARD
                    };
                    let country = if i.is_multiple_of(11) { "XX" } else { "DE" };
                    let body = order(&user, "DC-1", 1, card, country);
                    let key = format!("dcl-{i}");
                    // Retry with the same key while the order process is down.
                    let end = Instant::now() + Duration::from_secs(60);
                    loop {
                        match orders.try_post_with("/orders", &body, &[("idempotency-key", &key)]) {
                            Some((202, b)) => {
                                accepted.push(b["orderId"].as_str().unwrap().to_owned());
                                break;
                            }
                            Some((503, _)) | None if Instant::now() < end => {
                                std::thread::sleep(Duration::from_millis(100))
                            }
                            other => panic!("order {i}: {other:?}"),
                        }
                    }
                    std::thread::sleep(Duration::from_millis(40));
                }
                accepted
            })
        };
        let mut seed: u64 = std::process::id() as u64 * 2_654_435_761 + 1;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let start = next(services.len() as u64) as usize;
        for k in 0..kills {
            std::thread::sleep(Duration::from_millis(300 + next(900)));
            // Every service in turn, at random moments.
            let victim = services[(k + start) % services.len()];
            let port = fleet.kill(victim);
            // Restart once the broker has expired the dead member's session (6 s).
            std::thread::sleep(Duration::from_millis(REJOIN_AFTER_MS));
            fleet.spawn_on(victim, port);
            eprintln!("kill {} of {kills}: {victim}", k + 1);
        }
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let accepted = placer.join().unwrap();
        assert!(accepted.len() > 20, "only {} orders placed", accepted.len());
        let orders = fleet.client("order");
        let end = Instant::now() + Duration::from_secs(180);
        let mut pending: Vec<String> = accepted.clone();
        while !pending.is_empty() && Instant::now() < end {
            pending.retain(|id| {
                let s = orders.get(&format!("/orders/{id}")).1["status"].clone();
                s != "SHIPPED" && s != "CANCELLED"
            });
            std::thread::sleep(Duration::from_millis(200));
        }
        if !pending.is_empty() {
            for id in pending.iter().take(3) {
                eprintln!("stuck {id}: {}", orders.get(&format!("/orders/{id}")).1);
                eprintln!("  events {}", orders.get(&format!("/orders/{id}/events")).1);
                eprintln!(
                    "  payment {}",
                    fleet
                        .client("payment")
                        .get(&format!("/orders/{id}/payment"))
                        .1
                );
                eprintln!(
                    "  shipment {}",
                    fleet
                        .client("shipping")
                        .get(&format!("/orders/{id}/shipment"))
                        .1
                );
            }
            for (s, port, _) in &fleet.procs {
                let c = Client::admin(format!("http://127.0.0.1:{port}"));
                let lag = c.get("/admin/lag").1;
                eprintln!(
                    "{s}: lag {} backlog {}",
                    lag["groups"], lag["outboxBacklog"]
                );
            }
            for svc in ["payment", "inventory"] {
                let log = std::fs::read_to_string(fleet.dir.path().join(format!("{svc}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(25).collect();
                eprintln!("{svc} log (newest first):\n{}", tail.join("\n"));
            }
            panic!(
                "{} of {} orders never became final",
                pending.len(),
                accepted.len()
            );
        }
        eprintln!(
            "{} orders accepted during {kills} kills; all final",
            accepted.len()
        );
        fleet
    })
    .await;
    let dbs =
        shopflow::verify::Databases::open(fleet.dir.path(), &fleet.db.parse::<DbConfig>().unwrap())
            .await
            .unwrap();
    // Orders are final; let the rest (notifications, stock settlement) drain, then every
    // invariant must hold.
    let end = Instant::now() + Duration::from_secs(180);
    let report = loop {
        let report = shopflow::verify::verify(&dbs, true).await.unwrap();
        if report.ok() || Instant::now() > end {
            break report;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(report.ok(), "{:?}", report.violations);
    drop(fleet);
    drop_schemas(&url, &prefix).await;
}
