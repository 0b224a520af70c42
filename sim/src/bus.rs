//! The simulated bus: the [`Bus`] contract in memory, with nothing left to chance. The
//! simulator decides which records of which partitions a consumer sees and when; the bus keeps
//! the partitions, their order, and each group's committed offsets.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use shopflow_bus::{
    Ack, Bus, Capabilities, Consumer, Error, Message, PartitionLag, Record, Result, TopicInfo,
    TopicPartition, TopicSpec, partition_for_key,
};

#[derive(Debug, Default)]
struct State {
    topics: BTreeMap<String, Vec<Vec<Record>>>,
    committed: BTreeMap<(String, TopicPartition), u64>,
    /// Milliseconds since the epoch stamped on appended records (the simulation's clock).
    now_ms: i64,
    closed: bool,
}

/// An in-memory bus for one simulation.
#[derive(Clone, Debug, Default)]
pub struct SimBus(Arc<Mutex<State>>);

impl SimBus {
    fn state(&self) -> MutexGuard<'_, State> {
        // One thread drives the simulation: a poisoned lock still guards whole data.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open(&self) -> Result<MutexGuard<'_, State>> {
        let s = self.state();
        if s.closed {
            return Err(Error::Closed);
        }
        Ok(s)
    }

    /// Sets the time stamped on records appended from now on.
    pub fn set_now(&self, ms: i64) {
        self.state().now_ms = ms;
    }

    /// The end offset of every partition of `topics`.
    pub fn ends(&self, topics: &[String]) -> Vec<(TopicPartition, u64)> {
        let s = self.state();
        let mut out = Vec::new();
        for t in topics {
            if let Some(parts) = s.topics.get(t) {
                for (p, records) in parts.iter().enumerate() {
                    out.push((
                        TopicPartition::new(t.as_str(), p as u32),
                        records.len() as u64,
                    ));
                }
            }
        }
        out
    }

    /// Records `from..to` of a partition.
    pub fn slice(&self, tp: &TopicPartition, from: u64, to: u64) -> Vec<Record> {
        let s = self.state();
        s.topics
            .get(&*tp.topic)
            .and_then(|parts| parts.get(tp.partition as usize))
            .map(|r| {
                let end = (to as usize).min(r.len());
                r[(from as usize).min(end)..end].to_vec()
            })
            .unwrap_or_default()
    }

    /// The committed offset of `group` on `tp` (0 when it never committed).
    pub fn committed_offset(&self, group: &str, tp: &TopicPartition) -> u64 {
        self.state()
            .committed
            .get(&(group.to_owned(), tp.clone()))
            .copied()
            .unwrap_or(0)
    }

    /// Commits `offsets` for `group`.
    pub fn commit_offsets(&self, group: &str, offsets: &[(TopicPartition, u64)]) {
        let mut s = self.state();
        for (tp, o) in offsets {
            s.committed.insert((group.to_owned(), tp.clone()), *o);
        }
    }

    /// Appends a copy of a record already in the log (a producer that retried after a lost
    /// acknowledgement).
    pub fn duplicate(&self, tp: &TopicPartition, offset: u64) -> Option<u64> {
        let mut s = self.state();
        let now = s.now_ms;
        let parts = s.topics.get_mut(&*tp.topic)?;
        let records = parts.get_mut(tp.partition as usize)?;
        let mut copy = records.get(offset as usize)?.clone();
        copy.offset = records.len() as u64;
        copy.timestamp_ms = now;
        records.push(copy);
        Some(records.len() as u64 - 1)
    }

    fn append(s: &mut State, m: Message) -> Result<Ack> {
        let now = s.now_ms;
        let parts = s
            .topics
            .get_mut(&m.topic)
            .ok_or_else(|| Error::UnknownTopic {
                topic: m.topic.clone(),
            })?;
        let partition = match &m.key {
            Some(k) => partition_for_key(k, parts.len() as u32),
            None => 0,
        };
        let records = &mut parts[partition as usize];
        let offset = records.len() as u64;
        records.push(Record {
            topic: Arc::from(m.topic.as_str()),
            partition,
            offset,
            timestamp_ms: m.timestamp_ms.unwrap_or(now),
            key: m.key,
            value: m.value,
            headers: m.headers,
        });
        Ok(Ack { partition, offset })
    }
}

impl Bus for SimBus {
    type Consumer = SimConsumer;

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            auto_create_topics: false,
            exact_lag: true,
            instant_rebalance: true,
        }
    }

    async fn create_topic(&self, topic: &str, spec: &TopicSpec) -> Result<()> {
        shopflow_bus::validate_topic_name(topic)?;
        let mut s = self.open()?;
        match s.topics.get(topic) {
            Some(p) if p.len() == spec.partitions as usize => Ok(()),
            Some(p) => Err(Error::PartitionMismatch {
                topic: topic.to_owned(),
                existing: p.len() as u32,
                requested: spec.partitions,
            }),
            None => {
                s.topics.insert(
                    topic.to_owned(),
                    vec![Vec::new(); spec.partitions.max(1) as usize],
                );
                Ok(())
            }
        }
    }

    async fn topics(&self) -> Result<Vec<TopicInfo>> {
        Ok(self
            .open()?
            .topics
            .iter()
            .map(|(name, p)| TopicInfo {
                name: name.clone(),
                partitions: p.len() as u32,
            })
            .collect())
    }

    async fn watermarks(&self, tp: &TopicPartition) -> Result<(u64, u64)> {
        let s = self.open()?;
        let parts = s
            .topics
            .get(&*tp.topic)
            .ok_or_else(|| Error::UnknownTopic {
                topic: tp.topic.to_string(),
            })?;
        let records = parts
            .get(tp.partition as usize)
            .ok_or_else(|| Error::UnknownPartition {
                topic: tp.topic.to_string(),
                partition: tp.partition,
                partitions: parts.len() as u32,
            })?;
        Ok((0, records.len() as u64))
    }

    async fn read(&self, tp: &TopicPartition, from: u64, max: usize) -> Result<Vec<Record>> {
        let (_, end) = self.watermarks(tp).await?;
        Ok(self.slice(tp, from, end.min(from.saturating_add(max as u64))))
    }

    async fn publish(&self, messages: Vec<Message>) -> Result<Vec<Ack>> {
        let mut s = self.open()?;
        // All or nothing: check every topic first.
        if let Some(m) = messages.iter().find(|m| !s.topics.contains_key(&m.topic)) {
            return Err(Error::UnknownTopic {
                topic: m.topic.clone(),
            });
        }
        messages
            .into_iter()
            .map(|m| Self::append(&mut s, m))
            .collect()
    }

    async fn subscribe(&self, group: &str, topics: &[String]) -> Result<SimConsumer> {
        let s = self.open()?;
        let mut positions = BTreeMap::new();
        for t in topics {
            let parts = s
                .topics
                .get(t)
                .ok_or_else(|| Error::UnknownTopic { topic: t.clone() })?;
            for p in 0..parts.len() as u32 {
                let tp = TopicPartition::new(t.as_str(), p);
                let at = s
                    .committed
                    .get(&(group.to_owned(), tp.clone()))
                    .copied()
                    .unwrap_or(0);
                positions.insert(tp, at);
            }
        }
        Ok(SimConsumer {
            bus: self.clone(),
            group: group.to_owned(),
            positions,
        })
    }

    async fn lag(&self, group: &str) -> Result<Vec<PartitionLag>> {
        let s = self.open()?;
        let mut out = Vec::new();
        for ((g, tp), committed) in &s.committed {
            if g != group {
                continue;
            }
            let end = s
                .topics
                .get(&*tp.topic)
                .and_then(|p| p.get(tp.partition as usize))
                .map_or(0, |r| r.len() as u64);
            out.push(PartitionLag {
                group: g.clone(),
                topic: tp.topic.to_string(),
                partition: tp.partition,
                committed: Some(*committed),
                start_offset: 0,
                end_offset: end,
                lag: end.saturating_sub(*committed),
            });
        }
        Ok(out)
    }

    async fn committed(&self, group: &str) -> Result<Vec<(TopicPartition, u64)>> {
        Ok(self
            .open()?
            .committed
            .iter()
            .filter(|((g, _), _)| g == group)
            .map(|((_, tp), o)| (tp.clone(), *o))
            .collect())
    }

    async fn close(&self) -> Result<()> {
        self.state().closed = true;
        Ok(())
    }
}

/// The only member of its group: every partition of its topics is its own. (The simulator
/// delivers records itself; this serves code that consumes through the [`Bus`] contract.)
#[derive(Debug)]
pub struct SimConsumer {
    bus: SimBus,
    group: String,
    positions: BTreeMap<TopicPartition, u64>,
}

impl Consumer for SimConsumer {
    async fn poll(&mut self, max_records: usize, _timeout: Duration) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        for (tp, at) in self.positions.iter_mut() {
            let left = max_records.saturating_sub(out.len());
            if left == 0 {
                break;
            }
            let got = self.bus.slice(tp, *at, at.saturating_add(left as u64));
            *at += got.len() as u64;
            out.extend(got);
        }
        Ok(out)
    }

    async fn commit(&mut self, offsets: &[(TopicPartition, u64)]) -> Result<()> {
        for (tp, o) in offsets {
            if !self.positions.contains_key(tp) {
                return Err(Error::NotAssigned {
                    topic: tp.topic.to_string(),
                    partition: tp.partition,
                });
            }
            let (_, end) = self.bus.watermarks(tp).await?;
            if *o > end {
                return Err(Error::OffsetOutOfRange {
                    topic: tp.topic.to_string(),
                    partition: tp.partition,
                    offset: *o,
                    start: 0,
                    end,
                });
            }
        }
        self.bus.commit_offsets(&self.group, offsets);
        Ok(())
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        self.positions.keys().cloned().collect()
    }

    fn seek(&mut self, tp: &TopicPartition, offset: u64) -> Result<()> {
        match self.positions.get_mut(tp) {
            Some(at) => {
                *at = offset;
                Ok(())
            }
            None => Err(Error::NotAssigned {
                topic: tp.topic.to_string(),
                partition: tp.partition,
            }),
        }
    }
}

/// A record that is not an envelope at all: what a broken producer might write.
pub(crate) fn poison_value(n: u64) -> Bytes {
    Bytes::from(format!("\u{1}not an envelope #{n}\u{0}"))
}
