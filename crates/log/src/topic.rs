//! A topic: its spec on disk, its partitions, and the consumers waiting for its records.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shopflow_bus::TopicSpec;
use tokio::sync::Notify;

use crate::partition::Partition;
use crate::{Error, Result, io_err, sync_dir};

const SPEC_FILE: &str = "topic.json";

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecFile {
    partitions: u32,
    #[serde(default)]
    retention_bytes: Option<u64>,
    #[serde(default)]
    retention_ms: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct Topic {
    pub(crate) name: Arc<str>,
    pub(crate) spec: TopicSpec,
    pub(crate) partitions: Vec<Arc<Partition>>,
    subscribers: Mutex<Vec<Weak<Notify>>>,
    round_robin: AtomicU32,
}

/// Topic names: Kafka's rules ([`shopflow_bus::validate_topic_name`]).
pub(crate) fn validate_name(name: &str) -> Result<()> {
    shopflow_bus::validate_topic_name(name)
}

impl Topic {
    /// Creates a topic directory durably: the spec file first, then the partitions.
    pub(crate) fn create(root: &Path, name: &str, spec: &TopicSpec) -> Result<Self> {
        if spec.partitions == 0 || spec.partitions > 10_000 {
            return Err(Error::InvalidTopic {
                topic: name.to_owned(),
                reason: "partitions must be between 1 and 10000",
            });
        }
        let dir = root.join(name);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let file = SpecFile {
            partitions: spec.partitions,
            retention_bytes: spec.retention_bytes,
            retention_ms: spec.retention.map(|d| d.as_millis() as u64),
        };
        let tmp = dir.join("topic.json.tmp");
        {
            let mut f = fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
            f.write_all(&serde_json::to_vec_pretty(&file).expect("spec serializes"))
                .map_err(io_err("write", &tmp))?;
            f.sync_all().map_err(io_err("fsync", &tmp))?;
        }
        let final_path = dir.join(SPEC_FILE);
        fs::rename(&tmp, &final_path).map_err(io_err("rename", &final_path))?;
        sync_dir(&dir)?;
        sync_dir(root)?;
        Self::open(dir, name)
    }

    /// Opens a topic directory. `Ok(None)` for a directory whose creation never completed.
    pub(crate) fn open_existing(dir: PathBuf, name: &str) -> Result<Option<Self>> {
        if !dir.join(SPEC_FILE).exists() {
            return Ok(None);
        }
        Self::open(dir, name).map(Some)
    }

    fn open(dir: PathBuf, name: &str) -> Result<Self> {
        let path = dir.join(SPEC_FILE);
        let bytes = fs::read(&path).map_err(io_err("read", &path))?;
        let file: SpecFile = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            topic: name.to_owned(),
            partition: 0,
            offset: 0,
            reason: format!("{}: {e}", path.display()),
        })?;
        let spec = TopicSpec {
            partitions: file.partitions,
            replication_factor: 1,
            retention_bytes: file.retention_bytes,
            retention: file.retention_ms.map(Duration::from_millis),
        };
        let name: Arc<str> = Arc::from(name);
        let partitions = (0..spec.partitions)
            .map(|p| Partition::open(name.clone(), p, dir.join(p.to_string())).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            name,
            spec,
            partitions,
            subscribers: Mutex::new(Vec::new()),
            round_robin: AtomicU32::new(0),
        })
    }

    pub(crate) fn next_round_robin(&self) -> u32 {
        self.round_robin.fetch_add(1, Ordering::Relaxed) % self.partitions.len() as u32
    }

    /// Registers a consumer's wake-up handle.
    pub(crate) fn subscribe(&self, notify: &Arc<Notify>) {
        let mut subs = self.subscribers.lock().expect("subscribers lock");
        subs.retain(|w| w.strong_count() > 0);
        subs.push(Arc::downgrade(notify));
    }

    /// Wakes every consumer of this topic (a permit is kept for one that is not waiting yet).
    pub(crate) fn wake_subscribers(&self) {
        let subs = self.subscribers.lock().expect("subscribers lock");
        for s in subs.iter() {
            if let Some(n) = s.upgrade() {
                n.notify_one();
            }
        }
    }
}
