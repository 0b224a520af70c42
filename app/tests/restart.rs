//! `shopflow up` killed with SIGKILL in the middle of a batch of orders, then restarted: every
//! accepted order reaches a final state and nothing is charged twice.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Client, DECLINED_CARD, GOOD_CARD, free_port, order, stop_gracefully};
use shopflow_bus::{Bus, TopicPartition};

#[test]
fn sigkill_mid_batch_then_restart_completes_every_order_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = common::up_process(dir.path(), port, &[]);
    let c = Client::admin(format!("http://127.0.0.1:{port}"));
    common::wait_healthy(port);
    c.put_product("BOX", 1000, 10_000);
    let user = c.register("kim@example.com", None);
    // Warm the order service's catalog copy.
    let first = c.place_ok(&order(&user, "BOX", 1, GOOD_CARD, "DE"));

    let accepted = Arc::new(Mutex::new(vec![first]));
    let placers: Vec<_> = (0..4)
        .map(|t| {
            let c = c.clone();
            let user = user.clone();
            let accepted = accepted.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    let (card, country) = match (t + i) % 5 {
                        0 => (DECLINED_CARD, "DE"),
                        1 => (GOOD_CARD, "XX"),
                        _ => (GOOD_CARD, "DE"),
                    };
                    match c.try_post(
                        "/orders",
                        &order(&user, "BOX", 1 + (i % 3) as i64, card, country),
                    ) {
                        Some((202, b)) => accepted
                            .lock()
                            .unwrap()
                            .push(b["orderId"].as_str().unwrap().to_owned()),
                        Some((s, b)) => panic!("unexpected answer {s}: {b}"),
                        None => return, // the server is gone
                    }
                }
            })
        })
        .collect();
    // Kill it while orders are flowing.
    let end = Instant::now() + Duration::from_secs(30);
    while accepted.lock().unwrap().len() < 60 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for p in placers {
        p.join().unwrap();
    }
    let accepted: Vec<String> = accepted.lock().unwrap().clone();
    assert!(
        accepted.len() >= 60,
        "only {} orders accepted before the kill",
        accepted.len()
    );

    let mut child = common::up_process(dir.path(), port, &[]);
    common::wait_healthy(port);
    // Every order the client heard about completes…
    for id in &accepted {
        c.wait_final(id);
    }
    // …and so does every order the server accepted (a 202 can be lost in the kill): take them all
    // from the read model once nothing is in flight.
    let end = Instant::now() + Duration::from_secs(30);
    let all = loop {
        let (_, page) = c.get(&format!("/orders?customerId={user}&limit=500"));
        let orders = page["orders"].as_array().unwrap().clone();
        let settled = orders
            .iter()
            .all(|o| o["status"] == "SHIPPED" || o["status"] == "CANCELLED");
        let ids: HashSet<&str> = orders
            .iter()
            .map(|o| o["orderId"].as_str().unwrap())
            .collect();
        if settled
            && accepted.iter().all(|a| ids.contains(a.as_str()))
            && page["projection"]["behindEvents"] == 0
        {
            break orders;
        }
        assert!(Instant::now() < end, "orders still in flight: {page}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut statuses: HashMap<String, usize> = HashMap::new();
    let mut shipped_units = 0i64;
    for o in &all {
        let id = o["orderId"].as_str().unwrap();
        *statuses
            .entry(o["status"].as_str().unwrap().to_owned())
            .or_default() += 1;
        let pay = c.get(&format!("/orders/{id}/payment")).1;
        match o["status"].as_str().unwrap() {
            "SHIPPED" => {
                assert_eq!(pay["status"], "COMPLETED", "{id}: {pay}");
                shipped_units += o["items"][0]["quantity"].as_i64().unwrap();
            }
            _ => assert!(
                pay["status"] == "FAILED" || pay["status"] == "REFUNDED",
                "{id}: {o} {pay}"
            ),
        }
    }
    assert!(
        statuses.get("SHIPPED").copied().unwrap_or(0) > 0
            && statuses.get("CANCELLED").copied().unwrap_or(0) > 0,
        "{statuses:?}"
    );
    // Stock adds up: shipped units left the warehouse, nothing is stuck in reservations.
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let p = c.get("/products/BOX").1;
        if p["reserved"] == 0 && p["shipped"] == shipped_units {
            assert_eq!(p["available"].as_i64().unwrap() + shipped_units, 10_000);
            break;
        }
        assert!(
            Instant::now() < end,
            "stock does not add up: {p}, shipped {shipped_units}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    eprintln!(
        "{} orders acknowledged before SIGKILL, {} accepted in all; after restart: {statuses:?}",
        accepted.len(),
        all.len()
    );
    let refunded = all
        .iter()
        .filter(|o| {
            c.get(&format!(
                "/orders/{}/payment",
                o["orderId"].as_str().unwrap()
            ))
            .1["status"]
                == "REFUNDED"
        })
        .count();

    // Stop cleanly; the invariants hold over every service's data…
    stop_gracefully(&mut child);
    let verify = common::verify_settled(dir.path());
    assert!(
        verify.status.success(),
        "shopflow verify: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
    // …and the log holds at most one distinct PaymentCompleted per order.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let log = shopflow_log::Log::open(dir.path().join("log"), shopflow_log::Config::default())
            .unwrap();
        let mut per_order: HashMap<String, HashSet<String>> = HashMap::new();
        for p in 0..4 {
            let tp = TopicPartition::new("payments.payment-completed", p);
            let (start, end) = log.watermarks(&tp).await.unwrap();
            let mut from = start;
            while from < end {
                let recs = log.read(&tp, from, 1000).unwrap();
                let Some(last) = recs.last() else { break };
                from = last.offset + 1;
                for r in recs {
                    let env = shopflow_envelope::Envelope::decode(&r.value).unwrap();
                    per_order
                        .entry(env.aggregate_id().to_owned())
                        .or_default()
                        .insert(env.event_id().to_string());
                }
            }
        }
        for (order, ids) in &per_order {
            assert_eq!(
                ids.len(),
                1,
                "order {order} was charged {} times",
                ids.len()
            );
        }
        // Charged = shipped + refunded; declined orders were never charged.
        assert_eq!(
            per_order.len(),
            statuses.get("SHIPPED").copied().unwrap_or(0) + refunded
        );
        log.close().await.unwrap();
    });
}
