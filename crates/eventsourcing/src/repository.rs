//! Loads aggregates from their streams (a snapshot plus the events after it), appends what a
//! command decided with an expected version, takes snapshots by policy, and folds a stream as it
//! was at a version or a point in time. Everything goes through the store's API and the
//! registry, so upcasting applies to live loads, replays and time travel alike.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use shopflow_envelope::{Envelope, Meta, Registry};
use shopflow_store::{EventStore, ExpectedVersion, Outgoing, StoredEvent, Tx};

use crate::aggregate::{Aggregate, Applied, DomainEvent, fold_envelope};
use crate::{Error, Result};

/// The most events one stream read returns (a stream longer than this is read in pages).
const PAGE: usize = 10_000;

/// When to store a snapshot of an aggregate's state, so that loading it reads only the events
/// after the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotPolicy {
    Never,
    /// Whenever an append crosses a multiple of `n` events.
    Every(u64),
}

impl SnapshotPolicy {
    /// Whether an append that moved a stream from `before` to `after` takes a snapshot.
    pub fn due(self, before: u64, after: u64) -> bool {
        match self {
            SnapshotPolicy::Never => false,
            SnapshotPolicy::Every(n) => {
                let n = n.max(1);
                after / n > before / n
            }
        }
    }
}

/// A state and the version of the last event folded into it (0: no events).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Versioned<A> {
    pub state: A,
    pub version: u64,
}

/// How far to fold a stream: events up to and including a version, recorded at or before an
/// instant, or both (whichever comes first); [`Until::END`] folds every event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Until {
    pub version: Option<u64>,
    pub time: Option<DateTime<Utc>>,
}

impl Until {
    /// Every event.
    pub const END: Until = Until {
        version: None,
        time: None,
    };

    /// Events up to and including version `v`.
    pub fn version(v: u64) -> Self {
        Self {
            version: Some(v),
            time: None,
        }
    }

    /// Events recorded at or before `t`.
    pub fn time(t: DateTime<Utc>) -> Self {
        Self {
            version: None,
            time: Some(t),
        }
    }

    fn includes(self, e: &StoredEvent) -> bool {
        self.version.is_none_or(|v| e.version <= v)
            && self
                .time
                .is_none_or(|t| e.recorded_at_ms <= t.timestamp_millis())
    }
}

/// The latest committed state of recently used streams, so that a command on one of them
/// folds nothing (see [`Repository::cached`]).
///
/// An entry is only ever the state as of a committed version: it is put by a hook that runs
/// after the commit ([`Tx::after_commit`]), and a command takes it out while it runs, so a
/// command whose transaction fails or is rolled back (wholly or to a savepoint) leaves no
/// entry behind, and the next one loads from the store. An entry that another process has
/// overtaken (a second writer of the same streams) fails the append on the store's
/// `(stream, version)` key, which is a conflict the caller retries, without the entry.
struct Cache<A> {
    entries: Mutex<hashlink::LruCache<String, Versioned<A>>>,
    hits: metrics::Counter,
    misses: metrics::Counter,
}

impl<A> Cache<A> {
    fn take(&self, id: &str) -> Option<Versioned<A>> {
        let taken = self.lock().remove(id);
        match taken {
            Some(_) => self.hits.increment(1),
            None => self.misses.increment(1),
        }
        taken
    }

    /// Keeps `state` for `id` unless a newer version is there already.
    fn put(&self, id: String, state: Versioned<A>) {
        let mut entries = self.lock();
        if entries
            .get(&id)
            .is_none_or(|held| held.version < state.version)
        {
            entries.insert(id, state);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, hashlink::LruCache<String, Versioned<A>>> {
        // A panic while holding the lock cannot leave an entry half-written: recover it.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The streams of one aggregate type in a service's event store.
pub struct Repository<A: Aggregate> {
    store: EventStore,
    registry: Arc<Registry>,
    snapshots: SnapshotPolicy,
    cache: Option<Arc<Cache<A>>>,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate> std::fmt::Debug for Repository<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("store", &self.store)
            .field("snapshots", &self.snapshots)
            .field("cached", &self.cache.as_ref().map(|c| c.lock().capacity()))
            .finish()
    }
}

impl<A: Aggregate> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            registry: self.registry.clone(),
            snapshots: self.snapshots,
            cache: self.cache.clone(),
            _aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate> Repository<A> {
    pub fn new(store: EventStore, registry: Arc<Registry>, snapshots: SnapshotPolicy) -> Self {
        Self {
            store,
            registry,
            snapshots,
            cache: None,
            _aggregate: PhantomData,
        }
    }

    /// Keeps the state of the `capacity` most recently used streams in memory (shared by the
    /// clones of this repository), so that [`Repository::execute`] on one of them reads and
    /// folds nothing. What a transaction appends enters the cache only when it commits. Count
    /// hits and misses under `shopflow_aggregate_cache_total{aggregate, result}`; `name`
    /// labels them.
    pub fn cached(mut self, name: &'static str, capacity: usize) -> Self {
        self.cache = (capacity > 0).then(|| {
            Arc::new(Cache {
                entries: Mutex::new(hashlink::LruCache::new(capacity)),
                hits: metrics::counter!("shopflow_aggregate_cache_total", "aggregate" => name, "result" => "hit"),
                misses: metrics::counter!("shopflow_aggregate_cache_total", "aggregate" => name, "result" => "miss"),
            })
        });
        self
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn snapshots(&self) -> SnapshotPolicy {
        self.snapshots
    }

    /// The aggregate's current state inside `tx`: its snapshot, then the events after it.
    pub async fn load_in(&self, tx: &mut Tx, id: &str) -> Result<Versioned<A>> {
        // The snapshot and the first page after it in one statement.
        let first = self.store.load_in(tx, id, PAGE).await?;
        let mut current = match first.snapshot {
            Some(s) => Versioned {
                state: serde_json::from_slice(&s.state).map_err(|e| Error::Corrupt {
                    what: "snapshot",
                    stream: id.to_owned(),
                    reason: e.to_string(),
                })?,
                version: s.version,
            },
            None => Versioned::default(),
        };
        for e in first.events {
            fold_envelope(&mut current.state, &e.decode(&self.registry)?)?;
            current.version = e.version;
        }
        if !first.more {
            return Ok(current);
        }
        loop {
            let events = self
                .store
                .read_stream_in(tx, id, current.version + 1, PAGE)
                .await?;
            let n = events.len();
            for e in events {
                fold_envelope(&mut current.state, &e.decode(&self.registry)?)?;
                current.version = e.version;
            }
            if n < PAGE {
                return Ok(current);
            }
        }
    }

    /// Loads the aggregate, lets it decide `command`, and appends what it decided. The outer
    /// `Result` is the machinery's; the inner one is the aggregate's answer (a rejection appends
    /// nothing). Returns the events to publish, for the outbox of the same transaction.
    pub async fn execute(
        &self,
        tx: &mut Tx,
        id: &str,
        command: A::Command,
        meta: impl Fn(u64) -> Meta,
    ) -> Result<Result<Vec<Outgoing>, A::Error>> {
        let cached = self.cache.as_ref().and_then(|c| c.take(id));
        let current = match cached {
            Some(current) => current,
            None => self.load_in(tx, id).await?,
        };
        let events = match current.state.handle(command) {
            Ok(events) => events,
            Err(rejected) => {
                // Nothing changed: the state is still the committed one.
                if let Some(cache) = &self.cache {
                    cache.put(id.to_owned(), current);
                }
                return Ok(Err(rejected));
            }
        };
        // Loaded in this transaction, or the committed state from the cache: the append needs
        // no second read of the version (the store's key refuses a version taken meanwhile).
        self.append_inner(tx, id, current, &events, meta, true)
            .await
            .map(Ok)
    }

    /// Appends `events`, decided on `current`, to stream `id` (expecting it still at
    /// `current.version`; a concurrent append is [`shopflow_store::Error::Conflict`]), stores a
    /// snapshot when the policy says so, and returns the events to publish.
    pub async fn append(
        &self,
        tx: &mut Tx,
        id: &str,
        current: Versioned<A>,
        events: &[A::Event],
        meta: impl Fn(u64) -> Meta,
    ) -> Result<Vec<Outgoing>> {
        self.append_inner(tx, id, current, events, meta, false)
            .await
    }

    /// [`Repository::append`] for a stream whose version this transaction knows without
    /// reading it again: one it has just loaded ([`Repository::load_in`]), or a new one under a
    /// freshly generated id (`Versioned::default()`). An append of the same version by another
    /// transaction still fails the call ([`shopflow_store::Error::Conflict`], from the store's
    /// `(stream, version)` key); then drop the transaction.
    pub async fn append_known(
        &self,
        tx: &mut Tx,
        id: &str,
        current: Versioned<A>,
        events: &[A::Event],
        meta: impl Fn(u64) -> Meta,
    ) -> Result<Vec<Outgoing>> {
        self.append_inner(tx, id, current, events, meta, true).await
    }

    /// `read_in_tx`: `current` was loaded in `tx` ([`Repository::load_in`]).
    async fn append_inner(
        &self,
        tx: &mut Tx,
        id: &str,
        current: Versioned<A>,
        events: &[A::Event],
        meta: impl Fn(u64) -> Meta,
        read_in_tx: bool,
    ) -> Result<Vec<Outgoing>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let Versioned { mut state, version } = current;
        let mut envelopes = Vec::with_capacity(events.len());
        let mut outgoing = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let v = version + 1 + i as u64;
            let env = e.to_envelope(meta(v))?;
            state.apply(
                e,
                Applied {
                    version: v,
                    at: env.timestamp(),
                },
            );
            if let Some(topic) = e.topic() {
                outgoing.push(Outgoing {
                    topic,
                    envelope: env.clone(),
                });
            }
            envelopes.push(env);
        }
        let expected = if version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version)
        };
        let new_version = if read_in_tx {
            self.store
                .append_after_read(tx, id, version, &envelopes)
                .await?
        } else {
            self.store.append(tx, id, expected, &envelopes).await?
        };
        if self.snapshots.due(version, new_version) {
            let bytes = serde_json::to_vec(&state).map_err(|e| Error::Corrupt {
                what: "state",
                stream: id.to_owned(),
                reason: e.to_string(),
            })?;
            self.store
                .save_snapshot(tx, id, new_version, &bytes)
                .await?;
        }
        if let Some(cache) = &self.cache {
            let cache = cache.clone();
            let id = id.to_owned();
            tx.after_commit(move || {
                cache.put(
                    id,
                    Versioned {
                        state,
                        version: new_version,
                    },
                )
            });
        }
        Ok(outgoing)
    }

    /// Folds stream `id` from its first event up to `until` (time travel), outside any
    /// transaction. `None` when no event of the stream is that old.
    pub async fn fold(&self, id: &str, until: Until) -> Result<Option<Versioned<A>>> {
        let mut current = Versioned::<A>::default();
        'pages: loop {
            let events = self
                .store
                .read_stream(id, current.version + 1, PAGE)
                .await?;
            let n = events.len();
            for e in events {
                if !until.includes(&e) {
                    break 'pages;
                }
                fold_envelope(&mut current.state, &e.decode(&self.registry)?)?;
                current.version = e.version;
            }
            if n < PAGE {
                break;
            }
        }
        Ok((current.version > 0).then_some(current))
    }

    /// Every event of stream `id`, decoded (upcast), in version order: its audit trail.
    pub async fn history(&self, id: &str) -> Result<Vec<(StoredEvent, Envelope)>> {
        let mut out = Vec::new();
        loop {
            let from = out.len() as u64 + 1;
            let events = self.store.read_stream(id, from, PAGE).await?;
            let n = events.len();
            for e in events {
                let env = e.decode(&self.registry)?;
                out.push((e, env));
            }
            if n < PAGE {
                return Ok(out);
            }
        }
    }
}

impl<A: Aggregate> Repository<A> {
    /// The typed events of a stream, for tests and tools.
    pub async fn events(&self, id: &str) -> Result<Vec<A::Event>> {
        self.history(id)
            .await?
            .iter()
            .map(|(_, env)| A::Event::from_envelope(env).map_err(Error::from))
            .collect()
    }
}
