//! Dead-letter operations: dead letters are indexed, listed with filters, shown, discarded with a
//! reason and redriven; a redriven event is handled by the consumer that dead-lettered it and
//! skipped by the inbox of one that handled it before — never applied twice.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shopflow_bus::{Bus, Message, TopicSpec};
use shopflow_envelope::{Envelope, Kind, Meta, Registry};
use shopflow_log::Log;
use shopflow_runtime::dlq::{self, Filter, Indexer};
use shopflow_runtime::{Handler, HandlerError, Outgoing, Runner, RunnerConfig, Shutdown};
use shopflow_store::outbox::{Relay, RelayConfig};
use shopflow_store::{Db, Tx, params};

/// Records every `n` it handles; fails permanently on `n == 3` while `broken`.
struct Recorder {
    name: &'static str,
    broken: Arc<AtomicBool>,
}

impl Handler for Recorder {
    fn name(&self) -> &'static str {
        self.name
    }
    fn topics(&self) -> Vec<String> {
        vec!["in".into()]
    }
    async fn handle(&self, tx: &mut Tx, env: &Envelope) -> Result<Vec<Outgoing>, HandlerError> {
        let n = env.data()["n"].as_i64().unwrap_or(-1);
        if n == 3 && self.broken.load(Ordering::SeqCst) {
            return Err(HandlerError::Permanent("no tax rate for region".into()));
        }
        tx.execute(
            "INSERT INTO seen (consumer, n) VALUES ($1, $2)",
            params![self.name, n],
        )
        .await?;
        Ok(vec![])
    }
}

fn event(n: i64) -> Message {
    let env = Envelope::from_parts(
        "Numbered",
        1,
        Kind::Integration,
        serde_json::json!({"n": n}),
        Meta::new("test", format!("agg-{n}"), 1),
    )
    .unwrap();
    let mut m = Message::new("in", env.aggregate_id().to_owned(), env.encode().unwrap());
    m.headers.push((
        shopflow_runtime::headers::EVENT_TYPE.into(),
        bytes::Bytes::from_static(b"Numbered"),
    ));
    m
}

async fn seen(db: &Db, consumer: &str) -> Vec<i64> {
    db.query(
        "SELECT n FROM seen WHERE consumer = $1 ORDER BY n",
        params![consumer],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.i64(0).unwrap())
    .collect()
}

/// A service's database (with the `seen` table the handlers write) and an operations database.
async fn databases(dir: &std::path::Path) -> (Db, Db) {
    let svc = common::service_db(
        &dir.join("svc.db"),
        "CREATE TABLE seen (consumer TEXT NOT NULL, n INTEGER NOT NULL)",
    )
    .await;
    let ops = Db::open_sqlite(dir.join("ops.db")).unwrap();
    ops.migrate_service("ops", dlq::MIGRATIONS).await.unwrap();
    (svc, ops)
}

async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_discarded_and_redriven_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path().join("log"), shopflow_log::Config::default()).unwrap();
    for t in ["in", "in.dlq"] {
        log.create_topic(t, &TopicSpec::new(2)).await.unwrap();
    }
    let (svc, ops) = databases(dir.path()).await;

    let mut registry = Registry::new();
    registry.register_type("Numbered", 1, Kind::Integration);
    let registry = Arc::new(registry);
    let broken = Arc::new(AtomicBool::new(true));
    let healthy = Arc::new(AtomicBool::new(false));
    let (stop, shutdown) = Shutdown::new();
    let mut tasks = Vec::new();
    for (name, flag) in [("fragile", broken.clone()), ("sturdy", healthy)] {
        let runner = Runner::new(
            log.clone(),
            svc.clone(),
            Arc::new(Recorder { name, broken: flag }),
            registry.clone(),
            RunnerConfig::default(),
        );
        tasks.push(tokio::spawn(runner.run(shutdown.clone())));
    }
    for db in [svc.clone(), ops.clone()] {
        let relay = Relay::new(db, log.clone(), RelayConfig::default());
        let s = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            relay.run(s.wait()).await.unwrap();
        }));
    }
    tasks.push(tokio::spawn(
        Indexer::new(log.clone(), ops.clone(), vec!["in.dlq".into()]).run(shutdown.clone()),
    ));

    let mut batch: Vec<Message> = (1..=5).map(event).collect();
    batch.push(Message::new("in", "junk", "{not json"));
    log.publish(batch).await.unwrap();

    // Two dead letters: the permanent failure (of `fragile` only) and the junk (of both).
    let all = Filter {
        status: Some("all".into()),
        ..Filter::default()
    };
    wait_for("three dead letters indexed", || async {
        dlq::list(&ops, &all).await.unwrap().len() == 3
    })
    .await;
    assert_eq!(seen(&svc, "fragile").await, vec![1, 2, 4, 5]);
    assert_eq!(seen(&svc, "sturdy").await, vec![1, 2, 3, 4, 5]);

    let tax = dlq::list(
        &ops,
        &Filter {
            error: Some("tax rate".into()),
            ..Filter::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(tax.len(), 1);
    let letter = &tax[0];
    assert_eq!(
        (
            letter.consumer.as_str(),
            letter.event_type.as_str(),
            letter.status.as_str()
        ),
        ("fragile", "Numbered", "open")
    );
    assert_eq!(letter.original_topic, "in");
    assert_eq!(letter.attempts, 1);
    assert!(letter.error.contains("no tax rate for region"));
    let junk = dlq::list(
        &ops,
        &Filter {
            event_type: Some("(undecodable)".into()),
            ..Filter::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(junk.len(), 2, "{junk:?}");
    let detail = dlq::show(&ops, &junk[0].id).await.unwrap();
    assert!(!detail.payload_is_json);
    assert_eq!(detail.payload, serde_json::json!("{not json"));
    assert!(detail.headers.contains_key("dlq-error"));
    let detail = dlq::show(&ops, &letter.id).await.unwrap();
    assert_eq!(detail.payload["data"]["n"], 3);

    // Discard the junk, with a reason; a second discard and an unknown id are clear errors.
    for j in &junk {
        let d = dlq::discard(&ops, &j.id, "garbage from a test producer")
            .await
            .unwrap();
        assert_eq!(d.status, "discarded");
    }
    assert!(matches!(
        dlq::discard(&ops, &junk[0].id, "again").await,
        Err(dlq::Error::NotOpen { .. })
    ));
    assert!(matches!(
        dlq::discard(&ops, &letter.id, "  ").await,
        Err(dlq::Error::Invalid(_))
    ));
    assert!(matches!(
        dlq::show(&ops, "in.dlq:9:9").await,
        Err(dlq::Error::NotFound(_))
    ));
    assert!(matches!(
        dlq::list(
            &ops,
            &Filter {
                status: Some("weird".into()),
                ..Filter::default()
            }
        )
        .await,
        Err(dlq::Error::Invalid(_))
    ));

    // Fix the bug, redrive everything open: only the tax failure is open.
    broken.store(false, Ordering::SeqCst);
    let redriven = dlq::redrive_matching(&ops, &Filter::default())
        .await
        .unwrap();
    assert_eq!((redriven.count, redriven.remaining), (1, 0));
    assert_eq!(redriven.redriven[0].id, letter.id);
    assert_eq!(redriven.redriven[0].consumer, "fragile");
    wait_for("fragile handles the redriven event", || async {
        seen(&svc, "fragile").await == vec![1, 2, 3, 4, 5]
    })
    .await;
    // `sturdy` had handled it: its inbox skips the redriven copy.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen(&svc, "sturdy").await, vec![1, 2, 3, 4, 5]);
    // A second redrive of the same dead letter sends nothing.
    let again = dlq::redrive(&ops, &letter.id).await.unwrap();
    assert!(again.already_redriven);
    assert_eq!(
        shopflow_store::outbox::backlog(&ops).await.unwrap(),
        0,
        "nothing was enqueued"
    );
    let counts = dlq::counts(&ops).await.unwrap();
    assert_eq!(counts.get("redriven"), Some(&1));
    assert_eq!(counts.get("discarded"), Some(&2));
    assert_eq!(counts.get("open"), None);

    stop.trigger();
    for t in tasks {
        t.await.unwrap();
    }
    log.close().await.unwrap();
}

fn keyed(n: i64, key: &str, offset: u64) -> shopflow_bus::Record {
    let m = {
        let env = Envelope::from_parts(
            "Numbered",
            1,
            Kind::Integration,
            serde_json::json!({"n": n}),
            Meta::new("test", key, n as u64),
        )
        .unwrap();
        Message::new("in", key.to_owned(), env.encode().unwrap())
    };
    shopflow_bus::Record {
        topic: Arc::from("in"),
        partition: 0,
        offset,
        timestamp_ms: 0,
        key: m.key,
        value: m.value,
        headers: m.headers,
    }
}

/// What `consumer` handled, in the order it handled it.
async fn handled(db: &Db, consumer: &str) -> Vec<i64> {
    db.query(
        "SELECT n FROM seen WHERE consumer = $1 ORDER BY rowid",
        params![consumer],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.i64(0).unwrap())
    .collect()
}

/// Relays `from`'s outbox to the log and returns what landed on `topic` since `after` (per
/// partition end seen before).
async fn relay_and_read(from: &Db, log: &Log, topic: &str) -> Vec<shopflow_bus::Record> {
    let mut before = Vec::new();
    for p in 0..2 {
        let tp = shopflow_bus::TopicPartition::new(topic, p);
        before.push((tp.clone(), log.watermarks(&tp).await.unwrap().1));
    }
    Relay::new(from.clone(), log.clone(), RelayConfig::default())
        .drain_once()
        .await
        .unwrap();
    let mut out = Vec::new();
    for (tp, end) in before {
        out.extend(Bus::read(log, &tp, end, 100).await.unwrap());
    }
    out
}

/// Sequenced dead letters: a dead letter of key K parks K's later records in the group; other
/// keys flow on; redriving the head (handled now) or discarding it releases them, in order.
#[tokio::test]
async fn a_dead_letter_parks_its_key_until_redriven_or_discarded() {
    use shopflow_envelope::Event as _;
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path().join("log"), shopflow_log::Config::default()).unwrap();
    for t in [
        "in".to_owned(),
        "in.dlq".to_owned(),
        shopflow_runtime::system::EventDeadLettered::topic(),
    ] {
        log.create_topic(&t, &TopicSpec::new(2)).await.unwrap();
    }
    let (svc, ops) = databases(dir.path()).await;
    let mut registry = Registry::new();
    registry.register_type("Numbered", 1, Kind::Integration);
    let broken = Arc::new(AtomicBool::new(true));
    let runner = Runner::new(
        log.clone(),
        svc.clone(),
        Arc::new(Recorder {
            name: "fragile",
            broken: broken.clone(),
        }),
        Arc::new(registry),
        RunnerConfig::default(),
    );

    // 3 fails for good: its key K is parked, and K's 4 and 6 wait; L's 5 flows on.
    let batch = vec![
        keyed(1, "K", 0),
        keyed(3, "K", 1),
        keyed(4, "K", 2),
        keyed(5, "L", 3),
        keyed(6, "K", 4),
    ];
    let d = runner.deliver(&batch).await.unwrap();
    assert_eq!(
        d.commit,
        vec![(shopflow_bus::TopicPartition::new("in", 0), 5)]
    );
    assert_eq!(handled(&svc, "fragile").await, vec![1, 5]);
    let stats = runner.stats();
    assert_eq!(stats.parked.load(Ordering::Relaxed), 2);
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 1);
    let parked = dlq::parked(&svc).await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(
        (
            parked[0].key.as_str(),
            parked[0].depth,
            parked[0].head.as_str()
        ),
        ("K", 2, "in/0/1")
    );
    assert!(parked[0].head_error.contains("no tax rate"), "{parked:?}");
    // A redelivery of the batch parks nothing twice and handles nothing twice.
    runner.deliver(&batch).await.unwrap();
    assert_eq!(handled(&svc, "fragile").await, vec![1, 5]);
    assert_eq!(dlq::parked(&svc).await.unwrap()[0].depth, 2);

    // The dead letter reaches the index; the fix ships; the operator redrives it.
    let letters = relay_and_read(&svc, &log, "in.dlq").await;
    let mut tx = ops.begin().await.unwrap();
    dlq::index(&mut tx, &letters).await.unwrap();
    tx.commit().await.unwrap();
    let open = dlq::list(&ops, &Filter::default()).await.unwrap();
    assert_eq!(open.len(), 1);
    broken.store(false, Ordering::SeqCst);
    dlq::redrive(&ops, &open[0].id).await.unwrap();
    let redriven = relay_and_read(&ops, &log, "in").await;
    assert_eq!(redriven.len(), 1);
    runner.deliver(&redriven).await.unwrap();
    assert_eq!(
        handled(&svc, "fragile").await,
        vec![1, 5, 3, 4, 6],
        "the head, then what waited behind it, in order"
    );
    assert!(dlq::parked(&svc).await.unwrap().is_empty());
    // Later records of K flow again.
    runner.deliver(&[keyed(7, "K", 5)]).await.unwrap();
    assert_eq!(handled(&svc, "fragile").await, vec![1, 5, 3, 4, 6, 7]);

    // Discarding a head releases its key too, without handling the head.
    broken.store(true, Ordering::SeqCst);
    runner
        .deliver(&[keyed(3, "M", 6), keyed(8, "M", 7)])
        .await
        .unwrap();
    assert_eq!(dlq::parked(&svc).await.unwrap()[0].depth, 1);
    let letters = relay_and_read(&svc, &log, "in.dlq").await;
    let mut tx = ops.begin().await.unwrap();
    dlq::index(&mut tx, &letters).await.unwrap();
    tx.commit().await.unwrap();
    let open = dlq::list(&ops, &Filter::default()).await.unwrap();
    assert_eq!(open.len(), 1);
    dlq::discard(&ops, &open[0].id, "order was withdrawn")
        .await
        .unwrap();
    let marker = relay_and_read(&ops, &log, "in").await;
    assert_eq!(marker.len(), 1);
    assert!(marker[0].value.is_empty());
    let d = runner.deliver(&marker).await.unwrap();
    assert!(d.stop.is_none(), "{d:?}");
    assert_eq!(handled(&svc, "fragile").await, vec![1, 5, 3, 4, 6, 7, 8]);
    assert!(dlq::parked(&svc).await.unwrap().is_empty());
    // A second delivery of the marker changes nothing.
    runner.deliver(&marker).await.unwrap();
    assert_eq!(handled(&svc, "fragile").await, vec![1, 5, 3, 4, 6, 7, 8]);
}
