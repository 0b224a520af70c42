//! The on-call surface of a running shop, end to end over HTTP: dead letters from exhausted
//! retries and from poison on the bus, their redrive (effects once), lag and metrics.

mod common;

use std::time::{Duration, Instant};

use common::{Client, GOOD_CARD, blocking, give_up_fast, order, wait_until};
use serde_json::{Value, json};
use shopflow::shop::{Shop, ShopConfig};
use shopflow_bus::{Bus, Message};
use shopflow_runtime::BreakerConfig;

async fn start(tune: impl FnOnce(&mut ShopConfig)) -> (Shop, Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ShopConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    tune(&mut config);
    let shop = Shop::start(config).await.unwrap();
    let client = Client::new(format!("http://{}", shop.addr)).with_token(shop.admin_token.as_str());
    (shop, client, dir)
}

fn dead_letters(c: &Client, query: &str) -> Vec<Value> {
    let (s, v) = c.get(&format!("/admin/dlq?{query}"));
    assert_eq!(s, 200, "{v}");
    v["deadLetters"].as_array().unwrap().clone()
}

/// How many e-mails the spool holds (the `From ` lines that start messages in its mbox files).
fn spooled_mails(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("mail"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .map(|text| text.lines().filter(|l| l.starts_with("From ")).count())
                .sum()
        })
        .unwrap_or(0)
}

/// Delivery fails (the mail spool is not a directory) with a breaker that never opens: after
/// two attempts each welcome mail is dead-lettered. Once the spool is fixed, a redrive sends
/// each exactly once, and a second redrive sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_are_dead_lettered_and_redriven_once() {
    let (shop, c, dir) = start(give_up_fast).await;
    let data = dir.path().to_owned();
    blocking(move || {
        let mail = data.join("mail");
        let _ = std::fs::remove_dir_all(&mail);
        std::fs::write(&mail, b"not a directory").unwrap();
        c.register("ann@example.com", None);
        c.register("bob@example.com", None);
        wait_until("two dead letters of notification", || {
            dead_letters(&c, "consumer=notification").len() == 2
        });
        let letters = dead_letters(&c, "consumer=notification&eventType=UserRegistered");
        assert_eq!(letters.len(), 2);
        for l in &letters {
            assert_eq!(l["status"], "open");
            assert_eq!(l["attempts"], 2);
            assert_eq!(l["originalTopic"], "users.user-registered");
            let e = l["error"].as_str().unwrap();
            assert!(
                e.contains("gave up after 2 attempts") && e.contains("delivery failed"),
                "{e}"
            );
            assert!(l["correlationId"].is_string());
        }
        let id = letters[0]["id"].as_str().unwrap().to_owned();
        let (s, detail) = c.get(&format!("/admin/dlq/{id}"));
        assert_eq!(s, 200);
        assert_eq!(detail["payload"]["eventType"], "UserRegistered");
        assert!(detail["headers"]["dlq-first-failed-at"].is_string());

        // Bad operator input is a clear 4xx.
        assert_eq!(c.get("/admin/dlq?status=weird").0, 400);
        assert_eq!(c.get("/admin/dlq?limit=-1").0, 400);
        assert_eq!(c.get("/admin/dlq/users.user-registered.dlq:9:999").0, 404);
        assert_eq!(
            c.send("POST", &format!("/admin/dlq/{id}/discard"), "{}", &[])
                .0,
            422
        );
        assert_eq!(
            c.send(
                "POST",
                &format!("/admin/dlq/{id}/discard"),
                r#"{"reason": " "}"#,
                &[]
            )
            .0,
            400
        );

        // Fix the spool and redrive every open dead letter of the notification consumer.
        std::fs::remove_file(&mail).unwrap();
        let (s, r) = c.send(
            "POST",
            "/admin/dlq/redrive",
            r#"{"consumer": "notification"}"#,
            &[],
        );
        assert_eq!(s, 200, "{r}");
        assert_eq!(r["redriven"].as_array().unwrap().len(), 2);
        wait_until("both welcome mails", || spooled_mails(&data) == 2);
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            spooled_mails(&data),
            2,
            "each redriven mail sent exactly once"
        );
        // A second redrive of the same dead letter sends nothing.
        let (s, again) = c.send("POST", &format!("/admin/dlq/{id}/redrive"), "", &[]);
        assert_eq!(s, 200, "{again}");
        assert_eq!(again["redriven"][0]["alreadyRedriven"], true, "{again}");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(spooled_mails(&data), 2, "still each mail once");
        assert_eq!(dead_letters(&c, "status=redriven").len(), 2);
        let open = dead_letters(&c, "");
        assert!(open.is_empty(), "nothing open any more: {open:#?}");
    })
    .await;
    shop.stop().await.unwrap();
}

/// Records on `orders.order-created` that are not JSON, not an envelope, of an unknown type, of
/// an unsupported version, and a known event whose data does not decode: each consumer of the
/// topic (payment, notification) dead-letters each with its reason, and real orders around
/// them complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_on_the_bus_is_dead_lettered_while_orders_flow() {
    let (shop, c, _dir) = start(|_| {}).await;
    let c2 = c.clone();
    let (user, first) = blocking(move || {
        c2.put_product("P1", 500, 100);
        let user = c2.register("pat@example.com", None);
        let first = c2.place_ok(&order(&user, "P1", 1, GOOD_CARD, "DE"));
        (user, first)
    })
    .await;
    let envelope = |ty: &str, version: u32, data: Value| {
        json!({
            "eventId": "0190d4c2-7f0a-7cc3-9a1b-2a6b9d5e8f01",
            "eventType": ty, "eventVersion": version, "timestamp": "2026-11-24T10:00:00Z",
            "data": data, "aggregateId": "poison", "sequence": 1,
            "correlationId": "poison-test", "causationId": null, "source": "test", "kind": "integration"
        })
        .to_string()
    };
    let topic = "orders.order-created";
    shop.log
        .publish(vec![
            // One key each: records of one key would wait behind the first dead letter
            // (sequenced dead letters, tested below).
            Message::new(topic, "poison-1", "this is not json"),
            Message::new(topic, "poison-2", r#"{"just": "json"}"#),
            Message::new(topic, "poison-3", envelope("OrderTeleported", 1, json!({}))),
            Message::new(topic, "poison-4", envelope("OrderCreated", 99, json!({}))),
            Message::new(
                topic,
                "poison-5",
                envelope("OrderCreated", 2, json!({"orderId": 42})),
            ),
        ])
        .await
        .unwrap();
    let c2 = c.clone();
    blocking(move || {
        let second = c2.place_ok(&order(&user, "P1", 1, GOOD_CARD, "DE"));
        for id in [&first, &second] {
            assert_eq!(c2.wait_final(id)["status"], "SHIPPED");
        }
        // payment, notification and order consume the topic: 5 poison records each.
        let deadline = Instant::now() + Duration::from_secs(30);
        while dead_letters(&c2, "topic=orders.order-created").len() < 10 {
            assert!(
                Instant::now() < deadline,
                "10 dead letters expected: {:#?}",
                dead_letters(&c2, "status=all")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let letters = dead_letters(&c2, "topic=orders.order-created");
        let errors: Vec<&str> = letters
            .iter()
            .map(|l| l["error"].as_str().unwrap())
            .collect();
        for needle in [
            "expected ident",
            "unknown field `just`",
            "unknown event type `OrderTeleported`",
            "unsupported version v99",
            "does not match its type",
        ] {
            assert_eq!(
                errors.iter().filter(|e| e.contains(needle)).count(),
                2,
                "`{needle}` in {errors:#?}"
            );
        }
        let consumers: std::collections::BTreeSet<&str> = letters
            .iter()
            .map(|l| l["consumer"].as_str().unwrap())
            .collect();
        assert_eq!(
            consumers.into_iter().collect::<Vec<_>>(),
            vec!["notification", "payment"]
        );
        // Discard one with a reason; filters by error find the rest.
        let junk = dead_letters(&c2, "error=malformed");
        assert_eq!(junk.len(), 4);
        let id = junk[0]["id"].as_str().unwrap();
        let (s, d) = c2.send(
            "POST",
            &format!("/admin/dlq/{id}/discard"),
            r#"{"reason": "garbage from a broken producer"}"#,
            &[],
        );
        assert_eq!(s, 200, "{d}");
        assert_eq!(d["status"], "discarded");
        assert_eq!(d["statusReason"], "garbage from a broken producer");
        assert_eq!(dead_letters(&c2, "error=malformed").len(), 3);
        assert_eq!(
            dead_letters(&c2, "error=malformed&status=discarded")[0]["id"],
            *id
        );

        // Redriving poison does not multiply it: each record goes back to the one group that
        // dead-lettered it, which dead-letters it once more — 9 open, round after round.
        let open = || dead_letters(&c2, &format!("topic={topic}")).len();
        for round in 1..=4 {
            let (s, r) = c2.post("/admin/dlq/redrive", &json!({"topic": topic}), &[]);
            assert_eq!(s, 200, "{r}");
            assert_eq!(
                (r["count"].as_u64(), r["remaining"].as_i64()),
                (Some(9), Some(0)),
                "{r}"
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            while open() < 9 {
                assert!(Instant::now() < deadline, "round {round}: {} open", open());
                std::thread::sleep(Duration::from_millis(50));
            }
            std::thread::sleep(Duration::from_millis(500));
            assert_eq!(open(), 9, "round {round}: no more dead letters than before");
            assert_eq!(
                dead_letters(&c2, &format!("topic={topic}&status=redriven")).len(),
                9 * round
            );
        }
        // A bulk redrive is bounded and says what it left.
        let (s, r) = c2.post(
            "/admin/dlq/redrive",
            &json!({"topic": topic, "limit": 4}),
            &[],
        );
        assert_eq!(s, 200, "{r}");
        assert_eq!(
            (r["count"].as_u64(), r["remaining"].as_i64()),
            (Some(4), Some(5)),
            "{r}"
        );
    })
    .await;
    shop.stop().await.unwrap();
}

/// Lag and metrics after the shop drained: every group at zero lag, and the metric families an
/// operator alerts on are exported.
/// Sequenced dead letters through the API: a dead letter of key K parks K's later records in
/// the group (visible in `/admin/dlq` and the metrics) while orders flow; discarding the head
/// releases them, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_parks_its_key_until_its_head_is_discarded() {
    let (shop, c, _dir) = start(|_| {}).await;
    let topic = "orders.order-created";
    shop.log
        .publish(vec![
            Message::new(topic, "stuck", "this is not json"),
            Message::new(topic, "stuck", r#"{"just": "json"}"#),
        ])
        .await
        .unwrap();
    let c2 = c.clone();
    blocking(move || {
        let parked = |c: &Client| {
            let (s, v) = c.get("/admin/dlq");
            assert_eq!(s, 200, "{v}");
            v["parked"].as_array().unwrap().clone()
        };
        // payment and notification read the topic: each dead-letters the first record and
        // parks the key, with the second behind it.
        wait_until("the key parked in payment and notification", || {
            parked(&c2).len() == 2 && dead_letters(&c2, &format!("topic={topic}")).len() == 2
        });
        let p = parked(&c2);
        for (row, group) in p.iter().zip(["notification", "payment"]) {
            assert_eq!(row["consumer"], group, "{p:#?}");
            assert_eq!(row["key"], "stuck");
            assert_eq!(row["depth"], 1);
            assert!(
                row["headError"]
                    .as_str()
                    .unwrap()
                    .contains("expected ident"),
                "{row}"
            );
        }
        let (_, text) = c2.get("/metrics");
        let text = text.as_str().unwrap().to_owned();
        for line in [
            "shopflow_dlq_parked_keys{consumer=\"payment\"} 1",
            "shopflow_dlq_parked_records{consumer=\"payment\"} 1",
            "shopflow_dlq_parked_keys{consumer=\"order\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from /metrics");
        }
        // Orders of other keys flow meanwhile.
        c2.put_product("P1", 500, 100);
        let user = c2.register("kim@example.com", None);
        let id = c2.place_ok(&order(&user, "P1", 1, GOOD_CARD, "DE"));
        assert_eq!(c2.wait_final(&id)["status"], "SHIPPED");

        // The operator discards payment's head: payment takes the record that waited, which is
        // poison too: it is dead-lettered now and heads the key in its turn.
        let head = dead_letters(&c2, &format!("topic={topic}&consumer=payment"));
        assert_eq!(head.len(), 1);
        let (s, d) = c2.send(
            "POST",
            &format!("/admin/dlq/{}/discard", head[0]["id"].as_str().unwrap()),
            r#"{"reason": "a broken producer's test record"}"#,
            &[],
        );
        assert_eq!(s, 200, "{d}");
        wait_until("the waiting record dead-lettered by payment", || {
            dead_letters(&c2, &format!("topic={topic}&consumer=payment")).len() == 1
                && dead_letters(&c2, &format!("topic={topic}&consumer=payment"))[0]["error"]
                    .as_str()
                    .unwrap()
                    .contains("unknown field `just`")
        });
        let p = parked(&c2);
        let payment = p.iter().find(|r| r["consumer"] == "payment").unwrap();
        assert_eq!(payment["depth"], 0, "{p:#?}");
        assert!(
            payment["headError"]
                .as_str()
                .unwrap()
                .contains("unknown field")
        );
        let notification = p.iter().find(|r| r["consumer"] == "notification").unwrap();
        assert_eq!(
            notification["depth"], 1,
            "notification's key is untouched: {p:#?}"
        );

        // A bulk discard (by filter, with one reason) releases notification's key the same way.
        let (s, e) = c2.post(
            "/admin/dlq/discard",
            &json!({"consumer": "notification", "topic": topic}),
            &[],
        );
        assert_eq!(s, 422, "a discard needs a reason: {e}");
        let (s, e) = c2.post(
            "/admin/dlq/discard",
            &json!({"consumer": "notification", "topic": topic, "reason": "  "}),
            &[],
        );
        assert_eq!(s, 400, "a blank reason is none: {e}");
        let (s, d) = c2.post(
            "/admin/dlq/discard",
            &json!({"consumer": "notification", "topic": topic, "reason": "a broken producer's test record"}),
            &[],
        );
        assert_eq!(s, 200, "{d}");
        assert_eq!((d["count"].as_u64(), d["remaining"].as_i64()), (Some(1), Some(0)), "{d}");
        wait_until("notification's waiting record dead-lettered in turn", || {
            dead_letters(&c2, &format!("topic={topic}&consumer=notification"))
                .iter()
                .any(|l| l["error"].as_str().unwrap().contains("unknown field `just`"))
        });
    })
    .await;
    shop.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_and_metrics_report_a_drained_shop() {
    let (shop, c, _dir) = start(|_| {}).await;
    blocking(move || {
        c.put_product("M1", 500, 100);
        let user = c.register("mo@example.com", None);
        let ids: Vec<String> = (0..10)
            .map(|_| c.place_ok(&order(&user, "M1", 1, GOOD_CARD, "DE")))
            .collect();
        for id in &ids {
            assert_eq!(c.wait_final(id)["status"], "SHIPPED");
        }
        wait_until("zero lag everywhere", || {
            let (s, lag) = c.get("/admin/lag");
            assert_eq!(s, 200);
            lag["groups"].as_object().unwrap().values().all(|v| v == 0)
                && lag["outboxBacklog"]
                    .as_object()
                    .unwrap()
                    .values()
                    .all(|v| v == 0)
        });
        let (_, lag) = c.get("/admin/lag");
        for g in [
            "inventory",
            "payment",
            "shipping",
            "notification",
            "order",
            "dlq-index",
        ] {
            assert!(lag["groups"].get(g).is_some(), "{g} in {lag}");
        }
        let row = &lag["partitions"][0];
        for k in [
            "group",
            "topic",
            "partition",
            "committed",
            "endOffset",
            "lag",
        ] {
            assert!(row.get(k).is_some(), "{k} in {row}");
        }
        let (_, breakers) = c.get("/admin/breakers");
        assert_eq!(breakers.as_array().unwrap().len(), 2);
        assert_eq!(breakers[0]["state"], "closed");

        let (s, text) = c.get("/metrics");
        assert_eq!(s, 200);
        let text = text.as_str().unwrap();
        for family in [
            "shopflow_events_consumed_total{consumer=\"payment\"}",
            "shopflow_outbox_published_total",
            "shopflow_handler_seconds_bucket{consumer=\"order\"",
            "shopflow_consumer_lag{",
            "shopflow_outbox_backlog{owner=\"order\"}",
            "shopflow_breaker_state{breaker=\"payment-gateway\"}",
            "shopflow_dead_letters{status=\"open\"}",
        ] {
            assert!(text.contains(family), "{family} missing from /metrics");
        }
    })
    .await;
    shop.stop().await.unwrap();
}

/// The caller's `X-Correlation-Id` is echoed, and every event of the order — also those recorded
/// in reaction to other services' events (payment, stock, shipping) — carries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_correlation_id_flows_from_the_request_through_every_event() {
    let (shop, c, _dir) = start(|_| {}).await;
    blocking(move || {
        c.put_product("C1", 700, 10);
        let user = c.register("cy@example.com", None);
        // Once the order service's catalog copy knows the sku.
        c.place_ok(&order(&user, "C1", 1, GOOD_CARD, "DE"));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut resp = agent
            .post(format!("{}/orders", c.base))
            .header("content-type", "application/json")
            .header("x-correlation-id", "drill-42")
            .send(
                order(&user, "C1", 1, GOOD_CARD, "DE")
                    .to_string()
                    .as_bytes(),
            )
            .unwrap();
        assert_eq!(resp.status(), 202);
        assert_eq!(resp.headers().get("x-correlation-id").unwrap(), "drill-42");
        let body: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        let id = body["orderId"].as_str().unwrap();
        assert_eq!(c.wait_final(id)["status"], "SHIPPED");
        let (_, events) = c.get(&format!("/orders/{id}/events"));
        let events = events.as_array().unwrap_or_else(|| panic!("{events}"));
        // Every fact of the order, in whatever order the outcomes arrived.
        let mut types: Vec<&str> = events
            .iter()
            .filter_map(|e| e["eventType"].as_str())
            .collect();
        assert_eq!(types.first(), Some(&"OrderCreated"), "{events:?}");
        types.sort();
        assert_eq!(
            types,
            [
                "OrderCompleted",
                "OrderCreated",
                "OrderPaid",
                "OrderReserved"
            ],
            "{events:?}"
        );
        for e in events {
            assert_eq!(e["correlationId"], "drill-42", "{e}");
        }
        // A request without one gets a fresh id, echoed.
        let resp = agent.get(format!("{}/health", c.base)).call().unwrap();
        assert!(!resp.headers().get("x-correlation-id").unwrap().is_empty());
    })
    .await;
    shop.stop().await.unwrap();
}

/// Operating sagas on a running shop (orchestration): a saga stuck on a payment provider that is
/// down is listed, inspected and cancelled by an operator; it compensates (the charge that
/// happens once the provider is back is refunded) and the order is cancelled with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lists_shows_and_cancels_a_stuck_saga() {
    let (shop, c, _dir) = start(|cfg| cfg.saga = shopflow::shop::SagaStyle::Orchestration).await;
    blocking(move || {
        c.put_product("S1", 900, 10);
        let user = c.register("sam@example.com", None);
        let (s, _) = c.send("PUT", "/admin/payment-gateway", r#"{"outage": true}"#, &[]);
        assert_eq!(s, 200);
        let id = c.place_ok(&order(&user, "S1", 1, GOOD_CARD, "DE"));
        wait_until("the saga waits on its payment", || {
            let (s, v) = c.get(&format!("/sagas/{id}"));
            s == 200 && v["state"] == "running" && v["currentStep"] == "payment"
        });
        let (_, list) = c.get("/sagas?state=running");
        assert_eq!(list["style"], "orchestration");
        assert!(
            list["sagas"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["sagaId"] == id.as_str()),
            "{list}"
        );
        assert_eq!(c.get("/sagas?state=bogus").0, 400);
        assert_eq!(c.get("/sagas/ord_nope").0, 404);
        assert_eq!(
            c.send(
                "POST",
                &format!("/sagas/{id}/cancel"),
                r#"{"reason": ""}"#,
                &[]
            )
            .0,
            400
        );
        let (s, v) = c.send(
            "POST",
            &format!("/sagas/{id}/cancel"),
            r#"{"reason": "customer called"}"#,
            &[],
        );
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["state"], "compensating");
        assert_eq!(v["failure"]["kind"], "cancelled");
        assert_eq!(
            c.send(
                "POST",
                &format!("/sagas/{id}/cancel"),
                r#"{"reason": "again"}"#,
                &[]
            )
            .0,
            409
        );
        // The provider comes back: the queued charge happens, then its refund.
        c.send("PUT", "/admin/payment-gateway", r#"{"outage": false}"#, &[]);
        let o = c.wait_final(&id);
        assert_eq!(o["status"], "CANCELLED");
        assert_eq!(
            o["cancelReason"],
            "cancelled by an operator: customer called"
        );
        wait_until("the refund", || {
            c.get(&format!("/orders/{id}/payment")).1["status"] == "REFUNDED"
        });
        let (_, v) = c.get(&format!("/sagas/{id}"));
        assert_eq!(v["state"], "compensated");
        let steps: Vec<String> = v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                format!(
                    "{}:{}:{}",
                    s["step"].as_str().unwrap(),
                    s["kind"].as_str().unwrap(),
                    s["outcome"].as_str().unwrap_or("-")
                )
            })
            .collect();
        assert_eq!(
            steps,
            [
                "payment:action:cancelled",
                "payment:compensation:compensated",
                "compensated:notify:sent"
            ]
        );
        assert_eq!(c.get("/products/S1").1["available"], 10);
    })
    .await;
    shop.stop().await.unwrap();
}

/// The system's own facts on `system.*` topics: every service's start, the payment consumer's
/// pause while the gateway's breaker is open and its resumption, an event given up, and every
/// service's clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_events_say_what_the_system_did() {
    let (shop, c, dir) = start(|cfg| {
        cfg.breaker = BreakerConfig {
            failure_threshold: 1,
            open_for: Duration::from_millis(300),
            ..BreakerConfig::default()
        };
    })
    .await;
    shop.log
        .publish(vec![Message::new(
            "orders.order-created",
            "junk",
            "not an event",
        )])
        .await
        .unwrap();
    let c2 = c.clone();
    blocking(move || {
        c2.put_product("SY1", 500, 10);
        let user = c2.register("sys@example.com", None);
        let (s, _) = c2.send("PUT", "/admin/payment-gateway", r#"{"outage": true}"#, &[]);
        assert_eq!(s, 200);
        let id = c2.place_ok(&order(&user, "SY1", 1, GOOD_CARD, "DE"));
        std::thread::sleep(Duration::from_millis(800));
        let (s, _) = c2.send("PUT", "/admin/payment-gateway", r#"{"outage": false}"#, &[]);
        assert_eq!(s, 200);
        assert_eq!(c2.wait_final(&id)["status"], "SHIPPED");
    })
    .await;
    let read = |log: &shopflow_anybus::AnyBus, topic: &'static str| {
        let log = log.clone();
        async move {
            let mut out = Vec::new();
            for p in 0..4 {
                let tp = shopflow_bus::TopicPartition::new(topic, p);
                for r in log.read(&tp, 0, 1000).await.unwrap() {
                    let v: Value = serde_json::from_slice(&r.value).unwrap();
                    assert_eq!(v["kind"], "system", "{v}");
                    out.push(v["data"].clone());
                }
            }
            out
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let started = read(&shop.log, "system.service-started").await;
        let paused = read(&shop.log, "system.consumer-paused").await;
        let resumed = read(&shop.log, "system.consumer-resumed").await;
        let dead = read(&shop.log, "system.event-dead-lettered").await;
        let mut services: Vec<&str> = started
            .iter()
            .filter_map(|d| d["service"].as_str())
            .collect();
        services.sort();
        let done = services
            == [
                "inventory",
                "notification",
                "order",
                "payment",
                "shipping",
                "users",
            ]
            && paused
                .iter()
                .any(|d| d["breaker"] == "payment-gateway" && d["consumers"][0] == "payment")
            && resumed.iter().any(|d| d["breaker"] == "payment-gateway")
            && dead
                .iter()
                .any(|d| d["topic"] == "orders.order-created" && d["eventId"].is_null());
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "started {services:?}, paused {paused:?}, resumed {resumed:?}, dead-lettered {dead:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shop.stop().await.unwrap();
    // After the stop, on the log it left: every service said it stopped.
    let log = shopflow_anybus::AnyBus::open(
        &shopflow_anybus::BusUrl::Embedded,
        &dir.path().join("log"),
        4,
    )
    .unwrap();
    let stopped = read(&log, "system.service-stopped").await;
    assert_eq!(stopped.len(), 6, "{stopped:?}");
    log.close().await.unwrap();
}
