#![doc = include_str!("../README.md")]

pub mod breaker;
mod catch;
pub mod dlq;
pub mod retry;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

pub use breaker::{BreakerConfig, BreakerError, BreakerState, CircuitBreaker};
pub use retry::RetryPolicy;

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
    /// The last failure time (RFC 3339).
    pub const DLQ_FAILED_AT: &str = "dlq-failed-at";
    pub const DLQ_FIRST_FAILED_AT: &str = "dlq-first-failed-at";
    pub const DLQ_ATTEMPTS: &str = "dlq-attempts";
    /// Set on a record that an operator redrove from a dead-letter queue: the dead letter's id.
    pub const REDRIVEN_FROM: &str = "redriven-from";
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
    /// A dependency is down (its circuit breaker is open): the consumer pauses for
    /// `retry_after` and then tries the same event again, without counting it as an attempt.
    #[error("unavailable: {reason}")]
    Unavailable {
        reason: String,
        retry_after: Duration,
    },
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
    /// Backoff and attempt limit for transient handler failures.
    pub retry: RetryPolicy,
    /// Pause before resubscribing after the bus or the database failed.
    pub reconnect_backoff: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            max_batch: 500,
            retry: RetryPolicy::default(),
            reconnect_backoff: Duration::from_millis(200),
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
    /// Times the consumer paused because a dependency was unavailable.
    pub paused: AtomicU64,
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
    meters: Meters,
}

/// The consumer's metric handles, registered once (not looked up per event).
#[derive(Debug)]
struct Meters {
    consumed: metrics::Counter,
    duplicates: metrics::Counter,
    dead_lettered: metrics::Counter,
    failed_transient: metrics::Counter,
    failed_unavailable: metrics::Counter,
    handler_seconds: metrics::Histogram,
}

impl Meters {
    fn new(consumer: &'static str) -> Self {
        let failed = |kind: &'static str| metrics::counter!("shopflow_events_failed_total", "consumer" => consumer, "kind" => kind);
        Self {
            consumed: metrics::counter!("shopflow_events_consumed_total", "consumer" => consumer),
            duplicates: metrics::counter!("shopflow_events_duplicate_total", "consumer" => consumer),
            dead_lettered: metrics::counter!("shopflow_events_dead_lettered_total", "consumer" => consumer),
            failed_transient: failed("transient"),
            failed_unavailable: failed("unavailable"),
            handler_seconds: metrics::histogram!("shopflow_handler_seconds", "consumer" => consumer),
        }
    }
}

/// Failures of one record so far (kept in memory: a restart starts counting again).
#[derive(Clone, Debug)]
struct Failures {
    count: u32,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
}

impl Failures {
    /// A first failure, now.
    fn first(now: DateTime<Utc>) -> Self {
        Self {
            count: 1,
            first: now,
            last: now,
        }
    }
}

type Attempts = HashMap<(TopicPartition, u64), Failures>;

/// Why a batch stopped before its end.
#[derive(Debug)]
enum Stop {
    /// A transient failure: retry the record after the backoff.
    Retry { delay: Duration, reason: String },
    /// A dependency is down: pause, then try the same record again.
    Pause {
        retry_after: Duration,
        reason: String,
    },
}

/// Counts one more failure of the record at `key`.
fn count_failure<'a>(attempts: &'a mut Attempts, key: &(TopicPartition, u64)) -> &'a Failures {
    let now = Utc::now();
    attempts
        .entry(key.clone())
        .and_modify(|f| {
            f.count += 1;
            f.last = now;
        })
        .or_insert_with(|| Failures::first(now))
}

enum Step {
    Done,
    Stop(Stop),
}

struct BatchOutcome {
    /// Offsets to commit.
    next: BTreeMap<TopicPartition, u64>,
    /// Where partitions must resume after a stop.
    resume: BTreeMap<TopicPartition, u64>,
    stop: Option<Stop>,
}

impl<B: Bus, H: Handler> Runner<B, H> {
    pub fn new(
        bus: B,
        db: Db,
        handler: Arc<H>,
        registry: Arc<Registry>,
        config: RunnerConfig,
    ) -> Self {
        let meters = Meters::new(handler.name());
        Self {
            bus,
            db,
            handler,
            registry,
            config,
            stats: Arc::new(RunnerStats::default()),
            meters,
        }
    }

    pub fn stats(&self) -> Arc<RunnerStats> {
        self.stats.clone()
    }

    /// Consumes until `shutdown`. Errors of the bus or database are logged and retried.
    pub async fn run(self, shutdown: Shutdown) {
        let name = self.handler.name();
        let mut attempts = Attempts::new();
        let mut jitter = retry::Jitter::from_entropy();
        loop {
            if shutdown.is_triggered() {
                return;
            }
            let consumer = match self.bus.subscribe(name, &self.handler.topics()).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(consumer = name, error = %e, "subscribe failed; retrying");
                    tokio::time::sleep(self.config.reconnect_backoff).await;
                    continue;
                }
            };
            if let Err(e) = self
                .consume(consumer, shutdown.clone(), &mut attempts, &mut jitter)
                .await
            {
                tracing::warn!(consumer = name, error = %e, "consumer failed; resubscribing");
                tokio::time::sleep(self.config.reconnect_backoff).await;
            }
        }
    }

    async fn consume(
        &self,
        mut consumer: B::Consumer,
        shutdown: Shutdown,
        attempts: &mut Attempts,
        jitter: &mut retry::Jitter,
    ) -> Result<(), String> {
        let name = self.handler.name();
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
            let outcome = self
                .handle_batch(&records, attempts, jitter)
                .await
                .map_err(|e| e.to_string())?;
            if !outcome.next.is_empty() {
                let offsets: Vec<(TopicPartition, u64)> = outcome.next.into_iter().collect();
                match consumer.commit(&offsets).await {
                    Ok(()) => {}
                    // A rebalance moved a partition away while its batch was handled: its
                    // effects are committed in the database, the new owner resumes from the last
                    // committed offset and its inbox skips what was handled here. Carry on with
                    // the partitions still owned instead of leaving the group.
                    Err(shopflow_bus::Error::NotAssigned { topic, partition }) => {
                        tracing::info!(
                            consumer = name,
                            topic,
                            partition,
                            "partition moved to another member before its commit"
                        );
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            let Some(why) = outcome.stop else { continue };
            for (tp, offset) in outcome.resume {
                match consumer.seek(&tp, offset) {
                    // Moved away meanwhile: its new owner starts from the last commit.
                    Ok(()) | Err(shopflow_bus::Error::NotAssigned { .. }) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            let wait = match why {
                Stop::Retry { delay, reason } => {
                    self.stats
                        .transient_failures
                        .fetch_add(1, Ordering::Relaxed);
                    self.meters.failed_transient.increment(1);
                    tracing::warn!(
                        consumer = name,
                        reason,
                        ?delay,
                        "transient failure; retrying"
                    );
                    delay
                }
                Stop::Pause {
                    retry_after,
                    reason,
                } => {
                    self.stats.paused.fetch_add(1, Ordering::Relaxed);
                    self.meters.failed_unavailable.increment(1);
                    tracing::warn!(
                        consumer = name,
                        reason,
                        ?retry_after,
                        "dependency unavailable; consumer paused"
                    );
                    retry_after
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut stop => return Ok(()),
            }
        }
    }

    /// Handles a batch in one transaction.
    async fn handle_batch(
        &self,
        records: &[Record],
        attempts: &mut Attempts,
        jitter: &mut retry::Jitter,
    ) -> Result<BatchOutcome, shopflow_store::Error> {
        let mut tx = self.db.begin().await?;
        let mut out = BatchOutcome {
            next: BTreeMap::new(),
            resume: BTreeMap::new(),
            stop: None,
        };
        for r in records {
            let tp = r.topic_partition();
            if out.stop.is_some() || out.resume.contains_key(&tp) {
                out.resume.entry(tp).or_insert(r.offset);
                continue;
            }
            match self.handle_one(&mut tx, r, attempts, jitter).await? {
                Step::Done => {
                    out.next.insert(tp, r.offset + 1);
                }
                Step::Stop(why) => {
                    out.resume.insert(tp, r.offset);
                    out.stop = Some(why);
                }
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn handle_one(
        &self,
        tx: &mut Tx,
        r: &Record,
        attempts: &mut Attempts,
        jitter: &mut retry::Jitter,
    ) -> Result<Step, shopflow_store::Error> {
        let name = self.handler.name();
        let envelope = match self.registry.decode(&r.value) {
            Ok(e) => e,
            Err(e) => {
                // A record that is not a valid, known event: record its position in the inbox
                // (so a redelivery does not dead-letter it twice) and dead-letter it.
                let id = format!("{}/{}/{}", r.topic, r.partition, r.offset);
                if inbox::record(tx, name, &id).await? {
                    tracing::error!(consumer = name, topic = %r.topic, partition = r.partition, offset = r.offset, reason = %e, "undecodable record dead-lettered");
                    let f = Failures::first(Utc::now());
                    self.dead_letter(tx, r, &e.to_string(), &f).await?;
                }
                return Ok(Step::Done);
            }
        };
        let key = (r.topic_partition(), r.offset);
        let span = tracing::info_span!(
            "handle",
            consumer = name,
            event_type = envelope.event_type(),
            event_id = %envelope.event_id(),
            correlation_id = %envelope.correlation_id(),
        );
        tx.execute("SAVEPOINT handler", &[]).await?;
        let event_id = envelope.event_id().to_string();
        if !inbox::record(tx, name, &event_id).await? {
            tx.execute("RELEASE SAVEPOINT handler", &[]).await?;
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            self.meters.duplicates.increment(1);
            attempts.remove(&key);
            return Ok(Step::Done);
        }
        let started = Instant::now();
        let handled = tracing::Instrument::instrument(
            catch::CatchUnwind::new(self.handler.handle(tx, &envelope)),
            span,
        );
        let result = match handled.await {
            Ok(Ok(out)) => emit(tx, out).await,
            Ok(Err(e)) => Err(e),
            Err(panic) => Err(HandlerError::Permanent(format!(
                "handler panicked: {panic}"
            ))),
        };
        self.meters
            .handler_seconds
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                tx.execute("RELEASE SAVEPOINT handler", &[]).await?;
                self.stats.handled.fetch_add(1, Ordering::Relaxed);
                self.meters.consumed.increment(1);
                attempts.remove(&key);
                Ok(Step::Done)
            }
            Err(HandlerError::Unavailable {
                reason,
                retry_after,
            }) => {
                tx.execute("ROLLBACK TO SAVEPOINT handler", &[]).await?;
                tx.execute("RELEASE SAVEPOINT handler", &[]).await?;
                // The failures so far were the outage's, not this event's.
                attempts.remove(&key);
                Ok(Step::Stop(Stop::Pause {
                    retry_after,
                    reason,
                }))
            }
            Err(HandlerError::Transient(reason)) => {
                tx.execute("ROLLBACK TO SAVEPOINT handler", &[]).await?;
                tx.execute("RELEASE SAVEPOINT handler", &[]).await?;
                let f = count_failure(attempts, &key);
                if !self.config.retry.exhausted(f.count) {
                    let delay = self.config.retry.delay(f.count, jitter.next_unit());
                    return Ok(Step::Stop(Stop::Retry { delay, reason }));
                }
                let f = attempts
                    .remove(&key)
                    .unwrap_or_else(|| Failures::first(Utc::now()));
                let reason = format!("gave up after {} attempts: {reason}", f.count);
                self.give_up(tx, r, &envelope, &event_id, &reason, &f)
                    .await?;
                Ok(Step::Done)
            }
            Err(HandlerError::Permanent(reason)) => {
                tx.execute("ROLLBACK TO SAVEPOINT handler", &[]).await?;
                tx.execute("RELEASE SAVEPOINT handler", &[]).await?;
                count_failure(attempts, &key);
                let f = attempts
                    .remove(&key)
                    .unwrap_or_else(|| Failures::first(Utc::now()));
                self.give_up(tx, r, &envelope, &event_id, &reason, &f)
                    .await?;
                Ok(Step::Done)
            }
        }
    }

    async fn give_up(
        &self,
        tx: &mut Tx,
        r: &Record,
        envelope: &Envelope,
        event_id: &str,
        reason: &str,
        f: &Failures,
    ) -> Result<(), shopflow_store::Error> {
        // The event stays out of the inbox, so that a redrive of it is handled; the dead letter
        // itself is recorded (once per redrive generation), so that a redelivery of the same
        // record does not dead-letter it twice.
        let generation = r
            .header(headers::REDRIVEN_FROM)
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .unwrap_or_default();
        let dead_key = format!("dead:{event_id}:{generation}");
        if !inbox::record(tx, self.handler.name(), &dead_key).await? {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        tracing::error!(
            consumer = self.handler.name(),
            event_id,
            event_type = envelope.event_type(),
            correlation_id = %envelope.correlation_id(),
            attempts = f.count,
            reason,
            "dead-lettered"
        );
        self.dead_letter(tx, r, reason, f).await
    }

    async fn dead_letter(
        &self,
        tx: &mut Tx,
        r: &Record,
        reason: &str,
        f: &Failures,
    ) -> Result<(), shopflow_store::Error> {
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        self.meters.dead_lettered.increment(1);
        let msg = dead_letter_message(r, self.handler.name(), reason, f.count, f.first, f.last);
        outbox::enqueue(tx, &[msg]).await
    }
}

/// The dead letter of `r`: its key, value and headers, plus headers naming the error, the
/// attempts, the original position and the failure times.
pub fn dead_letter_message(
    r: &Record,
    consumer: &str,
    reason: &str,
    attempts: u32,
    first_failure: DateTime<Utc>,
    last_failure: DateTime<Utc>,
) -> Message {
    let mut headers: Vec<(String, Bytes)> = r
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with("dlq-"))
        .cloned()
        .collect();
    let b = |s: String| Bytes::from(s.into_bytes());
    headers.push((headers::DLQ_ERROR.into(), b(reason.to_owned())));
    headers.push((headers::DLQ_TOPIC.into(), b(r.topic.to_string())));
    headers.push((headers::DLQ_PARTITION.into(), b(r.partition.to_string())));
    headers.push((headers::DLQ_OFFSET.into(), b(r.offset.to_string())));
    headers.push((headers::DLQ_CONSUMER.into(), b(consumer.to_owned())));
    headers.push((headers::DLQ_ATTEMPTS.into(), b(attempts.to_string())));
    headers.push((
        headers::DLQ_FIRST_FAILED_AT.into(),
        b(first_failure.to_rfc3339()),
    ));
    headers.push((headers::DLQ_FAILED_AT.into(), b(last_failure.to_rfc3339())));
    Message {
        topic: shopflow_envelope::dlq_topic(&r.topic),
        key: r.key.clone(),
        value: r.value.clone(),
        headers,
        timestamp_ms: None,
    }
}
