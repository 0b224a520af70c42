//! The migration story of docs/MIGRATING.md, end to end: a legacy monolith (examples/legacy-shop)
//! on PostgreSQL; change data capture carries its back office's catalog and stock into the
//! inventory; the strangler-fig gateway starts with every route on `legacy`, moves
//! `GET /products` to `shadow` and then `new`, and finally `POST /orders` to `new` — while a
//! client keeps ordering through the gateway. No order fails, the stock books agree with the
//! legacy table, and `verify` is clean.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Client, GOOD_CARD, blocking, order, verify_settled, wait_until};
use serde_json::{Value, json};
use shopflow::shop::{Shop, ShopConfig};

const SKUS: [&str; 3] = ["MIG-KETTLE", "MIG-MUG", "MIG-TEAPOT"];

async fn sql(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

async fn drop_all(c: &tokio_postgres::Client, schema: &str) {
    for _ in 0..100 {
        let _ = c
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                &[&schema],
            )
            .await;
        if c.query(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&schema],
        )
        .await
        .unwrap()
        .is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.batch_execute(&format!(
        "DROP PUBLICATION IF EXISTS {schema}_pub; DROP SCHEMA IF EXISTS {schema} CASCADE;"
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_monolith_is_strangled_route_by_route_without_losing_an_order() {
    let Some(url) = shopflow_store::test_postgres_url("the migration story") else {
        return;
    };
    let schema = format!("legacy_mig{}", std::process::id());
    let db = sql(&url).await;
    common::drop_stale_slots(&db).await;
    drop_all(&db, &schema).await;

    // The monolith, with its back office's catalog.
    let legacy = legacy_shop::Legacy::connect(&url, &schema).await.unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let legacy_addr = l.local_addr().unwrap();
    let router = legacy.router();
    tokio::spawn(async move { axum::serve(l, router).await.unwrap() });
    for (i, sku) in SKUS.iter().enumerate() {
        db.batch_execute(&format!(
            "INSERT INTO {schema}.products (sku, name, price_cents) VALUES ('{sku}', 'Legacy {sku}', {});
             INSERT INTO {schema}.stock (sku, quantity) VALUES ('{sku}', 400);",
            1000 + i * 100
        ))
        .await
        .unwrap();
    }
    db.batch_execute(&format!(
        "CREATE PUBLICATION {schema}_pub FOR TABLE {schema}.products, {schema}.stock"
    ))
    .await
    .unwrap();

    // The shop: change data capture from the monolith, the inventory following its catalog,
    // the gateway in front of both with every route on legacy.
    let dir = tempfile::tempdir().unwrap();
    let routes = shopflow_gateway::RoutesFile::parse(&format!(
        r#"
        [legacy]
        url = "http://{legacy_addr}"
        [new]
        url = "http://127.0.0.1:1"
        [[route]]
        methods = ["GET"]
        path = "/products"
        target = "legacy"
        ignore = ["reserved", "shipped"]
        [[route]]
        methods = ["GET"]
        path = "/products/{{sku}}"
        target = "legacy"
        ignore = ["reserved", "shipped"]
        [[route]]
        methods = ["POST"]
        path = "/orders"
        target = "legacy"
        [[route]]
        methods = ["POST"]
        path = "/users"
        target = "new"
        "#
    ))
    .unwrap();
    let mut cdc = shopflow_cdc::Config::new(&url, format!("{schema}_pub"), &schema);
    cdc.lag_every = Duration::from_millis(500);
    let cfg = ShopConfig {
        cdc: Some(cdc),
        legacy_catalog: Some(format!("cdc.{schema}")),
        gateway: Some((routes, "127.0.0.1:0".parse().unwrap())),
        ..ShopConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap())
    };
    let shop = Shop::start(cfg).await.unwrap();
    let token = shop.admin_token.as_str().to_owned();
    let gw = Client::new(format!("http://{}", shop.gateway_addr.unwrap())).with_token(&token);
    let new = Client::new(format!("http://{}", shop.addr)).with_token(&token);

    // The catalog arrives through CDC.
    let n = new.clone();
    blocking(move || {
        wait_until("the legacy catalog in the inventory", || {
            let (_, b) = n.get("/products");
            b.as_array()
                .is_some_and(|a| a.len() == 3 && a.iter().all(|p| p["available"] == 400))
        })
    })
    .await;

    // A customer of the new shop (POST /users is new from the start), and a client that keeps
    // ordering through the gateway across every switch.
    let g = gw.clone();
    let customer = blocking(move || g.register("ada@example.com", None)).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let results: Arc<Mutex<Vec<(u16, Value)>>> = Arc::default();
    let load = {
        let (g, stop, results, customer) =
            (gw.clone(), stop.clone(), results.clone(), customer.clone());
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sku = SKUS[i % 3];
                i += 1;
                let r = g.place(&order(&customer, sku, 1, GOOD_CARD, "GB"), &[]);
                results.lock().unwrap().push(r);
                std::thread::sleep(Duration::from_millis(25));
            }
        })
    };
    let pause = || tokio::time::sleep(Duration::from_millis(1500));
    let switch = |method: &str, path: &str, to: &str, serve: Option<&str>| {
        let g = gw.clone();
        let body = json!({"method": method, "path": path, "to": to, "serve": serve});
        async move {
            let (s, b) =
                blocking(move || g.send("PUT", "/admin/gateway/routes", &body.to_string(), &[]))
                    .await;
            assert_eq!(s, 200, "switch: {b}");
            b
        }
    };

    // 1. Everything on legacy; the back office restocks.
    pause().await;
    db.batch_execute(&format!(
        "UPDATE {schema}.stock SET quantity = quantity + 100 WHERE sku = 'MIG-MUG'"
    ))
    .await
    .unwrap();
    // 2. The catalog in shadow: legacy answers, the shop's answer is compared.
    let b = switch("GET", "/products", "shadow", Some("legacy")).await;
    assert_eq!(
        (b["from"].as_str(), b["to"].as_str()),
        (Some("legacy"), Some("shadow"))
    );
    for _ in 0..5 {
        let (s, b) = blocking({
            let g = gw.clone();
            move || g.get("/products")
        })
        .await;
        assert_eq!(s, 200);
        assert_eq!(b.as_array().unwrap().len(), 3);
    }
    pause().await;
    // 3. The catalog from the shop.
    switch("GET", "/products", "new", None).await;
    switch("GET", "/products/{sku}", "new", None).await;
    let (s, b) = blocking({
        let g = gw.clone();
        move || g.get("/products/MIG-MUG")
    })
    .await;
    assert_eq!(s, 200);
    assert!(b.get("reserved").is_some(), "served by the shop now: {b}");
    pause().await;
    // 4. Orders to the shop; the back office keeps restocking the legacy tables.
    switch("POST", "/orders", "new", None).await;
    pause().await;
    db.batch_execute(&format!(
        "UPDATE {schema}.stock SET quantity = quantity + 25 WHERE sku = 'MIG-KETTLE'"
    ))
    .await
    .unwrap();
    pause().await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();

    // No order failed at any step; both systems took some.
    let results = results.lock().unwrap().clone();
    let failed: Vec<_> = results.iter().filter(|(s, _)| *s != 202).collect();
    assert!(
        failed.is_empty(),
        "orders failed during the migration: {failed:?}"
    );
    let legacy_orders = results
        .iter()
        .filter(|(_, b)| b["status"] == "CONFIRMED")
        .count();
    let shop_orders: Vec<String> = results
        .iter()
        .filter(|(_, b)| b["status"] == "PENDING")
        .map(|(_, b)| b["orderId"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        legacy_orders > 10 && shop_orders.len() > 10,
        "legacy {legacy_orders}, shop {}",
        shop_orders.len()
    );
    let n = new.clone();
    let orders = shop_orders.clone();
    blocking(move || {
        for o in &orders {
            assert_eq!(n.wait_final(o)["status"], "SHIPPED", "order {o}");
        }
    })
    .await;

    // The stock books agree: per SKU, what the shop holds (available + reserved + shipped) is
    // the legacy table's quantity, which counts legacy orders and restocking.
    let expected: Vec<(String, i64)> = common::legacy_stock(&db, &schema).await;
    let n = new.clone();
    blocking(move || {
        wait_until("the inventory to agree with the legacy stock", || {
            common::legacy_books_agree(&n, &expected)
        })
    })
    .await;
    // The switches are on record.
    let (s, routes) = blocking({
        let g = gw.clone();
        move || g.get("/admin/gateway/routes")
    })
    .await;
    assert_eq!(s, 200);
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["target"] == "new"),
        "{routes}"
    );
    let (s, _) = blocking({
        let g = gw.clone();
        move || g.get("/admin/gateway/differences?limit=10")
    })
    .await;
    assert_eq!(s, 200);
    let (s, _) = blocking({
        let g = Client::new(gw.base.clone());
        move || g.get("/admin/gateway/routes")
    })
    .await;
    assert_eq!(s, 401, "the gateway's admin API needs the token");

    // Each switch is a RouteSwitched system event on the bus.
    {
        use shopflow_bus::Bus;
        use shopflow_envelope::Event;
        let topic = shopflow_runtime::system::RouteSwitched::topic();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut n = 0;
            for p in 0..4 {
                let (start, end) = shop
                    .log
                    .watermarks(&shopflow_bus::TopicPartition::new(topic.as_str(), p))
                    .await
                    .unwrap();
                n += end - start;
            }
            if n == 4 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{n} RouteSwitched events, not 4"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    shop.stop().await.unwrap();
    let out = verify_settled(dir.path());
    assert!(
        out.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop_all(&db, &schema).await;
}
