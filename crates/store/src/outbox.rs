//! The transactional outbox and its relay.
//!
//! ```text
//!  handler tx: state change + outbox rows ──commit──▶ outbox table
//!                                                       │  wake-up (in-process signal / NOTIFY)
//!                                                       ▼
//!  Relay: fetch oldest rows ─▶ publish to the bus (durable) ─▶ delete exactly those rows
//! ```
//! A crash between publish and delete publishes the rows again: duplicates are possible, loss is
//! not, and the consumers' inbox turns the duplicate into a no-op. A rolled-back transaction
//! leaves no rows, so nothing is published for it.
//!
//! Order: rows are published in id order. On SQLite, id order is commit order. On PostgreSQL,
//! `enqueue` takes a transaction-scoped advisory lock per message key, so for each key id order is
//! commit order; one relay per schema runs at a time (a session advisory lock), so two relays can
//! never interleave.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use foldhash::{HashMap, HashMapExt};
use hdrhistogram::Histogram;
use shopflow_bus::{Bus, Message};
use shopflow_envelope::{Envelope, Event, Meta, headers};

use crate::backend::RelayLease;
use crate::{Db, Result, Row, Tx, params};

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// An envelope to publish, and its topic: what handlers and write paths hand to [`emit`].
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

/// The one way to publish: puts outgoing envelopes in the outbox of the caller's transaction, so
/// they are published if and only if it commits. Event handlers, command handlers and HTTP write
/// paths all end here.
///
/// The envelopes wait in the transaction until it commits ([`Tx::commit`] writes them, with
/// everything else the transaction emitted, in a few statements), and a rollback to a savepoint
/// taken before this call ([`Tx::rollback_to_savepoint`]) takes them back. Every envelope is
/// numbered then: the next number of its producer (`source`) for its aggregate, gap-free and
/// committed with the producer's state (see [`crate::sequence`]), in the order of the calls.
pub async fn emit(tx: &mut Tx, outgoing: Vec<Outgoing>) -> Result<()> {
    tx.pending_mut()
        .entries
        .extend(outgoing.into_iter().map(Entry::Envelope));
    Ok(())
}

/// Adds raw bus messages to the outbox inside the caller's transaction (dead letters and
/// redrives, which carry records as they were; envelopes go through [`emit`]). Like [`emit`],
/// written when the transaction commits, in the order of the calls.
pub async fn enqueue(tx: &mut Tx, messages: &[Message]) -> Result<()> {
    tx.pending_mut()
        .entries
        .extend(messages.iter().cloned().map(Entry::Raw));
    Ok(())
}

/// What a transaction has emitted and not yet written, and where its savepoints began.
#[derive(Default)]
pub(crate) struct Pending {
    entries: Vec<Entry>,
    /// What runs once the transaction has committed ([`crate::Tx::after_commit`]).
    after_commit: Vec<AfterCommit>,
    /// Open savepoints, oldest first: the name, and how many entries and after-commit hooks
    /// there were when it began.
    marks: Vec<(String, usize, usize)>,
}

/// What [`crate::Tx::after_commit`] runs.
pub(crate) type AfterCommit = Box<dyn FnOnce() + Send>;

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("entries", &self.entries)
            .field("after_commit", &self.after_commit.len())
            .field("marks", &self.marks)
            .finish()
    }
}

#[derive(Debug)]
enum Entry {
    /// Numbered when written.
    Envelope(Outgoing),
    Raw(Message),
}

impl Pending {
    /// `SAVEPOINT name`: remembers where it began.
    pub(crate) fn mark(&mut self, name: &str) {
        self.marks
            .push((name.to_owned(), self.entries.len(), self.after_commit.len()));
    }

    /// `ROLLBACK TO SAVEPOINT name`: the entries and after-commit hooks since it go; it stays,
    /// the ones inside it end.
    pub(crate) fn rollback_to(&mut self, name: &str) {
        if let Some(i) = self.marks.iter().rposition(|(n, _, _)| n == name) {
            let (_, entries, hooks) = self.marks[i];
            self.entries.truncate(entries);
            self.after_commit.truncate(hooks);
            self.marks.truncate(i + 1);
        }
    }

    /// `RELEASE SAVEPOINT name`: it and the ones inside it end; the entries stay.
    pub(crate) fn release(&mut self, name: &str) {
        if let Some(i) = self.marks.iter().rposition(|(n, _, _)| n == name) {
            self.marks.truncate(i);
        }
    }

    pub(crate) fn add_after_commit(&mut self, hook: AfterCommit) {
        self.after_commit.push(hook);
    }

    pub(crate) fn take_after_commit(&mut self) -> Vec<AfterCommit> {
        std::mem::take(&mut self.after_commit)
    }
}

/// Writes what the transaction emitted: takes the numbers of every `(source, aggregate)` at
/// once, then the key locks and the rows (see [`Tx::commit`]).
pub(crate) async fn flush(tx: &mut Tx) -> Result<()> {
    let pending = tx.pending_mut();
    pending.marks.clear();
    let entries = std::mem::take(&mut pending.entries);
    if entries.is_empty() {
        return Ok(());
    }
    // How many numbers each (source, aggregate) takes, sorted: two transactions then lock
    // their sequence rows in the same order.
    let mut wanted: HashMap<(&str, &str), u64> = HashMap::new();
    for e in &entries {
        if let Entry::Envelope(o) = e {
            *wanted
                .entry((o.envelope.source(), o.envelope.aggregate_id()))
                .or_default() += 1;
        }
    }
    let mut wanted: Vec<(String, String, u64)> = wanted
        .into_iter()
        .map(|((s, a), n)| (s.to_owned(), a.to_owned(), n))
        .collect();
    wanted.sort_unstable();
    let mut next = crate::sequence::take_all(tx, &wanted).await?;
    let mut messages = Vec::with_capacity(entries.len());
    for e in entries {
        messages.push(match e {
            Entry::Raw(m) => m,
            Entry::Envelope(mut o) => {
                let key = (o.envelope.source(), o.envelope.aggregate_id());
                let i = wanted
                    .binary_search_by(|(s, a, _)| (s.as_str(), a.as_str()).cmp(&key))
                    .map_err(|_| crate::Error::Corrupt {
                        what: "sequence numbers",
                        reason: format!("none taken for {} / {}", key.0, key.1),
                    })?;
                o.envelope = o.envelope.renumbered(next[i]);
                next[i] += 1;
                o.into_message()?
            }
        });
    }
    tx.insert_outbox(&messages, now_us()).await
}

/// The oldest messages waiting in the outbox (at most `max`), without taking them: for tools and
/// tests that look at what a transaction is going to publish.
pub async fn pending(db: &Db, max: usize) -> Result<Vec<Message>> {
    let rows = db
        .query(
            "SELECT id, topic, msg_key, payload, headers, created_at FROM outbox ORDER BY id LIMIT $1",
            params![max as u64],
        )
        .await?;
    rows.iter().map(row_to_message).collect()
}

/// Number of rows waiting in the outbox.
pub async fn backlog(db: &Db) -> Result<u64> {
    let rows = db.query("SELECT COUNT(*) FROM outbox", &[]).await?;
    rows.first()
        .map(|r| r.u64(0))
        .transpose()
        .map(|v| v.unwrap_or(0))
}

/// Settings of a relay.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Rows published per bus call.
    pub batch_size: usize,
    /// A fallback poll, for wake-ups that cannot arrive (a lost LISTEN connection).
    pub poll_interval: Duration,
    /// Pause after a failed round before trying again.
    pub retry_backoff: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            poll_interval: Duration::from_secs(1),
            retry_backoff: Duration::from_millis(200),
        }
    }
}

/// What a relay has done so far.
#[derive(Debug)]
pub struct RelayStats {
    pub published: AtomicU64,
    pub rounds: AtomicU64,
    pub failures: AtomicU64,
    /// Microseconds from enqueue to the bus acknowledging the publish.
    pub lag_us: Mutex<Histogram<u64>>,
}

impl Default for RelayStats {
    fn default() -> Self {
        Self {
            published: AtomicU64::new(0),
            rounds: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            lag_us: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds"),
            ),
        }
    }
}

/// Rows fetched from the outbox, ready to publish.
#[derive(Debug)]
pub struct Batch {
    ids: Vec<i64>,
    created_us: Vec<i64>,
    messages: Vec<Message>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }
}

/// Publishes outbox rows to the bus, oldest first, then deletes them.
#[derive(Debug)]
pub struct Relay<B: Bus> {
    db: Db,
    bus: B,
    config: RelayConfig,
    stats: Arc<RelayStats>,
}

impl<B: Bus> Relay<B> {
    pub fn new(db: Db, bus: B, config: RelayConfig) -> Self {
        Self {
            db,
            bus,
            config,
            stats: Arc::new(RelayStats::default()),
        }
    }

    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// The oldest rows, at most `batch_size`.
    pub async fn fetch(&self) -> Result<Batch> {
        let rows = self
            .db
            .query(
                "SELECT id, topic, msg_key, payload, headers, created_at FROM outbox ORDER BY id LIMIT $1",
                params![self.config.batch_size as u64],
            )
            .await?;
        let mut batch = Batch {
            ids: Vec::with_capacity(rows.len()),
            created_us: Vec::with_capacity(rows.len()),
            messages: Vec::with_capacity(rows.len()),
        };
        for r in &rows {
            batch.ids.push(r.i64(0)?);
            batch.created_us.push(r.i64(5)?);
            batch.messages.push(row_to_message(r)?);
        }
        Ok(batch)
    }

    /// Publishes a fetched batch; when it returns `Ok`, the bus has it durably. The messages
    /// move to the bus (no copy of them is made), so the batch is left to be acknowledged,
    /// not published again; after an error, fetch anew.
    pub async fn publish(&self, batch: &mut Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.bus
            .publish(std::mem::take(&mut batch.messages))
            .await?;
        metrics::counter!("shopflow_outbox_published_total").increment(batch.len() as u64);
        metrics::counter!("shopflow_outbox_batches_total").increment(1);
        let now = now_us();
        let lag = metrics::histogram!("shopflow_outbox_lag_seconds");
        let mut h = self.stats.lag_us.lock().expect("stats lock");
        for c in &batch.created_us {
            let us = (now - c).max(1);
            let _ = h.record(us as u64);
            lag.record(us as f64 / 1e6);
        }
        Ok(())
    }

    /// Deletes exactly the rows of a published batch. Not fsynced: a delete lost in a crash only
    /// republishes rows the bus already has, which consumers' inboxes absorb.
    pub async fn acknowledge(&self, batch: Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin_relaxed().await?;
        tx.delete_outbox(&batch.ids).await?;
        tx.commit().await?;
        self.stats
            .published
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// One round: fetch, publish, delete. Returns the number of rows relayed.
    pub async fn drain_once(&self) -> Result<usize> {
        use shopflow_envelope::sim;
        let mut batch = self.fetch().await?;
        let n = batch.len();
        if sim::planted(sim::Bug::RelayDeletesFirst) && !batch.is_empty() {
            let mut tx = self.db.begin_relaxed().await?;
            tx.delete_outbox(&batch.ids).await?;
            tx.commit().await?;
            if sim::crash_point("relay.after-publish") {
                return Err(crate::Error::Crashed("relay.after-publish"));
            }
            self.publish(&mut batch).await?;
            return Ok(n);
        }
        self.publish(&mut batch).await?;
        // The bus has the rows and the outbox still has them: a crash here republishes.
        if sim::crash_point("relay.after-publish") {
            return Err(crate::Error::Crashed("relay.after-publish"));
        }
        self.acknowledge(batch).await?;
        self.stats.rounds.fetch_add(1, Ordering::Relaxed);
        Ok(n)
    }

    /// Relays until `shutdown` completes, waking on every commit that wrote outbox rows (and at
    /// least every `poll_interval`). Errors are logged and retried; they never end the loop.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<()> {
        tokio::pin!(shutdown);
        let mut lease: Option<RelayLease> = None;
        loop {
            if lease.as_ref().is_none_or(RelayLease::is_lost) {
                lease = match self.db.relay_lease().await {
                    Ok(Some(l)) => Some(l),
                    Ok(None) => {
                        tracing::debug!("another relay holds this outbox; standing by");
                        tokio::select! {
                            _ = tokio::time::sleep(self.config.poll_interval) => continue,
                            _ = &mut shutdown => return Ok(()),
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox relay cannot listen; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(self.config.retry_backoff) => continue,
                            _ = &mut shutdown => return Ok(()),
                        }
                    }
                };
            }
            let Some(wake) = lease.as_ref().map(|l| l.wake.clone()) else {
                continue;
            };
            match self.drain_once().await {
                Ok(n) if n >= self.config.batch_size => continue,
                Ok(_) => {}
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "outbox relay round failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(self.config.retry_backoff) => continue,
                        _ = &mut shutdown => return Ok(()),
                    }
                }
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(self.config.poll_interval) => {}
                _ = &mut shutdown => return Ok(()),
            }
        }
    }
}

fn row_to_message(r: &Row) -> Result<Message> {
    Ok(Message {
        topic: r.str(1)?.to_owned(),
        key: r.opt_bytes(2)?.map(Bytes::copy_from_slice),
        value: Bytes::copy_from_slice(r.bytes(3)?),
        headers: crate::headers::decode(r.bytes(4)?)?,
        timestamp_ms: None,
    })
}
