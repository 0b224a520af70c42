//! The event store: append-only streams with optimistic concurrency, a global order, snapshots.

use foldhash::{HashMap, HashMapExt};

use shopflow_envelope::{Envelope, Registry};

use crate::backend::EventRow;
use crate::{Backend, Db, Error, ExpectedVersion, Result, Row, Tx, params};

/// An event as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// Global position: increases in commit order (not necessarily by one). On PostgreSQL it is
    /// the appending transaction's id times 2^20 plus the event's index in that transaction,
    /// and reads of the global order stop below the oldest transaction still running, so a
    /// reader never passes a position that a later commit could fill (see the migration
    /// `006_positions_by_transaction.sql`).
    pub position: u64,
    pub stream_id: String,
    /// 1 for the first event of a stream; equals the envelope's `sequence`.
    pub version: u64,
    pub event_id: String,
    pub event_type: String,
    pub event_version: u32,
    /// The envelope's timestamp, milliseconds since the epoch (UTC).
    pub recorded_at_ms: i64,
    /// The envelope's JSON bytes, exactly as appended.
    pub envelope: Vec<u8>,
}

impl StoredEvent {
    /// Decodes the envelope through the registry (upcasting old versions): the one read path for
    /// live reads, replays and time travel alike.
    pub fn decode(&self, registry: &Registry) -> Result<Envelope> {
        Ok(registry.decode(&self.envelope)?)
    }

    fn from_row(r: &Row) -> Result<Self> {
        Ok(Self {
            position: r.u64(0)?,
            stream_id: r.str(1)?.to_owned(),
            version: r.u64(2)?,
            event_id: r.str(3)?.to_owned(),
            event_type: r.str(4)?.to_owned(),
            event_version: u32::try_from(r.i64(5)?).map_err(|_| Error::Corrupt {
                what: "event",
                reason: "event_version out of range".into(),
            })?,
            recorded_at_ms: r.i64(6)?,
            envelope: r.bytes(7)?.to_vec(),
        })
    }
}

/// The latest snapshot of a stream's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub stream_id: String,
    /// The version of the last event folded into `state`.
    pub version: u64,
    pub state: Vec<u8>,
    pub taken_at_ms: i64,
}

impl Snapshot {
    fn from_row(r: &Row) -> Result<Self> {
        Ok(Snapshot {
            stream_id: r.str(0)?.to_owned(),
            version: r.u64(1)?,
            state: r.bytes(2)?.to_vec(),
            taken_at_ms: r.i64(3)?,
        })
    }
}

/// What [`EventStore::load_in`] read.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub snapshot: Option<Snapshot>,
    /// The events after the snapshot (after version 0 without one), in version order.
    pub events: Vec<StoredEvent>,
    /// The row limit was reached: there may be more events.
    pub more: bool,
}

/// One stream's part of a batch append.
#[derive(Clone, Copy, Debug)]
pub struct AppendStream<'a> {
    pub stream: &'a str,
    pub expected: ExpectedVersion,
    pub events: &'a [Envelope],
}

const COLUMNS: &str =
    "position, stream_id, version, event_id, event_type, event_version, recorded_at, envelope";

fn stored(rows: Vec<Row>) -> Result<Vec<StoredEvent>> {
    rows.iter().map(StoredEvent::from_row).collect()
}

/// Events after a position in global order. On PostgreSQL only those of transactions below the
/// oldest one still running: that part of the order is final (no commit can add to it).
fn read_all_sql(backend: Backend) -> String {
    let stable = match backend {
        Backend::Sqlite => "",
        Backend::Postgres => {
            " AND position < (pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20)"
        }
    };
    format!("SELECT {COLUMNS} FROM events WHERE position > $1{stable} ORDER BY position LIMIT $2")
}

fn read_stream_sql() -> String {
    format!(
        "SELECT {COLUMNS} FROM events WHERE stream_id = $1 AND version >= $2 ORDER BY version LIMIT $3"
    )
}

/// The event store in a service's database. Appends take the caller's transaction, so events,
/// outbox rows and the service's other writes commit together.
#[derive(Clone, Debug)]
pub struct EventStore {
    db: Db,
}

impl EventStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Appends events to one stream. Each envelope's `aggregateId` must be the stream and its
    /// `sequence` the version it takes (current + 1, + 2, …). Returns the new version.
    pub async fn append(
        &self,
        tx: &mut Tx,
        stream: &str,
        expected: ExpectedVersion,
        events: &[Envelope],
    ) -> Result<u64> {
        let v = self
            .append_batch(
                tx,
                &[AppendStream {
                    stream,
                    expected,
                    events,
                }],
            )
            .await?;
        Ok(v[0])
    }

    /// Appends to many streams in one go (one statement per table on PostgreSQL). All or nothing:
    /// a conflict on any stream fails the call, and the caller's transaction should be dropped.
    pub async fn append_batch(&self, tx: &mut Tx, batch: &[AppendStream<'_>]) -> Result<Vec<u64>> {
        let mut ids: Vec<&str> = batch.iter().map(|s| s.stream).collect();
        ids.sort_unstable();
        ids.dedup();
        let current: HashMap<String, u64> = tx.stream_versions(&ids).await?.into_iter().collect();
        self.append_on(tx, batch, &current).await
    }

    /// Appends `events` to `stream` right after version `read`, which this transaction has just
    /// read ([`EventStore::load_in`]): no second read of the stream's version. Should another
    /// transaction have appended since, the insert meets its version on the `(stream, version)`
    /// key and the call fails with [`Error::Conflict`] (on PostgreSQL the transaction is then
    /// unusable: drop it, as after any failed append). Returns the new version.
    pub async fn append_after_read(
        &self,
        tx: &mut Tx,
        stream: &str,
        read: u64,
        events: &[Envelope],
    ) -> Result<u64> {
        let mut current = HashMap::new();
        if read > 0 {
            current.insert(stream.to_owned(), read);
        }
        let expected = if read == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(read)
        };
        let v = self
            .append_on(
                tx,
                &[AppendStream {
                    stream,
                    expected,
                    events,
                }],
                &current,
            )
            .await?;
        Ok(v[0])
    }

    /// The appends of `batch` on streams at the versions in `current` (absent: no stream).
    async fn append_on(
        &self,
        tx: &mut Tx,
        batch: &[AppendStream<'_>],
        current: &HashMap<String, u64>,
    ) -> Result<Vec<u64>> {
        let mut rows = Vec::new();
        let mut new_versions = Vec::with_capacity(batch.len());
        let mut running: HashMap<&str, u64> = HashMap::new();
        for s in batch {
            let actual = *running
                .get(s.stream)
                .unwrap_or(current.get(s.stream).unwrap_or(&0));
            let ok = match s.expected {
                ExpectedVersion::Any => true,
                ExpectedVersion::NoStream => actual == 0,
                ExpectedVersion::Exact(v) => actual == v,
            };
            if !ok {
                return Err(Error::Conflict {
                    stream: s.stream.to_owned(),
                    expected: s.expected,
                    actual,
                });
            }
            for (i, e) in s.events.iter().enumerate() {
                let version = actual + 1 + i as u64;
                if e.aggregate_id() != s.stream || e.sequence() != version {
                    return Err(Error::Invalid {
                        what: "event",
                        reason: format!(
                            "event {} has aggregate `{}` sequence {}, but takes version {version} of stream `{}`",
                            e.event_id(),
                            e.aggregate_id(),
                            e.sequence(),
                            s.stream
                        ),
                    });
                }
                rows.push(EventRow {
                    stream: s.stream.to_owned(),
                    version: version as i64,
                    event_id: e.event_id().to_string(),
                    event_type: e.event_type().to_owned(),
                    event_version: i64::from(e.event_version()),
                    recorded_at: e.timestamp().timestamp_millis(),
                    envelope: e.encode()?,
                });
            }
            let new = actual + s.events.len() as u64;
            running.insert(s.stream, new);
            new_versions.push(new);
        }
        let versions: Vec<(&str, u64)> = running.into_iter().collect();
        tx.insert_events(&rows, &versions).await.map_err(|e| {
            if e.is_unique_violation() {
                if e.unique_violation_on("event_id") {
                    return Error::DuplicateEvent {
                        event_id: rows.first().map(|r| r.event_id.clone()).unwrap_or_default(),
                    };
                }
                return Error::Conflict {
                    stream: batch
                        .first()
                        .map(|s| s.stream.to_owned())
                        .unwrap_or_default(),
                    expected: batch.first().map_or(ExpectedVersion::Any, |s| s.expected),
                    actual: 0,
                };
            }
            e
        })?;
        Ok(new_versions)
    }

    /// The version of a stream (0 when it has no events).
    pub async fn stream_version(&self, stream: &str) -> Result<u64> {
        let rows = self
            .db
            .query(
                "SELECT version FROM streams WHERE stream_id = $1",
                params![stream],
            )
            .await?;
        Ok(rows.first().map(|r| r.u64(0)).transpose()?.unwrap_or(0))
    }

    /// Events of a stream with version `>= from_version`, in version order, at most `max`.
    pub async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max: usize,
    ) -> Result<Vec<StoredEvent>> {
        let p = params![stream, from_version, max as u64];
        stored(self.db.query(&read_stream_sql(), p).await?)
    }

    /// Events of a stream from `from_version` on, read inside `tx` (sees the transaction's own
    /// appends): what a command handler loads an aggregate with.
    pub async fn read_stream_in(
        &self,
        tx: &mut Tx,
        stream: &str,
        from_version: u64,
        max: usize,
    ) -> Result<Vec<StoredEvent>> {
        let p = params![stream, from_version, max as u64];
        stored(tx.query(&read_stream_sql(), p).await?)
    }

    /// A stream's latest snapshot and the events after it (at most `max` rows in all, the
    /// snapshot counting as one), inside `tx`, in one statement: what loading an aggregate reads
    /// first. `more` is true when the limit was reached (read on with
    /// [`EventStore::read_stream_in`]).
    pub async fn load_in(&self, tx: &mut Tx, stream: &str, max: usize) -> Result<Loaded> {
        let rows = tx
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM (
                         SELECT -1 AS position, stream_id, version, '' AS event_id, '' AS event_type,
                                0 AS event_version, taken_at AS recorded_at, state AS envelope
                         FROM snapshots WHERE stream_id = $1
                         UNION ALL
                         SELECT {COLUMNS} FROM events
                         WHERE stream_id = $1
                           AND version > COALESCE((SELECT version FROM snapshots WHERE stream_id = $1), 0)
                     ) AS x ORDER BY version LIMIT $2"
                ),
                params![stream, max as u64],
            )
            .await?;
        let more = rows.len() >= max;
        let mut loaded = Loaded {
            snapshot: None,
            events: Vec::with_capacity(rows.len()),
            more,
        };
        for r in &rows {
            if r.i64(0)? < 0 {
                loaded.snapshot = Some(Snapshot {
                    stream_id: r.str(1)?.to_owned(),
                    version: r.u64(2)?,
                    state: r.bytes(7)?.to_vec(),
                    taken_at_ms: r.i64(6)?,
                });
            } else {
                loaded.events.push(StoredEvent::from_row(r)?);
            }
        }
        Ok(loaded)
    }

    /// The latest snapshot of a stream, read inside `tx`.
    pub async fn load_snapshot_in(&self, tx: &mut Tx, stream: &str) -> Result<Option<Snapshot>> {
        let rows = tx
            .query(
                "SELECT stream_id, version, state, taken_at FROM snapshots WHERE stream_id = $1",
                params![stream],
            )
            .await?;
        rows.first().map(Snapshot::from_row).transpose()
    }

    /// Events of every stream with position `> after`, in position (commit) order, at most `max`.
    pub async fn read_all(&self, after: u64, max: usize) -> Result<Vec<StoredEvent>> {
        stored(
            self.db
                .query(&read_all_sql(self.db.backend()), params![after, max as u64])
                .await?,
        )
    }

    /// [`EventStore::read_all`] inside `tx` (sees the transaction's own appends, and nothing
    /// committed after the transaction's writes began on SQLite): what a step that must not miss
    /// an event between its read and its commit uses.
    pub async fn read_all_in(
        &self,
        tx: &mut Tx,
        after: u64,
        max: usize,
    ) -> Result<Vec<StoredEvent>> {
        let rows = tx
            .query(&read_all_sql(tx.backend()), params![after, max as u64])
            .await?;
        rows.iter().map(StoredEvent::from_row).collect()
    }

    /// How many events have a position `> after`: how far a follower at `after` is behind.
    pub async fn count_after(&self, after: u64) -> Result<u64> {
        let rows = self
            .db
            .query(
                "SELECT COUNT(*) FROM events WHERE position > $1",
                params![after],
            )
            .await?;
        rows.first().map(|r| r.u64(0)).unwrap_or(Ok(0))
    }

    /// The position of the newest event (0 when the store is empty).
    pub async fn head_position(&self) -> Result<u64> {
        let rows = self
            .db
            .query("SELECT MAX(position) FROM events", &[])
            .await?;
        Ok(rows
            .first()
            .map(|r| r.opt_i64(0))
            .transpose()?
            .flatten()
            .unwrap_or(0) as u64)
    }

    /// Stores a snapshot of a stream's state at `version`, replacing an older one.
    pub async fn save_snapshot(
        &self,
        tx: &mut Tx,
        stream: &str,
        version: u64,
        state: &[u8],
    ) -> Result<()> {
        tx.execute(
            "INSERT INTO snapshots (stream_id, version, state, taken_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, state = excluded.state,
                 taken_at = excluded.taken_at
             WHERE snapshots.version <= excluded.version",
            params![stream, version, state, chrono::Utc::now().timestamp_millis()],
        )
        .await?;
        Ok(())
    }

    /// The latest snapshot of a stream, if any.
    pub async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        let rows = self
            .db
            .query(
                "SELECT stream_id, version, state, taken_at FROM snapshots WHERE stream_id = $1",
                params![stream],
            )
            .await?;
        rows.first().map(Snapshot::from_row).transpose()
    }
}
