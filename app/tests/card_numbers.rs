//! No card number outside the payment service's vault, ever: orders are placed with card numbers
//! through every path — the embedded shop in both saga styles, and Kafka + PostgreSQL — and then
//! every file under the data directory, every table, every record on the bus and every log line
//! (at debug level) is searched for the numbers: zero hits. Every file the shop created is its
//! user's alone (mode 0600, directories 0700).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{Client, blocking, free_port, order, stop_gracefully, wait_healthy};
use shopflow_bus::{Bus, TopicPartition};

/// Test cards no other test uses: approved, declined (the simulator's), approved again.
const CARDS: [&str; 3] = ["4111111111111111", "4000000000000002", "5555555555554444"];

fn up(dir: &Path, port: u16, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .env("SHOPFLOW_ADMIN_TOKEN", common::TEST_ADMIN_TOKEN)
        .args([
            "up",
            "--data-dir",
            dir.join("data").to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(extra)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("shop.log")).unwrap())
        .spawn()
        .expect("start shopflow up")
}

/// Places orders with every card, written three ways, and waits for them to finish; returns
/// the order ids.
fn place(c: &Client) -> Vec<String> {
    c.put_product("CARD-1", 1200, 100);
    let user = c.register("cards@example.com", Some("+4915112345678"));
    let mut ids = Vec::new();
    for card in CARDS {
        for written in [
            card.to_owned(),
            format!(
                "{} {} {} {}",
                &card[..4],
                &card[4..8],
                &card[8..12],
                &card[12..]
            ),
            format!(
                "{}-{}-{}-{}",
                &card[..4],
                &card[4..8],
                &card[8..12],
                &card[12..]
            ),
        ] {
            ids.push(c.place_ok(&order(&user, "CARD-1", 1, &written, "DE")));
        }
    }
    for id in &ids {
        c.wait_final(id);
        for path in ["", "/events", "/payment"] {
            let (_, body) = c.get(&format!("/orders/{id}{path}"));
            assert_no_card(&body.to_string(), &format!("GET /orders/{id}{path}"));
        }
    }
    ids
}

/// Every form a card could take in text: the digits, and the digits in groups.
fn forms() -> Vec<String> {
    CARDS
        .iter()
        .flat_map(|c| {
            [
                c.to_string(),
                format!("{} {} {} {}", &c[..4], &c[4..8], &c[8..12], &c[12..]),
                format!("{}-{}-{}-{}", &c[..4], &c[4..8], &c[8..12], &c[12..]),
            ]
        })
        .collect()
}

fn assert_no_card(text: &str, where_: &str) {
    for f in forms() {
        assert!(!text.contains(&f), "card number {f} found in {where_}");
    }
}

fn assert_no_card_bytes(bytes: &[u8], where_: &str) {
    for f in forms() {
        assert!(
            !bytes.windows(f.len()).any(|w| w == f.as_bytes()),
            "card number {f} found in {where_}"
        );
    }
}

/// Every file under `dir`: no card, and private to its owner.
fn search_files(dir: &Path) -> usize {
    use std::os::unix::fs::PermissionsExt;
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        if path.is_dir() {
            assert_eq!(mode, 0o700, "{} is mode {mode:o}", path.display());
            files += search_files(&path);
        } else {
            assert_eq!(mode, 0o600, "{} is mode {mode:o}", path.display());
            assert_no_card_bytes(&std::fs::read(&path).unwrap(), &path.display().to_string());
            files += 1;
        }
    }
    files
}

fn embedded(saga: &str) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut shop = up(dir.path(), port, &["--saga", saga]);
    wait_healthy(port);
    let c = Client::admin(format!("http://127.0.0.1:{port}"));
    let ids = place(&c);
    stop_gracefully(&mut shop);
    let files = search_files(&dir.path().join("data"));
    assert!(files > 10, "only {files} files searched");
    let log = std::fs::read_to_string(dir.path().join("shop.log")).unwrap();
    assert!(
        log.lines().count() > 100,
        "the debug log is too short to mean anything"
    );
    assert_no_card(&log, "the log");
    eprintln!(
        "{saga}: {} orders, {files} files and {} log lines searched: no card number",
        ids.len(),
        log.lines().count()
    );
}

#[test]
fn no_card_number_anywhere_embedded_choreography() {
    embedded("choreography");
}

#[test]
fn no_card_number_anywhere_embedded_orchestration() {
    embedded("orchestration");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_card_number_anywhere_on_kafka_and_postgres() {
    let Some(url) = shopflow_store::test_postgres_url("the card search on PostgreSQL") else {
        return;
    };
    let Some(brokers) = shopflow_bus::conformance::test_server(
        "SHOPFLOW_TEST_KAFKA",
        "127.0.0.1:9092",
        "the card search on Kafka",
    ) else {
        return;
    };
    let prefix = shopflow_bus::conformance::unique("t_card_").replace('-', "_");
    let namespace = format!("{prefix}.");
    let bus = format!("kafka://{brokers}?namespace={namespace}");
    let sep = if url.contains('?') { '&' } else { '?' };
    let db = format!("{url}{sep}schema_prefix={prefix}_");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut shop = up(dir.path(), port, &["--bus", &bus, "--db", &db]);
    let dir_path = dir.path().to_owned();
    blocking(move || {
        wait_healthy(port);
        let c = Client::admin(format!("http://127.0.0.1:{port}"));
        place(&c);
        stop_gracefully(&mut shop);
        search_files(&dir_path.join("data"));
        assert_no_card(
            &std::fs::read_to_string(dir_path.join("shop.log")).unwrap(),
            "the log",
        );
    })
    .await;

    // Every table of every schema of the deployment.
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let tables = client
        .query(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema LIKE $1",
            &[&format!("{prefix}\\_%")],
        )
        .await
        .unwrap();
    assert!(tables.len() > 10, "only {} tables", tables.len());
    let mut rows = 0;
    for t in &tables {
        let (schema, table): (String, String) = (t.get(0), t.get(1));
        let cols = client
            .query(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
                &[&schema, &table],
            )
            .await
            .unwrap();
        // bytea as escaped text, so printable bytes (a card's digits) stay readable.
        let exprs: Vec<String> = cols
            .iter()
            .map(|c| {
                let (name, ty): (String, String) = (c.get(0), c.get(1));
                if ty == "bytea" {
                    format!("coalesce(encode(\"{name}\", 'escape'), '')")
                } else {
                    format!("coalesce(\"{name}\"::text, '')")
                }
            })
            .collect();
        let sql = format!(
            "SELECT concat_ws(' ', {}) FROM \"{schema}\".\"{table}\"",
            exprs.join(", ")
        );
        for r in client.query(&sql, &[]).await.unwrap() {
            let text: String = r.get(0);
            assert_no_card(&text, &format!("{schema}.{table}"));
            rows += 1;
        }
    }
    assert!(rows > 50, "only {rows} rows searched");

    // Every record of every topic of the deployment's namespace.
    let kafka =
        shopflow_kafka::KafkaBus::connect(shopflow_kafka::KafkaConfig::from_url(&bus).unwrap())
            .unwrap();
    let mut records = 0;
    for t in kafka.topics().await.unwrap() {
        for p in 0..t.partitions {
            let tp = TopicPartition::new(t.name.as_str(), p);
            let mut from = 0;
            loop {
                let batch = kafka.read(&tp, from, 1000).await.unwrap();
                let Some(last) = batch.last() else { break };
                from = last.offset + 1;
                for r in &batch {
                    assert_no_card_bytes(&r.value, &format!("{tp} at {}", r.offset));
                    for (name, v) in &r.headers {
                        assert_no_card_bytes(v, &format!("header {name} of {tp}@{}", r.offset));
                    }
                    records += 1;
                }
            }
        }
    }
    // 9 orders: at least their creation and their payment's outcome.
    assert!(records >= 18, "only {records} records searched");
    eprintln!(
        "Kafka + PostgreSQL: {} tables ({rows} rows) and {records} records searched: no card number",
        tables.len()
    );
    kafka.close().await.unwrap();
    for t in &tables {
        let schema: String = t.get(0);
        let _ = client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .await;
    }
}
