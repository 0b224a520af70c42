//! The bus contract on Kafka: an idempotent producer, admin calls, watermarks and lag.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::KafkaConfig;
use crate::client::Inner;
use crate::consumer::{GroupContext, KafkaConsumer};
use crate::error::{code_transient, join_err, kerr, validate_topic};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use shopflow_bus::{
    Ack, Bus, Capabilities, Error, INTERNAL_TOPIC_PREFIX, Message, PartitionLag, Record, Result,
    TopicInfo, TopicPartition, TopicSpec, partition_for_key,
};

/// The bus on Apache Kafka (or any Kafka-protocol broker).
#[derive(Clone)]
pub struct KafkaBus {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("brokers", &self.inner.config.brokers)
            .finish()
    }
}

impl KafkaBus {
    /// Creates the producer and the admin client (connections are made lazily).
    pub fn connect(config: KafkaConfig) -> Result<Self> {
        let mut producer = config.client();
        producer
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.timeout.ms", "30000");
        let producer: FutureProducer = config
            .user_settings_win(&mut producer)
            .create()
            .map_err(kerr)?;
        let admin: AdminClient<DefaultClientContext> = config.client().create().map_err(kerr)?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                producer,
                admin,
                partitions: Mutex::new(HashMap::new()),
                subscriptions: Mutex::new(HashMap::new()),
                round_robin: AtomicU32::new(0),
                closed: AtomicBool::new(false),
            }),
        })
    }

    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    /// Asks the cluster for its metadata: an error within `within`, naming the brokers, when
    /// none answers (librdkafka itself would retry forever, logging AllBrokersDown).
    pub async fn ping(&self, within: std::time::Duration) -> Result<()> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            this.inner
                .producer
                .client()
                .fetch_metadata(None, within)
                .map(|_| ())
                .map_err(|e| Error::Unavailable {
                    reason: format!(
                        "no Kafka broker answered at {} within {} s: {e}",
                        this.inner.config.brokers,
                        within.as_secs()
                    ),
                })
        })
        .await
        .map_err(join_err)?
    }

    /// The cluster's name of a topic or group.
    pub(crate) fn ns(&self, name: &str) -> String {
        self.inner.ns(name)
    }

    /// A cluster topic name back in this bus's terms (`None`: another namespace's).
    pub(crate) fn strip<'a>(&self, name: &'a str) -> Option<&'a str> {
        self.inner.strip(name)
    }

    fn check_open(&self) -> Result<()> {
        self.inner.check_open()
    }

    /// Every user topic of this namespace with its partition count (names without the
    /// namespace), straight from the cluster's metadata.
    async fn metadata(&self, topic: Option<String>) -> Result<Vec<TopicInfo>> {
        let this = self.clone();
        let topic = topic.map(|t| self.ns(&t));
        tokio::task::spawn_blocking(move || {
            let md = this
                .inner
                .producer
                .client()
                .fetch_metadata(topic.as_deref(), this.inner.config.request_timeout)
                .map_err(kerr)?;
            let mut out: Vec<TopicInfo> = md
                .topics()
                .iter()
                .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                .filter_map(|t| {
                    let name = this.strip(t.name())?;
                    (!name.starts_with(INTERNAL_TOPIC_PREFIX)).then(|| TopicInfo {
                        name: name.to_owned(),
                        partitions: t.partitions().len() as u32,
                    })
                })
                .collect();
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await
        .map_err(join_err)?
    }

    async fn partition_count(&self, topic: &str) -> Result<u32> {
        if let Some(n) = self
            .inner
            .partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
        {
            return Ok(*n);
        }
        let found = self.metadata(Some(topic.to_owned())).await?;
        let n = found
            .iter()
            .find(|t| t.name == topic)
            .map(|t| t.partitions)
            .ok_or_else(|| Error::UnknownTopic {
                topic: topic.to_owned(),
            })?;
        self.inner
            .partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_owned(), n);
        Ok(n)
    }

    /// A client of `group` that never joins it: for reading and moving its committed offsets.
    fn group_client(&self, group: &str) -> Result<BaseConsumer> {
        self.inner
            .config
            .client()
            .set("group.id", self.ns(group))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(kerr)
    }

    /// Commits offsets for `group` as a standalone client (no membership): for tools that move
    /// a group's position, such as a migration from another bus. The group must have no
    /// active members.
    pub async fn commit_group(&self, group: &str, offsets: &[(TopicPartition, u64)]) -> Result<()> {
        self.check_open()?;
        let mut tpl = TopicPartitionList::new();
        for (tp, o) in offsets {
            tpl.add_partition_offset(
                &self.ns(&tp.topic),
                tp.partition as i32,
                Offset::Offset(*o as i64),
            )
            .map_err(kerr)?;
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        let consumer = self.group_client(group)?;
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync).map_err(kerr))
            .await
            .map_err(join_err)?
    }

    /// Committed offsets of `group` on every partition of every user topic (`None`: never
    /// committed), with the topics the group subscribes to in this process.
    async fn group_offsets(&self, group: &str) -> Result<Vec<(TopicPartition, Option<u64>)>> {
        let topics = self.metadata(None).await?;
        let consumer = self.group_client(group)?;
        let timeout = self.inner.config.request_timeout;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for t in &topics {
                for p in 0..t.partitions {
                    tpl.add_partition(&this.ns(&t.name), p as i32);
                }
            }
            if tpl.count() == 0 {
                return Ok(Vec::new());
            }
            let committed = consumer.committed_offsets(tpl, timeout).map_err(kerr)?;
            Ok(committed
                .elements()
                .iter()
                .map(|e| {
                    let off = match e.offset() {
                        Offset::Offset(o) if o >= 0 => Some(o as u64),
                        _ => None,
                    };
                    (
                        TopicPartition::new(
                            this.strip(e.topic()).unwrap_or(e.topic()),
                            e.partition().max(0) as u32,
                        ),
                        off,
                    )
                })
                .collect())
        })
        .await
        .map_err(join_err)?
    }
}

impl Bus for KafkaBus {
    type Consumer = KafkaConsumer;

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            auto_create_topics: false,
            exact_lag: true,
            instant_rebalance: false,
        }
    }

    async fn create_topic(&self, topic: &str, spec: &TopicSpec) -> Result<()> {
        self.check_open()?;
        validate_topic(topic)?;
        if spec.partitions == 0 || spec.partitions > 10_000 {
            return Err(Error::InvalidTopic {
                topic: topic.to_owned(),
                reason: "partitions must be between 1 and 10000",
            });
        }
        let retention_bytes = spec.retention_bytes.map(|b| b.to_string());
        let retention_ms = spec.retention.map(|d| d.as_millis().to_string());
        let cluster_name = self.ns(topic);
        let mut new = NewTopic::new(
            &cluster_name,
            spec.partitions as i32,
            TopicReplication::Fixed(i32::from(
                spec.replication_factor
                    .max(self.inner.config.replication_factor),
            )),
        );
        if let Some(b) = &retention_bytes {
            new = new.set("retention.bytes", b);
        }
        if let Some(ms) = &retention_ms {
            new = new.set("retention.ms", ms);
        }
        let opts = AdminOptions::new().operation_timeout(Some(self.inner.config.request_timeout));
        let results = self
            .inner
            .admin
            .create_topics([&new], &opts)
            .await
            .map_err(kerr)?;
        for r in results {
            match r {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    let existing = self
                        .metadata(Some(topic.to_owned()))
                        .await?
                        .into_iter()
                        .find(|t| t.name == topic)
                        .map(|t| t.partitions)
                        .unwrap_or(spec.partitions);
                    if existing != spec.partitions {
                        return Err(Error::PartitionMismatch {
                            topic: topic.to_owned(),
                            existing,
                            requested: spec.partitions,
                        });
                    }
                }
                Err((name, code)) => {
                    return Err(Error::Backend {
                        reason: format!("creating topic `{name}`: {code}"),
                        transient: code_transient(code),
                    });
                }
            }
        }
        // Wait until the cluster's metadata shows it, so that a publish right after works.
        for _ in 0..100 {
            if let Ok(found) = self.metadata(Some(topic.to_owned())).await
                && found.iter().any(|t| t.name == topic)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.inner
            .partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_owned(), spec.partitions);
        Ok(())
    }

    async fn topics(&self) -> Result<Vec<TopicInfo>> {
        self.check_open()?;
        self.metadata(None).await
    }

    async fn watermarks(&self, tp: &TopicPartition) -> Result<(u64, u64)> {
        self.inner.watermarks(tp).await
    }

    async fn topic_details(&self, topic: &str) -> Result<shopflow_bus::TopicDetails> {
        self.check_open()?;
        let name = self.ns(topic);
        let opts = AdminOptions::new().request_timeout(Some(self.inner.config.request_timeout));
        let results = self
            .inner
            .admin
            .describe_configs([&rdkafka::admin::ResourceSpecifier::Topic(&name)], &opts)
            .await
            .map_err(kerr)?;
        let mut details = shopflow_bus::TopicDetails::default();
        for r in results {
            let config = r.map_err(|code| match code {
                RDKafkaErrorCode::UnknownTopicOrPartition => Error::UnknownTopic {
                    topic: topic.to_owned(),
                },
                code => Error::Backend {
                    reason: format!("describing topic `{topic}`: {code}"),
                    transient: false,
                },
            })?;
            // Kafka says -1 for "no limit".
            let num = |k: &str| {
                config
                    .get(k)
                    .and_then(|e| e.value.as_deref())
                    .and_then(|v| v.parse::<i64>().ok())
                    .and_then(|v| u64::try_from(v).ok())
            };
            details.retention_bytes = num("retention.bytes");
            details.retention = num("retention.ms").map(Duration::from_millis);
        }
        // The size on the brokers' disks is not in librdkafka's admin API (no DescribeLogDirs).
        Ok(details)
    }

    async fn read(&self, tp: &TopicPartition, from: u64, max: usize) -> Result<Vec<Record>> {
        crate::reader::read(self.inner.clone(), tp, from, max).await
    }

    async fn publish(&self, messages: Vec<Message>) -> Result<Vec<Ack>> {
        self.check_open()?;
        let mut counts: HashMap<String, u32> = HashMap::new();
        for m in &messages {
            if !counts.contains_key(&m.topic) {
                validate_topic(&m.topic)?;
                counts.insert(m.topic.clone(), self.partition_count(&m.topic).await?);
            }
        }
        let names: HashMap<&str, String> =
            counts.keys().map(|t| (t.as_str(), self.ns(t))).collect();
        let mut pending = Vec::with_capacity(messages.len());
        for m in &messages {
            let n = counts[&m.topic];
            let partition = match &m.key {
                Some(k) => partition_for_key(k, n),
                None => self.inner.round_robin.fetch_add(1, Ordering::Relaxed) % n,
            };
            let mut headers = OwnedHeaders::new_with_capacity(m.headers.len());
            for (k, v) in &m.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_ref()),
                });
            }
            let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&names[m.topic.as_str()])
                .partition(partition as i32)
                .payload(m.value.as_ref())
                .headers(headers);
            if let Some(k) = &m.key {
                rec = rec.key(k.as_ref());
            }
            if let Some(ts) = m.timestamp_ms {
                rec = rec.timestamp(ts);
            }
            let fut = loop {
                match self.inner.producer.send_result(rec) {
                    Ok(f) => break f,
                    Err((e, back))
                        if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) =>
                    {
                        rec = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(kerr(e)),
                }
            };
            pending.push(fut);
        }
        let mut acks = Vec::with_capacity(pending.len());
        for f in pending {
            match f.await {
                Ok(Ok(d)) => acks.push(Ack {
                    partition: d.partition.max(0) as u32,
                    offset: d.offset.max(0) as u64,
                }),
                Ok(Err((e, _))) => return Err(kerr(e)),
                Err(_) => {
                    return Err(Error::Unavailable {
                        reason: "the producer was dropped before delivery".into(),
                    });
                }
            }
        }
        Ok(acks)
    }

    async fn subscribe(&self, group: &str, topics: &[String]) -> Result<KafkaConsumer> {
        self.check_open()?;
        for t in topics {
            validate_topic(t)?;
        }
        let context = GroupContext {
            group: group.to_owned(),
        };
        let mut settings = self.inner.config.client();
        settings
            .set("group.id", self.ns(group))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            // Also the rebalance timeout: how long a rebalance waits for members that do not
            // rejoin (a killed process). The runtime polls at least every few seconds (its longest
            // pause is a retry backoff of at most 10 s), so 30 s is safe and bounds the stall.
            .set("max.poll.interval.ms", "30000")
            .set("heartbeat.interval.ms", "500")
            .set("fetch.wait.max.ms", "50")
            .set("partition.assignment.strategy", "range");
        let consumer: StreamConsumer<GroupContext> = self
            .inner
            .config
            .user_settings_win(&mut settings)
            .create_with_context(context)
            .map_err(kerr)?;
        let cluster: Vec<String> = topics.iter().map(|t| self.ns(t)).collect();
        let names: Vec<&str> = cluster.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(kerr)?;
        self.inner
            .subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(group.to_owned())
            .or_default()
            .extend(topics.iter().cloned());
        Ok(KafkaConsumer {
            consumer: Arc::new(consumer),
            client: self.inner.clone(),
            topics: HashMap::new(),
            delivered_end: HashMap::new(),
        })
    }

    async fn lag(&self, group: &str) -> Result<Vec<PartitionLag>> {
        self.check_open()?;
        let subscribed = self
            .inner
            .subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(group)
            .cloned()
            .unwrap_or_default();
        let mut out = Vec::new();
        for (tp, committed) in self.group_offsets(group).await? {
            if committed.is_none() && !subscribed.contains(&*tp.topic) {
                continue;
            }
            let (start, end) = self.watermarks(&tp).await?;
            let from = committed.unwrap_or(start);
            out.push(PartitionLag {
                group: group.to_owned(),
                topic: tp.topic.to_string(),
                partition: tp.partition,
                committed,
                start_offset: start,
                end_offset: end,
                lag: end.saturating_sub(from),
            });
        }
        Ok(out)
    }

    async fn committed(&self, group: &str) -> Result<Vec<(TopicPartition, u64)>> {
        self.check_open()?;
        Ok(self
            .group_offsets(group)
            .await?
            .into_iter()
            .filter_map(|(tp, o)| o.map(|o| (tp, o)))
            .collect())
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            this.inner
                .producer
                .flush(this.inner.config.request_timeout)
                .map_err(kerr)
        })
        .await
        .map_err(join_err)?
    }
}
