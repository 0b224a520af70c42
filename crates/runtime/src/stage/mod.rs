//! Handling one record is a stack of small stages, each of which may act before and after the
//! rest of the stack (tower's middleware, watermill's handler middleware):
//!
//! ```text
//!  redrive ─ park ─ dead_letter ─ decode ─ retry ─ savepoint ─ inbox ─ sequence ─ breaker
//!  (outermost)                                       ─ catch ─ [timeout] ─ handler (innermost)
//! ```
//!
//! - [`redrive`]: a record redriven from a dead-letter queue goes to the one group it names;
//!   the other groups of its topic pass it by.
//! - [`park`]: sequenced dead letters — a key with a dead letter in this group is parked, and
//!   its later records wait behind it until the head is redriven and handled, or discarded.
//! - [`dead_letter`]: turns a given-up record into a dead letter on `<topic>.dlq` (once).
//! - [`decode`]: decodes the envelope through the registry (upcasting); a record that is not a
//!   valid, known event is given up at once.
//! - [`retry`]: counts failures per record; a transient one stops the partition and retries it
//!   after a backoff with jitter, up to the attempt limit; a permanent one is given up.
//! - [`savepoint`]: everything inside commits or rolls back as one, within the batch's
//!   transaction.
//! - [`inbox`]: records the event id for the consumer; a redelivery stops here, a duplicate.
//! - [`sequence`]: checks the producer's per-aggregate number of each handled event, counting
//!   reorderings and gaps.
//! - [`breaker`]: admits the record only while the handler's declared circuit breakers let calls
//!   through (else the consumer pauses) and counts the handler's dependency failures.
//! - [`catch`]: a panic in the handler becomes a permanent failure (the event is dead-lettered,
//!   the consumer lives on).
//! - [`timeout`]: a handler that takes longer than its limit fails transiently.
//!
//! The innermost step calls the [`Handler`](crate::Handler) and puts what it returns in the
//! outbox of the same transaction. A stage is a type implementing [`Stage`]; adding one is a
//! module here and a line in [`Stack::for_handler`].

pub mod breaker;
pub mod catch;
pub mod dead_letter;
pub mod decode;
pub mod inbox;
pub mod park;
pub mod redrive;
pub mod retry;
pub mod savepoint;
pub mod sequence;
pub mod timeout;

use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use shopflow_bus::Record;
use shopflow_envelope::{Envelope, Registry};
use shopflow_store::Tx;

use crate::handler::{BoxFuture, BoxHandler};
use crate::{Handler, HandlerError};

/// One record on its way through the stack.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// The consumer group (and inbox name).
    pub consumer: &'static str,
    /// The batch's transaction.
    pub tx: &'a mut Tx,
    pub record: &'a Record,
    /// Set by the decode stage.
    pub envelope: Option<Envelope>,
    /// Why the record was dead-lettered (set by the dead-letter stage).
    pub failure: Option<String>,
    /// What the lane read once for its whole batch.
    pub batch: &'a Batch,
    /// Whether each record runs in a savepoint of its own; without, a failure asks for the
    /// whole batch to be run again with them ([`Outcome::Replay`]).
    pub careful: bool,
}

/// What a lane reads once for its whole batch instead of once per record (a round trip each on
/// PostgreSQL, a statement each on SQLite): whether any key is parked, which of the batch's
/// event ids the inbox holds, and the last sequence number handled of each of its aggregates.
/// The inbox and sequence stages answer a read-ahead record from here and keep what it handled
/// here too: the inbox rows and sequence tallies of the handled records are written together,
/// a few multi-row statements, when the lane [`settle`](Batch::settle)s — before its commit,
/// and before anything that could roll back more than one record (a parked key's release).
#[derive(Debug, Default)]
pub struct Batch {
    /// Whether a key of this consumer may be parked behind a dead letter: set by the park stage
    /// when it parks one. While false, the park stage does not look the record's key up.
    pub parked: AtomicBool,
    ahead: Mutex<Ahead>,
}

#[derive(Debug, Default)]
struct Ahead {
    /// Answers from here: after [`Batch::read_ahead`], until [`Batch::settle`].
    active: bool,
    /// Event ids of the batch that the consumer handled in earlier transactions.
    handled_before: HashSet<String>,
    /// Event ids handled in this transaction and not written yet, and their order.
    recorded: HashSet<String>,
    order: Vec<String>,
    /// The highest number handled per source and aggregate of the batch's events (0: none).
    last: HashMap<String, HashMap<String, u64>>,
    /// What was handled per source and aggregate, not written yet, in order of first.
    tallies: Vec<shopflow_store::sequence::Handled>,
    tally_of: HashMap<(String, String), usize>,
}

/// What the read-ahead knows of an event id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Handled before (or earlier in this batch): a duplicate.
    Handled,
    /// Not handled: counted as handled in this batch, written when the batch settles (taken
    /// back by [`Batch::unrecord`] if the record is not handled after all).
    New,
    /// Not read ahead: ask the database.
    Unknown,
}

impl Batch {
    /// A batch whose `parked` flag is `parked` and that has read nothing ahead.
    pub fn new(parked: bool) -> Self {
        Self {
            parked: AtomicBool::new(parked),
            ahead: Mutex::new(Ahead::default()),
        }
    }

    /// Reads ahead, in `tx`, what `consumer`'s inbox and sequence stages need for `envelopes`.
    pub async fn read_ahead(
        &self,
        tx: &mut Tx,
        consumer: &str,
        envelopes: &[&Envelope],
    ) -> Result<(), shopflow_store::Error> {
        let ids: Vec<String> = envelopes.iter().map(|e| e.event_id().to_string()).collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let handled_before = shopflow_store::inbox::handled_among(tx, consumer, &id_refs).await?;
        let keys: Vec<(&str, &str)> = envelopes
            .iter()
            .filter(|e| e.sequence() > 0)
            .map(|e| (e.source(), e.aggregate_id()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let last = shopflow_store::sequence::last_among(tx, consumer, &keys).await?;
        *self.lock() = Ahead {
            active: true,
            handled_before,
            last,
            // Sized for the batch: no rehashing while the records are handled.
            recorded: HashSet::with_capacity(envelopes.len()),
            order: Vec::with_capacity(envelopes.len()),
            tally_of: HashMap::with_capacity(envelopes.len()),
            ..Ahead::default()
        };
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ahead> {
        self.ahead.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes what the batch handled so far (inbox rows, sequence tallies) into `tx` and stops
    /// answering from the read-ahead: from here on the stages ask the database.
    pub async fn settle(&self, tx: &mut Tx, consumer: &str) -> Result<(), shopflow_store::Error> {
        let (ids, tallies) = {
            let mut a = self.lock();
            a.active = false;
            let order = std::mem::take(&mut a.order);
            let recorded = std::mem::take(&mut a.recorded);
            let ids: Vec<String> = order
                .into_iter()
                .filter(|id| recorded.contains(id))
                .collect();
            a.tally_of.clear();
            (ids, std::mem::take(&mut a.tallies))
        };
        shopflow_store::inbox::record_all(tx, consumer, &ids).await?;
        shopflow_store::sequence::record_all(tx, consumer, &tallies).await
    }

    /// What is known of event `id` of a read-ahead record; [`Seen::New`] counts it as recorded
    /// in this transaction.
    pub fn inbox(&self, id: &str) -> Seen {
        let mut a = self.lock();
        if !a.active {
            return Seen::Unknown;
        }
        if a.handled_before.contains(id) || a.recorded.contains(id) {
            Seen::Handled
        } else {
            a.recorded.insert(id.to_owned());
            a.order.push(id.to_owned());
            Seen::New
        }
    }

    /// The record of `id` was not handled after all: nothing of it is to be written.
    pub fn unrecord(&self, id: &str) {
        self.lock().recorded.remove(id);
    }

    /// The highest number handled of `(source, aggregate)`, when read ahead.
    pub fn last(&self, source: &str, aggregate: &str) -> Option<u64> {
        let a = self.lock();
        if !a.active {
            return None;
        }
        a.last.get(source)?.get(aggregate).copied()
    }

    /// Number `seq` of `(source, aggregate)` was handled (`anomaly`: a gap or a reordering).
    pub fn observed(&self, source: &str, aggregate: &str, seq: u64, complete: bool, anomaly: bool) {
        let mut a = self.lock();
        if let Some(last) = a.last.get_mut(source).and_then(|m| m.get_mut(aggregate)) {
            *last = (*last).max(seq);
        }
        let key = (source.to_owned(), aggregate.to_owned());
        let anomalies = u64::from(anomaly);
        match a.tally_of.get(&key).copied() {
            Some(i) => {
                let t = &mut a.tallies[i];
                t.last = t.last.max(seq);
                t.seen += 1;
                t.complete = complete;
                t.anomalies += anomalies;
            }
            None => {
                let i = a.tallies.len();
                a.tallies.push(shopflow_store::sequence::Handled {
                    source: key.0.clone(),
                    aggregate: key.1.clone(),
                    last: seq,
                    seen: 1,
                    complete,
                    anomalies,
                });
                a.tally_of.insert(key, i);
            }
        }
    }
}

/// Failures of one record so far (kept in memory: a restart starts counting again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failures {
    pub count: u32,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
}

impl Failures {
    /// A first failure, now.
    pub fn first(now: DateTime<Utc>) -> Self {
        Self {
            count: 1,
            first: now,
            last: now,
        }
    }
}

/// What became of a record, as it travels back out through the stages.
#[derive(Debug)]
pub enum Outcome {
    /// The handler ran and its effects and outgoing events are in the transaction.
    Handled,
    /// Handled before (inbox), or dead-lettered before: nothing to do.
    Duplicate,
    /// Written to the dead-letter topic (through the outbox).
    DeadLettered,
    /// Kept behind its key's dead letter in this group (see [`park`]).
    Parked,
    /// The handler or an inner stage failed; an outer stage decides what it means.
    Failed(HandlerError),
    /// Give the record up: the dead-letter stage writes it to `<topic>.dlq`.
    GiveUp { reason: String, failures: Failures },
    /// The record failed in a batch run without savepoints (see [`savepoint`]): the lane drops
    /// its transaction and runs the batch again with them, where the failure is counted.
    Replay,
    /// Stop the record's partition here and try it again after `delay`.
    Retry { delay: Duration, reason: String },
    /// A dependency is down: pause the consumer, then try the same record again.
    Pause {
        retry_after: Duration,
        reason: String,
    },
}

impl Outcome {
    /// The record is done with: its offset may be committed.
    pub fn is_done(&self) -> bool {
        matches!(
            self,
            Outcome::Handled | Outcome::Duplicate | Outcome::DeadLettered | Outcome::Parked
        )
    }
}

/// What a stage returns: an outcome, or a database error that ends the whole batch (its
/// transaction is dropped and every record of it is delivered again).
pub type StageResult = Result<Outcome, shopflow_store::Error>;

/// One stage of the stack.
pub trait Stage: Send + Sync + fmt::Debug + 'static {
    /// Handles `ctx`, calling `next` for the rest of the stack (or not, to cut it short).
    fn call<'a>(&'a self, ctx: &'a mut Ctx<'_>, next: Next<'a>) -> BoxFuture<'a, StageResult>;
}

/// The rest of the stack below a stage.
#[derive(Clone, Copy, Debug)]
pub struct Next<'a> {
    stages: &'a [Arc<dyn Stage>],
    endpoint: &'a Endpoint,
}

impl<'a> Next<'a> {
    /// Runs the rest of the stack.
    pub fn run<'c>(self, ctx: &'c mut Ctx<'_>) -> BoxFuture<'c, StageResult>
    where
        'a: 'c,
    {
        match self.stages.split_first() {
            Some((stage, rest)) => stage.call(
                ctx,
                Next {
                    stages: rest,
                    endpoint: self.endpoint,
                },
            ),
            None => Box::pin(self.endpoint.call(ctx)),
        }
    }
}

/// The innermost step: the handler, and the outbox for what it returns.
#[derive(Debug)]
pub(crate) struct Endpoint {
    handler: BoxHandler,
    seconds: metrics::Histogram,
}

impl Endpoint {
    async fn call(&self, ctx: &mut Ctx<'_>) -> StageResult {
        let Ctx {
            consumer,
            tx,
            envelope,
            ..
        } = ctx;
        let Some(envelope) = envelope.as_ref() else {
            return Ok(Outcome::Failed(HandlerError::Permanent(
                "no envelope: the stack has no decode stage".into(),
            )));
        };
        let span = tracing::info_span!(
            "handle",
            consumer = *consumer,
            event_type = envelope.event_type(),
            event_id = %envelope.event_id(),
            correlation_id = %envelope.correlation_id(),
        );
        let started = Instant::now();
        let result = tracing::Instrument::instrument(self.handler.call(tx, envelope), span).await;
        let outcome = match result {
            Ok(out) => match shopflow_store::emit(tx, out).await {
                Ok(()) => Outcome::Handled,
                Err(e) => Outcome::Failed(HandlerError::from(e)),
            },
            Err(e) => Outcome::Failed(e),
        };
        self.seconds.record(started.elapsed().as_secs_f64());
        Ok(outcome)
    }
}

/// The stages of one handler, outermost first, and the handler below them.
#[derive(Debug)]
pub struct Stack {
    stages: Vec<Arc<dyn Stage>>,
    endpoint: Endpoint,
}

impl Stack {
    /// The runtime's stack for `handler`: redrive, park (sequenced dead letters), dead-letter, decode, retry (by `retry`), savepoint,
    /// inbox, the handler's breakers (when it declares any), panic catching, and a timeout when
    /// `timeout` sets one.
    pub fn for_handler(
        handler: BoxHandler,
        registry: Arc<Registry>,
        retry: retry::RetryPolicy,
        timeout: Option<Duration>,
    ) -> Self {
        let mut stages: Vec<Arc<dyn Stage>> = vec![
            Arc::new(redrive::Redrive),
            Arc::new(park::Park::new(handler.sequenced_dead_letters())),
            Arc::new(dead_letter::DeadLetter),
            Arc::new(decode::Decode::new(registry)),
            Arc::new(retry::Retry::new(retry)),
            Arc::new(savepoint::Savepoint),
            Arc::new(inbox::Inbox),
            Arc::new(sequence::Sequence::new(handler.complete_sources())),
        ];
        let breakers = handler.breakers();
        if !breakers.is_empty() {
            stages.push(Arc::new(breaker::Breakers::new(breakers)));
        }
        stages.push(Arc::new(catch::Catch));
        if let Some(limit) = timeout {
            stages.push(Arc::new(timeout::Timeout::new(limit)));
        }
        Self::new(stages, handler)
    }

    /// A stack of the given stages around `handler`.
    pub fn new(stages: Vec<Arc<dyn Stage>>, handler: BoxHandler) -> Self {
        let seconds = metrics::histogram!("shopflow_handler_seconds", "consumer" => handler.name());
        Self {
            stages,
            endpoint: Endpoint { handler, seconds },
        }
    }

    /// Takes one record through the stack.
    pub async fn handle(&self, ctx: &mut Ctx<'_>) -> StageResult {
        Next {
            stages: &self.stages,
            endpoint: &self.endpoint,
        }
        .run(ctx)
        .await
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A record, a transaction and a handler for testing one stage alone, on an in-memory-like
    //! SQLite file in a temporary directory.

    use super::*;
    use bytes::Bytes;
    use shopflow_envelope::{Kind, Meta};
    use shopflow_store::{Db, Outgoing};

    pub(crate) struct Bench {
        pub(crate) _dir: tempfile::TempDir,
        pub(crate) db: Db,
    }

    pub(crate) async fn bench() -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_sqlite(dir.path().join("t.db")).unwrap();
        db.migrate_building_blocks().await.unwrap();
        db.migrate(
            "stage-test",
            &[shopflow_store::Migration::portable(
                1,
                "seen",
                "CREATE TABLE seen (n BIGINT NOT NULL)",
            )],
        )
        .await
        .unwrap();
        Bench { _dir: dir, db }
    }

    pub(crate) fn envelope(n: i64) -> Envelope {
        Envelope::from_parts(
            "Probed",
            1,
            Kind::Domain,
            serde_json::json!({ "n": n }),
            Meta::new("test", format!("agg-{n}"), 1),
        )
        .unwrap()
    }

    pub(crate) fn record_of(env: &Envelope, offset: u64) -> Record {
        Record {
            topic: Arc::from("in"),
            partition: 0,
            offset,
            timestamp_ms: 0,
            key: Some(Bytes::copy_from_slice(env.aggregate_id().as_bytes())),
            value: Bytes::from(env.encode().unwrap()),
            headers: Vec::new(),
        }
    }

    /// A handler that answers with `f(n)` after writing `n` to `seen`.
    pub(crate) struct FnHandler<F>(pub(crate) F);

    impl<F> Handler for FnHandler<F>
    where
        F: Fn(i64) -> Result<(), HandlerError> + Send + Sync + 'static,
    {
        fn name(&self) -> &'static str {
            "probe"
        }
        fn topics(&self) -> Vec<String> {
            vec!["in".into()]
        }
        async fn handle(&self, tx: &mut Tx, env: &Envelope) -> Result<Vec<Outgoing>, HandlerError> {
            let n = env.data()["n"].as_i64().unwrap_or(-1);
            tx.execute(
                "INSERT INTO seen (n) VALUES ($1)",
                shopflow_store::params![n],
            )
            .await?;
            (self.0)(n)?;
            Ok(vec![])
        }
    }

    /// Runs `stages` around `handler` for `record` in a fresh transaction that is committed.
    pub(crate) async fn run(
        db: &Db,
        stages: Vec<Arc<dyn Stage>>,
        handler: BoxHandler,
        record: &Record,
        decoded: Option<Envelope>,
    ) -> Outcome {
        let stack = Stack::new(stages, handler);
        let mut tx = db.begin().await.unwrap();
        let outcome = {
            let batch = Batch::new(true);
            let mut ctx = Ctx {
                consumer: "probe",
                tx: &mut tx,
                record,
                envelope: decoded,
                failure: None,
                batch: &batch,
                careful: true,
            };
            stack.handle(&mut ctx).await.unwrap()
        };
        tx.commit().await.unwrap();
        outcome
    }

    /// One record of `envelope(n)` at `offset`, taken through `stages` around a handler that
    /// writes `n` and then answers `f(n)`; returns the outcome and what `seen` holds afterwards.
    pub(crate) async fn once<F>(
        stages: Vec<Arc<dyn Stage>>,
        n: i64,
        offset: u64,
        decoded: bool,
        f: F,
    ) -> (Outcome, Vec<i64>)
    where
        F: Fn(i64) -> Result<(), HandlerError> + Send + Sync + 'static,
    {
        let b = bench().await;
        let env = envelope(n);
        let rec = record_of(&env, offset);
        let out = run(
            &b.db,
            stages,
            BoxHandler::new(FnHandler(f)),
            &rec,
            decoded.then_some(env),
        )
        .await;
        (out, seen(&b.db).await)
    }

    pub(crate) async fn seen(db: &Db) -> Vec<i64> {
        db.query("SELECT n FROM seen ORDER BY n", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.i64(0).unwrap())
            .collect()
    }
}
