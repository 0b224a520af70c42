#![doc = include_str!("../README.md")]

use std::collections::{BTreeSet, HashMap};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use shopflow_bus::{
    Ack, Bus, Capabilities, Consumer, Error, INTERNAL_TOPIC_PREFIX, Message, PartitionLag, Record,
    Result, TopicInfo, TopicPartition, TopicSpec, partition_for_key,
};

/// How to reach the cluster and how to create topics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// Copies of each partition of the topics this bus creates.
    pub replication_factor: u16,
    /// Client id sent to the brokers (shows up in their logs and metrics).
    pub client_id: String,
    /// Deadline of metadata, admin and offset requests.
    pub request_timeout: Duration,
    /// Further librdkafka settings (`security.protocol`, `sasl.*`, …), applied to every client.
    pub extra: Vec<(String, String)>,
    /// Prefixed to every topic and consumer group this bus touches, so that several
    /// deployments (staging and production, or parallel test runs) can share one cluster.
    pub namespace: String,
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            replication_factor: 1,
            client_id: "shopflow".into(),
            request_timeout: Duration::from_secs(10),
            extra: Vec::new(),
            namespace: String::new(),
        }
    }

    /// Parses `kafka://host:port[,host:port…][?replication=N&namespace=…&client.id=…&<librdkafka
    /// setting>=…]`.
    pub fn from_url(url: &str) -> std::result::Result<Self, String> {
        let rest = url
            .strip_prefix("kafka://")
            .ok_or_else(|| format!("`{url}` is not a kafka:// URL"))?;
        let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
        let hosts = hosts.trim_end_matches('/');
        if hosts.is_empty()
            || hosts.split(',').any(|h| {
                h.rsplit_once(':')
                    .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            })
        {
            return Err(format!("`{url}`: expected kafka://host:port[,host:port…]"));
        }
        let mut c = Self::new(hosts);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` in `{url}` is not key=value"))?;
            match k {
                "replication" => {
                    c.replication_factor = v
                        .parse()
                        .map_err(|_| format!("replication `{v}` is not a number"))?
                }
                "client.id" => c.client_id = v.to_owned(),
                "namespace" => {
                    if !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
                    {
                        return Err(format!("namespace `{v}` may contain only [A-Za-z0-9._-]"));
                    }
                    c.namespace = v.to_owned()
                }
                _ => c.extra.push((k.to_owned(), v.to_owned())),
            }
        }
        Ok(c)
    }

    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            .set("allow.auto.create.topics", "false")
            .set("topic.metadata.refresh.interval.ms", "10000");
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }
}

fn code_transient(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::MessageTimedOut
            | C::RequestTimedOut
            | C::OperationTimedOut
            | C::NetworkException
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::QueueFull
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::CoordinatorNotAvailable
            | C::NotCoordinator
            | C::CoordinatorLoadInProgress
            | C::RebalanceInProgress
            | C::TimedOutQueue
    )
}

/// A librdkafka error as a bus error.
fn kerr(e: KafkaError) -> Error {
    match e.rdkafka_error_code() {
        Some(c) if code_transient(c) => Error::Unavailable {
            reason: e.to_string(),
        },
        _ => Error::Backend {
            reason: e.to_string(),
            transient: false,
        },
    }
}

fn join_err(e: tokio::task::JoinError) -> Error {
    Error::Backend {
        reason: format!("a Kafka client call failed: {e}"),
        transient: false,
    }
}

/// Topic names: Kafka's rules, and no internal (`__`) topics.
fn validate_topic(name: &str) -> Result<()> {
    shopflow_bus::validate_topic_name(name)?;
    if name.starts_with(INTERNAL_TOPIC_PREFIX) {
        return Err(Error::InvalidTopic {
            topic: name.to_owned(),
            reason: "names starting with `__` are internal",
        });
    }
    Ok(())
}

struct Inner {
    config: KafkaConfig,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// Partition counts of the topics published to.
    partitions: Mutex<HashMap<String, u32>>,
    /// Topics each group of this process subscribed to (for `lag`).
    subscriptions: Mutex<HashMap<String, BTreeSet<String>>>,
    round_robin: AtomicU32,
    closed: AtomicBool,
}

/// The bus on Apache Kafka (or any Kafka-protocol broker).
#[derive(Clone)]
pub struct KafkaBus {
    inner: Arc<Inner>,
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
        let producer: FutureProducer = config
            .client()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.timeout.ms", "30000")
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

    /// The cluster's name of a topic or group.
    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.inner.config.namespace)
    }

    /// A cluster topic name back in this bus's terms (`None`: another namespace's).
    fn strip<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.strip_prefix(self.inner.config.namespace.as_str())
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::SeqCst) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
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

fn record(
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
        self.check_open()?;
        let this = self.clone();
        let tp = tp.clone();
        tokio::task::spawn_blocking(move || {
            let (lo, hi) = this
                .inner
                .producer
                .client()
                .fetch_watermarks(
                    &this.ns(&tp.topic),
                    tp.partition as i32,
                    this.inner.config.request_timeout,
                )
                .map_err(|e| match e.rdkafka_error_code() {
                    Some(RDKafkaErrorCode::UnknownTopicOrPartition)
                    | Some(RDKafkaErrorCode::UnknownPartition) => Error::UnknownTopic {
                        topic: tp.topic.to_string(),
                    },
                    _ => kerr(e),
                })?;
            Ok((lo.max(0) as u64, hi.max(0) as u64))
        })
        .await
        .map_err(join_err)?
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
        let consumer: StreamConsumer<GroupContext> = self
            .inner
            .config
            .client()
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
            .set("partition.assignment.strategy", "range")
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
            bus: self.clone(),
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

/// Logs rebalances of a member.
struct GroupContext {
    group: String,
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
    consumer: Arc<StreamConsumer<GroupContext>>,
    bus: KafkaBus,
    topics: HashMap<String, Arc<str>>,
    /// One past the highest offset delivered per partition (commits up to it need no check).
    delivered_end: HashMap<TopicPartition, u64>,
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
            Ok(Ok(m)) => out.push(record(
                &m,
                &mut self.topics,
                &self.bus.inner.config.namespace,
            )),
        }
        // Take what is already there without waiting.
        while out.len() < max_records.max(1) {
            let fut = pin!(consumer.recv());
            let mut fut = fut;
            match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(Ok(m)) => out.push(record(
                    &m,
                    &mut self.topics,
                    &self.bus.inner.config.namespace,
                )),
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
                .find_partition(&self.bus.ns(&tp.topic), tp.partition as i32)
                .is_none()
            {
                return Err(Error::NotAssigned {
                    topic: tp.topic.to_string(),
                    partition: tp.partition,
                });
            }
            if *offset > self.delivered_end.get(tp).copied().unwrap_or(0) {
                let (start, end) = self.bus.watermarks(tp).await?;
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
                &self.bus.ns(&tp.topic),
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
                            self.bus.strip(e.topic()).unwrap_or(e.topic()),
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
                &self.bus.ns(&tp.topic),
                tp.partition as i32,
                Offset::Offset(offset as i64),
                Duration::from_secs(5),
            )
            .map_err(kerr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = KafkaConfig::from_url("kafka://127.0.0.1:9092").unwrap();
        assert_eq!(c.brokers, "127.0.0.1:9092");
        assert_eq!(c.replication_factor, 1);
        let c =
            KafkaConfig::from_url("kafka://a:9092,b:9093?replication=3&security.protocol=SASL_SSL")
                .unwrap();
        assert_eq!(c.brokers, "a:9092,b:9093");
        assert_eq!(c.replication_factor, 3);
        assert_eq!(
            c.extra,
            vec![("security.protocol".into(), "SASL_SSL".into())]
        );
        for bad in [
            "http://x:1",
            "kafka://",
            "kafka://host",
            "kafka://h:port",
            "kafka://h:1?replication=x",
            "kafka://h:1?flag",
            "kafka://h:1?namespace=a/b",
        ] {
            assert!(KafkaConfig::from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topic_names() {
        assert!(validate_topic("orders.order-created").is_ok());
        assert!(validate_topic("__consumer_offsets").is_err());
        assert!(validate_topic("bad name!").is_err());
        assert!(validate_topic("").is_err());
    }
}
