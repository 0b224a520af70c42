//! The history from the command line, against a running shop: `shopflow orders show` (now, at a
//! version, at an instant), `shopflow orders events`, and `shopflow events tail` with and
//! without `--follow`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, GOOD_CARD, blocking, order};
use serde_json::Value;
use shopflow::shop::{Shop, ShopConfig};

fn cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .env("SHOPFLOW_ADMIN_TOKEN", common::TEST_ADMIN_TOKEN)
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_and_events_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::start(ShopConfig {
        admin_token: Some(common::TEST_ADMIN_TOKEN.into()),
        ..ShopConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap())
    })
    .await
    .unwrap();
    let base = format!("http://{}", shop.addr);
    let c = Client::admin(base.clone());
    blocking(move || {
        c.put_product("CLI", 700, 10);
        let user = c.register("cli@example.com", None);
        let id = c.place_ok(&order(&user, "CLI", 1, GOOD_CARD, "DE"));
        c.wait_final(&id);

        let (ok, text) = cli(&["orders", "show", &id, "--target", &base]);
        assert!(ok, "{text}");
        assert!(text.contains("SHIPPED") && text.contains(&id), "{text}");
        let (ok, text) = cli(&[
            "orders",
            "show",
            &id,
            "--version",
            "1",
            "--json",
            "--target",
            &base,
        ]);
        assert!(ok, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (v["status"].as_str(), v["version"].as_u64()),
            (Some("PENDING"), Some(1))
        );
        let (ok, text) = cli(&["orders", "events", &id, "--json", "--target", &base]);
        assert!(ok, "{text}");
        let events: Value = serde_json::from_str(&text).unwrap();
        let created_at = events[0]["timestamp"].as_str().unwrap().to_owned();
        assert_eq!(events.as_array().unwrap().len(), 4, "{events}");
        let (ok, text) = cli(&[
            "orders",
            "show",
            &id,
            "--at",
            &created_at,
            "--json",
            "--target",
            &base,
        ]);
        assert!(ok, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["version"], 1, "{v}");
        let (ok, text) = cli(&["orders", "show", "ord_nope", "--target", &base]);
        assert!(!ok && text.contains("404"), "{text}");

        // The latest events of one topic, then of every topic.
        let (ok, text) = cli(&[
            "events",
            "tail",
            "--topic",
            "orders.order-created",
            "--json",
            "--target",
            &base,
        ]);
        assert!(ok, "{text}");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(
            lines
                .iter()
                .any(|e| e["aggregateId"] == id.as_str() && e["eventType"] == "OrderCreated"),
            "{text}"
        );
        let (ok, text) = cli(&["events", "tail", "--limit", "50", "--target", &base]);
        assert!(ok, "{text}");
        assert!(
            text.contains("OrderShipped") && text.contains("PaymentCompleted"),
            "{text}"
        );
        let (ok, text) = cli(&[
            "events",
            "tail",
            "--topic",
            "no.such-topic",
            "--target",
            &base,
        ]);
        assert!(!ok && text.contains("404"), "{text}");

        // --follow prints what is published after it started.
        let mut follower = Command::new(env!("CARGO_BIN_EXE_shopflow"))
            .env("SHOPFLOW_ADMIN_TOKEN", common::TEST_ADMIN_TOKEN)
            .args([
                "events",
                "tail",
                "--topic",
                "orders.order-created",
                "--limit",
                "1",
                "--follow",
                "--json",
                "--target",
                &base,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = follower.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        std::thread::sleep(Duration::from_millis(700));
        let later = c.place_ok(&order(&user, "CLI", 1, GOOD_CARD, "DE"));
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = false;
        while Instant::now() < deadline && !seen {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                let e: Value = serde_json::from_str(&line).unwrap();
                seen = e["aggregateId"] == later.as_str();
            }
        }
        follower.kill().unwrap();
        let _ = follower.wait();
        assert!(seen, "the follower never printed {later}");
    })
    .await;
    shop.stop().await.unwrap();
}
