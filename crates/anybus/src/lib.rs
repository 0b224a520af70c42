#![doc = include_str!("../README.md")]

use std::path::Path;
use std::time::Duration;

use shopflow_bus::{
    Ack, Bus, Capabilities, Consumer, Message, PartitionLag, Record, Result, TopicInfo,
    TopicPartition, TopicSpec,
};
use shopflow_kafka::{KafkaBus, KafkaConfig, KafkaConsumer};
use shopflow_log::{Log, LogConsumer};

/// The embedded log or a Kafka cluster.
#[derive(Clone, Debug)]
pub enum AnyBus {
    Embedded(Log),
    Kafka(KafkaBus),
}

/// A member of a consumer group on either bus.
#[derive(Debug)]
pub enum AnyConsumer {
    Embedded(LogConsumer),
    Kafka(KafkaConsumer),
}

/// Which bus: the embedded durable log, or a Kafka cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum BusUrl {
    /// The embedded durable log in a directory of the deployment's.
    #[default]
    Embedded,
    Kafka(KafkaConfig),
}

impl std::str::FromStr for BusUrl {
    type Err = String;
    /// `embedded` or `kafka://host:port[,…][?replication=N&…]`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "embedded" {
            Ok(BusUrl::Embedded)
        } else if s.starts_with("kafka://") {
            KafkaConfig::from_url(s).map(BusUrl::Kafka)
        } else {
            Err(format!("`{s}`: expected embedded or kafka://host:port"))
        }
    }
}

impl BusUrl {
    /// The replication factor of topics this deployment creates.
    pub fn replication_factor(&self) -> u16 {
        match self {
            BusUrl::Kafka(k) => k.replication_factor,
            BusUrl::Embedded => 1,
        }
    }
}

impl AnyBus {
    /// Opens the bus `url` names: the embedded log in `log_dir` (with `partitions` per new
    /// topic), or a connection to Kafka.
    pub fn open(url: &BusUrl, log_dir: &Path, partitions: u32) -> Result<Self> {
        Ok(match url {
            BusUrl::Embedded => AnyBus::Embedded(Log::open(
                log_dir,
                shopflow_log::Config {
                    default_partitions: partitions,
                    ..Default::default()
                },
            )?),
            BusUrl::Kafka(k) => AnyBus::Kafka(KafkaBus::connect(k.clone())?),
        })
    }

    pub fn is_kafka(&self) -> bool {
        matches!(self, AnyBus::Kafka(_))
    }
}

/// `$e` with `$b` bound to whichever backend `$self` (an `AnyBus` or an `AnyConsumer`) holds.
macro_rules! each {
    ($self:expr, $b:ident => $e:expr) => {
        each!($self, AnyBus, $b => $e)
    };
    ($self:expr, $enum:ident, $b:ident => $e:expr) => {
        match $self {
            $enum::Embedded($b) => $e,
            $enum::Kafka($b) => $e,
        }
    };
}

impl Bus for AnyBus {
    type Consumer = AnyConsumer;

    fn capabilities(&self) -> Capabilities {
        each!(self, b => b.capabilities())
    }

    async fn create_topic(&self, topic: &str, spec: &TopicSpec) -> Result<()> {
        each!(self, b => b.create_topic(topic, spec).await)
    }

    async fn topics(&self) -> Result<Vec<TopicInfo>> {
        each!(self, b => b.topics().await)
    }

    async fn watermarks(&self, tp: &TopicPartition) -> Result<(u64, u64)> {
        each!(self, b => b.watermarks(tp).await)
    }

    async fn topic_details(&self, topic: &str) -> Result<shopflow_bus::TopicDetails> {
        each!(self, b => b.topic_details(topic).await)
    }

    async fn read(&self, tp: &TopicPartition, from: u64, max: usize) -> Result<Vec<Record>> {
        each!(self, b => Bus::read(b, tp, from, max).await)
    }

    async fn publish(&self, messages: Vec<Message>) -> Result<Vec<Ack>> {
        each!(self, b => b.publish(messages).await)
    }

    async fn subscribe(&self, group: &str, topics: &[String]) -> Result<AnyConsumer> {
        match self {
            AnyBus::Embedded(b) => Ok(AnyConsumer::Embedded(b.subscribe(group, topics).await?)),
            AnyBus::Kafka(b) => Ok(AnyConsumer::Kafka(b.subscribe(group, topics).await?)),
        }
    }

    async fn lag(&self, group: &str) -> Result<Vec<PartitionLag>> {
        each!(self, b => b.lag(group).await)
    }

    async fn committed(&self, group: &str) -> Result<Vec<(TopicPartition, u64)>> {
        each!(self, b => b.committed(group).await)
    }

    async fn close(&self) -> Result<()> {
        each!(self, b => b.close().await)
    }
}

impl Consumer for AnyConsumer {
    async fn poll(&mut self, max_records: usize, timeout: Duration) -> Result<Vec<Record>> {
        each!(self, AnyConsumer, c => c.poll(max_records, timeout).await)
    }

    async fn commit(&mut self, offsets: &[(TopicPartition, u64)]) -> Result<()> {
        each!(self, AnyConsumer, c => c.commit(offsets).await)
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        each!(self, AnyConsumer, c => c.assignment())
    }

    fn seek(&mut self, tp: &TopicPartition, offset: u64) -> Result<()> {
        each!(self, AnyConsumer, c => c.seek(tp, offset))
    }
}
