//! A lane reads its batch's inbox rows and sequence numbers once, before the records go through
//! the stack: duplicates inside a batch and across batches, a handled record's numbers and a
//! failed attempt's rollback must come out as they did with a statement per record; a failure
//! in a run without savepoints reruns the batch with them and is counted once. Run on
//! SQLite and, when `SHOPFLOW_TEST_POSTGRES` names a server, on PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use shopflow_bus::{Bus, Message, Record, TopicPartition, TopicSpec};
use shopflow_envelope::{Envelope, Kind, Meta, Registry};
use shopflow_log::Log;
use shopflow_runtime::{Handler, HandlerError, Outgoing, Runner, RunnerConfig};
use shopflow_store::{Db, Tx, params, sequence};

/// Writes every `n` it handles; fails transiently on `n == fail_on`.
struct Tally {
    fail_on: Arc<AtomicI64>,
}

impl Handler for Tally {
    fn name(&self) -> &'static str {
        "tally"
    }
    fn topics(&self) -> Vec<String> {
        vec!["in".into()]
    }
    fn complete_sources(&self) -> Vec<&'static str> {
        vec!["counter"]
    }
    fn only_database_effects(&self) -> bool {
        true
    }
    async fn handle(&self, tx: &mut Tx, env: &Envelope) -> Result<Vec<Outgoing>, HandlerError> {
        let n = env.data()["n"].as_i64().unwrap_or(-1);
        tx.execute("INSERT INTO seen (n) VALUES ($1)", params![n])
            .await?;
        if n == self.fail_on.load(Ordering::SeqCst) {
            return Err(HandlerError::Transient("not yet".into()));
        }
        Ok(vec![])
    }
}

/// Event `n` of aggregate `K`, numbered `n` by its producer.
fn event(n: i64) -> Vec<u8> {
    Envelope::from_parts(
        "Numbered",
        1,
        Kind::Integration,
        serde_json::json!({"n": n}),
        Meta::new("counter", "K", n as u64),
    )
    .unwrap()
    .encode()
    .unwrap()
}

fn at(value: &[u8], offset: u64) -> Record {
    let m = Message::new("in", "K".to_owned(), value.to_vec());
    Record {
        topic: Arc::from("in"),
        partition: 0,
        offset,
        timestamp_ms: 0,
        key: m.key,
        value: m.value,
        headers: m.headers,
    }
}

async fn seen(db: &Db) -> Vec<i64> {
    db.query("SELECT n FROM seen ORDER BY n", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.i64(0).unwrap())
        .collect()
}

async fn duplicates_numbers_and_rollbacks_as_per_record(db: &Db) {
    let mut tx = db.begin().await.unwrap();
    tx.batch("CREATE TABLE seen (n BIGINT NOT NULL)")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path().join("log"), shopflow_log::Config::default()).unwrap();
    log.create_topic("in", &TopicSpec::new(1)).await.unwrap();
    let mut registry = Registry::new();
    registry.register_type("Numbered", 1, Kind::Integration);
    let fail_on = Arc::new(AtomicI64::new(0));
    let runner = Runner::new(
        log.clone(),
        db.clone(),
        Arc::new(Tally {
            fail_on: fail_on.clone(),
        }),
        Arc::new(registry),
        RunnerConfig::default(),
    );
    let stats = runner.stats();
    let e: Vec<Vec<u8>> = (0..=8).map(event).collect();
    let tp = TopicPartition::new("in", 0);

    // 1 published twice (the relay's at-least-once): the second copy in the same batch is a
    // duplicate of a record the batch itself handled.
    let d = runner
        .deliver(&[at(&e[1], 0), at(&e[2], 1), at(&e[1], 2), at(&e[3], 3)])
        .await
        .unwrap();
    assert_eq!(d.commit, vec![(tp.clone(), 4)]);
    assert_eq!(seen(db).await, vec![1, 2, 3]);
    assert_eq!(
        (
            stats.handled.load(Ordering::Relaxed),
            stats.duplicates.load(Ordering::Relaxed)
        ),
        (3, 1)
    );

    // Redelivered with one new record: the old ones are found in the inbox, read ahead.
    runner
        .deliver(&[at(&e[2], 1), at(&e[3], 3), at(&e[4], 4)])
        .await
        .unwrap();
    assert_eq!(seen(db).await, vec![1, 2, 3, 4]);
    assert_eq!(stats.duplicates.load(Ordering::Relaxed), 3);

    // 6 before 5 in one batch: a gap after 4 (read ahead from the last batch), then 5 late.
    runner.deliver(&[at(&e[6], 5), at(&e[5], 6)]).await.unwrap();
    assert_eq!(
        sequence::anomalies(db).await.unwrap(),
        vec![("tally".to_owned(), 2)],
        "one gap, one reordering"
    );
    assert!(sequence::gaps(db).await.unwrap().is_empty());

    // 7 fails: its attempt is rolled back, the partition stops there, and the copy of 7 behind
    // it is left for the retry — which handles 7 once and finds the copy a duplicate.
    fail_on.store(7, Ordering::SeqCst);
    let d = runner
        .deliver(&[at(&e[7], 7), at(&e[7], 8), at(&e[8], 9)])
        .await
        .unwrap();
    assert!(d.stop.is_some(), "{d:?}");
    assert!(d.commit.is_empty(), "{d:?}");
    assert_eq!(d.resume, vec![(tp.clone(), 7)]);
    assert_eq!(seen(db).await, vec![1, 2, 3, 4, 5, 6]);
    // The handler's effects are all in the database: its batches ran without savepoints, and
    // this one was run again with them when 7 failed — counted once, by that second run.
    assert_eq!(stats.replays.load(Ordering::Relaxed), 1);
    assert_eq!(stats.transient_failures.load(Ordering::Relaxed), 1);
    assert_eq!(stats.handled.load(Ordering::Relaxed), 6);
    fail_on.store(0, Ordering::SeqCst);
    let d = runner
        .deliver(&[at(&e[7], 7), at(&e[7], 8), at(&e[8], 9)])
        .await
        .unwrap();
    assert_eq!(d.commit, vec![(tp, 10)]);
    assert_eq!(seen(db).await, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(stats.handled.load(Ordering::Relaxed), 8);
    assert_eq!(stats.duplicates.load(Ordering::Relaxed), 4);
    assert!(
        sequence::gaps(db).await.unwrap().is_empty(),
        "every number handled once: {:?}",
        sequence::gaps(db).await.unwrap()
    );
    assert_eq!(
        sequence::anomalies(db).await.unwrap(),
        vec![("tally".to_owned(), 2)],
        "the failed attempt counted nothing"
    );
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_sqlite(dir.path().join("svc.db")).unwrap();
    db.migrate_building_blocks().await.unwrap();
    duplicates_numbers_and_rollbacks_as_per_record(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres() {
    let Some(url) = shopflow_store::test_postgres_url("the runtime's read-ahead on PostgreSQL")
    else {
        return;
    };
    let schema = format!(
        "t_{}",
        shopflow_bus::conformance::unique("ra").replace('-', "_")
    );
    let db = Db::connect_postgres(&url, &schema).await.unwrap();
    db.migrate_building_blocks().await.unwrap();
    duplicates_numbers_and_rollbacks_as_per_record(&db).await;
    let mut tx = db.begin().await.unwrap();
    tx.batch(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
}
