//! The repository and the projector on a real SQLite store, with a small aggregate: a counter
//! that refuses to go above a limit.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shopflow_envelope::{Envelope, Kind, Meta, Registry};
use shopflow_eventsourcing::{
    Aggregate, Applied, DomainEvent, Projector, Repository, SnapshotPolicy, Until, Versioned, View,
    ViewTable, fold_envelope,
};
use shopflow_store::{Db, EventStore, Migration, Value};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Counter {
    total: i64,
    /// Every amount folded in, in order (so a replay that skipped one would show).
    seen: Vec<i64>,
    /// Set only by hand-made snapshots, to tell where a load started.
    marker: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
struct Added(i64);

impl DomainEvent for Added {
    fn from_envelope(e: &Envelope) -> shopflow_envelope::Result<Self> {
        Ok(Added(e.data()["n"].as_i64().unwrap_or(0)))
    }
    fn to_envelope(&self, meta: Meta) -> shopflow_envelope::Result<Envelope> {
        Envelope::from_parts(
            "Added",
            1,
            Kind::Domain,
            serde_json::json!({ "n": self.0 }),
            meta,
        )
    }
    fn topic(&self) -> Option<String> {
        (self.0 >= 100).then(|| "counters.big-added".to_owned())
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("the counter would exceed {0}")]
struct TooMuch(i64);

impl Aggregate for Counter {
    type Command = i64;
    type Event = Added;
    type Error = TooMuch;

    fn handle(&self, add: i64) -> Result<Vec<Added>, TooMuch> {
        if self.total + add > 10_000 {
            return Err(TooMuch(10_000));
        }
        Ok(vec![Added(add)])
    }

    fn apply(&mut self, e: &Added, _: Applied) {
        self.total += e.0;
        self.seen.push(e.0);
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    db: Db,
    store: EventStore,
    repo: Repository<Counter>,
}

fn registry() -> Arc<Registry> {
    let mut r = Registry::new();
    r.register_type("Added", 1, Kind::Domain);
    Arc::new(r)
}

async fn rig(snapshots: SnapshotPolicy) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_sqlite(dir.path().join("c.db")).unwrap();
    db.migrate_building_blocks().await.unwrap();
    db.migrate(
        "counters",
        &[Migration::portable(
            1,
            "counter_view",
            "CREATE TABLE counter_view (counter_id TEXT PRIMARY KEY, total BIGINT NOT NULL,
                 version BIGINT NOT NULL, position BIGINT NOT NULL, updated_at BIGINT NOT NULL,
                 state TEXT NOT NULL)",
        )],
    )
    .await
    .unwrap();
    let store = EventStore::new(db.clone());
    let repo = Repository::new(store.clone(), registry(), snapshots);
    Rig {
        _dir: dir,
        db,
        store,
        repo,
    }
}

fn meta(id: &str) -> impl Fn(u64) -> Meta + '_ {
    move |v| Meta::new("counter-service", id, v)
}

/// Runs `add` on counter `id` in its own transaction; returns the aggregate's answer.
async fn add(r: &Rig, id: &str, n: i64) -> Result<usize, TooMuch> {
    let mut tx = r.db.begin().await.unwrap();
    let decided = r.repo.execute(&mut tx, id, n, meta(id)).await.unwrap();
    tx.commit().await.unwrap();
    decided.map(|out| out.len())
}

#[tokio::test]
async fn commands_append_decided_events_and_rejections_append_nothing() {
    let r = rig(SnapshotPolicy::Never).await;
    assert_eq!(
        add(&r, "c1", 5).await,
        Ok(0),
        "a small addition publishes nothing"
    );
    assert_eq!(add(&r, "c1", 150).await, Ok(1), "a big one is published");
    assert_eq!(add(&r, "c1", 20_000).await, Err(TooMuch(10_000)));
    assert_eq!(r.store.stream_version("c1").await.unwrap(), 2);
    assert_eq!(
        r.repo.events("c1").await.unwrap(),
        vec![Added(5), Added(150)]
    );
}

/// `err` is the store's refusal of an append on a version another transaction took.
fn assert_conflict(err: &shopflow_eventsourcing::Error) {
    assert!(
        matches!(
            err,
            shopflow_eventsourcing::Error::Store(shopflow_store::Error::Conflict { .. })
        ),
        "{err}"
    );
}

#[tokio::test]
async fn an_append_on_a_stale_state_is_a_conflict() {
    let r = rig(SnapshotPolicy::Never).await;
    add(&r, "c1", 1).await.unwrap();
    let mut tx = r.db.begin().await.unwrap();
    let stale = r.repo.load_in(&mut tx, "c1").await.unwrap();
    tx.rollback().await.unwrap();
    add(&r, "c1", 2).await.unwrap();
    let mut tx = r.db.begin().await.unwrap();
    let err = r
        .repo
        .append(&mut tx, "c1", stale, &[Added(3)], meta("c1"))
        .await
        .unwrap_err();
    assert_conflict(&err);
}

/// A repository that keeps the states it committed in memory, as the order service's does.
fn cached(r: &Rig) -> Repository<Counter> {
    Repository::new(r.store.clone(), registry(), SnapshotPolicy::Never).cached("counter", 16)
}

/// [`add`] through another repository on the same store.
async fn add_with(repo: &Repository<Counter>, db: &Db, id: &str, n: i64) -> Result<usize, TooMuch> {
    let mut tx = db.begin().await.unwrap();
    let decided = repo.execute(&mut tx, id, n, meta(id)).await.unwrap();
    tx.commit().await.unwrap();
    decided.map(|out| out.len())
}

#[tokio::test]
async fn a_cached_repository_decides_on_committed_states_only() {
    let r = rig(SnapshotPolicy::Never).await;
    let repo = cached(&r);
    add_with(&repo, &r.db, "c1", 1).await.unwrap();
    add_with(&repo, &r.db, "c1", 2).await.unwrap();

    // A transaction that rolls back, and a record rolled back to its savepoint in a transaction
    // that commits: neither amount may reach the state the next command decides on.
    let mut tx = r.db.begin().await.unwrap();
    repo.execute(&mut tx, "c1", 100, meta("c1"))
        .await
        .unwrap()
        .unwrap();
    tx.rollback().await.unwrap();
    let mut tx = r.db.begin().await.unwrap();
    tx.savepoint("record").await.unwrap();
    repo.execute(&mut tx, "c1", 200, meta("c1"))
        .await
        .unwrap()
        .unwrap();
    tx.rollback_to_savepoint("record").await.unwrap();
    tx.release_savepoint("record").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        add_with(&repo, &r.db, "c1", 20_000).await,
        Err(TooMuch(10_000)),
        "a rejection leaves the state as it was"
    );

    // 3 + 9,997 = 10,000 is allowed only on the true total (3), not on one with 100 or 200 in it.
    assert_eq!(add_with(&repo, &r.db, "c1", 9_997).await, Ok(1));
    assert_eq!(r.store.stream_version("c1").await.unwrap(), 3, "no gap");
    assert_eq!(
        r.repo.events("c1").await.unwrap(),
        vec![Added(1), Added(2), Added(9_997)]
    );
    assert_eq!(
        add_with(&repo, &r.db, "c1", 1).await,
        Err(TooMuch(10_000)),
        "the cached state is the folded one"
    );
    let folded = r.repo.fold("c1", Until::END).await.unwrap().unwrap();
    assert_eq!((folded.version, folded.state.seen), (3, vec![1, 2, 9_997]));
}

#[tokio::test]
async fn a_cached_state_another_writer_overtook_is_a_conflict_and_the_retry_reloads() {
    let r = rig(SnapshotPolicy::Never).await;
    let repo = cached(&r);
    add_with(&repo, &r.db, "c1", 1).await.unwrap();
    // Another writer of the same stream (a second process): the cache holds version 1.
    add(&r, "c1", 2).await.unwrap();

    let mut tx = r.db.begin().await.unwrap();
    let err = repo
        .execute(&mut tx, "c1", 3, meta("c1"))
        .await
        .unwrap_err();
    assert_conflict(&err);
    drop(tx);
    assert_eq!(add_with(&repo, &r.db, "c1", 3).await, Ok(0), "the retry");
    assert_eq!(
        r.repo.events("c1").await.unwrap(),
        vec![Added(1), Added(2), Added(3)]
    );
}

#[tokio::test]
async fn a_long_stream_loads_from_its_snapshot_reading_only_the_events_after_it() {
    let r = rig(SnapshotPolicy::Every(10)).await;
    for i in 1..=25 {
        add(&r, "c1", i).await.unwrap();
    }
    let snap = r.store.load_snapshot("c1").await.unwrap().unwrap();
    assert_eq!(snap.version, 20, "the last multiple of 10 crossed");
    let fold = r.repo.fold("c1", Until::END).await.unwrap().unwrap();
    assert_eq!(fold.version, 25);
    assert_eq!(fold.state.total, (1..=25).sum::<i64>());

    // Replace the snapshot with a state no replay could produce: a load that starts from it and
    // reads only events 21..=25 shows the marker and exactly those five amounts after it.
    let doctored = Counter {
        total: -1,
        seen: vec![],
        marker: Some("from the snapshot".into()),
    };
    let mut tx = r.db.begin().await.unwrap();
    r.store
        .save_snapshot(&mut tx, "c1", 20, &serde_json::to_vec(&doctored).unwrap())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = r.db.begin().await.unwrap();
    let loaded = r.repo.load_in(&mut tx, "c1").await.unwrap();
    assert_eq!(loaded.version, 25);
    assert_eq!(loaded.state.marker.as_deref(), Some("from the snapshot"));
    assert_eq!(loaded.state.seen, vec![21, 22, 23, 24, 25]);
}

#[tokio::test]
async fn time_travel_folds_up_to_a_version_or_an_instant() {
    let r = rig(SnapshotPolicy::Every(2)).await;
    for n in [1, 2, 3] {
        add(&r, "c1", n).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let history = r.repo.history("c1").await.unwrap();
    let second_at = history[1].1.timestamp();
    let at_v2 = r.repo.fold("c1", Until::version(2)).await.unwrap().unwrap();
    assert_eq!((at_v2.version, at_v2.state.total), (2, 3));
    let at_t = r
        .repo
        .fold("c1", Until::time(second_at))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(at_t, at_v2);
    let before = second_at - chrono::Duration::hours(1);
    assert_eq!(r.repo.fold("c1", Until::time(before)).await.unwrap(), None);
    let both = Until {
        version: Some(3),
        time: Some(second_at),
    };
    assert_eq!(r.repo.fold("c1", both).await.unwrap().unwrap().version, 2);
}

struct Totals;

impl View for Totals {
    type State = Counter;
    fn apply(&self, state: &mut Counter, event: &Envelope) -> shopflow_envelope::Result<()> {
        fold_envelope(state, event)
    }
    fn columns(&self, state: &Counter) -> Vec<Value> {
        vec![Value::from(state.total)]
    }
}

const VIEW: ViewTable = ViewTable {
    name: "counter_view",
    table: "counter_view",
    key: "counter_id",
    columns: &[("total", "BIGINT NOT NULL")],
};

async fn project_all(p: &Projector<Totals>) {
    let (stop, shutdown) = shopflow_runtime::Shutdown::new();
    let task = {
        let p = p.clone();
        tokio::spawn(async move { p.run(shutdown).await })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while p.freshness().await.unwrap().behind_events > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the projector fell behind"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    stop.trigger();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projector_never_guesses_over_a_gap_and_rebuilds_to_the_same_view() {
    let r = rig(SnapshotPolicy::Never).await;
    let p = Projector::new(r.store.clone(), registry(), Totals, VIEW);
    for (id, n) in [("a", 1), ("b", 10), ("a", 2), ("b", 20), ("a", 3)] {
        add(&r, id, n).await.unwrap();
    }
    project_all(&p).await;
    assert_eq!(p.get("a").await.unwrap().unwrap().seen, vec![1, 2, 3]);

    // The row of `a` loses its last two events (a restored backup, a bug): the next event of
    // `a` does not follow the row's version, and the projector refolds `a` from its stream.
    let mut tx = r.db.begin().await.unwrap();
    let stale = Counter {
        total: 1,
        seen: vec![1],
        marker: None,
    };
    tx.execute(
        "UPDATE counter_view SET version = 1, total = 1, state = $1 WHERE counter_id = 'a'",
        &[Value::from(serde_json::to_string(&stale).unwrap())],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    add(&r, "a", 4).await.unwrap();
    project_all(&p).await;
    let a = p.get("a").await.unwrap().unwrap();
    assert_eq!(a.seen, vec![1, 2, 3, 4], "refolded, not patched: {a:?}");
    let rows = p
        .query("total > $1", "counter_id", &[Value::from(20)], 10)
        .await
        .unwrap();
    assert_eq!(
        rows.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        vec!["b"]
    );

    let before: Vec<(String, Counter)> = p.query("1 = 1", "counter_id", &[], 10).await.unwrap();
    assert_eq!(p.rebuild().await.unwrap(), 6);
    let after: Vec<(String, Counter)> = p.query("1 = 1", "counter_id", &[], 10).await.unwrap();
    assert_eq!(before, after);
    for (id, state) in &after {
        let fold: Versioned<Counter> = r.repo.fold(id, Until::END).await.unwrap().unwrap();
        assert_eq!(
            &fold.state, state,
            "{id}: the view is the fold of its stream"
        );
    }
    let f = p.freshness().await.unwrap();
    assert_eq!(
        (f.behind_events, f.projected_position),
        (0, f.store_position)
    );
}
