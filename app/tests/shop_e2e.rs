//! End to end through the HTTP API of a running shop (in this process, on real sockets).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Client, DECLINED_CARD, GOOD_CARD, blocking, order};
use serde_json::{Value, json};
use shopflow::shop::{Shop, ShopConfig};

async fn start() -> (Shop, Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::start(ShopConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let client = Client::new(format!("http://{}", shop.addr)).with_token(shop.admin_token.as_str());
    (shop, client, dir)
}

fn count_by(notifications: &Value, event_type: &str, channel: &str) -> usize {
    notifications
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["eventType"] == event_type && n["channel"] == channel)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_ships_with_one_confirmation_and_one_shipping_email() {
    let (shop, c, _dir) = start().await;
    let dir = _dir.path().to_owned();
    blocking(move || {
        c.put_product("MUG", 1299, 25);
        let user = c.register("ada@example.com", None);
        let id = c.place_ok(&order(&user, "MUG", 2, GOOD_CARD, "DE"));
        let o = c.wait_final(&id);
        assert_eq!(o["status"], "SHIPPED", "{o}");
        assert_eq!(o["totalMinor"], 2598);
        assert_eq!(o["currency"], "EUR");
        assert_eq!(
            o["items"][0]["unitPriceMinor"], 1299,
            "price from the catalog, not the client"
        );
        assert!(o["trackingNumber"].is_string());
        assert!(
            o["projection"]["behindEvents"].as_u64().is_some(),
            "freshness is reported: {o}"
        );

        let (_, p) = c.get("/products/MUG");
        assert_eq!(
            (
                p["available"].as_i64(),
                p["reserved"].as_i64(),
                p["shipped"].as_i64()
            ),
            (Some(23), Some(0), Some(2))
        );
        let (_, pay) = c.get(&format!("/orders/{id}/payment"));
        assert_eq!(pay["status"], "COMPLETED");
        let (_, ship) = c.get(&format!("/orders/{id}/shipment"));
        assert_eq!(ship["status"], "SHIPPED");

        // Exactly one confirmation and one shipping e-mail (notifications may trail the order).
        let mut n = Value::Null;
        for _ in 0..250 {
            n = c.get(&format!("/orders/{id}/notifications")).1;
            if n.as_array().is_some_and(|a| a.len() >= 2) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(count_by(&n, "OrderCreated", "email"), 1, "{n}");
        assert_eq!(count_by(&n, "OrderShipped", "email"), 1, "{n}");
        assert_eq!(
            n.as_array().unwrap().len(),
            2,
            "no SMS without a phone: {n}"
        );
        for m in n.as_array().unwrap() {
            let eml = shopflow_notification::read_spooled(m["location"].as_str().unwrap()).unwrap();
            assert!(
                eml.starts_with("From: ")
                    && eml.contains("\nTo: ada@example.com\n")
                    && eml.contains("\nSubject: "),
                "{eml}"
            );
            assert!(
                m["location"]
                    .as_str()
                    .unwrap()
                    .starts_with(dir.join("mail").to_str().unwrap())
            );
        }

        // The audit trail and time travel.
        let (s, events) = c.get(&format!("/orders/{id}/events"));
        assert_eq!(s, 200);
        let types: Vec<&str> = events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["eventType"].as_str().unwrap())
            .collect();
        // Outcomes travel on different topics, so they may reach the order service in any
        // order; every fact is recorded once whatever the order: the stream starts with the
        // creation and holds the payment, the reservation and the shipment, once each.
        assert_eq!(types.first(), Some(&"OrderCreated"), "{types:?}");
        let mut sorted = types.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            [
                "OrderCompleted",
                "OrderCreated",
                "OrderPaid",
                "OrderReserved"
            ],
            "{types:?}"
        );
        let (_, now) = c.get(&format!("/orders/{id}"));
        for field in ["paymentId", "trackingNumber", "carrier"] {
            assert!(now[field].is_string(), "{field} missing: {now}");
        }
        let (_, v1) = c.get(&format!("/orders/{id}?version=1"));
        assert_eq!(v1["status"], "PENDING");
        assert_eq!(v1["source"], "event-store");
        // Time travel: one version before the last, the status the facts up to it lead to.
        let before_last = types.len() - 1;
        let (_, prev) = c.get(&format!("/orders/{id}?version={before_last}"));
        let facts = &types[..before_last];
        let status_before_last = if facts.contains(&"OrderCompleted") {
            "SHIPPED"
        } else if facts.contains(&"OrderReserved") {
            "RESERVED"
        } else if facts.contains(&"OrderPaid") {
            "PAID"
        } else {
            "PENDING"
        };
        assert_eq!(prev["status"], status_before_last, "{types:?} {prev}");
        let created_at = events[0]["timestamp"].as_str().unwrap();
        let (_, at) = c.get(&format!(
            "/orders/{id}?at={}",
            created_at.replace('+', "%2B")
        ));
        assert_eq!(at["version"], 1, "{at}");
        let (s, _) = c.get(&format!("/orders/{id}?at=2000-01-01T00:00:00Z"));
        assert_eq!(s, 404, "the order did not exist yet");

        // The list endpoint reads the projection.
        let (_, page) = c.get(&format!("/orders?status=SHIPPED&customerId={user}"));
        assert_eq!(page["orders"].as_array().unwrap().len(), 1);
    })
    .await;
    shop.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_card_cancels_the_order() {
    let (shop, c, _dir) = start().await;
    blocking(move || {
        c.put_product("CAP", 900, 10);
        let user = c.register("bob@example.com", Some("+4915112345678"));
        let id = c.place_ok(&order(&user, "CAP", 1, DECLINED_CARD, "DE"));
        let o = c.wait_final(&id);
        assert_eq!(o["status"], "CANCELLED");
        assert!(
            o["cancelReason"]
                .as_str()
                .unwrap()
                .contains("card_declined"),
            "{o}"
        );
        assert_eq!(
            c.get(&format!("/orders/{id}/payment")).1["status"],
            "FAILED"
        );
        assert_eq!(c.get("/products/CAP").1["available"], 10, "stock untouched");
        let (s, _) = c.get(&format!("/orders/{id}/shipment"));
        assert_eq!(s, 404);
    })
    .await;
    shop.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_stock_refunds_and_cancels() {
    let (shop, c, _dir) = start().await;
    blocking(move || {
        c.put_product("RARE", 5000, 1);
        let user = c.register("cy@example.com", None);
        let id = c.place_ok(&order(&user, "RARE", 2, GOOD_CARD, "DE"));
        let o = c.wait_final(&id);
        assert_eq!(o["status"], "CANCELLED");
        assert!(
            o["cancelReason"].as_str().unwrap().contains("out of stock"),
            "{o}"
        );
        let pay = c.get(&format!("/orders/{id}/payment")).1;
        assert_eq!(pay["status"], "REFUNDED", "{pay}");
        let p = c.get("/products/RARE").1;
        assert_eq!(
            (p["available"].as_i64(), p["reserved"].as_i64()),
            (Some(1), Some(0))
        );
    })
    .await;
    shop.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_country_releases_stock_and_refunds() {
    let (shop, c, _dir) = start().await;
    blocking(move || {
        c.put_product("LAMP", 4500, 5);
        let user = c.register("di@example.com", None);
        let id = c.place_ok(&order(&user, "LAMP", 2, GOOD_CARD, "XX"));
        let o = c.wait_final(&id);
        assert_eq!(o["status"], "CANCELLED");
        assert!(
            o["cancelReason"]
                .as_str()
                .unwrap()
                .contains("shipment failed"),
            "{o}"
        );
        assert_eq!(
            c.get(&format!("/orders/{id}/payment")).1["status"],
            "REFUNDED"
        );
        assert_eq!(
            c.get(&format!("/orders/{id}/shipment")).1["status"],
            "FAILED"
        );
        // Released stock may trail the cancellation by a hop.
        let mut p = Value::Null;
        for _ in 0..250 {
            p = c.get("/products/LAMP").1;
            if p["available"] == 5 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            (
                p["available"].as_i64(),
                p["reserved"].as_i64(),
                p["shipped"].as_i64()
            ),
            (Some(5), Some(0), Some(0)),
            "{p}"
        );
    })
    .await;
    shop.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_orders_for_the_last_units_never_oversell() {
    let (shop, c, _dir) = start().await;
    blocking(move || {
        c.put_product("LAST", 100, 3);
        let user = c.register("eve@example.com", None);
        let warm_up = c.place_ok(&order(&user, "LAST", 1, GOOD_CARD, "DE")); // also warms the catalog copy
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                let user = user.clone();
                std::thread::spawn(move || c.place_ok(&order(&user, "LAST", 1, GOOD_CARD, "DE")))
            })
            .collect();
        let ids: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let mut outcomes: HashMap<String, usize> = HashMap::new();
        let mut refunded = 0;
        let mut ids_all = ids.clone();
        ids_all.push(warm_up);
        for id in &ids_all {
            let o = c.wait_final(id);
            *outcomes
                .entry(o["status"].as_str().unwrap().to_owned())
                .or_default() += 1;
            if o["status"] == "CANCELLED" {
                assert_eq!(
                    c.get(&format!("/orders/{id}/payment")).1["status"],
                    "REFUNDED",
                    "losers are refunded"
                );
                refunded += 1;
            }
        }
        assert_eq!(ids_all.len(), 9);
        assert_eq!(outcomes.get("SHIPPED"), Some(&3), "{outcomes:?}");
        assert_eq!(outcomes.get("CANCELLED"), Some(&6), "{outcomes:?}");
        assert_eq!(refunded, 6);
        let p = c.get("/products/LAST").1;
        assert_eq!(
            (
                p["available"].as_i64(),
                p["reserved"].as_i64(),
                p["shipped"].as_i64()
            ),
            (Some(0), Some(0), Some(3)),
            "{p}"
        );
    })
    .await;
    shop.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_gives_the_same_order() {
    let (shop, c, _dir) = start().await;
    blocking(move || {
        c.put_product("PEN", 250, 100);
        let user = c.register("fay@example.com", None);
        let body = order(&user, "PEN", 3, GOOD_CARD, "DE");
        let (s1, a) = c.place(&body, &[("Idempotency-Key", "checkout-42")]);
        let (s2, b) = c.place(&body, &[("Idempotency-Key", "checkout-42")]);
        assert_eq!((s1, s2), (202, 202));
        assert_eq!(a["orderId"], b["orderId"], "same key, same order");
        let (s3, e) = c.place(
            &order(&user, "PEN", 4, GOOD_CARD, "DE"),
            &[("Idempotency-Key", "checkout-42")],
        );
        assert_eq!(s3, 422, "{e}");
        assert_eq!(e["code"], "idempotency_key_reused");
        c.wait_final(a["orderId"].as_str().unwrap());
        let (_, page) = c.get(&format!("/orders?customerId={user}"));
        assert_eq!(
            page["orders"].as_array().unwrap().len(),
            1,
            "no second order"
        );
        assert_eq!(c.get("/products/PEN").1["shipped"], 3);
    })
    .await;
    shop.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_4xx_never_5xx() {
    let (shop, c, _dir) = start().await;
    blocking(move || {
        c.put_product("OK", 100, 10);
        let user = c.register("gil@example.com", None);
        let good = order(&user, "OK", 1, GOOD_CARD, "DE");
        assert_eq!(c.place(&good, &[]).0, 202);
        let cases: Vec<(&str, String, u16)> = vec![
            ("malformed JSON", "{\"customerId\": ".into(), 400),
            (
                "wrong type",
                json!({"customerId": 5, "items": [], "payment": {}, "shippingAddress": {}})
                    .to_string(),
                422,
            ),
            (
                "missing field",
                json!({"customerId": user}).to_string(),
                422,
            ),
            (
                "unknown field",
                {
                    let mut b = good.clone();
                    b["extra"] = json!(1);
                    b.to_string()
                },
                422,
            ),
            (
                "zero quantity",
                order(&user, "OK", 0, GOOD_CARD, "DE").to_string(),
                422,
            ),
            (
                "NUL in the address",
                {
                    let mut b = good.clone();
                    b["shippingAddress"]["name"] = json!("Ada\u{0}Lovelace");
                    b.to_string()
                },
                422,
            ),
            (
                "a right-to-left override in the address",
                {
                    let mut b = good.clone();
                    b["shippingAddress"]["line1"] = json!("1 Main St\u{202E}gpj.exe");
                    b.to_string()
                },
                422,
            ),
            (
                "a city of zero-width spaces",
                {
                    let mut b = good.clone();
                    b["shippingAddress"]["city"] = json!("\u{200B}\u{200B}");
                    b.to_string()
                },
                422,
            ),
            (
                "negative quantity",
                order(&user, "OK", -3, GOOD_CARD, "DE").to_string(),
                422,
            ),
            (
                "absurd quantity",
                order(&user, "OK", 1_000_000_000_000, GOOD_CARD, "DE").to_string(),
                422,
            ),
            (
                "unknown sku",
                order(&user, "NOPE", 1, GOOD_CARD, "DE").to_string(),
                422,
            ),
            (
                "invalid card",
                order(&user, "OK", 1, "1234", "DE").to_string(),
                422,
            ),
            (
                "bad country",
                order(&user, "OK", 1, GOOD_CARD, "Germany").to_string(),
                422,
            ),
            (
                "empty items",
                {
                    let mut b = good.clone();
                    b["items"] = json!([]);
                    b.to_string()
                },
                422,
            ),
            (
                "bad customer id",
                order("../etc/passwd", "OK", 1, GOOD_CARD, "DE").to_string(),
                422,
            ),
            (
                "unknown customer",
                order("usr_nobody", "OK", 1, GOOD_CARD, "DE").to_string(),
                422,
            ),
        ];
        for (name, body, want) in cases {
            let (s, b) = c.send("POST", "/orders", &body, &[]);
            assert_eq!(s, want, "{name}: {b}");
            assert!(
                b["code"].is_string() && b["message"].is_string(),
                "{name}: error body {b}"
            );
        }
        // A body over the 64 KiB limit is refused with 413. Sent raw and small enough to sit in the
        // socket buffers, so the client never writes into a connection the server gave up on.
        {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(c.base.trim_start_matches("http://")).unwrap();
            let body = format!("{{\"customerId\": \"{}\"}}", "x".repeat(70_000));
            let head = format!("POST /orders HTTP/1.1\r\nHost: shop\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(body.as_bytes()).unwrap();
            // Read until the JSON error body has arrived (the server need not close the socket).
            s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
            let mut resp = String::new();
            let mut buf = [0u8; 4096];
            while !resp.contains("body_too_large") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => resp.push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
            assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
            assert!(resp.contains("\"code\":\"body_too_large\""), "{resp}");
        }
        let bad_products = [
            json!({"name": "x", "priceMinor": -1, "currency": "EUR", "stock": 1}),
            json!({"name": "x", "priceMinor": 0, "currency": "EUR", "stock": 1}),
            json!({"name": "x", "priceMinor": 1, "currency": "euro", "stock": 1}),
            json!({"name": "x", "priceMinor": 1, "currency": "EUR", "stock": -5}),
            json!({"name": "", "priceMinor": 1, "currency": "EUR", "stock": 1}),
            json!({"name": "x", "priceMinor": 1.5, "currency": "EUR", "stock": 1}),
        ];
        for p in bad_products {
            let (s, b) = c.send("PUT", "/products/SKU1", &p.to_string(), &[]);
            assert_eq!(s, 422, "{p}: {b}");
        }
        assert_eq!(
            c.send(
                "PUT",
                "/products/bad%20sku%21",
                &json!({"name": "x", "priceMinor": 1, "currency": "EUR", "stock": 1}).to_string(),
                &[]
            )
            .0,
            422
        );
        assert_eq!(
            c.post(
                "/users",
                &json!({"email": "not-an-email", "name": "x"}),
                &[]
            )
            .0,
            422
        );
        assert_eq!(
            c.post(
                "/users",
                &json!({"email": "gil@example.com", "name": "again"}),
                &[]
            )
            .0,
            409
        );
        // Reasons an operator gives are text too.
        for path in ["/admin/dlq/x:0:0/discard", "/sagas/ord_x/cancel"] {
            let (s, b) = c.post(path, &json!({"reason": "gone\u{202E}txt"}), &[]);
            assert_eq!(s, 422, "{path}: {b}");
        }
        for name in ["\u{202E}nimda", "Gil\0", "\u{200B}", "a\nb"] {
            let (s, b) = c.post(
                "/users",
                &json!({"email": "gil2@example.com", "name": name}),
                &[],
            );
            assert_eq!(s, 422, "name {name:?}: {b}");
            let (s, b) = c.send(
                "PUT",
                "/products/NAMED",
                &json!({"name": name, "priceMinor": 1, "currency": "EUR", "stock": 1}).to_string(),
                &[],
            );
            assert_eq!(s, 422, "product name {name:?}: {b}");
        }
        assert_eq!(c.get("/orders/ord_doesnotexist").0, 404);
        assert_eq!(c.get("/orders/x?version=abc").0, 400);
        assert_eq!(c.get("/orders?status=LOST").0, 422);
        assert_eq!(c.get("/no/such/route").0, 404);
        let (s, doc) = c.get("/openapi.json");
        assert_eq!(s, 200);
        for path in [
            "/orders",
            "/orders/{id}",
            "/products/{sku}",
            "/users",
            "/orders/{id}/events",
            "/admin/dlq",
            "/admin/dlq/{id}/redrive",
            "/admin/lag",
            "/metrics",
            "/sagas",
            "/sagas/{id}/cancel",
        ] {
            assert!(doc["paths"][path].is_object(), "OpenAPI lacks {path}");
        }
        assert_eq!(c.get("/health").1["status"], "ok");
    })
    .await;
    shop.stop().await.unwrap();
}

/// Publishes every record of every shop topic a second time, then checks that nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_redelivered_changes_nothing() {
    let (shop, c, _dir) = start().await;
    let c2 = c.clone();
    let ids = blocking(move || {
        c2.put_product("DUP", 700, 4);
        let user = c2.register("hal@example.com", Some("+4915112345670"));
        let ids = vec![
            c2.place_ok(&order(&user, "DUP", 1, GOOD_CARD, "DE")),
            c2.place_ok(&order(&user, "DUP", 1, DECLINED_CARD, "DE")),
            c2.place_ok(&order(&user, "DUP", 9, GOOD_CARD, "DE")),
            c2.place_ok(&order(&user, "DUP", 1, GOOD_CARD, "XX")),
        ];
        for id in &ids {
            c2.wait_final(id);
        }
        ids
    })
    .await;
    common::settle(&shop).await;
    let snapshot = |c: Client, ids: Vec<String>| {
        blocking(move || {
            let mut s = Vec::new();
            for id in &ids {
                let o = c.get(&format!("/orders/{id}")).1;
                s.push(json!([
                    o["status"],
                    o["version"],
                    c.get(&format!("/orders/{id}/payment")).1,
                    c.get(&format!("/orders/{id}/notifications"))
                        .1
                        .as_array()
                        .map(|a| a.len())
                ]));
            }
            s.push(c.get("/products/DUP").1);
            s
        })
    };
    let before = snapshot(c.clone(), ids.clone()).await;

    // Redeliver everything.
    let republished = common::redeliver_everything(&shop, shopflow_contracts::topics()).await;
    assert!(republished > 20, "republished {republished}");
    common::settle(&shop).await;
    let after = snapshot(c.clone(), ids).await;
    assert_eq!(before, after, "redelivered events changed state");
    let report = shopflow::verify::verify(&shop.databases(), true)
        .await
        .unwrap();
    assert!(report.ok(), "{:?}", report.violations);
    assert_eq!(report.orders, 4);

    // verify is not a rubber stamp: tamper with the stock and it says so, naming the sku.
    let inventory = shop.db("inventory").unwrap().clone();
    let mut tx = inventory.begin().await.unwrap();
    tx.execute(
        "UPDATE products SET shipped = shipped + 1 WHERE sku = 'DUP'",
        &[],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let report = shopflow::verify::verify(&shop.databases(), true)
        .await
        .unwrap();
    assert!(!report.ok());
    assert!(
        report.violations.iter().any(|v| v.contains("sku DUP")),
        "{:?}",
        report.violations
    );
    shop.stop().await.unwrap();
}

/// `shopflow projections rebuild orders` (its endpoint) while orders keep flowing: the read model
/// afterwards equals a fold of the event store for every order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_model_rebuilds_while_serving() {
    let (shop, c, _dir) = start().await;
    blocking(move || {
        c.put_product("RB", 100, 10_000);
        let user = c.register("rb@example.com", None);
        let first: Vec<String> = (0..20)
            .map(|i| c.place_ok(&order(&user, "RB", 1 + i % 2, GOOD_CARD, "DE")))
            .collect();
        for id in &first {
            c.wait_final(id);
        }
        // Keep placing while the rebuild runs.
        let placer = {
            let c = c.clone();
            let user = user.clone();
            std::thread::spawn(move || {
                (0..20)
                    .map(|_| c.place_ok(&order(&user, "RB", 1, GOOD_CARD, "DE")))
                    .collect::<Vec<_>>()
            })
        };
        let (s, r) = c.post("/admin/projections/orders/rebuild", &json!({}), &[]);
        assert_eq!(s, 200, "{r}");
        // OrderCreated, OrderPaid, OrderReserved and OrderCompleted for each shipped order
        // (and more for those placed while it runs).
        assert!(r["replayedEvents"].as_u64().unwrap() >= 80, "{r}");
        let more = placer.join().unwrap();
        for id in first.iter().chain(&more) {
            let o = c.wait_final(id);
            let (_, folded) = c.get(&format!("/orders/{id}?version=1000"));
            assert_eq!(o["status"], folded["status"], "{id}");
            assert_eq!(o["version"], folded["version"], "{id}");
        }
        let (_, page) = c.get(&format!("/orders?customerId={user}&limit=500"));
        assert_eq!(page["orders"].as_array().unwrap().len(), 40);
    })
    .await;
    shop.stop().await.unwrap();
}

/// The payment gateway goes down: its circuit breaker opens, orders wait (the payment consumer
/// pauses; nothing is dead-lettered or cancelled) and complete once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_outage_delays_orders_but_loses_none() {
    let (shop, c, _dir) = start().await;
    blocking(move || {
        c.put_product("OUT", 300, 100);
        let user = c.register("ola@example.com", None);
        let (s, b) = c.send("PUT", "/admin/payment-gateway", r#"{"outage": true}"#, &[]);
        assert_eq!(s, 200, "{b}");
        let ids: Vec<String> = (0..5)
            .map(|_| c.place_ok(&order(&user, "OUT", 1, GOOD_CARD, "DE")))
            .collect();
        // The breaker opens: the payment consumer pauses instead of burning retries.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, b) = c.get("/admin/breakers");
            if b[0]["name"] == "payment-gateway" && b[0]["state"] != "closed" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "breaker never opened: {b}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(700));
        for id in &ids {
            assert_eq!(
                c.get(&format!("/orders/{id}")).1["status"],
                "PENDING",
                "charged during the outage"
            );
        }
        let (s, _) = c.send("PUT", "/admin/payment-gateway", r#"{"outage": false}"#, &[]);
        assert_eq!(s, 200);
        for id in &ids {
            assert_eq!(c.wait_final(id)["status"], "SHIPPED");
            assert_eq!(
                c.get(&format!("/orders/{id}/payment")).1["status"],
                "COMPLETED"
            );
        }
        let (_, dlq) = c.get("/admin/dlq?status=all");
        assert_eq!(
            dlq["deadLetters"],
            json!([]),
            "nothing dead-lettered because of the outage"
        );
        assert_eq!(
            c.send(
                "PUT",
                "/admin/payment-gateway",
                r#"{"outage": "maybe"}"#,
                &[]
            )
            .0,
            422
        );
    })
    .await;
    shop.stop().await.unwrap();
}
