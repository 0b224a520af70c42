//! The connection to the cluster that the bus and its consumers share: the producer, the admin
//! client, what this process knows of topics and groups, and the namespace.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, Producer as _};
use shopflow_bus::{Error, Result, TopicPartition};

use crate::KafkaConfig;
use crate::error::{join_err, kerr};

pub(crate) struct Inner {
    pub(crate) config: KafkaConfig,
    pub(crate) producer: FutureProducer,
    pub(crate) admin: AdminClient<DefaultClientContext>,
    /// Partition counts of the topics published to.
    pub(crate) partitions: Mutex<HashMap<String, u32>>,
    /// Topics each group of this process subscribed to (for `lag`).
    pub(crate) subscriptions: Mutex<HashMap<String, BTreeSet<String>>>,
    pub(crate) round_robin: AtomicU32,
    pub(crate) closed: AtomicBool,
}

impl Inner {
    /// The cluster's name of a topic or group.
    pub(crate) fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.config.namespace)
    }

    /// A cluster topic name back in this bus's terms (`None`: another namespace's).
    pub(crate) fn strip<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.strip_prefix(self.config.namespace.as_str())
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Start and end offset of a partition, from the cluster.
    pub(crate) async fn watermarks(
        self: &std::sync::Arc<Self>,
        tp: &TopicPartition,
    ) -> Result<(u64, u64)> {
        self.check_open()?;
        let this = self.clone();
        let tp = tp.clone();
        tokio::task::spawn_blocking(move || {
            let (lo, hi) = this
                .producer
                .client()
                .fetch_watermarks(
                    &this.ns(&tp.topic),
                    tp.partition as i32,
                    this.config.request_timeout,
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
}
