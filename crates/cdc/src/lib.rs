//! Change data capture from PostgreSQL: the rows of a publication's tables, as they change, on
//! the bus — the way out of a monolith whose database other code keeps writing.
//!
//! - **Source.** Logical replication with the built-in `pgoutput` plugin through a replication
//!   slot (crate `pg_walstream`: the walsender protocol, pgoutput decoding, the exported-snapshot
//!   handoff, standby feedback; pure Rust).
//! - **Snapshot.** On first start the slot is created with an exported snapshot; every published
//!   table is read inside it (`op: r`), then streaming starts at the slot's consistent point:
//!   no gap, no overlap. A connector killed during the snapshot drops the slot on restart and
//!   takes the snapshot again (its own database remembers whether the snapshot finished, and
//!   the keys it had published: the retake withdraws, with a delete, each of them it no longer
//!   finds).
//! - **Stream.** One topic per table, `<prefix>.<schema>.<table>`, keyed by the row's key, each
//!   change a `RowChanged` envelope whose data is Debezium's change event
//!   ([`RowChanged`]: `before`, `after`, `op` c/u/d/r/t, `source` with LSN, transaction id,
//!   schema, table, `ts_ms`). Changes of one key arrive in commit order.
//! - **Delivery.** The position is confirmed to PostgreSQL only at a transaction's commit and
//!   only once every change up to it is acknowledged by the bus (durable there), so a crash at
//!   any point resumes without loss. What is re-sent after a crash carries the same event id
//!   ([`record::stable_id`]): consumers' inboxes drop it, and its position
//!   ([`RowChanged::position`]: commit LSN, index in the transaction) lets any other consumer
//!   drop it too.
//! - **Schema changes** arrive as relation messages before the first change that needs them:
//!   the next change of the table has the new columns. **Large transactions** are published in
//!   batches as they arrive, confirmed once whole. **Unchanged TOAST values** (not sent by the
//!   server) are filled from `before` when the table's replica identity is FULL, else written
//!   as `__debezium_unavailable_value`. **Deletes** carry the replica identity (the key by
//!   default, the whole row under FULL) in `before`. A **truncate** is one `op: t` event per
//!   table, keyed by the table's name: on its own partition, not ordered with the rows' changes.
//! - **Heartbeat.** While the captured tables are quiet the connector writes a logical decoding
//!   message into the WAL every [`Config::heartbeat`] and confirms its position when it arrives
//!   between transactions: a busy database whose captured tables are idle does not keep WAL for
//!   the slot (Debezium's heartbeat).
//! - **Metrics:** `shopflow_cdc_changes_total{table,op}`, `shopflow_cdc_transactions_total`,
//!   `shopflow_cdc_lag_bytes` (the WAL not yet confirmed), `shopflow_cdc_lag_seconds` (commit to
//!   durable on the bus, of the last transaction), `shopflow_cdc_confirmed_lsn`.

pub mod record;
mod state;
pub mod value;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pg_walstream::{
    CancellationToken, EventType, LogicalReplicationStream, ReplicaIdentity,
    ReplicationStreamConfig, RowData, SnapshotOutcome,
};
use serde_json::{Map, Value};
use shopflow_bus::{Message, Publisher, TopicSpec};
use shopflow_store::Db;

pub use record::{Op, RowChanged, Source};

/// The connector's own tables (its record of the slot and of an unfinished snapshot), for a
/// deployment that migrates a component's database before starting it.
pub const MIGRATIONS: &[shopflow_store::Migration] = state::MIGRATIONS;
use value::Column;

/// What can stop the connector.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("logical replication: {0}")]
    Replication(#[from] pg_walstream::ReplicationError),
    #[error("the bus: {0}")]
    Bus(#[from] shopflow_bus::Error),
    #[error("the connector's own database: {0}")]
    Store(#[from] shopflow_store::Error),
    #[error("encoding a change: {0}")]
    Envelope(#[from] shopflow_envelope::Error),
    #[error("{0}")]
    Setup(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to reach the source and where to put what it says.
#[derive(Clone, Debug)]
pub struct Config {
    /// The source database: `postgres://user@host:port/db` (a role allowed to replicate).
    pub db: String,
    /// The publication whose tables are captured (`CREATE PUBLICATION … FOR TABLE …`).
    pub publication: String,
    /// The replication slot this connector owns (created on first start).
    pub slot: String,
    /// Topic prefix: changes of `schema.table` go to `<prefix>.<schema>.<table>`.
    pub prefix: String,
    /// Partitions of each topic the connector creates.
    pub partitions: u32,
    /// Copies of each partition it creates (Kafka; the embedded log keeps one).
    pub replication_factor: u16,
    /// Take the initial snapshot when the slot is created (Debezium's `snapshot.mode=initial`).
    pub snapshot: bool,
    /// Changes per publish while a transaction streams in.
    pub batch: usize,
    /// Rows per publish during the initial snapshot; the keys of each are recorded (one
    /// transaction of the connector's database) before it goes out, so larger batches cost
    /// fewer commits.
    pub snapshot_batch: usize,
    /// How often the lag is measured.
    pub lag_every: Duration,
    /// How often, while the captured tables are quiet, the connector writes a heartbeat into
    /// the source's WAL (`pg_logical_emit_message`) and confirms its position when it comes
    /// back, so that a busy database with idle captured tables does not keep WAL for the slot
    /// forever (Debezium's `heartbeat.interval.ms`). `None`: no heartbeat.
    pub heartbeat: Option<Duration>,
}

impl Config {
    pub fn new(
        db: impl Into<String>,
        publication: impl Into<String>,
        slot: impl Into<String>,
    ) -> Self {
        Self {
            db: db.into(),
            publication: publication.into(),
            slot: slot.into(),
            prefix: "cdc".into(),
            partitions: 4,
            replication_factor: 1,
            snapshot: true,
            batch: 1000,
            snapshot_batch: 8000,
            lag_every: Duration::from_secs(2),
            heartbeat: Some(Duration::from_secs(10)),
        }
    }
}

/// What the connector has done, readable while it runs (health, admin, tests).
#[derive(Debug, Default)]
pub struct Status {
    pub snapshot_rows: AtomicU64,
    pub changes: AtomicU64,
    pub transactions: AtomicU64,
    /// The last LSN confirmed to PostgreSQL (everything before it is on the bus).
    pub confirmed_lsn: AtomicU64,
    pub lag_bytes: AtomicU64,
    /// 0 starting, 1 snapshot, 2 streaming, 3 stopped.
    pub phase: AtomicU64,
}

impl Status {
    pub fn phase(&self) -> &'static str {
        match self.phase.load(Ordering::Relaxed) {
            0 => "starting",
            1 => "snapshot",
            2 => "streaming",
            _ => "stopped",
        }
    }
}

/// The connector: one slot, one publication, one bus.
#[derive(Debug)]
pub struct Connector {
    config: Config,
    bus: Arc<dyn Publisher>,
    state: Db,
    status: Arc<Status>,
    /// The source database's name (`source.db` of every change), read off the URL once.
    db_name: String,
}

/// A table as the stream last described it.
#[derive(Clone, Debug)]
struct Table {
    schema: String,
    name: String,
    columns: Vec<Column>,
    topic: String,
}

impl Table {
    fn key(&self, row: &Map<String, Value>) -> Map<String, Value> {
        self.columns
            .iter()
            .filter(|c| c.key)
            .filter_map(|c| row.get(&c.name).map(|v| (c.name.clone(), v.clone())))
            .collect()
    }
}

/// The transaction being streamed.
#[derive(Debug)]
struct Txn {
    xid: u32,
    final_lsn: u64,
    at: DateTime<Utc>,
    index: u64,
}

impl Connector {
    /// A connector publishing to `bus` (any [`shopflow_bus::Bus`]) and keeping its record of
    /// the slot in `state` (migrated here).
    pub async fn new(config: Config, bus: Arc<dyn Publisher>, state: Db) -> Result<Self> {
        if config.batch == 0 || config.snapshot_batch == 0 || config.partitions == 0 {
            return Err(Error::Setup(
                "batch, snapshot_batch and partitions must be at least 1".into(),
            ));
        }
        state.migrate("cdc", state::MIGRATIONS).await?;
        Ok(Self {
            db_name: database_of(&config.db),
            config,
            bus,
            state,
            status: Arc::new(Status::default()),
        })
    }

    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// Runs until `shutdown` completes (then confirms what is on the bus and returns) or an
    /// error stops it. Restarting after either resumes where the slot's confirmed position is.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let result = tokio::select! {
            r = self.run_inner(cancel.clone()) => r,
            () = async move { shutdown.await; stop.cancel(); std::future::pending::<()>().await } => Ok(()),
        };
        self.status.phase.store(3, Ordering::Relaxed);
        result
    }

    async fn run_inner(&self, cancel: CancellationToken) -> Result<()> {
        let c = &self.config;
        // Setup queries, the snapshot's key lookups, then the heartbeat: one connection.
        let sql = Arc::new(connect(&c.db).await?);
        check_source(&sql, c).await?;

        let recorded = state::load(&self.state, &c.slot).await?;
        let mut slot_exists = !sql
            .query(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&c.slot],
            )
            .await?
            .is_empty();
        let take_snapshot = match (slot_exists, recorded) {
            (true, Some(s)) if s.snapshot_done => false,
            (true, Some(_)) => {
                tracing::warn!(
                    slot = c.slot,
                    "the initial snapshot did not finish: dropping the slot to take it again"
                );
                sql.execute("SELECT pg_drop_replication_slot($1)", &[&c.slot])
                    .await?;
                slot_exists = false;
                c.snapshot
            }
            (true, None) if c.snapshot => {
                return Err(Error::Setup(format!(
                    "the replication slot `{}` exists but this connector has no record of taking its snapshot \
                     (another connector's slot, or this connector's database was lost). Drop it with \
                     SELECT pg_drop_replication_slot('{}') to start over with a snapshot, or start without one (--no-snapshot)",
                    c.slot, c.slot
                )));
            }
            (true, None) => false,
            (false, recorded) => {
                if recorded.is_some() {
                    tracing::warn!(
                        slot = c.slot,
                        "the replication slot is gone: creating it again, with a snapshot"
                    );
                }
                c.snapshot
            }
        };

        let lag = tokio::spawn(watch_lag(c.clone(), self.status.clone()));
        let _lag = AbortOnDrop(lag);

        let conninfo = replication_url(&c.db);
        let config = ReplicationStreamConfig::builder(&c.slot, &c.publication)
            .with_protocol_version(1)
            .with_messages(c.heartbeat.is_some())
            .with_feedback_interval(Duration::from_secs(1));
        let mut stream = LogicalReplicationStream::new(&conninfo, config).await?;
        let mut tables: HashMap<u32, Table> = HashMap::new();
        let mut topics: HashSet<String> = HashSet::new();

        if take_snapshot {
            state::save(&self.state, &c.slot, None, false).await?;
            self.status.phase.store(1, Ordering::Relaxed);
            stream = match stream.snapshot().await? {
                SnapshotOutcome::Unavailable(_) => {
                    return Err(Error::Setup(format!(
                        "the replication slot `{}` appeared while the connector was creating it (is another connector running?)",
                        c.slot
                    )));
                }
                SnapshotOutcome::Available(snap) => {
                    let lsn = snap.consistent_point().value();
                    state::save(&self.state, &c.slot, Some(lsn), false).await?;
                    // The snapshot's relation descriptions have no key flags: the keys come
                    // from the catalog (replica identity index, else primary key), as the
                    // stream's relation messages will say.
                    let mut keys: HashMap<u32, Vec<String>> = HashMap::new();
                    for t in snap.tables() {
                        let r = t.relation();
                        let topic = record::topic(&c.prefix, &r.namespace, &r.relation_name);
                        self.ensure_topic(&mut topics, &topic).await?;
                        keys.insert(r.relation_id, key_columns(&sql, r.relation_id).await?);
                    }
                    let mut rows = snap.rows();
                    let mut batch = Vec::with_capacity(c.snapshot_batch);
                    let mut published = Vec::with_capacity(c.snapshot_batch);
                    let mut in_flight = InFlight(None);
                    let at = Utc::now();
                    let correlation = format!("cdc-snapshot-{lsn}");
                    while let Some(row) = rows.next_row().await? {
                        let mut table = table_of(&c.prefix, &row.relation);
                        if let Some(k) = keys.get(&row.relation.relation_id) {
                            for col in &mut table.columns {
                                col.key = k.contains(&col.name);
                            }
                        }
                        let after = value::row(&table.columns, &row.data, None);
                        let key_columns = table.key(&after);
                        let key = record::key(&table.schema, &table.name, &key_columns);
                        published.push(state::SnapshotKey {
                            topic: table.topic.clone(),
                            msg_key: key.clone(),
                            schema: table.schema.clone(),
                            table: table.name.clone(),
                            key_columns: Value::Object(key_columns).to_string(),
                        });
                        let change =
                            self.change(&table, None, Some(after), Op::Read, None, lsn, lsn, 0, at);
                        let id = record::stable_id(
                            at,
                            &[
                                c.slot.as_bytes(),
                                b"snapshot",
                                &lsn.to_be_bytes(),
                                table.topic.as_bytes(),
                                key.as_bytes(),
                            ],
                        );
                        batch.push(record::message(
                            table.topic.clone(),
                            key,
                            &change,
                            id,
                            &correlation,
                        )?);
                        metrics::counter!("shopflow_cdc_changes_total", "table" => table.topic.clone(), "op" => "r").increment(1);
                        self.status.snapshot_rows.fetch_add(1, Ordering::Relaxed);
                        if batch.len() >= c.snapshot_batch {
                            self.publish_snapshot(lsn, &mut published, &mut batch, &mut in_flight)
                                .await?;
                        }
                    }
                    self.publish_snapshot(lsn, &mut published, &mut batch, &mut in_flight)
                        .await?;
                    in_flight.finish().await?;
                    let stream = rows.finish().await?;
                    self.withdraw_abandoned(lsn, at).await?;
                    state::save(&self.state, &c.slot, Some(lsn), true).await?;
                    tracing::info!(
                        slot = c.slot,
                        rows = self.status.snapshot_rows.load(Ordering::Relaxed),
                        "initial snapshot on the bus"
                    );
                    stream
                }
            };
        } else if !slot_exists {
            stream.ensure_replication_slot().await?;
            state::save(&self.state, &c.slot, None, true).await?;
        }

        stream.start(None).await?;
        self.status.phase.store(2, Ordering::Relaxed);
        let _heartbeat = c
            .heartbeat
            .map(|every| AbortOnDrop(tokio::spawn(heartbeat(sql.clone(), c.slot.clone(), every))));
        tracing::info!(
            slot = c.slot,
            publication = c.publication,
            "streaming changes"
        );

        let mut batch: Vec<Message> = Vec::with_capacity(c.batch);
        let mut txn: Option<Txn> = None;
        loop {
            let event = match stream.next_event(&cancel).await {
                Ok(e) => e,
                Err(pg_walstream::ReplicationError::Cancelled(_)) => {
                    // Only whole, published transactions were confirmed; a partial one is sent
                    // again after the restart (same ids).
                    let _ = stream.stop().await;
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            let lsn = event.lsn.value();
            match event.event_type {
                EventType::Relation {
                    relation_id,
                    namespace,
                    relation_name,
                    columns,
                    ..
                } => {
                    let table = Table {
                        topic: record::topic(&c.prefix, &namespace, &relation_name),
                        schema: namespace.to_string(),
                        name: relation_name.to_string(),
                        columns: columns
                            .iter()
                            .map(|col| Column {
                                name: col.name.to_string(),
                                type_id: col.type_id,
                                key: col.is_key,
                            })
                            .collect(),
                    };
                    if tables
                        .get(&relation_id)
                        .is_some_and(|old| old.columns != table.columns)
                    {
                        tracing::info!(
                            table = table.topic,
                            "schema change: the table's columns changed"
                        );
                        metrics::counter!("shopflow_cdc_schema_changes_total", "table" => table.topic.clone()).increment(1);
                    }
                    self.ensure_topic(&mut topics, &table.topic).await?;
                    tables.insert(relation_id, table);
                }
                EventType::Begin {
                    transaction_id,
                    final_lsn,
                    commit_timestamp,
                } => {
                    txn = Some(Txn {
                        xid: transaction_id,
                        final_lsn: final_lsn.value(),
                        at: commit_timestamp,
                        index: 0,
                    });
                }
                EventType::Insert {
                    relation_oid, data, ..
                } => {
                    let table = known(&tables, relation_oid)?;
                    let after = value::row(&table.columns, &data, None);
                    let key = table.key(&after);
                    self.stream_change(
                        &mut batch,
                        txn.as_mut(),
                        table,
                        &key,
                        None,
                        Some(after),
                        Op::Create,
                        lsn,
                    )
                    .await?;
                }
                EventType::Update {
                    relation_oid,
                    old_data,
                    new_data,
                    replica_identity,
                    ..
                } => {
                    let table = known(&tables, relation_oid)?;
                    let before = old_data
                        .as_ref()
                        .map(|o| identity_row(&table.columns, o, &replica_identity));
                    let after = value::row(&table.columns, &new_data, before.as_ref());
                    let key = table.key(&after);
                    self.stream_change(
                        &mut batch,
                        txn.as_mut(),
                        table,
                        &key,
                        before,
                        Some(after),
                        Op::Update,
                        lsn,
                    )
                    .await?;
                }
                EventType::Delete {
                    relation_oid,
                    old_data,
                    replica_identity,
                    ..
                } => {
                    let table = known(&tables, relation_oid)?;
                    let before = identity_row(&table.columns, &old_data, &replica_identity);
                    let key = table.key(&before);
                    self.stream_change(
                        &mut batch,
                        txn.as_mut(),
                        table,
                        &key,
                        Some(before),
                        None,
                        Op::Delete,
                        lsn,
                    )
                    .await?;
                }
                EventType::Truncate { tables: names, .. } => {
                    for name in names {
                        let Some(table) = tables.values().find(|t| {
                            *name == *format!("{}.{}", t.schema, t.name) || *name == *t.name
                        }) else {
                            tracing::warn!(table = %name, "truncate of a table the stream has not described");
                            continue;
                        };
                        let table = table.clone();
                        self.stream_change(
                            &mut batch,
                            txn.as_mut(),
                            &table,
                            &Map::new(),
                            None,
                            None,
                            Op::Truncate,
                            lsn,
                        )
                        .await?;
                    }
                }
                EventType::Commit {
                    end_lsn,
                    commit_timestamp,
                    ..
                } => {
                    self.publish(&mut batch).await?;
                    self.confirm(&stream, end_lsn.value());
                    self.status.transactions.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("shopflow_cdc_transactions_total").increment(1);
                    let behind =
                        (Utc::now() - commit_timestamp).num_milliseconds().max(0) as f64 / 1000.0;
                    metrics::gauge!("shopflow_cdc_lag_seconds").set(behind);
                    txn = None;
                }
                EventType::Message {
                    flags: 0,
                    message_lsn,
                    prefix,
                    ..
                } if *prefix == *HEARTBEAT_PREFIX && txn.is_none() && batch.is_empty() => {
                    // Between transactions, with everything before on the bus: nothing that
                    // commits below the heartbeat can still arrive, so its position is confirmed.
                    let at = message_lsn.value().max(lsn);
                    if at > self.status.confirmed_lsn.load(Ordering::Relaxed) {
                        self.confirm(&stream, at);
                    }
                }
                _ => {}
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn change(
        &self,
        table: &Table,
        before: Option<Map<String, Value>>,
        after: Option<Map<String, Value>>,
        op: Op,
        xid: Option<u32>,
        commit_lsn: u64,
        lsn: u64,
        index: u64,
        at: DateTime<Utc>,
    ) -> RowChanged {
        RowChanged {
            before,
            after,
            op,
            source: Source {
                version: env!("CARGO_PKG_VERSION").into(),
                connector: "postgresql".into(),
                name: self.config.slot.clone(),
                ts_ms: at.timestamp_millis(),
                // Rows read by the snapshot, and deletes of rows an abandoned snapshot had
                // published (no transaction): both come from the snapshot.
                snapshot: if op == Op::Read || xid.is_none() {
                    "true"
                } else {
                    "false"
                }
                .into(),
                db: self.db_name.clone(),
                schema: table.schema.clone(),
                table: table.name.clone(),
                tx_id: xid.map(i64::from),
                lsn,
                commit_lsn,
                index,
                sequence: format!("[\"{commit_lsn}\",\"{lsn}\"]"),
            },
            ts_ms: Utc::now().timestamp_millis(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn stream_change(
        &self,
        batch: &mut Vec<Message>,
        txn: Option<&mut Txn>,
        table: &Table,
        key: &Map<String, Value>,
        before: Option<Map<String, Value>>,
        after: Option<Map<String, Value>>,
        op: Op,
        lsn: u64,
    ) -> Result<()> {
        let Some(txn) = txn else {
            return Err(Error::Setup(
                "a change arrived outside a transaction".into(),
            ));
        };
        let key = record::key(&table.schema, &table.name, key);
        txn.index += 1;
        let change = self.change(
            table,
            before,
            after,
            op,
            Some(txn.xid),
            txn.final_lsn,
            lsn,
            txn.index,
            txn.at,
        );
        let id = record::stable_id(
            txn.at,
            &[
                self.config.slot.as_bytes(),
                &txn.final_lsn.to_be_bytes(),
                &txn.index.to_be_bytes(),
            ],
        );
        let correlation = format!("cdc-{}-{}", txn.xid, txn.final_lsn);
        batch.push(record::message(
            table.topic.clone(),
            key,
            &change,
            id,
            &correlation,
        )?);
        metrics::counter!("shopflow_cdc_changes_total", "table" => table.topic.clone(), "op" => op.as_str()).increment(1);
        self.status.changes.fetch_add(1, Ordering::Relaxed);
        if batch.len() >= self.config.batch {
            self.publish(batch).await?;
        }
        Ok(())
    }

    /// Tells PostgreSQL (with the next standby feedback) that everything before `lsn` is on
    /// the bus.
    fn confirm(&self, stream: &LogicalReplicationStream, lsn: u64) {
        stream.shared_lsn_feedback.update_applied_lsn(lsn);
        self.status.confirmed_lsn.store(lsn, Ordering::Relaxed);
        metrics::gauge!("shopflow_cdc_confirmed_lsn").set(lsn as f64);
    }

    /// Publishes a batch of the snapshot taken at `lsn`, its keys recorded first: should the
    /// connector die before the snapshot finishes, the retake knows what this attempt sent.
    ///
    /// The batch is recorded and then published in the background while the next one is read;
    /// at most one is in flight.
    async fn publish_snapshot(
        &self,
        lsn: u64,
        keys: &mut Vec<state::SnapshotKey>,
        batch: &mut Vec<Message>,
        in_flight: &mut InFlight,
    ) -> Result<()> {
        in_flight.finish().await?;
        let keys = std::mem::take(keys);
        let messages = std::mem::take(batch);
        if !messages.is_empty() {
            let (bus, db, slot) = (
                self.bus.clone(),
                self.state.clone(),
                self.config.slot.clone(),
            );
            in_flight.0 = Some(tokio::spawn(async move {
                state::remember(&db, &slot, lsn, &keys).await?;
                bus.send(messages).await?;
                Ok(())
            }));
        }
        Ok(())
    }

    /// After a snapshot taken again (the first attempt died half-way): a delete for every row
    /// an abandoned attempt published that this one did not find — deleted in between, with no
    /// change on the stream to say so. Without it a consumer folding the topic keeps the row.
    async fn withdraw_abandoned(&self, lsn: u64, at: DateTime<Utc>) -> Result<()> {
        let c = &self.config;
        let correlation = format!("cdc-snapshot-{lsn}");
        let mut after: Option<(String, String)> = None;
        let mut withdrawn = 0u64;
        loop {
            let page = state::stale(
                &self.state,
                &c.slot,
                lsn,
                after.as_ref().map(|(t, k)| (t.as_str(), k.as_str())),
                c.batch,
            )
            .await?;
            let Some(last) = page.last() else { break };
            after = Some((last.topic.clone(), last.msg_key.clone()));
            let mut batch = Vec::with_capacity(page.len());
            for k in &page {
                let before = match serde_json::from_str::<Value>(&k.key_columns) {
                    Ok(Value::Object(m)) => m,
                    _ => {
                        return Err(Error::Setup(format!(
                            "the connector's record of the snapshot key {} of {} is not a JSON object",
                            k.msg_key, k.topic
                        )));
                    }
                };
                let table = Table {
                    schema: k.schema.clone(),
                    name: k.table.clone(),
                    columns: Vec::new(),
                    topic: k.topic.clone(),
                };
                let change = self.change(
                    &table,
                    Some(before),
                    None,
                    Op::Delete,
                    None,
                    lsn,
                    lsn,
                    0,
                    at,
                );
                let id = record::stable_id(
                    at,
                    &[
                        c.slot.as_bytes(),
                        b"snapshot-withdrawn",
                        &lsn.to_be_bytes(),
                        k.topic.as_bytes(),
                        k.msg_key.as_bytes(),
                    ],
                );
                batch.push(record::message(
                    k.topic.clone(),
                    k.msg_key.clone(),
                    &change,
                    id,
                    &correlation,
                )?);
                metrics::counter!("shopflow_cdc_changes_total", "table" => k.topic.clone(), "op" => "d").increment(1);
            }
            withdrawn += batch.len() as u64;
            self.publish(&mut batch).await?;
        }
        if withdrawn > 0 {
            tracing::info!(
                slot = c.slot,
                rows = withdrawn,
                "rows an abandoned snapshot published and the new one did not find: deletes on the bus"
            );
        }
        Ok(())
    }

    async fn publish(&self, batch: &mut Vec<Message>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let messages = std::mem::take(batch);
        self.bus.send(messages).await?;
        Ok(())
    }

    async fn ensure_topic(&self, topics: &mut HashSet<String>, topic: &str) -> Result<()> {
        if topics.contains(topic) {
            return Ok(());
        }
        self.bus
            .create(
                topic,
                &TopicSpec {
                    replication_factor: self.config.replication_factor,
                    ..TopicSpec::new(self.config.partitions)
                },
            )
            .await
            .or_else(|e| match e {
                // A topic made earlier with another count is used as it is.
                shopflow_bus::Error::PartitionMismatch { .. } => Ok(()),
                e => Err(e),
            })?;
        topics.insert(topic.to_owned());
        Ok(())
    }
}

fn known(tables: &HashMap<u32, Table>, oid: u32) -> Result<&Table> {
    tables.get(&oid).ok_or_else(|| {
        Error::Setup(format!(
            "a change of relation {oid} arrived before its description"
        ))
    })
}

/// The old row of an update or delete: all of it under replica identity FULL, else its key.
fn identity_row(
    columns: &[Column],
    data: &RowData,
    identity: &ReplicaIdentity,
) -> Map<String, Value> {
    if matches!(identity, ReplicaIdentity::Full) {
        value::row(columns, data, None)
    } else {
        value::key_only(columns, data)
    }
}

fn table_of(prefix: &str, r: &pg_walstream::RelationInfo) -> Table {
    Table {
        topic: record::topic(prefix, &r.namespace, &r.relation_name),
        schema: r.namespace.to_string(),
        name: r.relation_name.to_string(),
        columns: r
            .columns
            .iter()
            .map(|c| Column {
                name: c.name.to_string(),
                type_id: c.type_id,
                key: c.is_key(),
            })
            .collect(),
    }
}

/// The database name of a `postgres://…/db` URL.
fn database_of(url: &str) -> String {
    url.split('?')
        .next()
        .and_then(|u| u.rsplit('/').next())
        .filter(|d| !d.is_empty() && !d.contains('@'))
        .unwrap_or("postgres")
        .to_owned()
}

/// The same URL as a logical replication connection.
fn replication_url(url: &str) -> String {
    if url.contains("replication=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&replication=database")
    } else {
        format!("{url}?replication=database")
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "cdc: a PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// The columns that identify a row of a table: its replica identity index, else its primary key.
async fn key_columns(sql: &tokio_postgres::Client, relation: u32) -> Result<Vec<String>> {
    let rows = sql
        .query(
            "SELECT a.attname::text FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
              WHERE i.indrelid = $1 AND (i.indisreplident OR i.indisprimary)
              ORDER BY i.indisreplident DESC, a.attnum",
            &[&relation],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// Clear errors for the setups that cannot work, before any slot is made.
async fn check_source(sql: &tokio_postgres::Client, c: &Config) -> Result<()> {
    let level: String = sql.query_one("SHOW wal_level", &[]).await?.get(0);
    if level != "logical" {
        return Err(Error::Setup(format!(
            "PostgreSQL's wal_level is `{level}`; change data capture needs `logical` \
             (ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL)"
        )));
    }
    if sql
        .query(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&c.publication],
        )
        .await?
        .is_empty()
    {
        return Err(Error::Setup(format!(
            "there is no publication `{}` in the source database: CREATE PUBLICATION {} FOR TABLE …",
            c.publication, c.publication
        )));
    }
    Ok(())
}

/// Measures how much WAL the slot holds that is not yet confirmed (on the bus).
async fn watch_lag(c: Config, status: Arc<Status>) {
    let mut sql = None;
    loop {
        if sql.is_none() {
            sql = connect(&c.db).await.ok();
        }
        if let Some(client) = &sql {
            match client
                .query_opt(
                    "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
                    &[&c.slot],
                )
                .await
            {
                Ok(Some(row)) => {
                    let bytes: Option<i64> = row.get(0);
                    let bytes = bytes.unwrap_or(0).max(0) as u64;
                    status.lag_bytes.store(bytes, Ordering::Relaxed);
                    metrics::gauge!("shopflow_cdc_lag_bytes").set(bytes as f64);
                }
                Ok(None) => {}
                Err(_) => sql = None,
            }
        }
        tokio::time::sleep(c.lag_every).await;
    }
}

/// The prefix of the connector's heartbeat messages in the WAL.
const HEARTBEAT_PREFIX: &str = "shopflow-cdc-heartbeat";

/// Writes a non-transactional logical decoding message every `every`, so that the stream has
/// something to confirm while the captured tables are quiet. Stops (with a warning) when the
/// role may not write one.
async fn heartbeat(sql: Arc<tokio_postgres::Client>, slot: String, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match sql
            .execute(
                "SELECT pg_logical_emit_message(false, $1, $2)",
                &[&HEARTBEAT_PREFIX, &slot],
            )
            .await
        {
            Ok(_) => metrics::counter!("shopflow_cdc_heartbeats_total").increment(1),
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
            {
                tracing::warn!(
                    error = %e,
                    "the connector's role may not call pg_logical_emit_message: no heartbeat, \
                     so WAL is kept for the slot while the captured tables are quiet"
                );
                return;
            }
            // A source that went away stops the stream too, and the connector starts over.
            Err(e) => tracing::debug!(error = %e, "cdc heartbeat"),
        }
    }
}

/// The snapshot batch being published; a connector that stops (or is dropped) mid-snapshot
/// does not leave it publishing behind its back.
struct InFlight(Option<tokio::task::JoinHandle<Result<()>>>);

impl InFlight {
    /// Waits until the batch in flight, if any, is acknowledged.
    async fn finish(&mut self) -> Result<()> {
        match self.0.take() {
            None => Ok(()),
            Some(task) => Ok(task
                .await
                .map_err(|e| Error::Setup(format!("publishing a snapshot batch: {e}")))??),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            replication_url("postgres://u@h:5432/db"),
            "postgres://u@h:5432/db?replication=database"
        );
        assert_eq!(
            replication_url("postgres://u@h/db?sslmode=disable"),
            "postgres://u@h/db?sslmode=disable&replication=database"
        );
        assert_eq!(database_of("postgres://u@h:5432/shop?x=1"), "shop");
        assert_eq!(database_of("postgres://u@h:5432"), "postgres");
    }
}
