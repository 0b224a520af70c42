#![doc = include_str!("../README.md")]

mod consumer;
mod group;
mod partition;
mod record;
mod segment;
mod topic;
mod writer;

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::Duration;

use bytes::Bytes;
use shopflow_bus::{
    Ack, Bus, Capabilities, Message, PartitionLag, Record, TopicInfo, TopicPartition, TopicSpec,
};
use tokio::sync::{Notify, oneshot};

pub use consumer::LogConsumer;
pub use shopflow_bus::{Error, Result};

use crate::group::{Group, Member};
use crate::partition::Partition;
use crate::topic::Topic;
use crate::writer::Request;

/// The internal topic holding committed consumer-group offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Settings of an embedded log.
#[derive(Clone, Debug)]
pub struct Config {
    /// Roll to a new segment file once the active one holds this many bytes.
    pub segment_bytes: u64,
    /// Largest message (key + value + headers) accepted.
    pub max_message_bytes: usize,
    /// Partitions of a topic created by publishing or subscribing to it.
    pub default_partitions: u32,
    /// Create unknown topics on publish/subscribe instead of failing with `UnknownTopic`.
    pub auto_create_topics: bool,
    /// A commit group stops taking more requests once it holds this many bytes.
    pub max_group_bytes: usize,
    /// How often retention and offsets compaction run.
    pub retention_check_interval: Duration,
    /// Compact the consumer-offsets log once it is larger than this.
    pub offsets_compact_bytes: u64,
    /// Most bytes one `poll` returns per partition.
    pub max_poll_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            segment_bytes: 128 * 1024 * 1024,
            max_message_bytes: 1024 * 1024,
            default_partitions: 4,
            auto_create_topics: true,
            max_group_bytes: 16 * 1024 * 1024,
            retention_check_interval: Duration::from_secs(1),
            offsets_compact_bytes: 16 * 1024 * 1024,
            max_poll_bytes: 4 * 1024 * 1024,
        }
    }
}

/// A durable, partitioned event log in a directory: the embedded backend of [`Bus`].
///
/// Cloning is cheap; all clones share one writer thread. One process owns a directory at a time
/// (an exclusive lock on `<dir>/LOCK`).
#[derive(Clone, Debug)]
pub struct Log {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Request>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) root: PathBuf,
    topics_dir: PathBuf,
    pub(crate) config: Config,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    create_lock: Mutex<()>,
    /// Durable committed offsets per group; written only by the writer thread.
    offsets: RwLock<HashMap<String, HashMap<TopicPartition, u64>>>,
    groups: Mutex<HashMap<String, Group>>,
    next_member: AtomicU64,
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Log {
    /// Opens (creating if needed) the log in `dir`, recovering every partition: a torn or corrupt
    /// tail of an active segment is truncated, never served.
    pub fn open(dir: impl AsRef<Path>, config: Config) -> Result<Self> {
        let root = dir.as_ref().to_owned();
        fs::create_dir_all(&root).map_err(io_err("create", &root))?;
        let lock_path = root.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(Error::Locked { path: root }),
            Err(fs::TryLockError::Error(e)) => return Err(io_err("lock", &lock_path)(e)),
        }
        let topics_dir = root.join("topics");
        fs::create_dir_all(&topics_dir).map_err(io_err("create", &topics_dir))?;
        let mut topics = HashMap::new();
        for entry in fs::read_dir(&topics_dir).map_err(io_err("list", &topics_dir))? {
            let entry = entry.map_err(io_err("list", &topics_dir))?;
            if !entry
                .file_type()
                .map_err(io_err("stat", &entry.path()))?
                .is_dir()
            {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            match Topic::open_existing(entry.path(), &name)? {
                Some(t) => {
                    topics.insert(name, Arc::new(t));
                }
                None => {
                    tracing::warn!(topic = %name, "removing a topic whose creation never completed");
                    fs::remove_dir_all(entry.path()).map_err(io_err("remove", &entry.path()))?;
                }
            }
        }
        if !topics.contains_key(OFFSETS_TOPIC) {
            let t = Topic::create(&topics_dir, OFFSETS_TOPIC, &TopicSpec::new(1))?;
            topics.insert(OFFSETS_TOPIC.to_owned(), Arc::new(t));
        }
        let shared = Arc::new(Shared {
            root,
            topics_dir,
            config,
            topics: RwLock::new(topics),
            create_lock: Mutex::new(()),
            offsets: RwLock::new(HashMap::new()),
            groups: Mutex::new(HashMap::new()),
            next_member: AtomicU64::new(1),
        });
        shared.load_offsets()?;
        let (tx, rx) = mpsc::channel();
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("shopflow-log-writer".into())
            .spawn(move || writer::run(writer_shared, rx, lock))
            .map_err(io_err("spawn writer thread", &shared.root))?;
        Ok(Self { shared, tx })
    }

    /// The directory this log lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.root
    }

    /// Reads up to `max` durable records of a partition from `from` (for tools: tail, migrate).
    pub fn read(&self, tp: &TopicPartition, from: u64, max: usize) -> Result<Vec<Record>> {
        let part = self.shared.partition(tp)?;
        let recs = part.read(from, max, self.shared.config.max_poll_bytes)?;
        Ok(recs
            .into_iter()
            .map(|d| to_record(&part.topic, part.id, d))
            .collect())
    }

    async fn send(&self, messages: Vec<Message>, internal: bool) -> Result<Vec<Ack>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Append {
                messages,
                internal,
                reply,
            })
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }
}

pub(crate) fn to_record(topic: &Arc<str>, partition: u32, d: record::Decoded) -> Record {
    Record {
        topic: topic.clone(),
        partition,
        offset: d.offset,
        timestamp_ms: d.timestamp_ms,
        key: d.key,
        value: d.value,
        headers: d.headers,
    }
}

fn offset_key(group: &str, tp: &TopicPartition) -> Vec<u8> {
    format!("{group}\0{}\0{}", tp.topic, tp.partition).into_bytes()
}

impl Shared {
    pub(crate) fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().expect("topics lock").get(name).cloned()
    }

    pub(crate) fn all_topics(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .expect("topics lock")
            .values()
            .cloned()
            .collect()
    }

    fn partition(&self, tp: &TopicPartition) -> Result<Arc<Partition>> {
        let topic = self.topic(&tp.topic).ok_or_else(|| Error::UnknownTopic {
            topic: tp.topic.to_string(),
        })?;
        topic
            .partitions
            .get(tp.partition as usize)
            .cloned()
            .ok_or(Error::UnknownPartition {
                topic: tp.topic.to_string(),
                partition: tp.partition,
                partitions: topic.partitions.len() as u32,
            })
    }

    pub(crate) fn topic_or_create(&self, name: &str) -> Result<Arc<Topic>> {
        if let Some(t) = self.topic(name) {
            return Ok(t);
        }
        if !self.config.auto_create_topics {
            return Err(Error::UnknownTopic {
                topic: name.to_owned(),
            });
        }
        self.create_topic(name, &TopicSpec::new(self.config.default_partitions))
    }

    fn create_topic(&self, name: &str, spec: &TopicSpec) -> Result<Arc<Topic>> {
        topic::validate_name(name)?;
        let _guard = self.create_lock.lock().expect("create lock");
        if let Some(t) = self.topic(name) {
            if t.partitions.len() as u32 != spec.partitions {
                return Err(Error::PartitionMismatch {
                    topic: name.to_owned(),
                    existing: t.partitions.len() as u32,
                    requested: spec.partitions,
                });
            }
            return Ok(t);
        }
        let t = Arc::new(Topic::create(&self.topics_dir, name, spec)?);
        self.topics
            .write()
            .expect("topics lock")
            .insert(name.to_owned(), t.clone());
        tracing::info!(topic = name, partitions = spec.partitions, "topic created");
        Ok(t)
    }

    /// Replays the offsets topic into memory.
    fn load_offsets(&self) -> Result<()> {
        let topic = self.topic(OFFSETS_TOPIC).expect("offsets topic exists");
        let part = &topic.partitions[0];
        let mut from = part.start();
        loop {
            let batch = part.read(from, 10_000, 16 * 1024 * 1024)?;
            let Some(last) = batch.last() else { break };
            from = last.offset + 1;
            for r in &batch {
                self.apply_offset_record(r.key.as_deref(), &r.value);
            }
        }
        Ok(())
    }

    /// Applies one record of the offsets topic (called by the writer once it is durable).
    pub(crate) fn apply_offset_record(&self, key: Option<&[u8]>, value: &[u8]) {
        let parsed = key.and_then(|k| {
            let s = std::str::from_utf8(k).ok()?;
            let mut it = s.split('\0');
            let group = it.next()?;
            let topic = it.next()?;
            let partition: u32 = it.next()?.parse().ok()?;
            let offset = u64::from_le_bytes(value.try_into().ok()?);
            Some((
                group.to_owned(),
                TopicPartition::new(topic, partition),
                offset,
            ))
        });
        match parsed {
            Some((group, tp, offset)) => {
                self.offsets
                    .write()
                    .expect("offsets lock")
                    .entry(group)
                    .or_default()
                    .insert(tp, offset);
            }
            None => tracing::error!("ignoring a malformed record in {OFFSETS_TOPIC}"),
        }
    }

    /// Every live committed offset as a message of the offsets topic (for compaction).
    pub(crate) fn offset_messages(&self) -> Vec<Message> {
        let offsets = self.offsets.read().expect("offsets lock");
        let mut out = Vec::new();
        for (group, tps) in offsets.iter() {
            for (tp, off) in tps {
                out.push(offset_message(group, tp, *off));
            }
        }
        out
    }

    fn committed_offset(&self, group: &str, tp: &TopicPartition) -> Option<u64> {
        self.offsets
            .read()
            .expect("offsets lock")
            .get(group)
            .and_then(|m| m.get(tp))
            .copied()
    }

    fn partitions_of(&self, topic: &str) -> u32 {
        self.topic(topic).map_or(0, |t| t.partitions.len() as u32)
    }
}

pub(crate) fn offset_message(group: &str, tp: &TopicPartition, offset: u64) -> Message {
    Message {
        topic: OFFSETS_TOPIC.to_owned(),
        key: Some(Bytes::from(offset_key(group, tp))),
        value: Bytes::copy_from_slice(&offset.to_le_bytes()),
        headers: Vec::new(),
        timestamp_ms: None,
    }
}

impl Bus for Log {
    type Consumer = LogConsumer;

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            auto_create_topics: self.shared.config.auto_create_topics,
            exact_lag: true,
            instant_rebalance: true,
        }
    }

    async fn create_topic(&self, topic: &str, spec: &TopicSpec) -> Result<()> {
        if topic.starts_with(shopflow_bus::INTERNAL_TOPIC_PREFIX) {
            return Err(Error::InvalidTopic {
                topic: topic.to_owned(),
                reason: "topics starting with `__` are internal",
            });
        }
        let shared = self.shared.clone();
        let (topic, spec) = (topic.to_owned(), spec.clone());
        tokio::task::spawn_blocking(move || shared.create_topic(&topic, &spec).map(|_| ()))
            .await
            .map_err(|e| Error::Unavailable {
                reason: e.to_string(),
            })?
    }

    async fn topics(&self) -> Result<Vec<TopicInfo>> {
        let mut v: Vec<TopicInfo> = self
            .shared
            .all_topics()
            .into_iter()
            .filter(|t| !t.name.starts_with(shopflow_bus::INTERNAL_TOPIC_PREFIX))
            .map(|t| TopicInfo {
                name: t.name.to_string(),
                partitions: t.partitions.len() as u32,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    async fn watermarks(&self, tp: &TopicPartition) -> Result<(u64, u64)> {
        let p = self.shared.partition(tp)?;
        Ok((p.start(), p.end()))
    }

    async fn topic_details(&self, topic: &str) -> Result<shopflow_bus::TopicDetails> {
        let t = self
            .shared
            .topic(topic)
            .ok_or_else(|| Error::UnknownTopic {
                topic: topic.to_owned(),
            })?;
        Ok(shopflow_bus::TopicDetails {
            retention_bytes: t.spec.retention_bytes,
            retention: t.spec.retention,
            size_bytes: Some(t.partitions.iter().map(|p| p.size_bytes()).sum()),
        })
    }

    async fn read(&self, tp: &TopicPartition, from: u64, max: usize) -> Result<Vec<Record>> {
        let start = self.shared.partition(tp)?.start();
        Log::read(self, tp, from.max(start), max)
    }

    async fn publish(&self, messages: Vec<Message>) -> Result<Vec<Ack>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        self.send(messages, false).await
    }

    async fn subscribe(&self, group: &str, topics: &[String]) -> Result<LogConsumer> {
        if group.is_empty() {
            return Err(Error::InvalidTopic {
                topic: String::new(),
                reason: "group name must not be empty",
            });
        }
        for t in topics {
            if t.starts_with(shopflow_bus::INTERNAL_TOPIC_PREFIX) {
                return Err(Error::InvalidTopic {
                    topic: t.clone(),
                    reason: "topics starting with `__` are internal",
                });
            }
            let shared = self.shared.clone();
            let t = t.clone();
            tokio::task::spawn_blocking(move || shared.topic_or_create(&t))
                .await
                .map_err(|e| Error::Unavailable {
                    reason: e.to_string(),
                })??;
        }
        let notify = Arc::new(Notify::new());
        for t in topics {
            if let Some(topic) = self.shared.topic(t) {
                topic.subscribe(&notify);
            }
        }
        let member = self.shared.next_member.fetch_add(1, Ordering::Relaxed);
        {
            let mut groups = self.shared.groups.lock().expect("groups lock");
            let g = groups.entry(group.to_owned()).or_default();
            g.members.insert(
                member,
                Member {
                    topics: topics.to_vec(),
                    notify: notify.clone(),
                    assignment: Vec::new(),
                },
            );
            g.rebalance(|t| self.shared.partitions_of(t));
        }
        Ok(LogConsumer {
            log: self.clone(),
            group: group.to_owned(),
            member,
            notify,
            generation: 0,
            assigned: Vec::new(),
            positions: Default::default(),
            next_start: 0,
        })
    }

    async fn lag(&self, group: &str) -> Result<Vec<PartitionLag>> {
        let mut topics: BTreeSet<String> = BTreeSet::new();
        if let Some(g) = self.shared.groups.lock().expect("groups lock").get(group) {
            for m in g.members.values() {
                topics.extend(m.topics.iter().cloned());
            }
        }
        let committed = self
            .shared
            .offsets
            .read()
            .expect("offsets lock")
            .get(group)
            .cloned()
            .unwrap_or_default();
        topics.extend(committed.keys().map(|tp| tp.topic.to_string()));
        let mut out = Vec::new();
        for t in topics {
            let Some(topic) = self.shared.topic(&t) else {
                continue;
            };
            for part in &topic.partitions {
                let tp = TopicPartition::new(topic.name.clone(), part.id);
                let (start, end) = (part.start(), part.end());
                let c = committed.get(&tp).copied();
                out.push(PartitionLag {
                    group: group.to_owned(),
                    topic: t.clone(),
                    partition: part.id,
                    committed: c,
                    start_offset: start,
                    end_offset: end,
                    lag: end.saturating_sub(c.unwrap_or(start).max(start)),
                });
            }
        }
        Ok(out)
    }

    async fn committed(&self, group: &str) -> Result<Vec<(TopicPartition, u64)>> {
        let mut v: Vec<_> = self
            .shared
            .offsets
            .read()
            .expect("offsets lock")
            .get(group)
            .map(|m| m.iter().map(|(tp, o)| (tp.clone(), *o)).collect())
            .unwrap_or_default();
        v.sort();
        Ok(v)
    }

    async fn close(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Request::Close { reply }).is_err() {
            return Ok(()); // already closed
        }
        let _ = rx.await;
        Ok(())
    }
}
