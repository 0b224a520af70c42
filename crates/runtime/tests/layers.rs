//! The failure layers of the runner, each alone: retry with backoff up to an attempt limit (on a
//! paused clock), a panicking handler dead-lettered with its message, and a paused consumer that
//! burns no attempts while a dependency is unavailable.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shopflow_bus::{Bus, Message, Record, TopicSpec};
use shopflow_envelope::{Envelope, Kind, Meta, Registry};
use shopflow_log::Log;
use shopflow_runtime::{
    Handler, HandlerError, Outgoing, RetryPolicy, Runner, RunnerConfig, RunnerStats, Shutdown,
    ShutdownTrigger, headers,
};
use shopflow_store::outbox::{Relay, RelayConfig};
use shopflow_store::{Db, Tx, params};
use tokio::task::JoinHandle;

/// What the handler does with `n`.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Fails transiently forever.
    AlwaysTransient,
    /// Panics on n == 5.
    PanicOnFive,
    /// Is unavailable for the first `k` calls, then handles.
    UnavailableFirst(u32),
}

struct Probe {
    behaviour: Behaviour,
    calls: AtomicU32,
    call_times: Mutex<Vec<tokio::time::Instant>>,
}

impl Handler for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }
    fn topics(&self) -> Vec<String> {
        vec!["in".into()]
    }
    async fn handle(&self, tx: &mut Tx, env: &Envelope) -> Result<Vec<Outgoing>, HandlerError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        self.call_times
            .lock()
            .unwrap()
            .push(tokio::time::Instant::now());
        let n = env.data()["n"].as_i64().unwrap_or(-1);
        match self.behaviour {
            Behaviour::AlwaysTransient => {
                return Err(HandlerError::Transient("database is busy".into()));
            }
            Behaviour::PanicOnFive if n == 5 => {
                // Write first, to prove the write is rolled back.
                tx.execute("INSERT INTO seen (n) VALUES ($1)", params![n])
                    .await?;
                panic!("index out of bounds for order {n}");
            }
            Behaviour::UnavailableFirst(k) if call < k => {
                return Err(HandlerError::Unavailable {
                    reason: "gateway down".into(),
                    retry_after: Duration::from_millis(300),
                });
            }
            _ => {}
        }
        tx.execute("INSERT INTO seen (n) VALUES ($1)", params![n])
            .await?;
        Ok(vec![])
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    log: Log,
    db: Db,
    probe: Arc<Probe>,
    stats: Arc<RunnerStats>,
    stop: ShutdownTrigger,
    tasks: Vec<JoinHandle<()>>,
}

fn event(n: i64) -> Message {
    let env = Envelope::from_parts(
        "Numbered",
        1,
        Kind::Integration,
        serde_json::json!({"n": n}),
        Meta::new("test", "one-key", 1),
    )
    .unwrap();
    Message::new("in", "one-key", env.encode().unwrap())
}

async fn rig(behaviour: Behaviour, retry: RetryPolicy, events: &[i64]) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path().join("log"), shopflow_log::Config::default()).unwrap();
    for t in ["in", "in.dlq"] {
        log.create_topic(t, &TopicSpec::new(1)).await.unwrap();
    }
    let db = common::service_db(
        &dir.path().join("svc.db"),
        "CREATE TABLE seen (n INTEGER NOT NULL)",
    )
    .await;
    log.publish(events.iter().map(|n| event(*n)).collect())
        .await
        .unwrap();

    let mut registry = Registry::new();
    registry.register_type("Numbered", 1, Kind::Integration);
    let probe = Arc::new(Probe {
        behaviour,
        calls: AtomicU32::new(0),
        call_times: Mutex::new(Vec::new()),
    });
    let runner = Runner::new(
        log.clone(),
        db.clone(),
        probe.clone(),
        Arc::new(registry),
        RunnerConfig {
            retry,
            ..Default::default()
        },
    );
    let stats = runner.stats();
    let (stop, shutdown) = Shutdown::new();
    let mut tasks = vec![tokio::spawn(runner.run(shutdown.clone()))];
    let relay = Relay::new(db.clone(), log.clone(), RelayConfig::default());
    tasks.push(tokio::spawn(async move {
        relay.run(shutdown.wait()).await.unwrap();
    }));
    Rig {
        _dir: dir,
        log,
        db,
        probe,
        stats,
        stop,
        tasks,
    }
}

impl Rig {
    async fn dead_letters(&self, n: usize) -> Vec<Record> {
        let mut dlq = self
            .log
            .subscribe("check-dlq", &["in.dlq".into()])
            .await
            .unwrap();
        shopflow_bus::conformance::poll_n(&mut dlq, n, Duration::from_secs(30)).await
    }

    async fn seen(&self) -> Vec<i64> {
        let rows = self
            .db
            .query("SELECT n FROM seen ORDER BY n", &[])
            .await
            .unwrap();
        rows.iter().map(|r| r.i64(0).unwrap()).collect()
    }

    async fn stop(self) {
        self.stop.trigger();
        for t in self.tasks {
            t.await.unwrap();
        }
        self.log.close().await.unwrap();
    }
}

fn header(r: &Record, name: &str) -> String {
    String::from_utf8(r.header(name).expect(name).to_vec()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn transient_failures_back_off_exponentially_then_dead_letter() {
    let policy = RetryPolicy {
        initial: Duration::from_millis(100),
        max_delay: Duration::from_secs(60),
        multiplier: 2.0,
        max_attempts: 5,
        jitter: false,
    };
    let rig = rig(Behaviour::AlwaysTransient, policy, &[1]).await;
    let dead = rig.dead_letters(1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(header(&dead[0], headers::DLQ_ATTEMPTS), "5");
    let reason = header(&dead[0], headers::DLQ_ERROR);
    assert!(
        reason.contains("gave up after 5 attempts") && reason.contains("database is busy"),
        "{reason}"
    );
    let first =
        chrono::DateTime::parse_from_rfc3339(&header(&dead[0], headers::DLQ_FIRST_FAILED_AT))
            .unwrap();
    let last =
        chrono::DateTime::parse_from_rfc3339(&header(&dead[0], headers::DLQ_FAILED_AT)).unwrap();
    assert!(first <= last);
    assert_eq!(header(&dead[0], headers::DLQ_TOPIC), "in");
    assert_eq!(header(&dead[0], headers::DLQ_OFFSET), "0");

    assert_eq!(rig.probe.calls.load(Ordering::SeqCst), 5);
    let times = rig.probe.call_times.lock().unwrap().clone();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // On the paused clock the gaps are the backoff: 100, 200, 400, 800 ms (plus the time any
    // other timer of the runtime advanced the clock, which is bounded by the poll timeout).
    for (gap, want) in gaps.iter().zip([100u64, 200, 400, 800]) {
        let want = Duration::from_millis(want);
        assert!(
            *gap >= want && *gap < want + Duration::from_millis(50),
            "gaps {gaps:?}"
        );
    }
    assert_eq!(rig.stats.dead_lettered.load(Ordering::Relaxed), 1);
    assert_eq!(rig.stats.transient_failures.load(Ordering::Relaxed), 4);
    assert!(rig.seen().await.is_empty());
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_dead_lettered_with_its_message() {
    let rig = rig(
        Behaviour::PanicOnFive,
        RetryPolicy::default(),
        &[1, 2, 3, 4, 5, 6, 7],
    )
    .await;
    let dead = rig.dead_letters(1).await;
    assert_eq!(dead.len(), 1);
    let reason = header(&dead[0], headers::DLQ_ERROR);
    assert!(
        reason.contains("handler panicked: index out of bounds for order 5"),
        "{reason}"
    );
    assert_eq!(header(&dead[0], headers::DLQ_ATTEMPTS), "1");
    // Events before it are handled; the panicking handler's own write is rolled back; the
    // later events of its key (every event here has one key) wait behind it: sequenced dead
    // letters (stage::park).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while rig.stats.parked.load(Ordering::Relaxed) < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rig.seen().await, vec![1, 2, 3, 4]);
    let parked = shopflow_runtime::dlq::parked(&rig.db).await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!((parked[0].key.as_str(), parked[0].depth), ("one-key", 2));
    assert!(
        parked[0].head_error.contains("handler panicked"),
        "{parked:?}"
    );
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_unavailable_dependency_pauses_without_burning_attempts() {
    // One attempt only: a single transient failure would dead-letter. Unavailability must not.
    let policy = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    };
    let rig = rig(Behaviour::UnavailableFirst(4), policy, &[1, 2]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while rig.seen().await.len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rig.seen().await, vec![1, 2]);
    assert_eq!(rig.stats.paused.load(Ordering::Relaxed), 4);
    assert_eq!(rig.stats.dead_lettered.load(Ordering::Relaxed), 0);
    let times = rig.probe.call_times.lock().unwrap().clone();
    for w in times[..5].windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(300),
            "paused for retry_after"
        );
    }
    rig.stop().await;
}
