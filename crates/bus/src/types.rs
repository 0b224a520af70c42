use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

/// Record headers: ordered name/value pairs (names may repeat, as in Kafka).
pub type Headers = Vec<(String, Bytes)>;

/// A topic and one of its partitions.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: u32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<Arc<str>>, partition: u32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Debug for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// A message to publish.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub topic: String,
    /// The partition key (shopflow uses the aggregate id). `None` lets the backend choose.
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Headers,
    /// Milliseconds since the Unix epoch (UTC); `None` means "now" at append time.
    pub timestamp_ms: Option<i64>,
}

impl Message {
    pub fn new(topic: impl Into<String>, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            key: Some(key.into()),
            value: value.into(),
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Bytes this message occupies in a batch (key + value + headers).
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, |k| k.len())
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>()
    }
}

/// Where a published message landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub partition: u32,
    pub offset: u64,
}

/// A record read from the log.
#[derive(Clone, PartialEq)]
pub struct Record {
    pub topic: Arc<str>,
    pub partition: u32,
    pub offset: u64,
    /// Milliseconds since the Unix epoch (UTC).
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Headers,
}

impl Record {
    pub fn topic_partition(&self) -> TopicPartition {
        TopicPartition {
            topic: self.topic.clone(),
            partition: self.partition,
        }
    }

    /// The first header with this name.
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("timestamp_ms", &self.timestamp_ms)
            .field(
                "key",
                &self.key.as_ref().map(|k| String::from_utf8_lossy(k)),
            )
            .field("value_len", &self.value.len())
            .field("headers", &self.headers.len())
            .finish()
    }
}

/// How to create a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    pub partitions: u32,
    /// Copies of each partition (Kafka); the embedded log keeps one copy and ignores this.
    pub replication_factor: u16,
    /// Delete the oldest data of a partition once it holds more than this many bytes.
    pub retention_bytes: Option<u64>,
    /// Delete data older than this.
    pub retention: Option<Duration>,
}

impl TopicSpec {
    pub fn new(partitions: u32) -> Self {
        Self {
            partitions,
            replication_factor: 1,
            retention_bytes: None,
            retention: None,
        }
    }

    pub fn retention_bytes(mut self, bytes: u64) -> Self {
        self.retention_bytes = Some(bytes);
        self
    }

    pub fn retention(mut self, age: Duration) -> Self {
        self.retention = Some(age);
        self
    }
}

/// Retention and size of a topic, as far as the backend knows them (`None`: not known, or no
/// limit).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicDetails {
    /// Oldest data is deleted once a partition holds more than this many bytes.
    pub retention_bytes: Option<u64>,
    /// Data older than this is deleted.
    pub retention: Option<Duration>,
    /// Bytes the topic takes now (every partition), when the backend can tell.
    pub size_bytes: Option<u64>,
}

/// A topic as the backend knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: u32,
}

/// Lag of one consumer group on one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionLag {
    pub group: String,
    pub topic: String,
    pub partition: u32,
    /// The committed offset, `None` when the group never committed on this partition.
    pub committed: Option<u64>,
    pub start_offset: u64,
    pub end_offset: u64,
    /// `end_offset - committed` (or `- start_offset` when nothing is committed).
    pub lag: u64,
}

/// What a backend promises beyond the common contract; the conformance suite skips the checks of
/// promises a backend does not make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Publish to a topic that does not exist creates it with default settings.
    pub auto_create_topics: bool,
    /// Lag is exact at the moment asked (Kafka's is as of the last metadata refresh).
    pub exact_lag: bool,
    /// Rebalances take effect at once (in-process groups); brokers need a session round trip.
    pub instant_rebalance: bool,
}
