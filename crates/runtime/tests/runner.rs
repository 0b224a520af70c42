//! The runner: effects once per event under redelivery, poison records dead-lettered with their
//! reason while valid events around them are handled, transient failures retried.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use shopflow_bus::{Bus, Consumer, Message, TopicSpec};
use shopflow_envelope::{Envelope, Kind, Meta, Registry};
use shopflow_log::Log;
use shopflow_runtime::{Handler, HandlerError, Outgoing, Runner, RunnerConfig, Shutdown, headers};
use shopflow_store::outbox::{Relay, RelayConfig};
use shopflow_store::{Db, Tx, params};

struct Counter {
    flaky: AtomicU32,
}

impl Handler for Counter {
    fn name(&self) -> &'static str {
        "counter"
    }
    fn topics(&self) -> Vec<String> {
        vec!["in".into()]
    }
    // Its effects touch only rows of the record's own event.
    fn lanes(&self) -> usize {
        usize::MAX
    }
    // Nor do they depend on the order of a key's events: a dead letter parks nothing here (the
    // test sends every poison record under one key and wants each dead-lettered; parking is
    // tested in tests/dlq.rs).
    fn sequenced_dead_letters(&self) -> bool {
        false
    }
    async fn handle(&self, tx: &mut Tx, env: &Envelope) -> Result<Vec<Outgoing>, HandlerError> {
        let n = env.data()["n"]
            .as_i64()
            .ok_or_else(|| HandlerError::Permanent("no n".into()))?;
        if n == 13 {
            return Err(HandlerError::Permanent("13 is unlucky".into()));
        }
        if n == 7 && self.flaky.fetch_add(1, Ordering::SeqCst) < 2 {
            return Err(HandlerError::Transient("try again".into()));
        }
        tx.execute("INSERT INTO seen (n) VALUES ($1)", params![n])
            .await?;
        let out = Envelope::from_parts(
            "Counted",
            1,
            Kind::Integration,
            serde_json::json!({"n": n}),
            Meta::caused_by(env, "counter", env.aggregate_id(), 1),
        )?;
        Ok(vec![Outgoing {
            topic: "out".into(),
            envelope: out,
        }])
    }
}

fn event(n: i64) -> Message {
    let env = Envelope::from_parts(
        "Numbered",
        1,
        Kind::Integration,
        serde_json::json!({"n": n}),
        Meta::new("test", format!("agg-{}", n % 3), 1),
    )
    .unwrap();
    Message::new("in", env.aggregate_id().to_owned(), env.encode().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_once_poison_dead_lettered_transient_retried() {
    effects_once_poison_dead_lettered_transient_retried_in(1).await;
}

/// The same with a transaction per partition in flight at once: every outcome and count is the
/// same, and a retried record's stop holds back only its own lane's partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_once_poison_dead_lettered_transient_retried_with_lanes() {
    effects_once_poison_dead_lettered_transient_retried_in(2).await;
}

async fn effects_once_poison_dead_lettered_transient_retried_in(lanes: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (log, db, registry) = counting_shop(dir.path()).await;

    // 20 valid events, each published twice (redelivery), plus poison of every kind.
    let batch: Vec<Message> = (0..20).map(event).collect();
    let dupes = batch.clone(); // the same envelopes (same event ids) again
    log.publish(batch).await.unwrap();
    log.publish(dupes).await.unwrap();
    log.publish(vec![
        Message::new("in", "x", "not json at all"),
        Message::new("in", "x", r#"{"hello": "world"}"#),
        Message::new(
            "in",
            "x",
            Envelope::from_parts(
                "Unknown",
                1,
                Kind::Integration,
                serde_json::json!({}),
                Meta::new("t", "x", 1),
            )
            .unwrap()
            .encode()
            .unwrap(),
        ),
        Message::new(
            "in",
            "x",
            Envelope::from_parts(
                "Numbered",
                9,
                Kind::Integration,
                serde_json::json!({}),
                Meta::new("t", "x", 1),
            )
            .unwrap()
            .encode()
            .unwrap(),
        ),
    ])
    .await
    .unwrap();

    let (stop, shutdown) = Shutdown::new();
    let handler = Arc::new(Counter {
        flaky: AtomicU32::new(0),
    });
    let runner = Runner::new(
        log.clone(),
        db.clone(),
        handler,
        registry,
        RunnerConfig {
            max_batch: 7,
            lanes: Some(lanes),
            retry: shopflow_runtime::RetryPolicy {
                initial: Duration::from_millis(10),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let stats = runner.stats();
    let task = tokio::spawn(runner.run(shutdown.clone()));
    let relay = Arc::new(Relay::new(db.clone(), log.clone(), RelayConfig::default()));
    let r = relay.clone();
    let s = shutdown.clone();
    let relay_task = tokio::spawn(async move { r.run(s.wait()).await });

    let mut out = log.subscribe("check-out", &["out".into()]).await.unwrap();
    let got = shopflow_bus::conformance::poll_n(&mut out, 19, Duration::from_secs(20)).await;
    assert_eq!(
        got.len(),
        19,
        "every valid event but the permanent failure emitted once"
    );
    let mut dlq = log
        .subscribe("check-dlq", &["in.dlq".into()])
        .await
        .unwrap();
    let dead = shopflow_bus::conformance::poll_n(&mut dlq, 5, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), 5, "4 poison records + 1 permanent failure");
    let reasons: Vec<String> = dead
        .iter()
        .map(|r| String::from_utf8(r.header(headers::DLQ_ERROR).unwrap().to_vec()).unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("malformed")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("unknown event type")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("unsupported version")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("13 is unlucky")),
        "{reasons:?}"
    );
    for d in &dead {
        assert_eq!(
            d.header(headers::DLQ_TOPIC).unwrap(),
            &Bytes::from_static(b"in")
        );
        assert!(d.header(headers::DLQ_OFFSET).is_some());
    }
    // Nothing more arrives: duplicates were no-ops.
    assert!(
        out.poll(10, Duration::from_millis(500))
            .await
            .unwrap()
            .is_empty()
    );
    let rows = db
        .query("SELECT COUNT(*), COUNT(DISTINCT n) FROM seen", &[])
        .await
        .unwrap();
    assert_eq!((rows[0].i64(0).unwrap(), rows[0].i64(1).unwrap()), (19, 19));
    assert_eq!(stats.duplicates.load(Ordering::Relaxed), 20);
    assert!(stats.transient_failures.load(Ordering::Relaxed) >= 2);
    stop.trigger();
    task.await.unwrap();
    relay_task.await.unwrap().unwrap();
    drop((out, dlq));
    log.close().await.unwrap();
}

/// The offsets a consumer has committed, summed over its partitions.
async fn committed_total(log: &Log, group: &str) -> u64 {
    log.committed(group)
        .await
        .unwrap()
        .iter()
        .map(|(_, o)| o)
        .sum()
}

async fn counting_shop(dir: &std::path::Path) -> (Log, Db, Arc<Registry>) {
    let log = Log::open(dir.join("log"), shopflow_log::Config::default()).unwrap();
    for t in ["in", "out", "in.dlq"] {
        log.create_topic(t, &TopicSpec::new(2)).await.unwrap();
    }
    let db = common::service_db(
        &dir.join("svc.db"),
        "CREATE TABLE seen (n INTEGER NOT NULL)",
    )
    .await;
    let mut registry = Registry::new();
    registry.register_type("Numbered", 1, Kind::Integration);
    (log, db, Arc::new(registry))
}

/// A counting consumer over ten published records, committing every `interval`.
async fn counting_ten(
    dir: &std::path::Path,
    interval: Duration,
) -> (
    Log,
    shopflow_runtime::ShutdownTrigger,
    Arc<shopflow_runtime::RunnerStats>,
    tokio::task::JoinHandle<()>,
) {
    let (log, db, registry) = counting_shop(dir).await;
    log.publish((0..10).map(|n| event(n + 100)).collect())
        .await
        .unwrap();
    let (stop, shutdown) = Shutdown::new();
    let runner = Runner::new(
        log.clone(),
        db,
        Arc::new(Counter {
            flaky: AtomicU32::new(u32::MAX),
        }),
        registry,
        RunnerConfig {
            commit_interval: interval,
            ..Default::default()
        },
    );
    let stats = runner.stats();
    let task = tokio::spawn(runner.run(shutdown));
    (log, stop, stats, task)
}

/// A busy consumer commits its offsets once per interval, not per batch: handled records whose
/// interval has not passed are not committed yet, and a shutdown commits them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_wait_for_the_interval_and_a_shutdown_commits_them() {
    let dir = tempfile::tempdir().unwrap();
    let (log, stop, stats, task) = counting_ten(dir.path(), Duration::from_secs(60)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while stats.handled.load(Ordering::Relaxed) < 10 {
        assert!(std::time::Instant::now() < deadline, "not handled in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        committed_total(&log, "counter").await,
        0,
        "nothing committed before the interval"
    );
    stop.trigger();
    task.await.unwrap();
    assert_eq!(
        committed_total(&log, "counter").await,
        10,
        "the shutdown committed every handled record"
    );
    log.close().await.unwrap();
}

/// An idle consumer commits what is left once the interval has passed, without a new record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_consumer_commits_what_is_left_within_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (log, stop, _, task) = counting_ten(dir.path(), Duration::from_millis(300)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while committed_total(&log, "counter").await < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "not committed in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.trigger();
    task.await.unwrap();
    log.close().await.unwrap();
}
