//! A consumer-group member: polls, commits owned partitions only, seeks.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{BorrowedMessage, Header, Headers as _, Message as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use shopflow_bus::{Consumer, Error, Record, Result, TopicPartition};

use crate::client::Inner;
use crate::error::{join_err, kerr};

/// Logs rebalances of a member.
pub(crate) struct GroupContext {
    pub(crate) group: String,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                tracing::info!(
                    group = self.group,
                    partitions = tpl.count(),
                    "partitions revoked"
                )
            }
            Rebalance::Assign(tpl) => {
                tracing::info!(
                    group = self.group,
                    partitions = tpl.count(),
                    "partitions assigned"
                )
            }
            Rebalance::Error(e) => {
                tracing::warn!(group = self.group, error = %e, "rebalance failed")
            }
        }
    }
}

/// A member of a consumer group on Kafka. Offsets are committed only when asked (after the
/// caller's transaction committed), and only for partitions this member still owns.
pub struct KafkaConsumer {
    pub(crate) consumer: Arc<StreamConsumer<GroupContext>>,
    pub(crate) client: Arc<Inner>,
    pub(crate) topics: HashMap<String, Arc<str>>,
    /// One past the highest offset delivered per partition (commits up to it need no check).
    pub(crate) delivered_end: HashMap<TopicPartition, u64>,
}

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer").finish_non_exhaustive()
    }
}

impl Consumer for KafkaConsumer {
    async fn poll(&mut self, max_records: usize, timeout: Duration) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        let consumer = self.consumer.clone();
        match tokio::time::timeout(timeout, consumer.recv()).await {
            Err(_) => return Ok(out),
            Ok(Err(e)) => return Err(kerr(e)),
            Ok(Ok(m)) => out.push(record(&m, &mut self.topics, &self.client.config.namespace)),
        }
        // Take what is already there without waiting.
        while out.len() < max_records.max(1) {
            let fut = pin!(consumer.recv());
            let mut fut = fut;
            match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(Ok(m)) => {
                    out.push(record(&m, &mut self.topics, &self.client.config.namespace))
                }
                Poll::Ready(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    break;
                }
                Poll::Pending => break,
            }
        }
        for r in &out {
            let e = self.delivered_end.entry(r.topic_partition()).or_insert(0);
            *e = (*e).max(r.offset + 1);
        }
        Ok(out)
    }

    async fn commit(&mut self, offsets: &[(TopicPartition, u64)]) -> Result<()> {
        let assignment = self.consumer.assignment().map_err(kerr)?;
        let mut tpl = TopicPartitionList::new();
        for (tp, offset) in offsets {
            if assignment
                .find_partition(&self.client.ns(&tp.topic), tp.partition as i32)
                .is_none()
            {
                return Err(Error::NotAssigned {
                    topic: tp.topic.to_string(),
                    partition: tp.partition,
                });
            }
            if *offset > self.delivered_end.get(tp).copied().unwrap_or(0) {
                let (start, end) = self.client.watermarks(tp).await?;
                if *offset > end {
                    return Err(Error::OffsetOutOfRange {
                        topic: tp.topic.to_string(),
                        partition: tp.partition,
                        offset: *offset,
                        start,
                        end,
                    });
                }
            }
            tpl.add_partition_offset(
                &self.client.ns(&tp.topic),
                tp.partition as i32,
                Offset::Offset(*offset as i64),
            )
            .map_err(kerr)?;
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(join_err)?
            .map_err(|e| match e.rdkafka_error_code() {
                // The group moved on (this member lost the partition in a rebalance).
                Some(RDKafkaErrorCode::IllegalGeneration)
                | Some(RDKafkaErrorCode::UnknownMemberId)
                | Some(RDKafkaErrorCode::RebalanceInProgress) => Error::NotAssigned {
                    topic: offsets
                        .first()
                        .map(|(tp, _)| tp.topic.to_string())
                        .unwrap_or_default(),
                    partition: offsets.first().map(|(tp, _)| tp.partition).unwrap_or(0),
                },
                _ => kerr(e),
            })
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        let mut out: Vec<TopicPartition> = self
            .consumer
            .assignment()
            .map(|tpl| {
                tpl.elements()
                    .iter()
                    .map(|e| {
                        TopicPartition::new(
                            self.client.strip(e.topic()).unwrap_or(e.topic()),
                            e.partition().max(0) as u32,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    fn seek(&mut self, tp: &TopicPartition, offset: u64) -> Result<()> {
        if !self.assignment().contains(tp) {
            return Err(Error::NotAssigned {
                topic: tp.topic.to_string(),
                partition: tp.partition,
            });
        }
        self.consumer
            .seek(
                &self.client.ns(&tp.topic),
                tp.partition as i32,
                Offset::Offset(offset as i64),
                Duration::from_secs(5),
            )
            .map_err(kerr)
    }
}

pub(crate) fn record(
    m: &BorrowedMessage<'_>,
    topics: &mut HashMap<String, Arc<str>>,
    namespace: &str,
) -> Record {
    let topic = match topics.get(m.topic()) {
        Some(t) => t.clone(),
        None => {
            let t: Arc<str> = Arc::from(m.topic().strip_prefix(namespace).unwrap_or(m.topic()));
            topics.insert(m.topic().to_owned(), t.clone());
            t
        }
    };
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|Header { key, value }| {
                    (
                        key.to_owned(),
                        value.map(Bytes::copy_from_slice).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Record {
        topic,
        partition: m.partition().max(0) as u32,
        offset: m.offset().max(0) as u64,
        timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
        key: m.key().map(Bytes::copy_from_slice),
        value: m.payload().map(Bytes::copy_from_slice).unwrap_or_default(),
        headers,
    }
}
