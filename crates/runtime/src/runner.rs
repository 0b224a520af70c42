//! The consumer loop: poll a batch, take every record through the handler's [`Stack`] inside one
//! transaction, commit it, then commit the offsets of the records that are done. A record that
//! must be retried or waits for a dependency stops its partition there (later records of the
//! partition in the batch are left for the next poll), and the consumer waits before it polls
//! again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shopflow_bus::{Bus, Consumer, Record, TopicPartition};
use shopflow_envelope::{Envelope, Event, Registry};
use shopflow_store::Db;

use crate::handler::BoxHandler;
use crate::stage::{Batch, Ctx, Outcome, Stack};
use crate::{Handler, RetryPolicy, Shutdown};

/// Settings of a consumer.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Records handled per transaction.
    pub max_batch: usize,
    /// Backoff and attempt limit for transient handler failures.
    pub retry: RetryPolicy,
    /// Pause before resubscribing after the bus or the database failed.
    pub reconnect_backoff: Duration,
    /// A limit on one handler call (the timeout stage); none by default.
    pub handler_timeout: Option<Duration>,
    /// Transactions a consumer keeps in flight at once, each over its own share of the
    /// partitions (partition number modulo lanes, so one key's records on every topic of equal
    /// partition count share a lane and keep their order). 1 on SQLite, whose single writer
    /// would take them one after another anyway; more lets a backend with a round trip per
    /// statement (PostgreSQL) overlap them. A handler whose effects touch rows shared between
    /// keys allows fewer ([`Handler::lanes`]). `None`: the deployment's default (the shop
    /// picks it by backend); a runner alone takes 1.
    pub lanes: Option<usize>,
    /// How often the consumer commits its offsets while it is busy (Kafka's
    /// `auto.commit.interval.ms`): the offsets of the batches handled since the last commit go
    /// in one commit, and an idle consumer commits what is left within this time. A crash
    /// before a commit redelivers the batches after it, which the inbox skips as duplicates, so
    /// this trades work at a restart for a durable offsets write (and an fsync of the embedded
    /// log, a broker round trip on Kafka) per batch. Zero: after every batch.
    pub commit_interval: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            max_batch: 500,
            commit_interval: Duration::from_millis(200),
            retry: RetryPolicy::default(),
            reconnect_backoff: Duration::from_millis(200),
            handler_timeout: None,
            lanes: None,
        }
    }
}

/// What a consumer has done so far.
#[derive(Debug, Default)]
pub struct RunnerStats {
    pub handled: AtomicU64,
    pub duplicates: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Records kept behind their key's dead letter.
    pub parked: AtomicU64,
    pub transient_failures: AtomicU64,
    /// Times the consumer paused because a dependency was unavailable.
    pub paused: AtomicU64,
    /// Batches run again with savepoints because a record failed in a run without them.
    pub replays: AtomicU64,
    /// What the consumer waits for right now, if it waits (for operators: the dashboard's
    /// "paused, and why").
    pub waiting: std::sync::Mutex<Option<Waiting>>,
}

/// A consumer that waits before it goes on.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Waiting {
    /// `paused` (a dependency is down) or `retrying` (a transient failure's backoff).
    pub kind: String,
    pub reason: String,
    /// Until when (RFC 3339, UTC).
    pub until: String,
}

impl RunnerStats {
    /// Records the consumer is done with: handled, duplicates, dead-lettered and parked.
    pub fn seen(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
            + self.duplicates.load(Ordering::Relaxed)
            + self.dead_lettered.load(Ordering::Relaxed)
            + self.parked.load(Ordering::Relaxed)
    }

    /// What the consumer waits for now.
    pub fn waiting(&self) -> Option<Waiting> {
        self.waiting.lock().map(|w| w.clone()).unwrap_or(None)
    }

    fn set_waiting(&self, w: Option<Waiting>) {
        if let Ok(mut slot) = self.waiting.lock() {
            *slot = w;
        }
    }
}

/// The consumer's metric handles, registered once (not looked up per event).
#[derive(Debug)]
struct Meters {
    consumed: metrics::Counter,
    duplicates: metrics::Counter,
    dead_lettered: metrics::Counter,
    parked: metrics::Counter,
    failed_transient: metrics::Counter,
    failed_unavailable: metrics::Counter,
    /// Transactions committed (one per polled batch): events per batch = consumed / batches.
    batches: metrics::Counter,
    replays: metrics::Counter,
    /// From a record's bus timestamp (when it was published) to its batch being taken.
    delivery: metrics::Histogram,
}

impl Meters {
    fn new(consumer: &'static str) -> Self {
        let failed = |kind: &'static str| metrics::counter!("shopflow_events_failed_total", "consumer" => consumer, "kind" => kind);
        Self {
            consumed: metrics::counter!("shopflow_events_consumed_total", "consumer" => consumer),
            duplicates: metrics::counter!("shopflow_events_duplicate_total", "consumer" => consumer),
            dead_lettered: metrics::counter!("shopflow_events_dead_lettered_total", "consumer" => consumer),
            parked: metrics::counter!("shopflow_events_parked_total", "consumer" => consumer),
            failed_transient: failed("transient"),
            failed_unavailable: failed("unavailable"),
            batches: metrics::counter!("shopflow_consumer_batches_total", "consumer" => consumer),
            replays: metrics::counter!("shopflow_consumer_replays_total", "consumer" => consumer),
            delivery: metrics::histogram!("shopflow_consumer_delivery_seconds", "consumer" => consumer),
        }
    }
}

/// Counts one more in a stat and its metric.
fn tally(stat: &AtomicU64, meter: &metrics::Counter) {
    stat.fetch_add(1, Ordering::Relaxed);
    meter.increment(1);
}

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

#[derive(Default)]
struct BatchOutcome {
    /// Offsets to commit.
    next: BTreeMap<TopicPartition, u64>,
    /// Where partitions must resume after a stop.
    resume: BTreeMap<TopicPartition, u64>,
    stop: Option<Stop>,
}

/// What became of records handed to [`Runner::deliver`].
#[derive(Debug, Default)]
pub struct Delivery {
    /// Offsets to commit (the next offset to read), per partition.
    pub commit: Vec<(TopicPartition, u64)>,
    /// Where partitions resume: at a record to retry or one waiting for a dependency.
    pub resume: Vec<(TopicPartition, u64)>,
    /// Why the batch stopped early, and how long the consumer waits before it goes on.
    pub stop: Option<(Duration, String)>,
}

/// Runs one handler as a member of its consumer group until shutdown.
#[derive(Debug)]
pub struct Runner<B: Bus> {
    bus: B,
    db: Db,
    name: &'static str,
    topics: Vec<String>,
    stack: Stack,
    config: RunnerConfig,
    stats: Arc<RunnerStats>,
    meters: Meters,
    /// Transactions in flight at once: the configured lanes, capped by the handler's.
    lanes: usize,
    /// The handler keeps its keys' order behind dead letters (the park stage is on).
    parks: bool,
    /// Decodes a batch's records ahead of the stack (the decode stage takes them as decoded).
    registry: Arc<Registry>,
    /// The handler's effects are all in its database: batches run without savepoints until a
    /// record fails (see [`Runner::handle_lane`]).
    optimistic: bool,
    /// Batches still to run with savepoints after a rerun.
    careful_batches: AtomicU32,
}

impl<B: Bus> Runner<B> {
    pub fn new<H: Handler>(
        bus: B,
        db: Db,
        handler: Arc<H>,
        registry: Arc<Registry>,
        config: RunnerConfig,
    ) -> Self {
        let lanes = config.lanes.unwrap_or(1).min(handler.lanes()).max(1);
        let parks = handler.sequenced_dead_letters();
        let optimistic = handler.only_database_effects() && handler.breakers().is_empty();
        let handler = BoxHandler::from_arc(handler);
        let (name, topics) = (handler.name(), handler.topics());
        Self {
            lanes,
            parks,
            bus,
            db,
            name,
            topics,
            stack: Stack::for_handler(
                handler,
                registry.clone(),
                config.retry.clone(),
                config.handler_timeout,
            ),
            config,
            stats: Arc::new(RunnerStats::default()),
            meters: Meters::new(name),
            registry,
            optimistic,
            careful_batches: AtomicU32::new(0),
        }
    }

    pub fn stats(&self) -> Arc<RunnerStats> {
        self.stats.clone()
    }

    /// Consumes until `shutdown`. Errors of the bus or database are logged and retried.
    pub async fn run(self, shutdown: Shutdown) {
        let name = self.name;
        // Dead letters are announced on a system topic: it must exist before the first one
        // (a deployment creates it with its own partitions and replication first; then this is
        // a no-op).
        let dead_lettered = crate::system::EventDeadLettered::topic();
        if let Err(e) = self
            .bus
            .create_topic(&dead_lettered, &shopflow_bus::TopicSpec::new(1))
            .await
            && !matches!(e, shopflow_bus::Error::PartitionMismatch { .. })
        {
            tracing::warn!(consumer = name, topic = dead_lettered, error = %e, "cannot create the system topic");
        }
        loop {
            if shutdown.is_triggered() {
                return;
            }
            let consumer = match self.bus.subscribe(name, &self.topics).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(consumer = name, error = %e, "subscribe failed; retrying");
                    tokio::time::sleep(self.config.reconnect_backoff).await;
                    continue;
                }
            };
            if let Err(e) = self.consume(consumer, shutdown.clone()).await {
                tracing::warn!(consumer = name, error = %e, "consumer failed; resubscribing");
                tokio::time::sleep(self.config.reconnect_backoff).await;
            }
        }
    }

    async fn consume(&self, mut consumer: B::Consumer, shutdown: Shutdown) -> Result<(), String> {
        let name = self.name;
        let stop = shutdown.clone().wait();
        tokio::pin!(stop);
        // Offsets of handled batches not committed yet, and when the last commit was.
        let mut pending: BTreeMap<TopicPartition, u64> = BTreeMap::new();
        let mut committed_at = Instant::now();
        loop {
            let due = self
                .config
                .commit_interval
                .saturating_sub(committed_at.elapsed());
            // With offsets pending, an idle consumer wakes to commit them when they are due.
            let wait = if pending.is_empty() {
                Duration::from_secs(1)
            } else {
                due.clamp(Duration::from_millis(1), Duration::from_secs(1))
            };
            let records = tokio::select! {
                r = consumer.poll(self.config.max_batch, wait) => r.map_err(|e| e.to_string())?,
                _ = &mut stop => {
                    self.commit(&mut consumer, &mut pending, &mut committed_at).await?;
                    return Ok(());
                }
            };
            if records.is_empty() {
                if !pending.is_empty() && committed_at.elapsed() >= self.config.commit_interval {
                    self.commit(&mut consumer, &mut pending, &mut committed_at)
                        .await?;
                }
                continue;
            }
            let now_ms = chrono::Utc::now().timestamp_millis();
            for r in &records {
                self.meters
                    .delivery
                    .record((now_ms - r.timestamp_ms).max(0) as f64 / 1000.0);
            }
            let outcome = match self.handle_batch(&records).await {
                Ok(o) => o,
                Err(e) => {
                    // What committed before the failure stays committed; the rest is redone.
                    if let Err(c) = self
                        .commit(&mut consumer, &mut pending, &mut committed_at)
                        .await
                    {
                        tracing::warn!(consumer = name, error = %c, "offsets commit after a failed batch failed");
                    }
                    return Err(e.to_string());
                }
            };
            pending.extend(outcome.next);
            // A stop seeks partitions back: commit first, so what is committed is what was done.
            if outcome.stop.is_some() || committed_at.elapsed() >= self.config.commit_interval {
                self.commit(&mut consumer, &mut pending, &mut committed_at)
                    .await?;
            }
            let Some(why) = outcome.stop else { continue };
            for (tp, offset) in outcome.resume {
                match consumer.seek(&tp, offset) {
                    // Moved away meanwhile: its new owner starts from the last commit.
                    Ok(()) | Err(shopflow_bus::Error::NotAssigned { .. }) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            let (wait, reason, kind) = self.count_stop(why);
            let what = match kind {
                "paused" => "dependency unavailable; consumer paused",
                _ => "transient failure; retrying",
            };
            tracing::warn!(consumer = name, reason, wait = ?wait, "{what}");
            let until = shopflow_envelope::sim::now()
                + chrono::Duration::from_std(wait).unwrap_or_else(|_| chrono::Duration::zero());
            self.stats.set_waiting(Some(Waiting {
                kind: kind.to_owned(),
                reason,
                until: until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            }));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut stop => return Ok(()),
            }
            self.stats.set_waiting(None);
        }
    }

    /// Commits the offsets in `pending` (and empties it), and sets `committed_at` to now. A
    /// partition that a rebalance moved away is not an error: its new owner resumes from the
    /// last committed offset and its inbox skips what was handled here. Such partitions are left
    /// out first, so that they do not take the offsets of the partitions still assigned down
    /// with them.
    async fn commit(
        &self,
        consumer: &mut B::Consumer,
        pending: &mut BTreeMap<TopicPartition, u64>,
        committed_at: &mut Instant,
    ) -> Result<(), String> {
        *committed_at = Instant::now();
        if pending.is_empty() {
            return Ok(());
        }
        let assigned = consumer.assignment();
        let offsets: Vec<(TopicPartition, u64)> = std::mem::take(pending)
            .into_iter()
            .filter(|(tp, _)| assigned.contains(tp))
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        match consumer.commit(&offsets).await {
            Ok(()) => Ok(()),
            Err(shopflow_bus::Error::NotAssigned { topic, partition }) => {
                tracing::info!(
                    consumer = self.name,
                    topic,
                    partition,
                    "partition moved to another member before its commit"
                );
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Handles `records` as one polled batch (one transaction per lane) without a bus consumer,
    /// for a driver that delivers records itself — the simulator, which decides what arrives
    /// when. The driver commits [`Delivery::commit`] and resumes partitions at
    /// [`Delivery::resume`], as `run` does with its consumer.
    pub async fn deliver(&self, records: &[Record]) -> Result<Delivery, shopflow_store::Error> {
        let outcome = self.handle_batch(records).await?;
        let stop = outcome.stop.map(|why| {
            let (wait, reason, _) = self.count_stop(why);
            (wait, reason)
        });
        Ok(Delivery {
            commit: outcome.next.into_iter().collect(),
            resume: outcome.resume.into_iter().collect(),
            stop,
        })
    }

    /// Counts why a batch stopped; returns how long to wait, why, and the kind of wait
    /// (`retrying` or `paused`, as [`Waiting::kind`] says).
    fn count_stop(&self, why: Stop) -> (Duration, String, &'static str) {
        match why {
            Stop::Retry { delay, reason } => {
                tally(
                    &self.stats.transient_failures,
                    &self.meters.failed_transient,
                );
                (delay, reason, "retrying")
            }
            Stop::Pause {
                retry_after,
                reason,
            } => {
                tally(&self.stats.paused, &self.meters.failed_unavailable);
                (retry_after, reason, "paused")
            }
        }
    }

    /// Handles a batch: in one transaction, or with lanes in one transaction per lane, all
    /// in flight at once. A lane whose transaction fails fails the batch; lanes that committed
    /// have their records delivered again, which their inboxes absorb.
    async fn handle_batch(
        &self,
        records: &[Record],
    ) -> Result<BatchOutcome, shopflow_store::Error> {
        if self.lanes == 1 {
            return self.handle_lane(records.iter()).await;
        }
        let mut lanes: Vec<Vec<&Record>> = vec![Vec::new(); self.lanes];
        for r in records {
            lanes[r.partition as usize % self.lanes].push(r);
        }
        let outcomes = futures_util::future::join_all(
            lanes
                .iter()
                .filter(|l| !l.is_empty())
                .map(|l| self.handle_lane(l.iter().copied())),
        )
        .await;
        let mut out = BatchOutcome::default();
        for lane in outcomes {
            let lane = lane?;
            out.next.extend(lane.next);
            out.resume.extend(lane.resume);
            if out.stop.is_none() {
                out.stop = lane.stop;
            }
        }
        Ok(out)
    }

    /// Handles records in one transaction, in order. A handler whose effects are all in its
    /// database ([`Handler::only_database_effects`], and no breakers) runs without a savepoint
    /// per record; when a record fails then, the transaction is dropped and the batch runs
    /// again with savepoints (its failure is counted in that run), and so do the lane's next
    /// [`CAREFUL_AFTER_REPLAY`] batches. A handler that calls out keeps its savepoints: a rerun
    /// would call out again.
    async fn handle_lane<'r>(
        &self,
        records: impl Iterator<Item = &'r Record>,
    ) -> Result<BatchOutcome, shopflow_store::Error> {
        let records: Vec<&Record> = records.collect();
        let careful = !self.optimistic
            || self
                .careful_batches
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
        if !careful {
            if let Some(out) = self.run_lane(&records, false).await? {
                return Ok(out);
            }
            self.careful_batches
                .store(CAREFUL_AFTER_REPLAY, Ordering::Relaxed);
            tally(&self.stats.replays, &self.meters.replays);
        }
        match self.run_lane(&records, true).await? {
            Some(out) => Ok(out),
            None => Err(shopflow_store::Error::Invalid {
                what: "consumer batch",
                reason: "a run with savepoints asked to be run again".into(),
            }),
        }
    }

    /// One run of [`Runner::handle_lane`]: `None` when a record failed while `careful` was off
    /// (nothing of the run was committed).
    async fn run_lane(
        &self,
        records: &[&Record],
        careful: bool,
    ) -> Result<Option<BatchOutcome>, shopflow_store::Error> {
        // Decoded once here, for the read-ahead and the decode stage; one that does not decode
        // is left to the decode stage, which gives it up.
        let mut envelopes: Vec<Option<Envelope>> = records
            .iter()
            .map(|r| self.registry.decode(&r.value).ok())
            .collect();
        let mut tx = self.db.begin().await?;
        let mut out = BatchOutcome::default();
        // Most of the time no key of the group is parked: one probe per batch instead of a
        // lookup per record (a round trip each on PostgreSQL).
        let batch =
            Batch::new(self.parks && shopflow_store::parked::any(&mut tx, self.name).await?);
        let known: Vec<&Envelope> = envelopes.iter().flatten().collect();
        batch.read_ahead(&mut tx, self.name, &known).await?;
        // Counted once the transaction has committed: a run dropped for a rerun counts nothing.
        let mut done = Vec::with_capacity(records.len());
        for (r, envelope) in records.iter().copied().zip(envelopes.iter_mut()) {
            let tp = r.topic_partition();
            if out.stop.is_some() || out.resume.contains_key(&tp) {
                out.resume.entry(tp).or_insert(r.offset);
                continue;
            }
            let outcome = {
                let mut ctx = Ctx {
                    consumer: self.name,
                    tx: &mut tx,
                    record: r,
                    envelope: envelope.take(),
                    failure: None,
                    batch: &batch,
                    careful,
                };
                self.stack.handle(&mut ctx).await?
            };
            if matches!(outcome, Outcome::Replay) && !careful {
                tx.rollback().await?;
                return Ok(None);
            }
            match self.classify(outcome) {
                Ok(kind) => {
                    done.push(kind);
                    out.next.insert(tp, r.offset + 1);
                }
                Err(why) => {
                    out.resume.insert(tp, r.offset);
                    out.stop = Some(why);
                }
            }
        }
        batch.settle(&mut tx, self.name).await?;
        // Everything handled and nothing committed: a crash here redoes the whole batch.
        if shopflow_envelope::sim::crash_point("consumer.before-commit") {
            return Err(shopflow_store::Error::Crashed("consumer.before-commit"));
        }
        tx.commit().await?;
        self.meters.batches.increment(1);
        for kind in done {
            self.tally_done(kind);
        }
        Ok(Some(out))
    }

    /// What became of a record: done (of which kind), or `Err` when its partition must stop
    /// there.
    fn classify(&self, outcome: Outcome) -> Result<Done, Stop> {
        match outcome {
            Outcome::Handled => Ok(Done::Handled),
            Outcome::Duplicate => Ok(Done::Duplicate),
            Outcome::DeadLettered => Ok(Done::DeadLettered),
            Outcome::Parked => Ok(Done::Parked),
            Outcome::Retry { delay, reason } => Err(Stop::Retry { delay, reason }),
            Outcome::Pause {
                retry_after,
                reason,
            } => Err(Stop::Pause {
                retry_after,
                reason,
            }),
            // The stack always ends in the dead-letter stage, which takes these; a custom stack
            // that lets one through retries the record rather than losing it.
            Outcome::Failed(e) => Err(Stop::Retry {
                delay: self.config.reconnect_backoff,
                reason: e.to_string(),
            }),
            Outcome::GiveUp { reason, .. } => Err(Stop::Retry {
                delay: self.config.reconnect_backoff,
                reason,
            }),
            // Only a run without savepoints asks for a rerun, and that run is dropped first.
            Outcome::Replay => Err(Stop::Retry {
                delay: self.config.reconnect_backoff,
                reason: "a record asked for its batch to be run again".into(),
            }),
        }
    }

    /// Counts a record the consumer is done with, in its stat and its metric.
    fn tally_done(&self, kind: Done) {
        let (stat, meter) = match kind {
            Done::Handled => (&self.stats.handled, &self.meters.consumed),
            Done::Duplicate => (&self.stats.duplicates, &self.meters.duplicates),
            Done::DeadLettered => (&self.stats.dead_lettered, &self.meters.dead_lettered),
            Done::Parked => (&self.stats.parked, &self.meters.parked),
        };
        tally(stat, meter);
    }
}

/// Batches a lane runs with savepoints after one it had to run again (see
/// [`Runner::handle_lane`]): failures come in runs (an outage, a bad deploy), and a run of
/// reruns would cost more than the savepoints.
pub(crate) const CAREFUL_AFTER_REPLAY: u32 = 16;

/// What a record the consumer is done with became.
#[derive(Clone, Copy, Debug)]
enum Done {
    Handled,
    Duplicate,
    DeadLettered,
    Parked,
}
