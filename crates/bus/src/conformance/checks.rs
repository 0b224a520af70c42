//! The checks of the conformance suite, one function each (run them with
//! [`bus_conformance_tests!`](crate::bus_conformance_tests)).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::{Harness, msg, poll_n, unique, value_str};
use crate::{Bus, Capabilities, Consumer, Error, Message, TopicPartition, TopicSpec};

/// Offsets are dense from 0, acks come back in input order, and records read back equal what was
/// published, key, value, headers and timestamp included.
pub async fn publish_acks_and_reads_back<H: Harness>(h: &H) {
    let bus = h.open().await;
    let topic = unique("acks");
    bus.create_topic(&topic, &TopicSpec::new(1)).await.unwrap();
    let batch: Vec<Message> = (0..10)
        .map(|i| {
            let mut m = msg(&topic, "k", format!("v{i}")).with_header("h", format!("x{i}"));
            m.timestamp_ms = Some(1_700_000_000_000 + i);
            m
        })
        .collect();
    let acks = bus.publish(batch.clone()).await.unwrap();
    assert_eq!(acks.len(), 10);
    for (i, a) in acks.iter().enumerate() {
        assert_eq!((a.partition, a.offset), (0, i as u64));
    }
    let more = bus
        .publish(vec![msg(&topic, "k", "v10".into())])
        .await
        .unwrap();
    assert_eq!(more[0].offset, 10);
    assert_eq!(
        bus.watermarks(&TopicPartition::new(topic.as_str(), 0))
            .await
            .unwrap(),
        (0, 11)
    );

    let mut c = bus
        .subscribe(&unique("g"), std::slice::from_ref(&topic))
        .await
        .unwrap();
    let got = poll_n(&mut c, 11, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 11);
    for (i, r) in got.iter().take(10).enumerate() {
        assert_eq!(r.offset, i as u64);
        assert_eq!(r.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(value_str(r), format!("v{i}"));
        assert_eq!(
            r.header("h").map(|v| v.as_ref()),
            Some(format!("x{i}").as_bytes())
        );
        assert_eq!(r.timestamp_ms, 1_700_000_000_000 + i as i64);
    }
    drop(c);
    bus.close().await.unwrap();
}

/// Same key → same partition, order per partition kept across batches, and the partition is the
/// one [`crate::partition_for_key`] names.
pub async fn ordering_per_partition<H: Harness>(h: &H) {
    let bus = h.open().await;
    let topic = unique("order");
    bus.create_topic(&topic, &TopicSpec::new(4)).await.unwrap();
    let keys: Vec<String> = (0..8).map(|i| format!("agg-{i}")).collect();
    for round in 0..25 {
        let batch = keys
            .iter()
            .map(|k| msg(&topic, k, format!("{k}:{round}")))
            .collect();
        let acks = bus.publish(batch).await.unwrap();
        for (k, a) in keys.iter().zip(&acks) {
            assert_eq!(
                a.partition,
                crate::partition_for_key(k.as_bytes(), 4),
                "key {k}"
            );
        }
    }
    let mut c = bus
        .subscribe(&unique("g"), std::slice::from_ref(&topic))
        .await
        .unwrap();
    let got = poll_n(&mut c, 200, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 200);
    let mut last_offset: BTreeMap<u32, u64> = BTreeMap::new();
    let mut per_key: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for r in &got {
        if let Some(prev) = last_offset.insert(r.partition, r.offset) {
            assert!(
                r.offset > prev,
                "offsets went backwards on partition {}",
                r.partition
            );
        }
        let v = value_str(r);
        let (k, round) = v.split_once(':').unwrap();
        per_key
            .entry(k.into())
            .or_default()
            .push(round.parse().unwrap());
    }
    for (k, rounds) in per_key {
        assert_eq!(rounds, (0..25).collect::<Vec<_>>(), "order of {k}");
    }
    drop(c);
    bus.close().await.unwrap();
}

/// Committed offsets survive closing and reopening the backend; a new member resumes there.
pub async fn committed_offsets_survive_reopen<H: Harness>(h: &H) {
    let topic = unique("reopen");
    let group = unique("g");
    {
        let bus = h.open().await;
        bus.create_topic(&topic, &TopicSpec::new(2)).await.unwrap();
        let batch = (0..20)
            .map(|i| msg(&topic, &format!("k{i}"), format!("{i}")))
            .collect();
        bus.publish(batch).await.unwrap();
        let mut c = bus
            .subscribe(&group, std::slice::from_ref(&topic))
            .await
            .unwrap();
        let got = poll_n(&mut c, 20, Duration::from_secs(20)).await;
        assert_eq!(got.len(), 20);
        // Commit only the first half of each partition.
        let mut ends: BTreeMap<u32, u64> = BTreeMap::new();
        for r in &got {
            ends.entry(r.partition)
                .and_modify(|e| *e = (*e).max(r.offset + 1))
                .or_insert(r.offset + 1);
        }
        let commits: Vec<_> = ends
            .iter()
            .map(|(p, end)| (TopicPartition::new(topic.as_str(), *p), end / 2))
            .collect();
        c.commit(&commits).await.unwrap();
        drop(c);
        bus.close().await.unwrap();
    }
    let bus = h.open().await;
    let committed: BTreeMap<u32, u64> = bus
        .committed(&group)
        .await
        .unwrap()
        .into_iter()
        .filter(|(tp, _)| *tp.topic == *topic)
        .map(|(tp, o)| (tp.partition, o))
        .collect();
    let mut c = bus
        .subscribe(&group, std::slice::from_ref(&topic))
        .await
        .unwrap();
    let expected: usize = {
        let mut total = 0;
        for p in 0..2 {
            let (_, end) = bus
                .watermarks(&TopicPartition::new(topic.as_str(), p))
                .await
                .unwrap();
            total += (end - committed.get(&p).copied().unwrap_or(0)) as usize;
        }
        total
    };
    assert!(expected > 0 && expected < 20);
    let got = poll_n(&mut c, expected, Duration::from_secs(20)).await;
    assert_eq!(got.len(), expected);
    for r in &got {
        assert!(
            r.offset >= committed[&r.partition],
            "delivered {} below the commit",
            r.offset
        );
    }
    // Nothing more than that.
    assert!(
        c.poll(10, Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty()
    );
    drop(c);
    bus.close().await.unwrap();
}

/// Two members of one group split the partitions between them, every record is delivered to
/// exactly one of them, and when one leaves the other takes over its partitions.
pub async fn group_members_split_partitions<H: Harness>(h: &H) {
    let bus = h.open().await;
    let topic = unique("split");
    let group = unique("g");
    bus.create_topic(&topic, &TopicSpec::new(4)).await.unwrap();
    let mut a = bus
        .subscribe(&group, std::slice::from_ref(&topic))
        .await
        .unwrap();
    let mut b = bus
        .subscribe(&group, std::slice::from_ref(&topic))
        .await
        .unwrap();

    // Let both see the rebalance.
    let end = Instant::now() + h.rebalance_timeout();
    loop {
        a.poll(1, Duration::from_millis(100)).await.unwrap();
        b.poll(1, Duration::from_millis(100)).await.unwrap();
        let (sa, sb) = (a.assignment(), b.assignment());
        if !sa.is_empty() && !sb.is_empty() && sa.len() + sb.len() == 4 {
            let all: BTreeSet<_> = sa.iter().chain(&sb).collect();
            assert_eq!(all.len(), 4, "a partition is assigned twice: {sa:?} {sb:?}");
            break;
        }
        assert!(Instant::now() < end, "no split: {sa:?} / {sb:?}");
    }

    let batch = (0..100)
        .map(|i| msg(&topic, &format!("k{i}"), format!("{i}")))
        .collect();
    bus.publish(batch).await.unwrap();
    let mut seen = BTreeSet::new();
    let end = Instant::now() + Duration::from_secs(20);
    while seen.len() < 100 && Instant::now() < end {
        for r in a.poll(100, Duration::from_millis(50)).await.unwrap() {
            assert!(a.assignment().contains(&r.topic_partition()));
            assert!(
                seen.insert(value_str(&r)),
                "delivered twice: {}",
                value_str(&r)
            );
        }
        for r in b.poll(100, Duration::from_millis(50)).await.unwrap() {
            assert!(b.assignment().contains(&r.topic_partition()));
            assert!(
                seen.insert(value_str(&r)),
                "delivered twice: {}",
                value_str(&r)
            );
        }
    }
    assert_eq!(seen.len(), 100);

    // b leaves without committing: a gets every partition and b's records again (at least once).
    let b_parts = b.assignment();
    drop(b);
    let end = Instant::now() + h.rebalance_timeout();
    let mut redelivered = 0;
    while a.assignment().len() < 4 || redelivered == 0 {
        for r in a.poll(100, Duration::from_millis(100)).await.unwrap() {
            if b_parts.contains(&r.topic_partition()) {
                redelivered += 1;
            }
        }
        assert!(
            Instant::now() < end,
            "a never took over: {:?}",
            a.assignment()
        );
    }
    assert!(redelivered > 0);
    drop(a);
    bus.close().await.unwrap();
}

/// Lag is end − committed per partition, and falls to zero as the group commits.
pub async fn lag_is_exact<H: Harness>(h: &H) {
    let bus = h.open().await;
    if !bus.capabilities().exact_lag {
        bus.close().await.unwrap();
        return;
    }
    let topic = unique("lag");
    let group = unique("g");
    bus.create_topic(&topic, &TopicSpec::new(2)).await.unwrap();
    let mut c = bus
        .subscribe(&group, std::slice::from_ref(&topic))
        .await
        .unwrap();
    let acks = bus
        .publish(
            (0..30)
                .map(|i| msg(&topic, &format!("k{i}"), format!("{i}")))
                .collect(),
        )
        .await
        .unwrap();
    let mut per_partition = [0u64; 2];
    for a in &acks {
        per_partition[a.partition as usize] += 1;
    }
    let lag = |l: Vec<crate::PartitionLag>| -> BTreeMap<u32, (Option<u64>, u64)> {
        l.into_iter()
            .filter(|p| p.topic == topic)
            .map(|p| (p.partition, (p.committed, p.lag)))
            .collect()
    };
    let before = lag(bus.lag(&group).await.unwrap());
    assert_eq!(before[&0], (None, per_partition[0]));
    assert_eq!(before[&1], (None, per_partition[1]));

    let got = poll_n(&mut c, 30, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 30);
    let first = got.iter().find(|r| r.partition == 0).unwrap();
    c.commit(&[(first.topic_partition(), first.offset + 1)])
        .await
        .unwrap();
    let mid = lag(bus.lag(&group).await.unwrap());
    assert_eq!(
        mid[&0],
        (Some(first.offset + 1), per_partition[0] - first.offset - 1)
    );
    assert_eq!(mid[&1], (None, per_partition[1]));

    c.commit(&[
        (TopicPartition::new(topic.as_str(), 0), per_partition[0]),
        (TopicPartition::new(topic.as_str(), 1), per_partition[1]),
    ])
    .await
    .unwrap();
    let after = lag(bus.lag(&group).await.unwrap());
    assert_eq!(after[&0].1 + after[&1].1, 0);
    drop(c);
    bus.close().await.unwrap();
}

/// A consumer waiting in `poll` wakes as soon as a record is published: the wake-up takes far less
/// than the poll timeout.
pub async fn tail_wakes_waiting_consumer<H: Harness>(h: &H) {
    let bus = h.open().await;
    let topic = unique("tail");
    bus.create_topic(&topic, &TopicSpec::new(1)).await.unwrap();
    let mut c = bus
        .subscribe(&unique("g"), std::slice::from_ref(&topic))
        .await
        .unwrap();
    // Make sure the member has its assignment before measuring.
    assert!(
        c.poll(10, Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty()
    );
    let publisher = bus.clone();
    let t = topic.clone();
    let task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        publisher
            .publish(vec![msg(&t, "k", "wake".into())])
            .await
            .unwrap();
        Instant::now()
    });
    let started = Instant::now();
    let got = c.poll(10, Duration::from_secs(30)).await.unwrap();
    let woke = Instant::now();
    let published = task.await.unwrap();
    assert_eq!(got.len(), 1, "poll returned without the record");
    assert!(
        woke.duration_since(started) >= Duration::from_millis(150),
        "poll returned before the record was published"
    );
    assert!(
        woke.saturating_duration_since(published) < Duration::from_secs(5),
        "poll woke {:?} after the publish: it is sleep-polling",
        woke.saturating_duration_since(published)
    );
    drop(c);
    bus.close().await.unwrap();
}

/// Committing a partition this member does not own, or beyond the end, is refused.
pub async fn commit_is_checked<H: Harness>(h: &H) {
    let bus = h.open().await;
    let topic = unique("commit");
    bus.create_topic(&topic, &TopicSpec::new(1)).await.unwrap();
    bus.publish(vec![msg(&topic, "k", "v".into())])
        .await
        .unwrap();
    let mut c = bus
        .subscribe(&unique("g"), std::slice::from_ref(&topic))
        .await
        .unwrap();
    let got = poll_n(&mut c, 1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1);
    let other = TopicPartition::new(unique("nope").as_str(), 0);
    assert!(matches!(
        c.commit(&[(other, 0)]).await,
        Err(Error::NotAssigned { .. })
    ));
    let tp = TopicPartition::new(topic.as_str(), 0);
    assert!(matches!(
        c.commit(&[(tp.clone(), 99)]).await,
        Err(Error::OffsetOutOfRange { .. })
    ));
    c.commit(&[(tp, 1)]).await.unwrap();
    drop(c);
    bus.close().await.unwrap();
}

/// Records a member received but did not commit are delivered again to the next member.
pub async fn uncommitted_records_are_redelivered<H: Harness>(h: &H) {
    let bus = h.open().await;
    let topic = unique("redeliver");
    let group = unique("g");
    bus.create_topic(&topic, &TopicSpec::new(1)).await.unwrap();
    bus.publish((0..10).map(|i| msg(&topic, "k", format!("{i}"))).collect())
        .await
        .unwrap();
    let mut c = bus
        .subscribe(&group, std::slice::from_ref(&topic))
        .await
        .unwrap();
    let got = poll_n(&mut c, 10, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 10);
    c.commit(&[(TopicPartition::new(topic.as_str(), 0), 4)])
        .await
        .unwrap();
    drop(c); // dies after handling 10, having committed 4
    let mut c2 = bus
        .subscribe(&group, std::slice::from_ref(&topic))
        .await
        .unwrap();
    let again = poll_n(&mut c2, 6, h.rebalance_timeout()).await;
    assert_eq!(
        again.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (4..10).collect::<Vec<_>>()
    );
    drop(c2);
    bus.close().await.unwrap();
}

/// Bad requests get typed errors: invalid names, unknown topics (without auto-create), a
/// partition-count mismatch, an internal topic.
pub async fn bad_requests_get_typed_errors<H: Harness>(h: &H) {
    let bus = h.open().await;
    let caps: Capabilities = bus.capabilities();
    assert!(matches!(
        bus.create_topic("bad name!", &TopicSpec::new(1)).await,
        Err(Error::InvalidTopic { .. })
    ));
    assert!(matches!(
        bus.create_topic("__internal", &TopicSpec::new(1)).await,
        Err(Error::InvalidTopic { .. })
    ));
    let topic = unique("mismatch");
    bus.create_topic(&topic, &TopicSpec::new(2)).await.unwrap();
    bus.create_topic(&topic, &TopicSpec::new(2)).await.unwrap();
    assert!(matches!(
        bus.create_topic(&topic, &TopicSpec::new(3)).await,
        Err(Error::PartitionMismatch {
            existing: 2,
            requested: 3,
            ..
        })
    ));
    if !caps.auto_create_topics {
        let r = bus
            .publish(vec![msg(&unique("missing"), "k", "v".into())])
            .await;
        assert!(matches!(r, Err(Error::UnknownTopic { .. })), "{r:?}");
    }
    bus.close().await.unwrap();
}

/// A partition reads back from any offset outside any group: what was published, in order,
/// and nothing is committed for anybody.
pub async fn reads_a_partition_from_an_offset<H: Harness>(h: &H) {
    let bus = h.open().await;
    let topic = unique("read");
    bus.create_topic(&topic, &TopicSpec::new(2)).await.unwrap();
    let batch: Vec<Message> = (0..12)
        .map(|i| msg(&topic, "same-key", format!("v{i}")))
        .collect();
    let acks = bus.publish(batch).await.unwrap();
    let tp = TopicPartition::new(topic.as_str(), acks[0].partition);
    let all = bus.read(&tp, 0, 100).await.unwrap();
    assert_eq!(all.len(), 12);
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, r)| r.offset == i as u64 && value_str(r) == format!("v{i}"))
    );
    let tail = bus.read(&tp, 9, 100).await.unwrap();
    assert_eq!(
        tail.iter().map(value_str).collect::<Vec<_>>(),
        vec!["v9", "v10", "v11"]
    );
    assert_eq!(bus.read(&tp, 4, 2).await.unwrap().len(), 2, "at most max");
    assert!(
        bus.read(&tp, 12, 10).await.unwrap().is_empty(),
        "nothing past the end"
    );
    let other = TopicPartition::new(topic.as_str(), 1 - acks[0].partition);
    assert!(bus.read(&other, 0, 10).await.unwrap().is_empty());
    bus.close().await.unwrap();
}
