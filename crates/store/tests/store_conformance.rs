//! One conformance suite for the stores (event store, outbox + relay, inbox), run on SQLite and on
//! PostgreSQL. PostgreSQL's address comes from `SHOPFLOW_TEST_POSTGRES`; without it the PostgreSQL
//! half is skipped with a printed reason, except under `CI=true`, where that is a failure.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shopflow_bus::{Bus, Consumer, Message, TopicSpec};
use shopflow_envelope::{Envelope, Kind, Meta};
use shopflow_log::Log;
use shopflow_store::outbox::{self, Relay, RelayConfig};
use shopflow_store::{AppendStream, Db, Error, EventStore, ExpectedVersion, inbox, sequence};

struct TestDb {
    db: Db,
    drop_schema: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    async fn cleanup(self) {
        if let Some((url, schema)) = self.drop_schema {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client
                .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                .await
                .unwrap();
        }
    }
}

async fn sqlite() -> Option<TestDb> {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_sqlite(dir.path().join("svc.db")).unwrap();
    db.migrate_building_blocks().await.unwrap();
    Some(TestDb {
        db,
        drop_schema: None,
        _dir: Some(dir),
    })
}

async fn postgres() -> Option<TestDb> {
    let url = shopflow_store::test_postgres_url("the PostgreSQL store tests")?;
    let schema = format!(
        "t_{}",
        shopflow_bus::conformance::unique("s").replace('-', "_")
    );
    let db = Db::connect_postgres(&url, &schema).await.unwrap();
    db.migrate_building_blocks().await.unwrap();
    // Migrating twice is a no-op.
    db.migrate_building_blocks().await.unwrap();
    Some(TestDb {
        db,
        drop_schema: Some((url, schema)),
        _dir: None,
    })
}

fn event(stream: &str, seq: u64, n: u64) -> Envelope {
    Envelope::from_parts(
        "ThingHappened",
        1,
        Kind::Domain,
        serde_json::json!({"n": n}),
        Meta::new("test", stream, seq),
    )
    .unwrap()
}

async fn append_and_read_stream(t: &TestDb) {
    let store = EventStore::new(t.db.clone());
    let mut tx = t.db.begin().await.unwrap();
    let v = store
        .append(
            &mut tx,
            "a",
            ExpectedVersion::NoStream,
            &[event("a", 1, 1), event("a", 2, 2)],
        )
        .await
        .unwrap();
    assert_eq!(v, 2);
    tx.commit().await.unwrap();
    let mut tx = t.db.begin().await.unwrap();
    store
        .append(&mut tx, "a", ExpectedVersion::Exact(2), &[event("a", 3, 3)])
        .await
        .unwrap();
    store
        .append(&mut tx, "b", ExpectedVersion::Any, &[event("b", 1, 10)])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    assert_eq!(store.stream_version("a").await.unwrap(), 3);
    assert_eq!(store.stream_version("nope").await.unwrap(), 0);
    let all = store.read_stream("a", 1, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let from2 = store.read_stream("a", 2, 1).await.unwrap();
    assert_eq!(from2.len(), 1);
    assert_eq!(from2[0].version, 2);
    let env = Envelope::decode(&all[2].envelope).unwrap();
    assert_eq!(env.data()["n"], 3);
    assert_eq!(all[2].event_type, "ThingHappened");
}

async fn expected_version_conflicts(t: &TestDb) {
    let store = EventStore::new(t.db.clone());
    let mut tx = t.db.begin().await.unwrap();
    store
        .append(&mut tx, "c", ExpectedVersion::NoStream, &[event("c", 1, 1)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(0),
        ExpectedVersion::Exact(5),
    ] {
        let mut tx = t.db.begin().await.unwrap();
        let err = store
            .append(&mut tx, "c", expected, &[event("c", 2, 2)])
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Conflict { actual: 1, .. }),
            "{expected}: {err}"
        );
    }
    // Envelopes that do not fit the stream are refused.
    let mut tx = t.db.begin().await.unwrap();
    let err = store
        .append(&mut tx, "c", ExpectedVersion::Exact(1), &[event("c", 7, 2)])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    let err = store
        .append(
            &mut tx,
            "c",
            ExpectedVersion::Exact(1),
            &[event("other", 2, 2)],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    drop(tx);
    assert_eq!(store.stream_version("c").await.unwrap(), 1);
}

async fn concurrent_appenders_one_wins_each_version(t: &TestDb) {
    let store = EventStore::new(t.db.clone());
    let wins = Arc::new(std::sync::Mutex::new(BTreeMap::<u64, Vec<usize>>::new()));
    let mut tasks = Vec::new();
    for w in 0..6usize {
        let store = store.clone();
        let wins = wins.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = 0;
            let mut attempts = 0;
            while mine < 5 && attempts < 2000 {
                attempts += 1;
                let v = store.stream_version("race").await.unwrap();
                let mut tx = store.db().begin().await.unwrap();
                match store
                    .append(
                        &mut tx,
                        "race",
                        ExpectedVersion::Exact(v),
                        &[event("race", v + 1, w as u64)],
                    )
                    .await
                {
                    Ok(_) => {
                        tx.commit().await.unwrap();
                        wins.lock().unwrap().entry(v + 1).or_default().push(w);
                        mine += 1;
                    }
                    Err(Error::Conflict { .. }) => {}
                    Err(e) => panic!("writer {w}: {e}"),
                }
                tokio::task::yield_now().await;
            }
            assert_eq!(mine, 5, "writer {w} starved");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let events = store.read_stream("race", 1, 1000).await.unwrap();
    let wins = wins.lock().unwrap().clone();
    assert_eq!(events.len(), wins.len());
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.version, i as u64 + 1);
        let winners = &wins[&e.version];
        assert_eq!(winners.len(), 1, "version {} won by {winners:?}", e.version);
        let env = Envelope::decode(&e.envelope).unwrap();
        assert_eq!(env.data()["n"], winners[0] as u64);
    }
    assert_eq!(events.len(), 30);
}

async fn read_all_in_commit_order_and_batches(t: &TestDb) {
    let store = EventStore::new(t.db.clone());
    let before = store.head_position().await.unwrap();
    // A batch over many streams in one transaction.
    let streams: Vec<String> = (0..50).map(|i| format!("s{i}")).collect();
    let evs: Vec<Vec<Envelope>> = streams
        .iter()
        .map(|s| (1..=4).map(|q| event(s, q, q)).collect())
        .collect();
    let batch: Vec<AppendStream<'_>> = streams
        .iter()
        .zip(&evs)
        .map(|(s, e)| AppendStream {
            stream: s,
            expected: ExpectedVersion::NoStream,
            events: e,
        })
        .collect();
    let mut tx = t.db.begin().await.unwrap();
    let versions = store.append_batch(&mut tx, &batch).await.unwrap();
    assert!(versions.iter().all(|v| *v == 4));
    tx.commit().await.unwrap();

    // A rolled-back append leaves nothing.
    let mut tx = t.db.begin().await.unwrap();
    store
        .append(
            &mut tx,
            "ghost",
            ExpectedVersion::NoStream,
            &[event("ghost", 1, 1)],
        )
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(store.stream_version("ghost").await.unwrap(), 0);

    let mut tx = t.db.begin().await.unwrap();
    store
        .append(
            &mut tx,
            "late",
            ExpectedVersion::NoStream,
            &[event("late", 1, 99)],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // On PostgreSQL the global order is read only below the oldest transaction still running
    // anywhere on the server (so that no late commit is ever passed): another test holding one
    // open delays what this one sees, never reorders it. Read until the last commit shows.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let all = loop {
        let mut all = Vec::new();
        let mut after = before;
        loop {
            let page = store.read_all(after, 37).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.position;
            all.extend(page);
        }
        if all.len() >= 201 || std::time::Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(all.len(), 201);
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(all.last().unwrap().stream_id, "late");
    // Within the batch, the order of the input.
    assert_eq!((all[0].stream_id.as_str(), all[0].version), ("s0", 1));
    assert_eq!((all[4].stream_id.as_str(), all[4].version), ("s1", 1));
    // The same event (same id) appended again is refused.
    let again = Envelope::from_parts(
        "ThingHappened",
        1,
        Kind::Domain,
        serde_json::json!({}),
        Meta::new("t", "late", 2),
    )
    .unwrap();
    let mut tx = t.db.begin().await.unwrap();
    store
        .append(
            &mut tx,
            "late",
            ExpectedVersion::Exact(1),
            std::slice::from_ref(&again),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let dup_bytes = again.encode().unwrap();
    let mut json: serde_json::Value = serde_json::from_slice(&dup_bytes).unwrap();
    json["sequence"] = serde_json::json!(3);
    let dup = Envelope::decode(&serde_json::to_vec(&json).unwrap()).unwrap();
    let mut tx = t.db.begin().await.unwrap();
    let err = store
        .append(&mut tx, "late", ExpectedVersion::Exact(2), &[dup])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateEvent { .. }), "{err}");
}

async fn snapshots(t: &TestDb) {
    let store = EventStore::new(t.db.clone());
    assert!(store.load_snapshot("x").await.unwrap().is_none());
    let mut tx = t.db.begin().await.unwrap();
    store
        .save_snapshot(&mut tx, "x", 10, b"state@10")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = t.db.begin().await.unwrap();
    store
        .save_snapshot(&mut tx, "x", 20, b"state@20")
        .await
        .unwrap();
    // An older snapshot never replaces a newer one.
    store
        .save_snapshot(&mut tx, "x", 15, b"state@15")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let s = store.load_snapshot("x").await.unwrap().unwrap();
    assert_eq!((s.version, s.state.as_slice()), (20, &b"state@20"[..]));
}

/// `load_in` reads the snapshot and the events after it in one statement (the snapshot counts
/// as a row of the limit), and `append_after_read` appends on what it read without reading the
/// version again: a stale read still fails as a conflict, from the `(stream, version)` key.
async fn load_in_and_append_after_read(t: &TestDb) {
    let store = EventStore::new(t.db.clone());
    let mut tx = t.db.begin().await.unwrap();
    let loaded = store.load_in(&mut tx, "l", 10).await.unwrap();
    assert!(loaded.snapshot.is_none() && loaded.events.is_empty() && !loaded.more);
    let v = store
        .append_after_read(&mut tx, "l", 0, &[event("l", 1, 1), event("l", 2, 2)])
        .await
        .unwrap();
    assert_eq!(v, 2);
    tx.commit().await.unwrap();

    let mut tx = t.db.begin().await.unwrap();
    let loaded = store.load_in(&mut tx, "l", 10).await.unwrap();
    assert!(loaded.snapshot.is_none());
    assert_eq!(
        loaded.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 2]
    );
    store
        .append_after_read(&mut tx, "l", 2, &[event("l", 3, 3)])
        .await
        .unwrap();
    store
        .save_snapshot(&mut tx, "l", 2, b"state@2")
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let mut tx = t.db.begin().await.unwrap();
    let loaded = store.load_in(&mut tx, "l", 10).await.unwrap();
    let snap = loaded.snapshot.unwrap();
    assert_eq!((snap.version, snap.state.as_slice()), (2, &b"state@2"[..]));
    assert_eq!(
        loaded.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [3],
        "only the events after the snapshot"
    );
    assert!(!loaded.more);
    let limited = store.load_in(&mut tx, "l", 2).await.unwrap();
    assert!(limited.snapshot.is_some() && limited.events.len() == 1 && limited.more);
    tx.rollback().await.unwrap();

    // A read that another transaction's append has overtaken (here: version 3 read as 2) makes
    // the append fail as a conflict, and nothing of it stays.
    let mut stale = t.db.begin().await.unwrap();
    let err = store
        .append_after_read(&mut stale, "l", 2, &[event("l", 3, 30)])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    drop(stale);
    let mut tx = t.db.begin().await.unwrap();
    store
        .append_after_read(&mut tx, "l", 3, &[event("l", 4, 4)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let all = store.read_stream("l", 1, 100).await.unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(Envelope::decode(&all[3].envelope).unwrap().data()["n"], 4);
}

async fn inbox_records_once_and_rolls_back(t: &TestDb) {
    let mut tx = t.db.begin().await.unwrap();
    assert!(inbox::record(&mut tx, "payment", "evt-1").await.unwrap());
    assert!(!inbox::record(&mut tx, "payment", "evt-1").await.unwrap());
    assert!(
        inbox::record(&mut tx, "shipping", "evt-1").await.unwrap(),
        "consumers are separate"
    );
    tx.commit().await.unwrap();
    let mut tx = t.db.begin().await.unwrap();
    assert!(!inbox::record(&mut tx, "payment", "evt-1").await.unwrap());
    assert!(inbox::record(&mut tx, "payment", "evt-2").await.unwrap());
    tx.rollback().await.unwrap();
    assert!(inbox::contains(&t.db, "payment", "evt-1").await.unwrap());
    assert!(
        !inbox::contains(&t.db, "payment", "evt-2").await.unwrap(),
        "rolled back with its transaction"
    );
    assert_eq!(inbox::purge_before(&t.db, i64::MAX).await.unwrap(), 2);
}

/// A batch's ids checked in one go: across the padded `IN` lists (1, 5, 17 and 70 ids: every
/// width and more than one run), inside the transaction (its own writes seen), per consumer; an
/// id recorded as new (`record_all`) that another transaction holds fails instead of being skipped.
async fn inbox_checks_a_batch_and_records_new_ids(t: &TestDb) {
    let ids: Vec<String> = (0..70).map(|i| format!("evt-{i}")).collect();
    let mut tx = t.db.begin().await.unwrap();
    for id in ids.iter().step_by(3) {
        assert!(inbox::record(&mut tx, "payment", id).await.unwrap());
    }
    assert!(inbox::record(&mut tx, "shipping", "evt-1").await.unwrap());
    tx.commit().await.unwrap();
    let mut tx = t.db.begin().await.unwrap();
    inbox::record_all(&mut tx, "payment", &["evt-1".to_owned()])
        .await
        .unwrap();
    for n in [1, 5, 17, 70] {
        let batch: Vec<&str> = ids[..n].iter().map(String::as_str).collect();
        let mut got: Vec<String> = inbox::handled_among(&mut tx, "payment", &batch)
            .await
            .unwrap()
            .into_iter()
            .collect();
        got.sort_by_key(|id| id[4..].parse::<u32>().unwrap());
        let want: Vec<String> = ids[..n]
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 == 0 || *i == 1)
            .map(|(_, id)| id.clone())
            .collect();
        assert_eq!(got, want, "{n} ids");
    }
    assert!(
        inbox::handled_among(&mut tx, "orders", &["evt-0"])
            .await
            .unwrap()
            .is_empty(),
        "another consumer's ids are not this one's"
    );
    tx.commit().await.unwrap();
    assert!(inbox::contains(&t.db, "payment", "evt-1").await.unwrap());

    // Many at once: 85 = 64 + 16 + 4 + 1, every run width.
    let more: Vec<String> = (100..185).map(|i| format!("evt-{i}")).collect();
    let mut tx = t.db.begin().await.unwrap();
    inbox::record_all(&mut tx, "payment", &more).await.unwrap();
    inbox::record_all(&mut tx, "payment", &[]).await.unwrap();
    let refs: Vec<&str> = more.iter().map(String::as_str).collect();
    assert_eq!(
        inbox::handled_among(&mut tx, "payment", &refs)
            .await
            .unwrap()
            .len(),
        85
    );
    tx.commit().await.unwrap();

    let mut tx = t.db.begin().await.unwrap();
    let failed = match inbox::record_all(&mut tx, "payment", &["evt-3".to_owned()]).await {
        Err(e) => e,
        Ok(()) => tx
            .commit()
            .await
            .expect_err("recording a handled id as new fails the transaction"),
    };
    assert!(failed.is_unique_violation(), "{failed}");
}

/// The last numbers of a batch's aggregates read in one go: per source, 0 for one never seen,
/// and what [`observe_after`](sequence::observe_after) records is what `observe` would.
async fn sequence_reads_a_batch_and_observes_after(t: &TestDb) {
    let mut tx = t.db.begin().await.unwrap();
    // `inv` read in part (5 first is no gap), `pay` completely.
    for (source, aggregate, seq) in [("pay", "o-1", 1), ("pay", "o-1", 2), ("inv", "o-1", 5)] {
        sequence::observe(&mut tx, "order", source, aggregate, seq, source == "pay")
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let aggregates: Vec<String> = (0..20).map(|i| format!("o-{i}")).collect();
    let mut keys: Vec<(&str, &str)> = aggregates.iter().map(|a| ("pay", a.as_str())).collect();
    keys.push(("inv", "o-1"));
    keys.push(("ship", "o-1"));
    let mut tx = t.db.begin().await.unwrap();
    let last = sequence::last_among(&mut tx, "order", &keys).await.unwrap();
    assert_eq!(last["pay"]["o-1"], 2);
    assert_eq!(last["pay"]["o-19"], 0);
    assert_eq!(last["inv"]["o-1"], 5);
    assert_eq!(last["ship"]["o-1"], 0);
    assert_eq!(last["pay"].len(), 20);
    let other = sequence::last_among(&mut tx, "shipping", &[("pay", "o-1")])
        .await
        .unwrap();
    assert_eq!(
        other["pay"]["o-1"], 0,
        "another consumer's numbers are not this one's"
    );
    // 4 after 2 of a complete reader: a gap; then 3, late: a reordering.
    let observed = sequence::observe_after(&mut tx, "order", "pay", "o-1", 4, true, 2)
        .await
        .unwrap();
    assert_eq!(
        observed,
        sequence::Observed::Gap {
            expected: 3,
            got: 4
        }
    );
    let observed = sequence::observe_after(&mut tx, "order", "pay", "o-1", 3, true, 4)
        .await
        .unwrap();
    assert_eq!(observed, sequence::Observed::Reordered { last: 4, got: 3 });
    // A batch's tallies at once: `pay` 5 and 6 after 4 (no anomaly), a new aggregate's 1.
    let handled = |aggregate: &str, last, seen, anomalies| sequence::Handled {
        source: "pay".into(),
        aggregate: aggregate.into(),
        last,
        seen,
        complete: true,
        anomalies,
    };
    sequence::record_all(
        &mut tx,
        "order",
        &[handled("o-1", 6, 2, 0), handled("o-7", 1, 1, 0)],
    )
    .await
    .unwrap();
    let last = sequence::last_among(&mut tx, "order", &[("pay", "o-1"), ("pay", "o-7")])
        .await
        .unwrap();
    assert_eq!((last["pay"]["o-1"], last["pay"]["o-7"]), (6, 1));
    tx.commit().await.unwrap();
    assert!(
        sequence::gaps(&t.db).await.unwrap().is_empty(),
        "1 to 6 of o-1 and 1 of o-7 all seen: {:?}",
        sequence::gaps(&t.db).await.unwrap()
    );
    assert_eq!(
        sequence::anomalies(&t.db).await.unwrap(),
        vec![("order".to_owned(), 2)]
    );
}

/// A relaxed transaction is atomic and visible like any other, rolls back when dropped, and
/// leaves the connection durable for the next one.
async fn relaxed_transactions_are_atomic_and_leave_durability_on(t: &TestDb) {
    let mut tx = t.db.begin_relaxed().await.unwrap();
    assert!(inbox::record(&mut tx, "relaxed", "a").await.unwrap());
    tx.commit().await.unwrap();
    let mut tx = t.db.begin_relaxed().await.unwrap();
    assert!(inbox::record(&mut tx, "relaxed", "b").await.unwrap());
    drop(tx);
    assert!(inbox::contains(&t.db, "relaxed", "a").await.unwrap());
    assert!(!inbox::contains(&t.db, "relaxed", "b").await.unwrap());
    let mut tx = t.db.begin().await.unwrap();
    let setting = match &tx {
        shopflow_store::Tx::Sqlite(_) => {
            let rows = tx.query("PRAGMA synchronous", &[]).await.unwrap();
            (rows[0].i64(0).unwrap() == 2).to_string() // 2 = FULL
        }
        shopflow_store::Tx::Postgres(_) => {
            let rows = tx
                .query("SELECT current_setting('synchronous_commit')", &[])
                .await
                .unwrap();
            (rows[0].str(0).unwrap() == "on").to_string()
        }
    };
    assert_eq!(
        setting, "true",
        "the next ordinary transaction must be fsynced"
    );
    tx.rollback().await.unwrap();
}

async fn open_log() -> (Log, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), shopflow_log::Config::default()).unwrap();
    log.create_topic("out", &TopicSpec::new(3)).await.unwrap();
    (log, dir)
}

async fn outbox_relays_committed_rows_in_key_order(t: &TestDb) {
    let (log, _dir) = open_log().await;
    // A rolled-back transaction leaves nothing to publish.
    let mut tx = t.db.begin().await.unwrap();
    outbox::enqueue(&mut tx, &[Message::new("out", "ghost", "never")])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    for i in 0..60u32 {
        let mut tx = t.db.begin().await.unwrap();
        let key = format!("agg-{}", i % 6);
        outbox::enqueue(
            &mut tx,
            &[Message::new("out", key.clone(), format!("{key}:{i}"))
                .with_header("n", i.to_string())],
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(outbox::backlog(&t.db).await.unwrap(), 60);
    let relay = Relay::new(
        t.db.clone(),
        log.clone(),
        RelayConfig {
            batch_size: 25,
            ..RelayConfig::default()
        },
    );
    let mut total = 0;
    loop {
        let n = relay.drain_once().await.unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    assert_eq!(total, 60);
    assert_eq!(
        outbox::backlog(&t.db).await.unwrap(),
        0,
        "published rows are deleted"
    );
    let mut c = log.subscribe("check", &["out".into()]).await.unwrap();
    let got = shopflow_bus::conformance::poll_n(&mut c, 60, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 60);
    assert!(
        c.poll(10, Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty(),
        "the rolled-back row was published"
    );
    let mut per_key: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for r in &got {
        let v = String::from_utf8(r.value.to_vec()).unwrap();
        let (k, i) = v.split_once(':').unwrap();
        assert_eq!(r.header("n").unwrap().as_ref(), i.as_bytes());
        per_key
            .entry(k.into())
            .or_default()
            .push(i.parse().unwrap());
    }
    for (k, seq) in per_key {
        let mut sorted = seq.clone();
        sorted.sort();
        assert_eq!(seq, sorted, "order of {k}");
    }
    drop(c);
    log.close().await.unwrap();
}

/// The relay dies after publishing and before deleting: the next relay publishes the rows again,
/// and a consumer with an inbox applies each effect once.
async fn relay_crash_republishes_and_inbox_dedups(t: &TestDb) {
    let (log, _dir) = open_log().await;
    let mut tx = t.db.begin().await.unwrap();
    let msgs: Vec<Message> = (0..10)
        .map(|i| {
            Message::new("out", format!("k{i}"), format!("m{i}"))
                .with_header("id", format!("msg-{i}"))
        })
        .collect();
    outbox::enqueue(&mut tx, &msgs).await.unwrap();
    tx.commit().await.unwrap();

    let first = Relay::new(t.db.clone(), log.clone(), RelayConfig::default());
    let mut batch = first.fetch().await.unwrap();
    first.publish(&mut batch).await.unwrap();
    drop(batch); // killed before `acknowledge`
    drop(first);
    let second = Relay::new(t.db.clone(), log.clone(), RelayConfig::default());
    assert_eq!(
        second.drain_once().await.unwrap(),
        10,
        "the unacknowledged rows are published again"
    );
    assert_eq!(second.drain_once().await.unwrap(), 0);

    let mut c = log.subscribe("consumer", &["out".into()]).await.unwrap();
    let got = shopflow_bus::conformance::poll_n(&mut c, 20, Duration::from_secs(10)).await;
    assert_eq!(
        got.len(),
        20,
        "each message twice: duplicates allowed, loss never"
    );
    let mut applied = 0;
    for r in &got {
        let id = String::from_utf8(r.header("id").unwrap().to_vec()).unwrap();
        let mut tx = t.db.begin().await.unwrap();
        if inbox::record(&mut tx, "consumer", &id).await.unwrap() {
            tx.execute(
                "INSERT INTO snapshots (stream_id, version, state, taken_at) VALUES ($1, 1, $2, 0)",
                shopflow_store::params![id.clone(), b"x".as_slice()],
            )
            .await
            .unwrap();
            applied += 1;
        }
        tx.commit().await.unwrap();
    }
    assert_eq!(applied, 10, "the inbox turned every duplicate into a no-op");
    drop(c);
    log.close().await.unwrap();
}

/// The relay wakes on commit: with a one-minute fallback poll, rows still arrive at once.
async fn relay_wakes_on_commit(t: &TestDb) {
    let (log, _dir) = open_log().await;
    let relay = Arc::new(Relay::new(
        t.db.clone(),
        log.clone(),
        RelayConfig {
            poll_interval: Duration::from_secs(60),
            ..RelayConfig::default()
        },
    ));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let r = relay.clone();
    let task = tokio::spawn(async move {
        r.run(async {
            let _ = stop_rx.await;
        })
        .await
    });
    let mut c = log.subscribe("wake", &["out".into()]).await.unwrap();
    // Let the relay settle into waiting (and, on PostgreSQL, LISTEN).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut seen = HashSet::new();
    for i in 0..5 {
        let started = Instant::now();
        let mut tx = t.db.begin().await.unwrap();
        outbox::enqueue(&mut tx, &[Message::new("out", "k", format!("w{i}"))])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let got = shopflow_bus::conformance::poll_n(&mut c, 1, Duration::from_secs(20)).await;
        assert_eq!(got.len(), 1);
        assert!(seen.insert(got[0].value.clone()));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "relay waited for its fallback poll: {:?}",
            started.elapsed()
        );
    }
    let _ = stop_tx.send(());
    task.await.unwrap().unwrap();
    drop(c);
    log.close().await.unwrap();
}

/// `Tx::after_commit`: the hooks of a committed transaction run after its commit, in order; a
/// rollback, or a rollback to a savepoint taken before a hook, drops it unrun.
async fn after_commit_hooks_run_only_for_what_committed(t: &TestDb) {
    use std::sync::{Arc, Mutex};
    let ran = Arc::new(Mutex::new(Vec::<&'static str>::new()));
    let hook = |name: &'static str| {
        let ran = ran.clone();
        move || ran.lock().unwrap().push(name)
    };

    let mut tx = t.db.begin().await.unwrap();
    tx.after_commit(hook("rolled-back"));
    tx.rollback().await.unwrap();
    let mut tx = t.db.begin().await.unwrap();
    tx.after_commit(hook("dropped"));
    drop(tx);

    let mut tx = t.db.begin().await.unwrap();
    tx.after_commit(hook("first"));
    tx.savepoint("a").await.unwrap();
    tx.after_commit(hook("kept-in-a"));
    tx.savepoint("b").await.unwrap();
    tx.after_commit(hook("undone-in-b"));
    tx.rollback_to_savepoint("b").await.unwrap();
    tx.release_savepoint("b").await.unwrap();
    tx.release_savepoint("a").await.unwrap();
    tx.savepoint("c").await.unwrap();
    tx.after_commit(hook("undone-in-c"));
    tx.rollback_to_savepoint("c").await.unwrap();
    tx.after_commit(hook("last"));
    assert!(
        ran.lock().unwrap().is_empty(),
        "nothing runs before the commit"
    );
    tx.commit().await.unwrap();
    assert_eq!(*ran.lock().unwrap(), vec!["first", "kept-in-a", "last"]);

    // A commit that fails runs none (here a before-commit sync fails it).
    let mut tx = t.db.begin().await.unwrap();
    tx.after_commit(hook("failed"));
    let spool = Arc::new(());
    tx.before_commit(&spool, || {
        Box::new(|| Err(std::io::Error::other("the spool's disk is full")))
    });
    assert!(tx.commit().await.is_err());
    assert_eq!(*ran.lock().unwrap(), vec!["first", "kept-in-a", "last"]);
}

/// What a transaction emits waits in it until it commits: a rollback (whole or to a savepoint)
/// takes back exactly what was emitted after it, raw records keep their place among envelopes,
/// and the numbers of each `(source, aggregate)` are gap-free in the order of the calls —
/// across transactions too, and over more aggregates than one statement takes.
async fn emitted_messages_wait_for_commit_and_follow_savepoints(t: &TestDb) {
    use shopflow_store::{Outgoing, emit};
    let out = |aggregate: &str, what: &str| Outgoing {
        topic: "out".into(),
        envelope: Envelope::from_parts(
            "ThingHappened",
            1,
            Kind::Domain,
            serde_json::json!({ "what": what }),
            Meta::new("t", aggregate, 0),
        )
        .unwrap(),
    };
    // A rolled-back transaction publishes nothing.
    let mut tx = t.db.begin().await.unwrap();
    emit(&mut tx, vec![out("o-1", "ghost")]).await.unwrap();
    tx.rollback().await.unwrap();

    let mut tx = t.db.begin().await.unwrap();
    tx.savepoint("a").await.unwrap();
    emit(&mut tx, vec![out("o-1", "kept-1")]).await.unwrap();
    tx.savepoint("b").await.unwrap();
    emit(&mut tx, vec![out("o-1", "undone-1")]).await.unwrap();
    tx.rollback_to_savepoint("b").await.unwrap();
    emit(&mut tx, vec![out("o-2", "kept-2")]).await.unwrap();
    tx.release_savepoint("b").await.unwrap();
    tx.release_savepoint("a").await.unwrap();
    outbox::enqueue(&mut tx, &[Message::new("out", "raw", "raw")])
        .await
        .unwrap();
    tx.savepoint("c").await.unwrap();
    tx.savepoint("d").await.unwrap();
    emit(&mut tx, vec![out("o-1", "undone-2")]).await.unwrap();
    // Rolling back to the outer one ends the inner one and takes back what came after both.
    tx.rollback_to_savepoint("c").await.unwrap();
    tx.release_savepoint("c").await.unwrap();
    emit(&mut tx, vec![out("o-1", "kept-3"), out("o-1", "kept-4")])
        .await
        .unwrap();
    // Savepoints go through the methods that know about what waits.
    for raw in [
        "SAVEPOINT x",
        "  release savepoint x",
        "ROLLBACK TO SAVEPOINT x",
    ] {
        let err = tx.execute(raw, &[]).await.unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{raw}: {err}");
    }
    assert!(tx.savepoint("x; DROP TABLE outbox").await.is_err());
    assert_eq!(
        outbox::backlog(&t.db).await.unwrap(),
        0,
        "nothing is written before the commit"
    );
    tx.commit().await.unwrap();

    let published = |m: &Message| -> (String, String, u64) {
        let env = Envelope::decode(&m.value).unwrap();
        (
            env.aggregate_id().to_owned(),
            env.data()["what"].as_str().unwrap().to_owned(),
            env.sequence(),
        )
    };
    let rows = outbox::pending(&t.db, 100).await.unwrap();
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert_eq!(published(&rows[0]), ("o-1".into(), "kept-1".into(), 1));
    assert_eq!(published(&rows[1]), ("o-2".into(), "kept-2".into(), 1));
    assert_eq!(&rows[2].value[..], b"raw");
    assert_eq!(published(&rows[3]), ("o-1".into(), "kept-3".into(), 2));
    assert_eq!(published(&rows[4]), ("o-1".into(), "kept-4".into(), 3));

    // The next transaction goes on from there, and one with more aggregates than a statement
    // takes (64 + 4 + 1 + 1) numbers each from 1.
    let mut tx = t.db.begin().await.unwrap();
    let mut many = vec![out("o-1", "next")];
    many.extend((0..70).map(|i| out(&format!("m-{i}"), "many")));
    emit(&mut tx, many).await.unwrap();
    tx.commit().await.unwrap();
    let rows = outbox::pending(&t.db, 100).await.unwrap();
    assert_eq!(rows.len(), 76);
    assert_eq!(published(&rows[5]), ("o-1".into(), "next".into(), 4));
    for r in &rows[6..] {
        let (aggregate, _, seq) = published(r);
        assert!(aggregate.starts_with("m-"), "{aggregate}");
        assert_eq!(seq, 1, "{aggregate}");
    }
}

macro_rules! suite {
    ($backend:ident: $($name:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(t) = super::$backend().await else { return };
                    super::$name(&t).await;
                    t.cleanup().await;
                }
            )*
        }
    };
}

suite!(sqlite:
    append_and_read_stream,
    expected_version_conflicts,
    concurrent_appenders_one_wins_each_version,
    read_all_in_commit_order_and_batches,
    snapshots,
    load_in_and_append_after_read,
    inbox_records_once_and_rolls_back,
    inbox_checks_a_batch_and_records_new_ids,
    sequence_reads_a_batch_and_observes_after,
    outbox_relays_committed_rows_in_key_order,
    relay_crash_republishes_and_inbox_dedups,
    relay_wakes_on_commit,
    relaxed_transactions_are_atomic_and_leave_durability_on,
    deferred_statements_keep_their_order_and_their_failures,
    emitted_messages_wait_for_commit_and_follow_savepoints,
    after_commit_hooks_run_only_for_what_committed,
);

suite!(postgres:
    append_and_read_stream,
    expected_version_conflicts,
    concurrent_appenders_one_wins_each_version,
    read_all_in_commit_order_and_batches,
    snapshots,
    load_in_and_append_after_read,
    inbox_records_once_and_rolls_back,
    inbox_checks_a_batch_and_records_new_ids,
    sequence_reads_a_batch_and_observes_after,
    outbox_relays_committed_rows_in_key_order,
    relay_crash_republishes_and_inbox_dedups,
    relay_wakes_on_commit,
    relaxed_transactions_are_atomic_and_leave_durability_on,
    deferred_statements_keep_their_order_and_their_failures,
    emitted_messages_wait_for_commit_and_follow_savepoints,
    after_commit_hooks_run_only_for_what_committed,
);

/// A server error reads as what the server said (tokio-postgres alone prints "db error"), so a
/// dead letter's reason or a log line tells the operator what went wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_errors_say_what_the_server_said() {
    let Some(t) = postgres().await else { return };
    let err =
        t.db.query("SELECT * FROM no_such_table", &[])
            .await
            .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("42P01"), "{text}");
    assert!(text.contains("no_such_table"), "{text}");
    assert!(!err.is_transient(), "{text}");
    t.cleanup().await;
}

/// `Tx::lock` / `Tx::try_lock`: on PostgreSQL a second transaction cannot take a held key until
/// the holder ends; other keys are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_locks_serialize_transactions_on_postgres() {
    let Some(t) = postgres().await else { return };
    let mut a = t.db.begin().await.unwrap();
    a.lock(7, "k").await.unwrap();
    let mut b = t.db.begin().await.unwrap();
    assert!(!b.try_lock(7, "k").await.unwrap());
    assert!(b.try_lock(7, "other").await.unwrap());
    a.rollback().await.unwrap();
    assert!(b.try_lock(7, "k").await.unwrap());
    b.rollback().await.unwrap();
    t.cleanup().await;
}

/// A transaction that has appended the first event of `stream`, left open.
async fn begin_with_append(
    db: &Db,
    store: &EventStore,
    stream: &str,
    n: u64,
) -> shopflow_store::Tx {
    let mut tx = db.begin().await.unwrap();
    store
        .append(
            &mut tx,
            stream,
            ExpectedVersion::NoStream,
            &[event(stream, 1, n)],
        )
        .await
        .unwrap();
    tx
}

/// Appends on PostgreSQL hold no lock across their transaction, yet a reader following the
/// global order never passes an event that commits late: while a transaction that appended is
/// still open, reads stop below it, so a later transaction's committed event waits too; once it
/// commits, both arrive, in order, after what the reader had already seen. A rolled-back
/// transaction leaves no hole a reader waits on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_overlap_and_readers_never_pass_a_late_commit_on_postgres() {
    let Some(t) = postgres().await else { return };
    let store = EventStore::new(t.db.clone());
    let mut seen = Vec::new();
    let mut after = 0;
    // Reads until `n` events were seen (another test's open transaction anywhere on the server
    // may hold the bound back for a moment: the bound is the server's oldest running one).
    let follow = async |seen: &mut Vec<String>, after: &mut u64, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for e in store.read_all(*after, 100).await.unwrap() {
                assert!(e.position > *after, "positions only grow");
                *after = e.position;
                seen.push(e.stream_id);
            }
            if seen.len() >= n || Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };

    let early = begin_with_append(&t.db, &store, "early", 1).await;
    // A second appender does not wait for the first (no lock), and commits first.
    let late = begin_with_append(&t.db, &store, "late", 2).await;
    late.commit().await.unwrap();
    follow(&mut seen, &mut after, 0).await;
    assert!(seen.is_empty(), "nothing passes an open appender: {seen:?}");

    early.commit().await.unwrap();
    follow(&mut seen, &mut after, 2).await;
    assert_eq!(seen, ["early", "late"], "both, in position order");

    // A rolled-back append holds nothing back once it has ended.
    let ghost = begin_with_append(&t.db, &store, "ghost", 3).await;
    let next = begin_with_append(&t.db, &store, "next", 4).await;
    next.commit().await.unwrap();
    follow(&mut seen, &mut after, 0).await;
    assert_eq!(seen.len(), 2, "held back by the open transaction: {seen:?}");
    ghost.rollback().await.unwrap();
    follow(&mut seen, &mut after, 3).await;
    assert_eq!(seen, ["early", "late", "next"]);
    t.cleanup().await;
}

/// `Tx::execute_deferred`: deferred statements run in the order they were given, before the
/// next statement (a savepoint rolled back undoes exactly what came after it), and a deferred
/// statement that fails is never lost: the call itself (SQLite) or the next statement or the
/// commit (PostgreSQL) fails, and nothing of the transaction is committed.
async fn deferred_statements_keep_their_order_and_their_failures(t: &TestDb) {
    let insert = "INSERT INTO inbox (consumer, message_id, handled_at) VALUES ($1, $2, 0)";
    let mut tx = t.db.begin().await.unwrap();
    tx.savepoint("a").await.unwrap();
    tx.execute_deferred(insert, shopflow_store::params!["c", "undone"])
        .await
        .unwrap();
    tx.rollback_to_savepoint("a").await.unwrap();
    tx.execute_deferred(insert, shopflow_store::params!["c", "kept"])
        .await
        .unwrap();
    tx.release_savepoint("a").await.unwrap();
    let rows = tx
        .query(
            "SELECT message_id FROM inbox WHERE consumer = 'c' ORDER BY message_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "the next statement sees them all, in order");
    assert_eq!(rows[0].str(0).unwrap(), "kept");
    tx.commit().await.unwrap();

    let mut tx = t.db.begin().await.unwrap();
    tx.execute(insert, shopflow_store::params!["c", "other"])
        .await
        .unwrap();
    let failed = match tx
        .execute_deferred(insert, shopflow_store::params!["c", "kept"])
        .await
    {
        Err(e) => e,
        Ok(()) => tx
            .commit()
            .await
            .expect_err("a failed deferred statement fails the commit"),
    };
    assert!(failed.is_unique_violation(), "{failed}");
    assert!(
        !inbox::contains(&t.db, "c", "other").await.unwrap(),
        "nothing of the failed transaction committed"
    );
}
