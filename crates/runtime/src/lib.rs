#![doc = include_str!("../README.md")]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use shopflow_bus::{Bus, Consumer, Message, Record, TopicPartition};
use shopflow_envelope::{Envelope, Event, Meta, Registry};
use shopflow_store::{Db, Tx, inbox, outbox};
use tokio::sync::watch;

/// Header names the runtime writes.
pub mod headers {
    pub const CORRELATION_ID: &str = "correlation-id";
    pub const EVENT_TYPE: &str = "event-type";
    pub const DLQ_ERROR: &str = "dlq-error";
    pub const DLQ_TOPIC: &str = "dlq-original-topic";
    pub const DLQ_PARTITION: &str = "dlq-original-partition";
    pub const DLQ_OFFSET: &str = "dlq-original-offset";
    pub const DLQ_CONSUMER: &str = "dlq-consumer";
    pub const DLQ_FAILED_AT: &str = "dlq-failed-at";
}

/// Why a handler could not handle an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// May succeed later (a database hiccup, an outage): the event is retried.
    #[error("transient: {0}")]
    Transient(String),
    /// Will never succeed (invalid data, a broken invariant): the event is dead-lettered.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl From<shopflow_store::Error> for HandlerError {
    fn from(e: shopflow_store::Error) -> Self {
        if e.is_transient() {
            HandlerError::Transient(e.to_string())
        } else {
            HandlerError::Permanent(e.to_string())
        }
    }
}

impl From<shopflow_envelope::Error> for HandlerError {
    fn from(e: shopflow_envelope::Error) -> Self {
        HandlerError::Permanent(e.to_string())
    }
}

/// An envelope to publish, and its topic.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub topic: String,
    pub envelope: Envelope,
}

impl Outgoing {
    /// A typed event on its own topic.
    pub fn event<E: Event>(event: &E, meta: Meta) -> Result<Self, shopflow_envelope::Error> {
        Ok(Self {
            topic: E::topic(),
            envelope: Envelope::new(event, meta)?,
        })
    }

    /// The bus message: keyed by aggregate id, with correlation and type headers.
    pub fn into_message(self) -> Result<Message, shopflow_envelope::Error> {
        let value = self.envelope.encode()?;
        Ok(Message {
            topic: self.topic,
            key: Some(Bytes::copy_from_slice(
                self.envelope.aggregate_id().as_bytes(),
            )),
            value: Bytes::from(value),
            headers: vec![
                (
                    headers::CORRELATION_ID.into(),
                    Bytes::copy_from_slice(self.envelope.correlation_id().as_str().as_bytes()),
                ),
                (
                    headers::EVENT_TYPE.into(),
                    Bytes::copy_from_slice(self.envelope.event_type().as_bytes()),
                ),
            ],
            timestamp_ms: Some(self.envelope.timestamp().timestamp_millis()),
        })
    }
}

/// Writes outgoing envelopes to the outbox in the caller's transaction.
pub async fn emit(tx: &mut Tx, outgoing: Vec<Outgoing>) -> Result<(), HandlerError> {
    if outgoing.is_empty() {
        return Ok(());
    }
    let messages = outgoing
        .into_iter()
        .map(Outgoing::into_message)
        .collect::<Result<Vec<_>, _>>()?;
    outbox::enqueue(tx, &messages).await?;
    Ok(())
}

/// An event handler of a service.
pub trait Handler: Send + Sync + 'static {
    /// The consumer group and inbox name (`payment`, `order-outcomes`, …).
    fn name(&self) -> &'static str;
    /// The topics it consumes.
    fn topics(&self) -> Vec<String>;
    /// Handles one event inside the runtime's transaction: write state through `tx`, return what
    /// to publish. Events of types it does not handle should return `Ok(vec![])`.
    fn handle<'a>(
        &'a self,
        tx: &'a mut Tx,
        envelope: &'a Envelope,
    ) -> impl Future<Output = Result<Vec<Outgoing>, HandlerError>> + Send + 'a;
}

/// Settings of a consumer.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Records handled per transaction.
    pub max_batch: usize,
    /// Pause before retrying after a transient failure.
    pub retry_backoff: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            max_batch: 500,
            retry_backoff: Duration::from_millis(100),
        }
    }
}

/// What a consumer has done so far.
#[derive(Debug, Default)]
pub struct RunnerStats {
    pub handled: AtomicU64,
    pub duplicates: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub transient_failures: AtomicU64,
}

/// A signal that tells long-running tasks to stop.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// The sending side of [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

impl Shutdown {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    /// Completes once shutdown was triggered (or the trigger was dropped).
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

/// Runs one handler as a member of its consumer group until shutdown.
#[derive(Debug)]
pub struct Runner<B: Bus, H: Handler> {
    bus: B,
    db: Db,
    handler: Arc<H>,
    registry: Arc<Registry>,
    config: RunnerConfig,
    stats: Arc<RunnerStats>,
}

enum Step {
    Done(Record),
    Retry(Record, String),
}

impl<B: Bus, H: Handler> Runner<B, H> {
    pub fn new(
        bus: B,
        db: Db,
        handler: Arc<H>,
        registry: Arc<Registry>,
        config: RunnerConfig,
    ) -> Self {
        Self {
            bus,
            db,
            handler,
            registry,
            config,
            stats: Arc::new(RunnerStats::default()),
        }
    }

    pub fn stats(&self) -> Arc<RunnerStats> {
        self.stats.clone()
    }

    /// Consumes until `shutdown`. Errors of the bus or database are logged and retried.
    pub async fn run(self, shutdown: Shutdown) {
        let name = self.handler.name();
        loop {
            if shutdown.is_triggered() {
                return;
            }
            let consumer = match self.bus.subscribe(name, &self.handler.topics()).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(consumer = name, error = %e, "subscribe failed; retrying");
                    tokio::time::sleep(self.config.retry_backoff).await;
                    continue;
                }
            };
            if let Err(e) = self.consume(consumer, shutdown.clone()).await {
                tracing::warn!(consumer = name, error = %e, "consumer failed; resubscribing");
                tokio::time::sleep(self.config.retry_backoff).await;
            }
        }
    }

    async fn consume(&self, mut consumer: B::Consumer, shutdown: Shutdown) -> Result<(), String> {
        let stop = shutdown.clone().wait();
        tokio::pin!(stop);
        loop {
            let records = tokio::select! {
                r = consumer.poll(self.config.max_batch, Duration::from_secs(1)) => r.map_err(|e| e.to_string())?,
                _ = &mut stop => return Ok(()),
            };
            if records.is_empty() {
                continue;
            }
            let (next, retry) = self
                .handle_batch(&records)
                .await
                .map_err(|e| e.to_string())?;
            if !next.is_empty() {
                let offsets: Vec<(TopicPartition, u64)> = next.into_iter().collect();
                consumer.commit(&offsets).await.map_err(|e| e.to_string())?;
            }
            if let Some((first_unhandled, reason)) = retry {
                self.stats
                    .transient_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    consumer = self.handler.name(),
                    reason,
                    "transient failure; retrying"
                );
                for (tp, offset) in first_unhandled {
                    consumer.seek(&tp, offset).map_err(|e| e.to_string())?;
                }
                tokio::time::sleep(self.config.retry_backoff).await;
            }
        }
    }

    /// Handles a batch in one transaction. Returns the offsets to commit and, after a transient
    /// failure, where each partition must resume.
    #[allow(clippy::type_complexity)]
    async fn handle_batch(
        &self,
        records: &[Record],
    ) -> Result<
        (
            BTreeMap<TopicPartition, u64>,
            Option<(BTreeMap<TopicPartition, u64>, String)>,
        ),
        shopflow_store::Error,
    > {
        let mut tx = self.db.begin().await?;
        let mut next: BTreeMap<TopicPartition, u64> = BTreeMap::new();
        let mut stopped: Option<String> = None;
        let mut resume: BTreeMap<TopicPartition, u64> = BTreeMap::new();
        for r in records {
            let tp = r.topic_partition();
            if stopped.is_some() || resume.contains_key(&tp) {
                resume.entry(tp).or_insert(r.offset);
                continue;
            }
            match self.handle_one(&mut tx, r).await? {
                Step::Done(r) => {
                    next.insert(tp, r.offset + 1);
                }
                Step::Retry(r, reason) => {
                    resume.insert(tp, r.offset);
                    stopped = Some(reason);
                }
            }
        }
        tx.commit().await?;
        Ok((next, stopped.map(|s| (resume, s))))
    }

    async fn handle_one(&self, tx: &mut Tx, r: &Record) -> Result<Step, shopflow_store::Error> {
        let name = self.handler.name();
        let envelope = match self.registry.decode(&r.value) {
            Ok(e) => e,
            Err(e) => {
                // A record that is not a valid, known event: record its position in the inbox
                // (so a redelivery does not dead-letter it twice) and dead-letter it.
                let id = format!("{}/{}/{}", r.topic, r.partition, r.offset);
                if inbox::record(tx, name, &id).await? {
                    self.dead_letter(tx, r, &e.to_string()).await?;
                }
                return Ok(Step::Done(r.clone()));
            }
        };
        tx.execute("SAVEPOINT handler", &[]).await?;
        let event_id = envelope.event_id().to_string();
        if !inbox::record(tx, name, &event_id).await? {
            tx.execute("RELEASE SAVEPOINT handler", &[]).await?;
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return Ok(Step::Done(r.clone()));
        }
        let result = match self.handler.handle(tx, &envelope).await {
            Ok(out) => emit(tx, out).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                tx.execute("RELEASE SAVEPOINT handler", &[]).await?;
                self.stats.handled.fetch_add(1, Ordering::Relaxed);
                Ok(Step::Done(r.clone()))
            }
            Err(HandlerError::Transient(reason)) => {
                tx.execute("ROLLBACK TO SAVEPOINT handler", &[]).await?;
                tx.execute("RELEASE SAVEPOINT handler", &[]).await?;
                Ok(Step::Retry(r.clone(), reason))
            }
            Err(HandlerError::Permanent(reason)) => {
                tx.execute("ROLLBACK TO SAVEPOINT handler", &[]).await?;
                tx.execute("RELEASE SAVEPOINT handler", &[]).await?;
                inbox::record(tx, name, &event_id).await?;
                tracing::error!(
                    consumer = name,
                    event_id,
                    event_type = envelope.event_type(),
                    reason,
                    "dead-lettered"
                );
                self.dead_letter(tx, r, &reason).await?;
                Ok(Step::Done(r.clone()))
            }
        }
    }

    async fn dead_letter(
        &self,
        tx: &mut Tx,
        r: &Record,
        reason: &str,
    ) -> Result<(), shopflow_store::Error> {
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        let mut headers = r.headers.clone();
        let b = |s: String| Bytes::from(s.into_bytes());
        headers.push((headers::DLQ_ERROR.into(), b(reason.to_owned())));
        headers.push((headers::DLQ_TOPIC.into(), b(r.topic.to_string())));
        headers.push((headers::DLQ_PARTITION.into(), b(r.partition.to_string())));
        headers.push((headers::DLQ_OFFSET.into(), b(r.offset.to_string())));
        headers.push((
            headers::DLQ_CONSUMER.into(),
            b(self.handler.name().to_owned()),
        ));
        headers.push((
            headers::DLQ_FAILED_AT.into(),
            b(chrono::Utc::now().to_rfc3339()),
        ));
        let msg = Message {
            topic: shopflow_envelope::dlq_topic(&r.topic),
            key: r.key.clone(),
            value: r.value.clone(),
            headers,
            timestamp_ms: None,
        };
        outbox::enqueue(tx, &[msg]).await
    }
}
