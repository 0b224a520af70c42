//! A member of a consumer group of the embedded log: takes up its generation's partitions,
//! reads from its positions, commits through the offsets topic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhash::HashMap;
use shopflow_bus::{Consumer, Record, TopicPartition};
use tokio::sync::Notify;

use crate::partition::Partition;
use crate::{Error, Log, Result, offset_message, to_record};

/// A member of a consumer group of the embedded log.
#[derive(Debug)]
pub struct LogConsumer {
    pub(crate) log: Log,
    pub(crate) group: String,
    pub(crate) member: u64,
    pub(crate) notify: Arc<Notify>,
    pub(crate) generation: u64,
    pub(crate) assigned: Vec<(TopicPartition, Arc<Partition>)>,
    pub(crate) positions: HashMap<TopicPartition, u64>,
    pub(crate) next_start: usize,
}

impl LogConsumer {
    /// Takes up a new generation's assignment, if there is one.
    fn refresh(&mut self) {
        let shared = &self.log.shared;
        let assignment = {
            let groups = shared.groups.lock().expect("groups lock");
            let Some(g) = groups.get(&self.group) else {
                return;
            };
            if g.generation == self.generation {
                return;
            }
            self.generation = g.generation;
            g.members
                .get(&self.member)
                .map(|m| m.assignment.clone())
                .unwrap_or_default()
        };
        self.positions.retain(|tp, _| assignment.contains(tp));
        self.assigned.clear();
        for tp in assignment {
            let Ok(part) = shared.partition(&tp) else {
                continue;
            };
            if !self.positions.contains_key(&tp) {
                let pos = shared
                    .committed_offset(&self.group, &tp)
                    .unwrap_or_else(|| part.start());
                self.positions.insert(tp.clone(), pos);
            }
            self.assigned.push((tp, part));
        }
    }

    fn fetch(&mut self, max_records: usize) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        let n = self.assigned.len();
        for i in 0..n {
            if out.len() >= max_records {
                break;
            }
            let (tp, part) = &self.assigned[(self.next_start + i) % n];
            let pos = self.positions[tp];
            let recs = part.read(
                pos,
                max_records - out.len(),
                self.log.shared.config.max_poll_bytes,
            )?;
            if let Some(last) = recs.last() {
                if recs[0].offset > pos {
                    tracing::warn!(group = %self.group, partition = %tp, from = pos, to = recs[0].offset,
                        "records before the log start were deleted by retention before this group read them");
                }
                self.positions.insert(tp.clone(), last.offset + 1);
                out.extend(recs.into_iter().map(|d| to_record(&part.topic, part.id, d)));
            }
        }
        if n > 0 {
            self.next_start = (self.next_start + 1) % n;
        }
        Ok(out)
    }
}

impl Consumer for LogConsumer {
    async fn poll(&mut self, max_records: usize, timeout: Duration) -> Result<Vec<Record>> {
        let deadline = Instant::now() + timeout;
        loop {
            self.refresh();
            let out = self.fetch(max_records.max(1))?;
            if !out.is_empty() {
                return Ok(out);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(out);
            }
            if tokio::time::timeout(left, self.notify.notified())
                .await
                .is_err()
            {
                return Ok(Vec::new());
            }
        }
    }

    async fn commit(&mut self, offsets: &[(TopicPartition, u64)]) -> Result<()> {
        self.refresh();
        let mut messages = Vec::with_capacity(offsets.len());
        for (tp, offset) in offsets {
            let Some((_, part)) = self.assigned.iter().find(|(t, _)| t == tp) else {
                return Err(Error::NotAssigned {
                    topic: tp.topic.to_string(),
                    partition: tp.partition,
                });
            };
            let (start, end) = (part.start(), part.end());
            if *offset > end {
                return Err(Error::OffsetOutOfRange {
                    topic: tp.topic.to_string(),
                    partition: tp.partition,
                    offset: *offset,
                    start,
                    end,
                });
            }
            messages.push(offset_message(&self.group, tp, *offset));
        }
        if messages.is_empty() {
            return Ok(());
        }
        self.log.send(messages, true).await.map(|_| ())
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        self.assigned.iter().map(|(tp, _)| tp.clone()).collect()
    }

    fn seek(&mut self, tp: &TopicPartition, offset: u64) -> Result<()> {
        match self.positions.get_mut(tp) {
            Some(p) => {
                *p = offset;
                Ok(())
            }
            None => Err(Error::NotAssigned {
                topic: tp.topic.to_string(),
                partition: tp.partition,
            }),
        }
    }
}

impl Drop for LogConsumer {
    fn drop(&mut self) {
        let shared = &self.log.shared;
        let mut groups = match shared.groups.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(g) = groups.get_mut(&self.group) {
            g.members.remove(&self.member);
            if g.members.is_empty() {
                groups.remove(&self.group);
            } else {
                g.rebalance(|t| shared.partitions_of(t));
            }
        }
    }
}
