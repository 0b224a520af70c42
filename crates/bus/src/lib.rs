#![doc = include_str!("../README.md")]

#[cfg(feature = "test-util")]
pub mod conformance;
mod error;
mod partitioner;
mod types;

pub use error::{Error, Result};
pub use partitioner::{murmur2, partition_for_key};
pub use types::{
    Ack, Capabilities, Headers, Message, PartitionLag, Record, TopicDetails, TopicInfo,
    TopicPartition, TopicSpec,
};

use std::future::Future;
use std::time::Duration;

/// The name of the topic that holds consumer-group offsets in backends that keep them in a topic.
/// Topics starting with `__` are internal and cannot be created or published to by users.
pub const INTERNAL_TOPIC_PREFIX: &str = "__";

/// Checks a topic name against Kafka's rules: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
/// (Whether `__` names are allowed is each backend's business: they are internal.)
pub fn validate_topic_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidTopic {
            topic: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 249 {
        return bad("must be 1 to 249 characters");
    }
    if name == "." || name == ".." {
        return bad("must not be `.` or `..`");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("may contain only ASCII letters, digits, `.`, `_` and `-`");
    }
    Ok(())
}

/// A partitioned, durable log of records: the event bus.
///
/// # Topics and partitions
/// A topic has a fixed number of partitions, each an ordered log of records with offsets
/// `start..end`. A message with a key goes to partition [`partition_for_key`]`(key, partitions)`
/// (Kafka's default partitioner for keyed records, so both backends place a key identically); a
/// message without a key goes to any partition.
///
/// # Publishing
/// - `publish` MUST return one [`Ack`] per message, in input order.
/// - When `publish` returns `Ok`, every message in the batch MUST be durable (the embedded log has
///   fsynced it; Kafka has it on all in-sync replicas) and visible to consumers.
/// - Messages for the same partition MUST be appended in the order they appear in the batch, and a
///   batch whose `publish` returned before another batch's `publish` was called MUST come first.
///   Concurrent batches have no order among them.
/// - On `Err`, any subset of the batch MAY have been appended. Callers that must not lose a message
///   retry the whole batch, so duplicates are possible; consumers deduplicate by event id.
///
/// # Consuming
/// - Consumers of one group share the partitions of the topics they subscribe to: each partition
///   is assigned to at most one member of a group at a time. Members joining or leaving cause a
///   rebalance.
/// - Within a partition, records MUST be delivered in offset order.
/// - A newly assigned partition is read from the group's committed offset, or from the partition's
///   start when the group has never committed one. Records delivered but not committed before a
///   rebalance or a crash are delivered again: delivery is **at least once**.
/// - A committed offset is the offset of the *next* record to read (Kafka's meaning).
/// - Committed offsets MUST survive a restart of the backend.
///
/// # Lag
/// For a group and partition, lag = end offset − committed offset (or − start offset when nothing
/// is committed). Backends with [`Capabilities::exact_lag`] report it exactly at the moment asked.
pub trait Bus: Clone + Send + Sync + 'static {
    type Consumer: Consumer;

    /// What this backend promises beyond the common contract.
    fn capabilities(&self) -> Capabilities;

    /// Creates a topic. Creating an existing topic with the same partition count is `Ok`; with a
    /// different count it is [`Error::PartitionMismatch`].
    fn create_topic(
        &self,
        topic: &str,
        spec: &TopicSpec,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Every user topic with its partition count, sorted by name.
    fn topics(&self) -> impl Future<Output = Result<Vec<TopicInfo>>> + Send;

    /// Retention and size of `topic`, for operators. A backend that cannot tell says `None`
    /// (the default says nothing is known).
    fn topic_details(&self, topic: &str) -> impl Future<Output = Result<TopicDetails>> + Send {
        let _ = topic;
        async { Ok(TopicDetails::default()) }
    }

    /// Start and end offset of a partition: records `start..end` are readable.
    fn watermarks(&self, tp: &TopicPartition) -> impl Future<Output = Result<(u64, u64)>> + Send;

    /// Reads up to `max` records of one partition from offset `from` on (from its start if
    /// `from` is older), in offset order, outside any consumer group: for tools that browse or
    /// tail a topic. Nothing is committed. An empty answer means nothing at or after `from` yet.
    fn read(
        &self,
        tp: &TopicPartition,
        from: u64,
        max: usize,
    ) -> impl Future<Output = Result<Vec<Record>>> + Send;

    /// Appends a batch of messages (any topics, any partitions). See the trait docs for guarantees.
    fn publish(&self, messages: Vec<Message>) -> impl Future<Output = Result<Vec<Ack>>> + Send;

    /// Joins `group` as a new member subscribed to `topics`.
    fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> impl Future<Output = Result<Self::Consumer>> + Send;

    /// Lag of `group` on every partition of the topics it subscribes to or has committed on.
    fn lag(&self, group: &str) -> impl Future<Output = Result<Vec<PartitionLag>>> + Send;

    /// Committed offsets of a group, for inspection and migration.
    fn committed(
        &self,
        group: &str,
    ) -> impl Future<Output = Result<Vec<(TopicPartition, u64)>>> + Send;

    /// Flushes and releases the backend. Later calls fail with [`Error::Closed`].
    fn close(&self) -> impl Future<Output = Result<()>> + Send;
}

/// One member of a consumer group. Dropping it leaves the group (its partitions are reassigned).
pub trait Consumer: Send + 'static {
    /// Waits up to `timeout` for records from the assigned partitions and returns at most
    /// `max_records` of them (an empty batch when none arrived in time). Records of one partition
    /// come in offset order, continuing where the previous batch of that partition ended.
    ///
    /// A waiting `poll` MUST wake when a record becomes readable on an assigned partition: no
    /// sleep-polling.
    fn poll(
        &mut self,
        max_records: usize,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<Record>>> + Send;

    /// Commits offsets (the next offset to read) for partitions assigned to this member.
    /// A partition not assigned to this member is [`Error::NotAssigned`]; an offset beyond the end
    /// is [`Error::OffsetOutOfRange`]. When `Ok` returns, the commit is durable.
    fn commit(
        &mut self,
        offsets: &[(TopicPartition, u64)],
    ) -> impl Future<Output = Result<()>> + Send;

    /// The partitions assigned to this member as of its last `poll`.
    fn assignment(&self) -> Vec<TopicPartition>;

    /// Moves this member's read position of an assigned partition (takes effect at the next
    /// `poll`; nothing is committed).
    fn seek(&mut self, tp: &TopicPartition, offset: u64) -> Result<()>;
}

/// A future a [`Publisher`] returns.
pub type PublishFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// The writing half of a bus, as a trait object: what a component that brings facts in from
/// outside (a change-data-capture connector) needs, whatever backend the deployment runs. The
/// shop's services never publish directly: they write to their outbox in the transaction that
/// decides, and the relay publishes. Every [`Bus`] is one.
pub trait Publisher: Send + Sync + std::fmt::Debug + 'static {
    /// [`Bus::create_topic`] (named apart so that both traits can be in scope).
    fn create<'a>(&'a self, topic: &'a str, spec: &'a TopicSpec) -> PublishFuture<'a, ()>;
    /// [`Bus::publish`]: `Ok` once every message is acknowledged (durable on the bus).
    fn send(&self, messages: Vec<Message>) -> PublishFuture<'_, Vec<Ack>>;
}

impl<B: Bus + std::fmt::Debug> Publisher for B {
    fn create<'a>(&'a self, topic: &'a str, spec: &'a TopicSpec) -> PublishFuture<'a, ()> {
        Box::pin(Bus::create_topic(self, topic, spec))
    }

    fn send(&self, messages: Vec<Message>) -> PublishFuture<'_, Vec<Ack>> {
        Box::pin(Bus::publish(self, messages))
    }
}
