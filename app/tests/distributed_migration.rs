//! The migration's pieces as processes of the distributed deployment, on Kafka and PostgreSQL:
//! `shopflow cdc` capturing a legacy schema, `shopflow service inventory --legacy-catalog`
//! following it, `shopflow gateway` in front, switched with the `shopflow routes` CLI. The
//! connector is killed with SIGKILL between changes and started again; the inventory ends equal
//! to the legacy table.
//!
//! Needs `SHOPFLOW_TEST_POSTGRES` (wal_level = logical) and `SHOPFLOW_TEST_KAFKA`; skipped
//! without them, except under `CI=true`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, TEST_ADMIN_TOKEN, blocking, free_port};

/// A started process, killed when the test ends — also when it fails half-way (a connector left
/// running keeps its replication slot busy and its WAL held).
fn spawn(dir: &std::path::Path, name: &str, args: &[&str]) -> common::KillOnDrop {
    common::KillOnDrop(spawn_child(dir, name, args))
}

fn spawn_child(dir: &std::path::Path, name: &str, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .env("SHOPFLOW_ADMIN_TOKEN", TEST_ADMIN_TOKEN)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .args(args)
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(dir.join(format!("{name}.log")))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        )
        .spawn()
        .expect("start shopflow")
}

/// Waits until `GET path` on `port` answers 200 (or panics with the end of the process's log).
fn wait_ok(dir: &std::path::Path, name: &str, port: u16, path: &str) {
    let c = Client::new(format!("http://127.0.0.1:{port}"));
    let end = Instant::now() + Duration::from_secs(90);
    while Instant::now() < end {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && c.get(path).0 == 200 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(20).collect();
    panic!(
        "{name} did not answer {path} on {port}:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_inventory_and_gateway_as_processes_on_kafka() {
    let Some(url) = shopflow_store::test_postgres_url("the distributed migration") else {
        return;
    };
    let Some(brokers) = shopflow_bus::conformance::test_server(
        "SHOPFLOW_TEST_KAFKA",
        "127.0.0.1:9092",
        "the distributed migration",
    ) else {
        return;
    };
    let tag = format!("dm{}x{}", std::process::id(), free_port());
    let schema = format!("legacy_{tag}");
    let (sql, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    common::drop_stale_slots(&sql).await;
    sql.batch_execute(&format!(
        "{}
         INSERT INTO {schema}.products (sku, name, price_cents) VALUES ('DM-1', 'One', 100), ('DM-2', 'Two', 200);
         INSERT INTO {schema}.stock (sku, quantity) VALUES ('DM-1', 10), ('DM-2', 20);
         CREATE PUBLICATION {schema}_pub FOR TABLE {schema}.products, {schema}.stock;",
        legacy_shop::schema_sql(&schema)
    ))
    .await
    .unwrap();
    let legacy = legacy_shop::Legacy::connect(&url, &schema).await.unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let legacy_addr = l.local_addr().unwrap();
    let router = legacy.router();
    tokio::spawn(async move { axum::serve(l, router).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let bus = format!("kafka://{brokers}?namespace={tag}.");
    let sep = if url.contains('?') { '&' } else { '?' };
    let db = format!("{url}{sep}schema_prefix={tag}_");
    let prefix = format!("cdc.{schema}");
    let publication = format!("{schema}_pub");
    let (cdc_port, inv_port, gw_port) = (free_port(), free_port(), free_port());
    let cdc_args: Vec<String> = [
        "cdc",
        "--cdc-source",
        url.as_str(),
        "--cdc-publication",
        publication.as_str(),
        "--cdc-slot",
        schema.as_str(),
        "--bus",
        bus.as_str(),
        "--db",
        db.as_str(),
        "--listen",
        &format!("127.0.0.1:{cdc_port}"),
        "--data-dir",
        d.join("cdc").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cdc_refs: Vec<&str> = cdc_args.iter().map(String::as_str).collect();
    let mut cdc = spawn(&d, "cdc", &cdc_refs);
    let mut inventory = spawn(
        &d,
        "inventory",
        &[
            "service",
            "inventory",
            "--legacy-catalog",
            &prefix,
            "--bus",
            &bus,
            "--db",
            &db,
            "--listen",
            &format!("127.0.0.1:{inv_port}"),
            "--data-dir",
            d.join("inventory").to_str().unwrap(),
        ],
    );
    let routes = d.join("routes.toml");
    std::fs::write(
        &routes,
        "[legacy]\nurl = \"http://127.0.0.1:1\"\n[new]\nurl = \"http://127.0.0.1:1\"\n\
         [[route]]\nmethods = [\"GET\"]\npath = \"/products\"\ntarget = \"legacy\"\n",
    )
    .unwrap();
    let mut gateway = spawn(
        &d,
        "gateway",
        &[
            "gateway",
            "--routes",
            routes.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{gw_port}"),
            "--legacy",
            &format!("http://{legacy_addr}"),
            "--new",
            &format!("http://127.0.0.1:{inv_port}"),
            "--bus",
            &bus,
            "--db",
            &db,
            "--data-dir",
            d.join("gateway").to_str().unwrap(),
        ],
    );
    let dd = d.clone();
    blocking(move || {
        wait_ok(&dd, "cdc", cdc_port, "/health");
        wait_ok(&dd, "inventory", inv_port, "/health");
        wait_ok(&dd, "gateway", gw_port, "/gateway/health");
    })
    .await;
    let shop = Client::admin(format!("http://127.0.0.1:{inv_port}"));
    let gw = Client::new(format!("http://127.0.0.1:{gw_port}"));
    let expected = vec![("DM-1".to_owned(), 10), ("DM-2".to_owned(), 20)];
    let (s, e) = (shop.clone(), expected.clone());
    blocking(move || {
        common::wait_until("the snapshot in the inventory", || {
            common::legacy_books_agree(&s, &e)
        })
    })
    .await;

    // Through the gateway: legacy, then (switched with the CLI) the inventory.
    let g = gw.clone();
    let body = blocking(move || g.get("/products")).await.1;
    assert!(
        body[0].get("reserved").is_none(),
        "legacy answers first: {body}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .env("SHOPFLOW_ADMIN_TOKEN", TEST_ADMIN_TOKEN)
        .args([
            "routes",
            "switch",
            "GET",
            "/products",
            "new",
            "--gateway",
            &format!("http://127.0.0.1:{gw_port}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "routes switch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g = gw.clone();
    let body = blocking(move || g.get("/products")).await.1;
    assert!(
        body[0].get("reserved").is_some(),
        "the shop answers after the switch: {body}"
    );

    // Changes, the connector killed between them, more changes, the connector back.
    for i in 0..20 {
        sql.batch_execute(&format!(
            "UPDATE {schema}.stock SET quantity = quantity + 1 WHERE sku = 'DM-{}'",
            1 + i % 2
        ))
        .await
        .unwrap();
    }
    cdc.0.kill().unwrap();
    cdc.0.wait().unwrap();
    for i in 0..20 {
        sql.batch_execute(&format!(
            "BEGIN; UPDATE {schema}.stock SET quantity = quantity + 2 WHERE sku = 'DM-{}'; COMMIT;",
            1 + i % 2
        ))
        .await
        .unwrap();
    }
    sql.batch_execute(&format!(
        "INSERT INTO {schema}.products (sku, name, price_cents) VALUES ('DM-3', 'Three', 300);
         INSERT INTO {schema}.stock (sku, quantity) VALUES ('DM-3', 7);"
    ))
    .await
    .unwrap();
    let mut cdc = spawn(&d, "cdc-again", &cdc_refs);
    let expected: Vec<(String, i64)> = common::legacy_stock(&sql, &schema).await;
    assert_eq!(expected.len(), 3);
    let (s, e) = (shop.clone(), expected.clone());
    blocking(move || {
        let end = Instant::now() + Duration::from_secs(90);
        while !common::legacy_books_agree(&s, &e) {
            assert!(
                Instant::now() < end,
                "the inventory never agreed with {e:?}: {}",
                s.get("/products").1
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await;

    for c in [&mut cdc, &mut inventory, &mut gateway] {
        common::stop_gracefully(&mut c.0);
    }
    let _ = sql
        .execute("SELECT pg_drop_replication_slot($1) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", &[&schema])
        .await;
    sql.batch_execute(&format!(
        "DROP PUBLICATION IF EXISTS {schema}_pub; DROP SCHEMA IF EXISTS {schema} CASCADE;"
    ))
    .await
    .unwrap();
    let rows = sql
        .query(
            "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE $1",
            &[&format!("{tag}_%")],
        )
        .await
        .unwrap();
    for r in rows {
        let n: String = r.get(0);
        sql.batch_execute(&format!("DROP SCHEMA {n} CASCADE"))
            .await
            .unwrap();
    }
}
