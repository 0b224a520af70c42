//! Choreography and orchestration are equivalent: one table of scenarios — happy path, declined
//! card, insufficient funds, out of stock, unsupported country, a repeated Idempotency-Key,
//! concurrent orders for the last units, a restart mid-flow, every record redelivered — runs
//! against a shop in each style, and the final business state (order statuses and cancel reasons,
//! charges and refunds, stock, shipments, notifications) is identical.

mod common;

use std::collections::BTreeMap;

use common::{Client, DECLINED_CARD, GOOD_CARD, blocking, order};
use serde_json::{Value, json};
use shopflow::shop::{SagaStyle, Shop, ShopConfig};

const POOR_CARD: &str = "4000000000009995";

/// (label, sku, quantity, card, country)
const TABLE: &[(&str, &str, i64, &str, &str)] = &[
    ("happy", "EQ-A", 2, GOOD_CARD, "DE"),
    ("declined", "EQ-A", 1, DECLINED_CARD, "DE"),
    ("insufficient-funds", "EQ-A", 1, POOR_CARD, "FR"),
    ("out-of-stock", "EQ-OOS", 5, GOOD_CARD, "DE"),
    ("unsupported-country", "EQ-A", 1, GOOD_CARD, "XX"),
    ("two-lines", "EQ-B", 3, GOOD_CARD, "GB"),
];

async fn start(dir: &std::path::Path, style: SagaStyle) -> Shop {
    Shop::start(ShopConfig {
        saga: style,
        ..ShopConfig::new(dir, "127.0.0.1:0".parse().unwrap())
    })
    .await
    .unwrap()
}

/// An order's business outcome, without ids and timestamps.
fn outcome(c: &Client, id: &str) -> Value {
    let o = c.get(&format!("/orders/{id}")).1;
    let pay = c.get(&format!("/orders/{id}/payment")).1;
    let ship = c.get(&format!("/orders/{id}/shipment")).1;
    let mut notes: Vec<String> = c
        .get(&format!("/orders/{id}/notifications"))
        .1
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|n| {
            format!(
                "{}/{}",
                n["eventType"].as_str().unwrap_or(""),
                n["channel"].as_str().unwrap_or("")
            )
        })
        .collect();
    notes.sort();
    json!({
        "status": o["status"],
        "cancelReason": o["cancelReason"],
        "total": o["totalMinor"],
        "payment": pay["status"],
        "charged": pay["amountMinor"],
        "paymentReason": pay["reason"],
        "shipment": ship["status"],
        "carrier": ship["carrier"],
        "notifications": notes,
    })
}

fn stock(c: &Client, sku: &str) -> Value {
    let p = c.get(&format!("/products/{sku}")).1;
    json!([p["available"], p["reserved"], p["shipped"]])
}

/// Runs the whole table against one style and returns the final business state.
async fn run(style: SagaStyle) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let shop = start(dir.path(), style).await;
    let c = Client::new(format!("http://{}", shop.addr)).with_token(shop.admin_token.as_str());
    let (user, labelled, racers) = blocking(move || {
        c.put_product("EQ-A", 1000, 100);
        c.put_product("EQ-B", 250, 10);
        c.put_product("EQ-OOS", 300, 1);
        c.put_product("EQ-LAST", 500, 3);
        let user = c.register("eq@example.com", Some("+4915112345678"));
        let mut labelled: Vec<(String, String)> = TABLE
            .iter()
            .map(|(label, sku, q, card, country)| {
                (
                    label.to_string(),
                    c.place_ok(&order(&user, sku, *q, card, country)),
                )
            })
            .collect();
        // The same Idempotency-Key twice: one order.
        let body = order(&user, "EQ-A", 1, GOOD_CARD, "DE");
        let (s1, a) = c.place(&body, &[("idempotency-key", "eq-key-1")]);
        let (s2, b) = c.place(&body, &[("idempotency-key", "eq-key-1")]);
        assert_eq!((s1, s2), (202, 202));
        assert_eq!(a["orderId"], b["orderId"]);
        labelled.push((
            "idempotent".into(),
            a["orderId"].as_str().unwrap().to_owned(),
        ));
        // Eight customers race for the last three units.
        let racers: Vec<String> = (0..8)
            .map(|_| {
                let (c, user) = (c.clone(), user.clone());
                std::thread::spawn(move || c.place_ok(&order(&user, "EQ-LAST", 1, GOOD_CARD, "DE")))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        for (_, id) in &labelled {
            c.wait_final(id);
        }
        for id in &racers {
            c.wait_final(id);
        }
        (user, labelled, racers)
    })
    .await;

    // A restart in the middle of a flow of orders.
    let c = Client::new(format!("http://{}", shop.addr)).with_token(shop.admin_token.as_str());
    let u = user.clone();
    let restarted: Vec<String> = blocking(move || {
        (0..20)
            .map(|i| {
                let card = if i % 4 == 0 { DECLINED_CARD } else { GOOD_CARD };
                let country = if i % 5 == 1 { "XX" } else { "DE" };
                c.place_ok(&order(&u, "EQ-A", 1, card, country))
            })
            .collect()
    })
    .await;
    shop.stop().await.unwrap();
    let shop = start(dir.path(), style).await;
    let c = Client::new(format!("http://{}", shop.addr)).with_token(shop.admin_token.as_str());
    let c2 = c.clone();
    let ids = restarted.clone();
    blocking(move || {
        for id in &ids {
            c2.wait_final(id);
        }
    })
    .await;
    common::settle(&shop).await;

    let snapshot = |c: Client,
                    labelled: Vec<(String, String)>,
                    racers: Vec<String>,
                    restarted: Vec<String>| {
        blocking(move || {
            let mut state = serde_json::Map::new();
            for (label, id) in &labelled {
                state.insert(label.clone(), outcome(&c, id));
            }
            // Who wins a race differs between runs; how many win and how the others end does not.
            let mut race: Vec<String> = racers
                .iter()
                .map(|id| outcome(&c, id).to_string())
                .collect();
            race.sort();
            state.insert("race".into(), json!(race));
            let mut after: Vec<String> = restarted
                .iter()
                .map(|id| outcome(&c, id).to_string())
                .collect();
            after.sort();
            state.insert("restart-mid-flow".into(), json!(after));
            for sku in ["EQ-A", "EQ-B", "EQ-OOS", "EQ-LAST"] {
                state.insert(format!("stock {sku}"), stock(&c, sku));
            }
            Value::Object(state)
        })
    };
    let before = snapshot(
        c.clone(),
        labelled.clone(),
        racers.clone(),
        restarted.clone(),
    )
    .await;

    // Every record delivered again: nothing changes.
    let n = common::redeliver_everything(&shop, shopflow_contracts::all_topics()).await;
    assert!(n > 100, "redelivered {n}");
    common::settle(&shop).await;
    let after = snapshot(c.clone(), labelled, racers, restarted).await;
    assert_eq!(
        before, after,
        "{style}: a redelivery changed the business state"
    );

    let report = shopflow::verify::verify(&shop.databases(), true)
        .await
        .unwrap();
    assert!(report.ok(), "{style}: {:?}", report.violations);
    let mut state = after;
    state["verify"] = json!({"orders": report.orders, "byStatus": report.by_status});
    if style == SagaStyle::Orchestration {
        let total: usize = report.sagas.values().sum();
        assert_eq!(
            total, report.orders,
            "one saga per order: {:?}",
            report.sagas
        );
        assert_eq!(
            report.sagas.get("running").copied().unwrap_or(0)
                + report.sagas.get("compensating").copied().unwrap_or(0),
            0
        );
    } else {
        assert!(report.sagas.is_empty(), "no sagas under choreography");
    }
    shop.stop().await.unwrap();
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_styles_reach_the_same_business_state() {
    let choreography = run(SagaStyle::Choreography).await;
    let orchestration = run(SagaStyle::Orchestration).await;
    let (a, b) = (
        choreography.as_object().unwrap(),
        orchestration.as_object().unwrap(),
    );
    let mut differences = BTreeMap::new();
    for (k, v) in a {
        if b.get(k) != Some(v) {
            differences.insert(k.clone(), (v.clone(), b.get(k).cloned()));
        }
    }
    assert!(
        differences.is_empty(),
        "choreography and orchestration differ: {differences:#?}"
    );
    assert_eq!(a.len(), b.len());
    // The table is not vacuous: it has both final states and every compensation.
    assert_eq!(choreography["happy"]["status"], "SHIPPED");
    assert_eq!(choreography["declined"]["status"], "CANCELLED");
    assert_eq!(choreography["out-of-stock"]["payment"], "REFUNDED");
    assert_eq!(choreography["unsupported-country"]["payment"], "REFUNDED");
    assert_eq!(choreography["stock EQ-LAST"], json!([0, 0, 3]));
    eprintln!("{}", serde_json::to_string_pretty(&choreography).unwrap());
}
