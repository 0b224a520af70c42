//! Change data capture against a real PostgreSQL (`SHOPFLOW_TEST_POSTGRES`, wal_level=logical),
//! onto the embedded log: snapshot, inserts, updates, deletes, a multi-row transaction, a schema
//! change, a large transaction, TOAST, and a connector stopped dead mid-stream.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shopflow_bus::{Bus, Consumer};
use shopflow_cdc::{Config, Connector, Op, RowChanged};
use shopflow_envelope::Envelope;
use shopflow_log::Log;
use shopflow_store::Db;

/// Slots that earlier runs of the tests left behind (a test that failed half-way): inactive,
/// named like ours, not this process's. Each holds WAL back and counts against
/// `max_replication_slots`, so they are dropped before a test makes its own.
async fn drop_stale_slots(sql: &tokio_postgres::Client) {
    let _ = sql
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
              WHERE NOT active AND slot_name ~ '^(cdc_|legacy_|bench_cdc_)' AND slot_name NOT LIKE $1",
            &[&format!("%{}%", std::process::id())],
        )
        .await;
}

struct Source {
    url: String,
    sql: tokio_postgres::Client,
    schema: String,
}

impl Source {
    async fn new(url: &str, tag: &str) -> Source {
        let (sql, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        drop_stale_slots(&sql).await;
        let schema = format!("cdc_{tag}_{}", std::process::id());
        sql.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE;
             CREATE SCHEMA {schema};
             CREATE TABLE {schema}.products (id INT PRIMARY KEY, name TEXT NOT NULL, price_cents BIGINT NOT NULL, active BOOLEAN NOT NULL DEFAULT true);
             CREATE TABLE {schema}.docs (id INT PRIMARY KEY, title TEXT NOT NULL, body TEXT);
             DROP PUBLICATION IF EXISTS {schema}_pub;
             CREATE PUBLICATION {schema}_pub FOR TABLE {schema}.products, {schema}.docs;"
        ))
        .await
        .unwrap();
        let _ = sql
            .execute("SELECT pg_drop_replication_slot($1) FROM pg_replication_slots WHERE slot_name = $1", &[&schema])
            .await;
        Source {
            url: url.to_owned(),
            sql,
            schema,
        }
    }

    fn config(&self) -> Config {
        let mut c = Config::new(&self.url, format!("{}_pub", self.schema), &self.schema);
        c.batch = 200;
        c.lag_every = Duration::from_millis(200);
        c
    }

    async fn cleanup(&self) {
        for _ in 0..50 {
            let r = self
                .sql
                .execute("SELECT pg_drop_replication_slot($1) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", &[&self.schema])
                .await;
            let left = self
                .sql
                .query(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                    &[&self.schema],
                )
                .await
                .unwrap();
            if r.is_ok() && left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let s = &self.schema;
        self.sql
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {s}_pub; DROP SCHEMA IF EXISTS {s} CASCADE;"
            ))
            .await
            .unwrap();
    }
}

/// Every change on the topics so far, in each partition's order: reads until `want` arrived,
/// or until a poll finds nothing once `within` has passed (a long topic is read to its end).
async fn read_all(
    bus: &Log,
    topics: &[String],
    want: usize,
    within: Duration,
) -> Vec<(String, RowChanged, String)> {
    let group = format!("reader-{}", uuid_like());
    let mut c = bus.subscribe(&group, topics).await.unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + within;
    while out.len() < want {
        let records = c.poll(5000, Duration::from_millis(200)).await.unwrap();
        if records.is_empty() && Instant::now() >= deadline {
            break;
        }
        for r in records {
            let env = Envelope::decode(&r.value).unwrap();
            assert_eq!(env.event_type(), "RowChanged");
            let key = String::from_utf8(r.key.unwrap().to_vec()).unwrap();
            assert_eq!(env.aggregate_id(), key);
            out.push((
                key,
                env.data_as::<RowChanged>().unwrap(),
                env.event_id().to_string(),
            ));
        }
    }
    out
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

fn start(
    config: Config,
    bus: Log,
    state: Db,
) -> (
    tokio::task::JoinHandle<shopflow_cdc::Result<()>>,
    tokio::sync::oneshot::Sender<()>,
    std::sync::Arc<shopflow_cdc::Status>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::runtime::Handle::current();
    let (status_tx, status_rx) = std::sync::mpsc::channel();
    let task = handle.spawn(async move {
        let connector = Connector::new(config, std::sync::Arc::new(bus), state).await?;
        status_tx.send(connector.status()).unwrap();
        connector
            .run(async move {
                let _ = stopped.await;
            })
            .await
    });
    let status = status_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("connector did not start");
    (task, stop, status)
}

async fn until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_snapshot_changes_schema_changes_large_transactions_and_toast() {
    let Some(url) = shopflow_store::test_postgres_url("change data capture") else {
        return;
    };
    let src = Source::new(&url, "all").await;
    let s = src.schema.clone();
    src.sql
        .batch_execute(&format!(
            "INSERT INTO {s}.products (id, name, price_cents) VALUES (1, 'kettle', 2999), (2, 'mug', 899);"
        ))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let bus = Log::open(dir.path().join("log"), shopflow_log::Config::default()).unwrap();
    let state = Db::open_sqlite(dir.path().join("cdc.db")).unwrap();
    let (task, stop, status) = start(src.config(), bus.clone(), state);
    until("streaming", Duration::from_secs(30), || {
        status.phase() == "streaming"
    })
    .await;
    assert_eq!(
        status
            .snapshot_rows
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );

    // Inserts, an update, a delete; then a transaction touching several rows.
    src.sql
        .batch_execute(&format!(
            "INSERT INTO {s}.products (id, name, price_cents) VALUES (3, 'teapot', 4500)"
        ))
        .await
        .unwrap();
    src.sql
        .batch_execute(&format!(
            "UPDATE {s}.products SET price_cents = 2499 WHERE id = 1"
        ))
        .await
        .unwrap();
    src.sql
        .batch_execute(&format!("DELETE FROM {s}.products WHERE id = 2"))
        .await
        .unwrap();
    src.sql
        .batch_execute(&format!(
            "BEGIN; INSERT INTO {s}.products (id, name, price_cents) VALUES (4, 'cup', 500);
             UPDATE {s}.products SET name = 'big teapot' WHERE id = 3;
             UPDATE {s}.products SET price_cents = 550 WHERE id = 4; COMMIT;"
        ))
        .await
        .unwrap();
    // A schema change, then a row that has the new column.
    src.sql
        .batch_execute(&format!(
            "ALTER TABLE {s}.products ADD COLUMN colour TEXT; INSERT INTO {s}.products (id, name, price_cents, colour) VALUES (5, 'plate', 700, 'blue');"
        ))
        .await
        .unwrap();
    // A large transaction: 5,000 rows in one commit.
    src.sql
        .batch_execute(&format!(
            "INSERT INTO {s}.products (id, name, price_cents) SELECT g, 'bulk ' || g, g FROM generate_series(1000, 5999) g"
        ))
        .await
        .unwrap();
    // TOAST: a large, incompressible body, then an update that leaves it alone.
    src.sql
        .batch_execute(&format!(
            "INSERT INTO {s}.docs (id, title, body) SELECT 1, 'manual', string_agg(md5(g::text), '') FROM generate_series(1, 2000) g;
             UPDATE {s}.docs SET title = 'manual v2' WHERE id = 1;"
        ))
        .await
        .unwrap();

    // A truncate: one `t` event on the table's topic.
    src.sql
        .batch_execute(&format!("TRUNCATE {s}.docs"))
        .await
        .unwrap();

    let topics = vec![format!("cdc.{s}.products"), format!("cdc.{s}.docs")];
    let want = 2 + 1 + 1 + 1 + 3 + 1 + 5000 + 2 + 1;
    let got = read_all(&bus, &topics, want, Duration::from_secs(60)).await;
    assert_eq!(
        got.len(),
        want,
        "every change once, nothing more (no restart happened)"
    );

    let products: Vec<&RowChanged> = got
        .iter()
        .filter(|(_, c, _)| c.source.table == "products")
        .map(|(_, c, _)| c)
        .collect();
    let by_key = |k: i64| -> Vec<&RowChanged> {
        products
            .iter()
            .copied()
            .filter(|c| c.row().and_then(|r| r.get("id")) == Some(&json!(k)))
            .collect()
    };
    // Snapshot rows first, marked as such.
    let one = by_key(1);
    assert_eq!(
        one.iter().map(|c| c.op).collect::<Vec<_>>(),
        vec![Op::Read, Op::Update]
    );
    assert_eq!(one[0].source.snapshot, "true");
    assert_eq!(one[0].after.as_ref().unwrap()["price_cents"], json!(2999));
    assert_eq!(one[1].after.as_ref().unwrap()["price_cents"], json!(2499));
    assert_eq!(one[1].after.as_ref().unwrap()["active"], json!(true));
    assert!(one[1].source.tx_id.is_some() && one[1].position() > one[0].position());
    // The delete carries the key in `before`.
    let two = by_key(2);
    assert_eq!(
        two.iter().map(|c| c.op).collect::<Vec<_>>(),
        vec![Op::Read, Op::Delete]
    );
    assert_eq!(
        Value::Object(two[1].before.clone().unwrap()),
        json!({"id": 2})
    );
    assert!(two[1].after.is_none());
    // Per key, in commit order, across the multi-row transaction.
    let three = by_key(3);
    assert_eq!(
        three.iter().map(|c| c.op).collect::<Vec<_>>(),
        vec![Op::Create, Op::Update]
    );
    assert_eq!(
        three[1].after.as_ref().unwrap()["name"],
        json!("big teapot")
    );
    let four = by_key(4);
    assert_eq!(
        four.iter().map(|c| c.op).collect::<Vec<_>>(),
        vec![Op::Create, Op::Update]
    );
    assert_eq!(
        four[0].source.tx_id, four[1].source.tx_id,
        "one transaction"
    );
    assert_eq!(four[1].after.as_ref().unwrap()["price_cents"], json!(550));
    // The new column.
    let five = by_key(5);
    assert_eq!(five[0].after.as_ref().unwrap()["colour"], json!("blue"));
    // The large transaction: all of it, one transaction id, in order.
    let bulk: Vec<&RowChanged> = products
        .iter()
        .copied()
        .filter(|c| c.row().unwrap()["id"].as_i64().unwrap() >= 1000)
        .collect();
    assert_eq!(bulk.len(), 5000);
    assert!(
        bulk.iter()
            .all(|c| c.source.tx_id == bulk[0].source.tx_id && c.op == Op::Create)
    );
    // TOAST: the body arrives with the insert; the update that did not touch it says so.
    // (The truncate is keyed by the table, not a row: it is on its own partition, so it is read
    // apart from the rows' changes.)
    let truncates: Vec<&RowChanged> = got
        .iter()
        .filter(|(key, c, _)| c.op == Op::Truncate && *key == format!("{s}.docs"))
        .map(|(_, c, _)| c)
        .collect();
    assert_eq!(truncates.len(), 1);
    assert!(truncates[0].before.is_none() && truncates[0].after.is_none());
    let docs: Vec<&RowChanged> = got
        .iter()
        .filter(|(_, c, _)| c.source.table == "docs" && c.op != Op::Truncate)
        .map(|(_, c, _)| c)
        .collect();
    assert_eq!(docs.len(), 2);
    assert_eq!(
        docs[0].after.as_ref().unwrap()["body"]
            .as_str()
            .unwrap()
            .len(),
        64_000
    );
    assert_eq!(docs[1].after.as_ref().unwrap()["title"], json!("manual v2"));
    assert_eq!(
        docs[1].after.as_ref().unwrap()["body"],
        json!(shopflow_cdc::value::UNAVAILABLE)
    );

    // Confirmed up to the last commit; ids are unique.
    let ids: std::collections::HashSet<&String> = got.iter().map(|(_, _, id)| id).collect();
    assert_eq!(ids.len(), got.len());
    until("the position confirmed", Duration::from_secs(10), || {
        status
            .confirmed_lsn
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    })
    .await;

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    src.cleanup().await;
}

/// A connector killed during its snapshot, then again mid-stream, loses nothing and leaves
/// nothing behind: the rows its abandoned snapshot had published and that were deleted before
/// the retake are withdrawn by deletes (`source.snapshot` "true", no transaction), so the
/// folded topic equals the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_stopped_dead_mid_stream_resumes_without_loss() {
    let Some(url) = shopflow_store::test_postgres_url("change data capture") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cdc.db");
    killed_mid_snapshot_and_mid_stream(&url, "crash", || {
        let path = path.clone();
        async move { Db::open_sqlite(&path).unwrap() }
    })
    .await;
}

/// The same, with the connector's own record in a PostgreSQL schema (`shopflow cdc --state
/// postgres://…`, the distributed deployment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_with_the_connectors_state_in_postgres() {
    let Some(url) = shopflow_store::test_postgres_url("change data capture") else {
        return;
    };
    let schema = format!("cdc_state_{}", std::process::id());
    let state_url = url.clone();
    let s = schema.clone();
    killed_mid_snapshot_and_mid_stream(&url, "crashpg", move || {
        let (u, s) = (state_url.clone(), s.clone());
        async move { Db::connect_postgres(&u, &s).await.unwrap() }
    })
    .await;
    let (sql, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    sql.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
}

async fn killed_mid_snapshot_and_mid_stream<F, Fut>(url: &str, tag: &str, state: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Db>,
{
    let url = url.to_owned();
    let src = Source::new(&url, tag).await;
    let s = src.schema.clone();
    src.sql
        .batch_execute(&format!("INSERT INTO {s}.products (id, name, price_cents) SELECT g, 'p' || g, g FROM generate_series(1, 20000) g"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bus = Log::open(dir.path().join("log"), shopflow_log::Config::default()).unwrap();

    let mut config = src.config();
    config.batch = 50;
    config.snapshot_batch = 50;
    // Run 1: killed during the snapshot (the task is dropped, nothing graceful).
    let (task, _stop, status) = start(config.clone(), bus.clone(), state().await);
    until("some snapshot rows", Duration::from_secs(30), || {
        status
            .snapshot_rows
            .load(std::sync::atomic::Ordering::Relaxed)
            > 100
    })
    .await;
    task.abort();
    let _ = task.await;
    // The 101st row is read only once the first batch (rows 1..=50) is on the bus: one batch
    // is in flight at most.
    assert_eq!(status.phase(), "snapshot", "run 1 died during its snapshot");

    // Writers keep going while no connector runs: 40 transactions of updates and deletes.
    for i in 0..40 {
        src.sql
            .batch_execute(&format!(
                "BEGIN; UPDATE {s}.products SET price_cents = price_cents + 1000 WHERE id % 40 = {i} AND id <= 300;
                 DELETE FROM {s}.products WHERE id = {} ; DELETE FROM {s}.products WHERE id = {}; COMMIT;",
                300 - i,
                // Among the first rows the snapshot read (heap order): published by run 1
                // before it died, so only a withdrawal takes them off the bus.
                i + 1
            ))
            .await
            .unwrap();
    }
    // Run 2: snapshot again (the first did not finish), streaming, then killed mid-stream.
    let (task, _stop, status) = start(config.clone(), bus.clone(), state().await);
    until("streaming", Duration::from_secs(30), || {
        status.phase() == "streaming"
    })
    .await;
    let writer = {
        let (sql, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let s = s.clone();
        tokio::spawn(async move {
            for i in 0..60 {
                sql.batch_execute(&format!(
                    "UPDATE {s}.products SET name = 'n{i}' WHERE id % 7 = {} AND id <= 300",
                    i % 7
                ))
                .await
                .unwrap();
            }
            sql.batch_execute(&format!("INSERT INTO {s}.products (id, name, price_cents) SELECT g, 'late', g FROM generate_series(100000, 102999) g")).await.unwrap();
        })
    };
    until("some changes", Duration::from_secs(30), || {
        status.changes.load(std::sync::atomic::Ordering::Relaxed) >= 100
    })
    .await;
    task.abort();
    let _ = task.await;
    writer.await.unwrap();

    // Run 3: resumes from the confirmed position.
    let (task, stop, status) = start(config, bus.clone(), state().await);
    until("streaming", Duration::from_secs(30), || {
        status.phase() == "streaming"
    })
    .await;
    src.sql
        .batch_execute(&format!(
            "INSERT INTO {s}.products (id, name, price_cents) VALUES (999999, 'marker', 1)"
        ))
        .await
        .unwrap();

    // Fold the topic: per key, the change with the highest LSN wins (a repeat has the same or
    // an older one); the result must equal the table.
    let topics = vec![format!("cdc.{s}.products")];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut folded: BTreeMap<i64, Option<Value>> = BTreeMap::new();
    let mut seen_marker = false;
    let mut all = Vec::new();
    while !seen_marker && Instant::now() < deadline {
        all = read_all(&bus, &topics, usize::MAX, Duration::from_secs(2)).await;
        seen_marker = all
            .iter()
            .any(|(_, c, _)| c.row().is_some_and(|r| r["id"] == json!(999999)));
    }
    assert!(seen_marker, "the marker written after the restart arrived");
    let mut last: HashMap<String, (u64, u64)> = HashMap::new();
    for (key, c, _) in &all {
        // In order per key, except that a repeat after a restart starts over from the confirmed
        // position (or the snapshot): its position is one already seen.
        if last.get(key).is_some_and(|p| c.position() <= *p) {
            continue;
        }
        last.insert(key.clone(), c.position());
        let id = c.row().unwrap()["id"].as_i64().unwrap();
        folded.insert(id, c.after.clone().map(Value::Object));
    }
    let rows = src
        .sql
        .query(
            &format!("SELECT id, name, price_cents, active FROM {s}.products ORDER BY id"),
            &[],
        )
        .await
        .unwrap();
    let table: BTreeMap<i64, Option<Value>> = rows
        .iter()
        .map(|r| {
            let id: i32 = r.get(0);
            (i64::from(id), Some(json!({"id": id, "name": r.get::<_, String>(1), "price_cents": r.get::<_, i64>(2), "active": r.get::<_, bool>(3)})))
        })
        .collect();
    let withdrawn: Vec<i64> = all
        .iter()
        .filter(|(_, c, _)| c.op == Op::Delete && c.source.tx_id.is_none())
        .map(|(_, c, _)| {
            assert_eq!(c.source.snapshot, "true");
            c.before.as_ref().unwrap()["id"].as_i64().unwrap()
        })
        .collect();
    assert!(
        (1..=40).all(|id| withdrawn.contains(&id)),
        "run 1 published rows 1..=40 and they were deleted before the retake: each is withdrawn by a delete ({withdrawn:?})"
    );
    let live: BTreeMap<i64, Option<Value>> =
        folded.into_iter().filter(|(_, v)| v.is_some()).collect();
    assert_eq!(live.len(), table.len(), "the same rows exist on both sides");
    assert_eq!(live, table, "the folded topic equals the table");

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    src.cleanup().await;
}

#[tokio::test]
async fn refuses_a_source_it_cannot_read_with_a_clear_reason() {
    let Some(url) = shopflow_store::test_postgres_url("change data capture") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bus = Log::open(dir.path().join("log"), shopflow_log::Config::default()).unwrap();
    let state = Db::open_sqlite(dir.path().join("cdc.db")).unwrap();
    let c = Connector::new(
        Config::new(&url, "no_such_publication", "cdc_missing_pub"),
        std::sync::Arc::new(bus),
        state,
    )
    .await
    .unwrap();
    let err = c.run(std::future::pending()).await.unwrap_err().to_string();
    assert!(
        err.contains("no publication `no_such_publication`"),
        "{err}"
    );
}

/// Busy database, quiet captured tables: the slot's confirmed position follows the WAL with a
/// heartbeat, and stays behind without one (PostgreSQL sends nothing for transactions that
/// touch no published table, so there is no commit to confirm).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_keeps_a_quiet_slot_from_holding_wal() {
    let Some(url) = shopflow_store::test_postgres_url("change data capture") else {
        return;
    };
    for (tag, heartbeat) in [("beat", Some(Duration::from_millis(200))), ("nobeat", None)] {
        let src = Source::new(&url, tag).await;
        let s = src.schema.clone();
        src.sql
            .batch_execute(&format!(
                "CREATE TABLE {s}.noise (id SERIAL PRIMARY KEY, v TEXT NOT NULL)"
            ))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bus = Log::open(dir.path().join("log"), shopflow_log::Config::default()).unwrap();
        let mut config = src.config();
        config.heartbeat = heartbeat;
        let (task, stop, status) = start(
            config,
            bus.clone(),
            Db::open_sqlite(dir.path().join("cdc.db")).unwrap(),
        );
        until("streaming", Duration::from_secs(30), || {
            status.phase() == "streaming"
        })
        .await;
        // Writes to a table outside the publication only.
        src.sql
            .batch_execute(&format!(
                "INSERT INTO {s}.noise (v) SELECT repeat('x', 200) FROM generate_series(1, 5000)"
            ))
            .await
            .unwrap();
        let target: String = src
            .sql
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        let caught_up = || async {
            src.sql
                .query_one(
                    "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
                    &[&s, &target],
                )
                .await
                .unwrap()
                .get::<_, bool>(0)
        };
        let deadline =
            Instant::now() + Duration::from_secs(if heartbeat.is_some() { 20 } else { 4 });
        let mut confirmed = caught_up().await;
        while !confirmed && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            confirmed = caught_up().await;
        }
        assert_eq!(
            confirmed,
            heartbeat.is_some(),
            "{tag}: the slot's confirmed position passed the WAL written elsewhere"
        );
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
        src.cleanup().await;
    }
}
