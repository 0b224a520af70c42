//! The dashboard in a real headless Chromium (Debian's `chromium`, driven by `playwright-core`
//! from npm with its executable path set; no tool downloads a browser): every page loads without
//! a console error and agrees with the API, an order's timeline fills in live and travels back in
//! time, dead letters appear and a redrive makes their count fall, and the payment outage switch
//! opens the breaker and grows the payment group's lag, which drains once it is back.
//!
//! Needs `chromium` (or `SHOPFLOW_TEST_CHROMIUM=<path>`) and `npm install` in
//! `app/tests/browser`; without them it is skipped with the reason, and under `CI=true` it fails.
//! Screenshots go to `SHOPFLOW_SCREENSHOTS` (default `<target dir>/dashboard-screenshots`).

mod common;

use std::path::{Path, PathBuf};

use common::{Client, GOOD_CARD, blocking, order};
use shopflow::shop::{Shop, ShopConfig};
use shopflow_bus::{Bus, Message};

/// Chromium and playwright-core, or why the test cannot run.
fn browser() -> Result<(PathBuf, PathBuf), String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !dir.join("node_modules/playwright-core").is_dir() {
        return Err(format!(
            "playwright-core is not installed: (cd {} && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci)",
            dir.display()
        ));
    }
    let chromium = std::env::var_os("SHOPFLOW_TEST_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| {
            ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
        })
        .ok_or("no chromium: apt-get install -y chromium (or SHOPFLOW_TEST_CHROMIUM=<path>)")?;
    Ok((dir, chromium))
}

fn screenshots() -> PathBuf {
    std::env::var_os("SHOPFLOW_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
            target.join("dashboard-screenshots")
        })
}

/// Runs one phase of `dashboard.mjs` against `shop`; panics with its output when it fails.
fn phase(dir: &Path, chromium: &Path, shop: &Shop, name: &str, vars: &[(&str, &str)]) {
    let out = std::process::Command::new("node")
        .arg("dashboard.mjs")
        .arg(name)
        .current_dir(dir)
        .env("BASE", format!("http://{}", shop.addr))
        .env("TOKEN", shop.admin_token.as_str())
        .env("SHOTS", screenshots())
        .env("CHROMIUM", chromium)
        .envs(vars.iter().copied())
        .output()
        .expect("node runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "dashboard phase {name} failed:\n{text}"
    );
    eprint!("{text}");
}

async fn start(dir: &Path, tune: impl FnOnce(&mut ShopConfig)) -> (Shop, Client) {
    let mut config = ShopConfig::new(dir, "127.0.0.1:0".parse().unwrap());
    tune(&mut config);
    let shop = Shop::start(config).await.unwrap();
    let c = Client::new(format!("http://{}", shop.addr)).with_token(shop.admin_token.as_str());
    (shop, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_chromium() {
    let (browser_dir, chromium) = match browser() {
        Ok(b) => b,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true and the browser test cannot run: {why}")
        }
        Err(why) => {
            eprintln!("skipping the dashboard's browser test: {why}");
            return;
        }
    };

    // A shop with traffic: pages, live timeline, time travel; then the payment outage.
    let tmp = tempfile::tempdir().unwrap();
    let (shop, c) = start(tmp.path(), |_| {}).await;
    let customer = blocking(move || {
        c.put_product("DASH-1", 1250, 100_000);
        let customer = c.register("dash@example.com", None);
        for i in 0..12 {
            let card = if i % 4 == 3 {
                common::DECLINED_CARD
            } else {
                GOOD_CARD
            };
            let id = c.place_ok(&order(&customer, "DASH-1", 1 + i % 3, card, "DE"));
            c.wait_final(&id);
        }
        customer
    })
    .await;
    let vars = [("CUSTOMER", customer.as_str()), ("SKU", "DASH-1")];
    let (d, ch) = (browser_dir.clone(), chromium.clone());
    let shop = std::sync::Arc::new(shop);
    let s = shop.clone();
    let vars_owned: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    blocking(move || {
        let vars: Vec<(&str, &str)> = vars_owned
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        phase(&d, &ch, &s, "pages", &vars);
        phase(&d, &ch, &s, "outage", &vars);
    })
    .await;
    std::sync::Arc::into_inner(shop)
        .unwrap()
        .stop()
        .await
        .unwrap();

    // Dead letters: a broken mail spool makes notification give up on registrations (retries
    // exhausted, the breaker held off), and poison lands on a topic.
    let tmp = tempfile::tempdir().unwrap();
    let (shop, c) = start(tmp.path(), common::give_up_fast).await;
    let mail = tmp.path().join("mail");
    let _ = std::fs::remove_dir_all(&mail);
    std::fs::write(&mail, b"not a directory").unwrap();
    shop.log
        .publish(vec![Message::new(
            "orders.order-created",
            "poison-1",
            "this is not json",
        )])
        .await
        .unwrap();
    let c2 = c.clone();
    blocking(move || {
        c2.register("ann@example.com", None);
        c2.register("bob@example.com", None);
        common::wait_until("four dead letters", || {
            c2.get("/admin/dlq").1["counts"]["open"]
                .as_i64()
                .unwrap_or(0)
                >= 4
        });
    })
    .await;
    // The fix: the spool is a directory again; the operator redrives from the dashboard.
    std::fs::remove_file(&mail).unwrap();
    let shop = std::sync::Arc::new(shop);
    let s = shop.clone();
    let (d, ch) = (browser_dir.clone(), chromium.clone());
    blocking(move || {
        phase(
            &d,
            &ch,
            &s,
            "dlq",
            &[
                ("REDRIVE_GROUP", "notification"),
                ("REDRIVE_TOPIC", "users.user-registered"),
            ],
        )
    })
    .await;
    // What the redrive sent is handled: the welcome mails went out.
    blocking(move || {
        common::wait_until("mail after the redrive", || {
            std::fs::read_dir(&mail).map(|d| d.count()).unwrap_or(0) > 0
        });
    })
    .await;
    std::sync::Arc::into_inner(shop)
        .unwrap()
        .stop()
        .await
        .unwrap();

    // Leaving a monolith: a legacy catalog that prices DASH-1 differently, its route in shadow.
    let legacy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let legacy_addr = legacy.local_addr().unwrap();
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/products",
            axum::routing::get(|| async {
                axum::Json(serde_json::json!([{"sku": "DASH-1", "name": "Product DASH-1", "priceMinor": 999, "currency": "EUR", "available": 100}]))
            }),
        );
        axum::serve(legacy, app).await.unwrap()
    });
    let routes = shopflow_gateway::RoutesFile::parse(&format!(
        "[legacy]\nurl = \"http://{legacy_addr}\"\n[new]\nurl = \"http://127.0.0.1:1\"\n\
         [[route]]\nmethods = [\"GET\"]\npath = \"/products\"\ntarget = \"shadow\"\nserve = \"legacy\"\n\
         ignore = [\"reserved\", \"shipped\"]\n"
    ))
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (shop, c) = start(tmp.path(), |cfg| {
        cfg.gateway = Some((routes, "127.0.0.1:0".parse().unwrap()))
    })
    .await;
    let gw = Client::new(format!("http://{}", shop.gateway_addr.unwrap()));
    blocking(move || {
        c.put_product("DASH-1", 1250, 100);
        let (s, b) = gw.get("/products");
        assert_eq!(
            (s, b[0]["priceMinor"].as_i64()),
            (200, Some(999)),
            "legacy answers: {b}"
        );
        common::wait_until("a shadow difference", || {
            c.get("/admin/migration").1["gateway"]["differences"]
                .as_array()
                .is_some_and(|d| !d.is_empty())
        });
    })
    .await;
    let shop = std::sync::Arc::new(shop);
    let s = shop.clone();
    let (d, ch) = (browser_dir.clone(), chromium.clone());
    blocking(move || {
        phase(
            &d,
            &ch,
            &s,
            "migration",
            &[("DIFFERENCE", "/0/priceMinor: 999 vs 1250")],
        )
    })
    .await;
    std::sync::Arc::into_inner(shop)
        .unwrap()
        .stop()
        .await
        .unwrap();
}
