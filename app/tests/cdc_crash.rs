//! Change data capture through a crash: `shopflow up --cdc-source …` (the embedded shop with its
//! connector and the inventory following the legacy catalog) is killed with SIGKILL while a
//! writer keeps changing the legacy stock, then started again. Every change is on the bus at
//! least once and in order per key (each update writes a new quantity, so the sequence is
//! checkable), and the inventory's books equal the legacy table.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::{Client, blocking, free_port, stop_gracefully, up_process, wait_healthy, wait_until};
use shopflow_bus::Bus;

/// Per SKU: the highest position seen, the quantities in order, and the quantity at each position.
type Seen = ((u64, u64), Vec<i64>, HashMap<(u64, u64), i64>);

const SKUS: [&str; 4] = ["CRASH-A", "CRASH-B", "CRASH-C", "CRASH-D"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connector_killed_mid_stream_loses_and_reorders_nothing() {
    let Some(url) = shopflow_store::test_postgres_url("change data capture through a crash") else {
        return;
    };
    let schema = format!("legacy_crash{}", std::process::id());
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    common::drop_stale_slots(&db).await;
    let _ = db
        .execute(
            "SELECT pg_drop_replication_slot($1) FROM pg_replication_slots WHERE slot_name = $1",
            &[&schema],
        )
        .await;
    db.batch_execute(&format!(
        "DROP PUBLICATION IF EXISTS {schema}_pub; DROP SCHEMA IF EXISTS {schema} CASCADE;
         {}
         CREATE PUBLICATION {schema}_pub FOR TABLE {schema}.products, {schema}.stock;",
        legacy_shop::schema_sql(&schema)
    ))
    .await
    .unwrap();
    for sku in SKUS {
        db.batch_execute(&format!(
            "INSERT INTO {schema}.products (sku, name, price_cents) VALUES ('{sku}', 'Crash {sku}', 500);
             INSERT INTO {schema}.stock (sku, quantity) VALUES ('{sku}', 1000);"
        ))
        .await
        .unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let publication = format!("{schema}_pub");
    let prefix = format!("cdc.{schema}");
    let args = [
        "--cdc-source",
        url.as_str(),
        "--cdc-publication",
        publication.as_str(),
        "--cdc-slot",
        schema.as_str(),
        "--legacy-catalog",
        prefix.as_str(),
    ];
    let mut up = common::KillOnDrop(up_process(dir.path(), port, &args));
    blocking(move || wait_healthy(port)).await;
    let shop = Client::admin(format!("http://127.0.0.1:{port}"));

    // The writer: every update gives a SKU a quantity it never had, in its own transaction or
    // four at a time.
    let mut written: HashMap<&str, Vec<i64>> = SKUS.iter().map(|s| (*s, vec![1000])).collect();
    let mut step = 1001i64;
    let mut write = |n: usize, written: &mut HashMap<&str, Vec<i64>>| {
        let mut batch = Vec::new();
        for i in 0..n {
            let sku = SKUS[(step as usize + i) % SKUS.len()];
            batch.push((sku, step));
            written.get_mut(sku).unwrap().push(step);
            step += 1;
        }
        batch
    };
    let apply = |batch: Vec<(&str, i64)>| {
        let stmts: Vec<String> = batch
            .iter()
            .map(|(sku, q)| {
                format!("UPDATE {schema}.stock SET quantity = {q} WHERE sku = '{sku}';")
            })
            .collect();
        format!("BEGIN; {} COMMIT;", stmts.join(" "))
    };
    for round in 0..150 {
        let b = write(if round % 5 == 0 { 4 } else { 1 }, &mut written);
        db.batch_execute(&apply(b)).await.unwrap();
    }
    // Some of it reached the inventory; then the process dies without a word.
    let s = shop.clone();
    blocking(move || {
        wait_until("the inventory to follow the legacy stock", || {
            let (_, b) = s.get("/products");
            b.as_array()
                .is_some_and(|a| a.len() == 4 && a.iter().any(|p| p["available"] != 1000))
        })
    })
    .await;
    for round in 0..50 {
        let b = write(if round % 5 == 0 { 4 } else { 1 }, &mut written);
        db.batch_execute(&apply(b)).await.unwrap();
    }
    up.0.kill().unwrap();
    up.0.wait().unwrap();
    // The legacy system does not stop for us.
    for round in 0..150 {
        let b = write(if round % 5 == 0 { 4 } else { 1 }, &mut written);
        db.batch_execute(&apply(b)).await.unwrap();
    }
    let mut up = common::KillOnDrop(up_process(dir.path(), port, &args));
    blocking(move || wait_healthy(port)).await;
    for round in 0..50 {
        let b = write(if round % 5 == 0 { 4 } else { 1 }, &mut written);
        db.batch_execute(&apply(b)).await.unwrap();
    }

    // The inventory's books equal the legacy table.
    let expected: BTreeMap<String, i64> = common::legacy_stock(&db, &schema)
        .await
        .into_iter()
        .collect();
    let s = shop.clone();
    let e: Vec<(String, i64)> = expected.clone().into_iter().collect();
    blocking(move || {
        wait_until("the inventory to equal the legacy stock", || {
            common::legacy_books_agree(&s, &e)
        })
    })
    .await;
    blocking(move || stop_gracefully(&mut up.0)).await;

    // Every change on the bus, at least once, in order per key: drop repeats (a change at an
    // LSN already seen for its key), and each SKU's quantities are exactly the writer's.
    let log =
        shopflow_log::Log::open(dir.path().join("log"), shopflow_log::Config::default()).unwrap();
    let topic = format!("{prefix}.stock");
    let mut seen: HashMap<String, Seen> = HashMap::new();
    let mut repeats = 0;
    for p in 0..4 {
        let tp = shopflow_bus::TopicPartition::new(topic.as_str(), p);
        let (mut from, end) = log.watermarks(&tp).await.unwrap();
        while from < end {
            let recs = Bus::read(&log, &tp, from, 1000).await.unwrap();
            let Some(last) = recs.last() else { break };
            from = last.offset + 1;
            for r in recs {
                let env = shopflow_envelope::Envelope::decode(&r.value).unwrap();
                let c: shopflow_cdc::RowChanged = env.data_as().unwrap();
                let row = c.row().unwrap();
                let sku = row["sku"].as_str().unwrap().to_owned();
                let q = row["quantity"].as_i64().unwrap();
                if std::env::var("CDC_CRASH_DEBUG").is_ok() {
                    eprintln!(
                        "{p} {} {sku} position={:?} q={q} op={:?} id={}",
                        r.offset,
                        c.position(),
                        c.op,
                        env.event_id()
                    );
                }
                let (max, list, at) = seen.entry(sku).or_default();
                if c.position() <= *max && !list.is_empty() {
                    assert_eq!(
                        at.get(&c.position()),
                        Some(&q),
                        "a repeat differs from its first copy"
                    );
                    repeats += 1;
                    continue;
                }
                *max = c.position();
                at.insert(c.position(), q);
                list.push(q);
            }
        }
    }
    // The snapshot was taken while the writer ran: each SKU's sequence on the bus starts at the
    // value its snapshot read and then has every later one, in order.
    for sku in SKUS {
        let got = &seen[sku].1;
        let from = written[sku]
            .iter()
            .position(|q| *q == got[0])
            .expect("the snapshot read a written value");
        assert_eq!(
            got[..],
            written[sku][from..],
            "{sku}: the changes on the bus, in order, without repeats"
        );
    }
    eprintln!(
        "{repeats} changes were sent again after the crash (dropped by position and by the inbox)"
    );
    drop(log);
    let _ = db.execute("SELECT pg_drop_replication_slot($1) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", &[&schema]).await;
    db.batch_execute(&format!(
        "DROP PUBLICATION IF EXISTS {schema}_pub; DROP SCHEMA IF EXISTS {schema} CASCADE;"
    ))
    .await
    .unwrap();
}
