//! The read side (CQRS): a projector folds the event store, in position (commit) order, into a
//! view table of one row per stream, and says how far behind it is.
//!
//! - **Gaps are never guessed over.** Each row remembers the version it folded last; an event
//!   whose version does not follow it (an event committed late, a row lost) makes the projector
//!   refold that stream from its first event instead of applying it.
//! - **Exactly once per event.** A row's version tells which events it holds; a step lost in a
//!   crash is redone from the checkpoint and skips what the row already has.
//! - **One projector at a time.** On PostgreSQL several instances may share a schema; each step
//!   holds an advisory lock for its transaction, so one projects and the others stand by (and take
//!   over when it stops).
//! - **Rebuilds while serving.** [`Projector::rebuild`] replays the whole store into a shadow
//!   table while the live projector goes on, catches up inside one transaction and swaps.

use std::sync::Arc;
use std::time::Duration;

use foldhash::{HashMap, HashMapExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use shopflow_envelope::{Envelope, Registry};
use shopflow_runtime::Shutdown;
use shopflow_store::{Db, EventStore, StoredEvent, Tx, Value, checkpoint};

use crate::{Error, Result};

/// Advisory-lock class of projection steps on PostgreSQL (key: `hashtext(<projection name>)`).
pub const PROJECTOR_LOCK_CLASS: i32 = 0x5346_5052; // "SFPR"

/// What a view keeps per stream, and how an event changes it.
pub trait View: Send + Sync + 'static {
    type State: Default + Serialize + DeserializeOwned + Send;

    /// Folds one event of the stream into the row's state.
    fn apply(&self, state: &mut Self::State, event: &Envelope) -> shopflow_envelope::Result<()>;

    /// The values of the table's extra columns ([`ViewTable::columns`]) for a state.
    fn columns(&self, state: &Self::State) -> Vec<Value>;
}

/// Where a view lives: its table and the extra columns it keeps beside the state.
///
/// The table has the key column (the stream id), the extra columns, and `version`, `position`,
/// `updated_at` (BIGINT) and `state` (TEXT, the state as JSON). The service creates it in its
/// own migration; the projector creates the shadow for a rebuild the same way.
#[derive(Clone, Copy, Debug)]
pub struct ViewTable {
    /// The projection's name: its checkpoint and its lock.
    pub name: &'static str,
    pub table: &'static str,
    /// The key column: the stream id.
    pub key: &'static str,
    /// Extra columns with their SQL type (`("status", "TEXT NOT NULL")`), for queries by them.
    pub columns: &'static [(&'static str, &'static str)],
}

impl ViewTable {
    fn shadow(&self) -> String {
        format!("{}_rebuild", self.table)
    }

    fn create(&self, table: &str) -> String {
        let extra: String = self
            .columns
            .iter()
            .map(|(c, t)| format!("{c} {t}, "))
            .collect();
        format!(
            "CREATE TABLE {table} ({key} TEXT PRIMARY KEY, {extra}version BIGINT NOT NULL, \
             position BIGINT NOT NULL, updated_at BIGINT NOT NULL, state TEXT NOT NULL)",
            key = self.key
        )
    }

    fn column_list(&self) -> String {
        let mut cols = vec![self.key];
        cols.extend(self.columns.iter().map(|(c, _)| *c));
        cols.extend(["version", "position", "updated_at", "state"]);
        cols.join(", ")
    }

    fn upsert(&self, table: &str) -> String {
        let n = self.columns.len() + 5;
        let placeholders: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
        let mut updates: Vec<String> = self
            .columns
            .iter()
            .map(|(c, _)| format!("{c} = excluded.{c}"))
            .collect();
        updates.extend(
            ["version", "position", "updated_at", "state"]
                .iter()
                .map(|c| format!("{c} = excluded.{c}")),
        );
        format!(
            "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}",
            self.column_list(),
            placeholders.join(", "),
            self.key,
            updates.join(", ")
        )
    }
}

/// How far a read model is behind the event store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Freshness {
    pub projected_position: u64,
    pub store_position: u64,
    pub behind_events: u64,
}

/// Folds the event store into a [`View`]'s table.
#[derive(Debug)]
pub struct Projector<V: View> {
    store: EventStore,
    registry: Arc<Registry>,
    view: Arc<V>,
    table: ViewTable,
    /// The statements on the view's own table, built once (a rebuild's shadow table builds
    /// its own each step: rebuilds are rare).
    sql: Arc<ViewSql>,
}

/// See [`Projector::sql`].
#[derive(Debug)]
struct ViewSql {
    upsert: String,
    rows: shopflow_store::SqlByWidth,
}

impl<V: View> Clone for Projector<V> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            registry: self.registry.clone(),
            view: self.view.clone(),
            table: self.table,
            sql: self.sql.clone(),
        }
    }
}

impl<V: View> Projector<V> {
    pub fn new(store: EventStore, registry: Arc<Registry>, view: V, table: ViewTable) -> Self {
        Self {
            store,
            registry,
            view: Arc::new(view),
            table,
            sql: Arc::new(ViewSql {
                upsert: table.upsert(table.table),
                rows: shopflow_store::SqlByWidth::new(),
            }),
        }
    }

    /// The upsert of a row of `table`.
    fn upsert_sql(&self, table: &str) -> std::borrow::Cow<'_, str> {
        if table == self.table.table {
            self.sql.upsert.as_str().into()
        } else {
            self.table.upsert(table).into()
        }
    }

    /// The read of `width` rows of `table` by key.
    fn rows_sql(&self, table: &str, width: usize) -> std::borrow::Cow<'_, str> {
        let key = self.table.key;
        let build = |width| {
            format!(
                "SELECT v.column1, (SELECT version FROM {table} WHERE {key} = v.column1),
                     (SELECT state FROM {table} WHERE {key} = v.column1)
                 FROM (VALUES {}) AS v",
                shopflow_store::values(1, width)
            )
        };
        if table == self.table.table {
            self.sql.rows.get(width, build)
        } else {
            build(width).into()
        }
    }

    fn db(&self) -> &Db {
        self.store.db()
    }

    pub fn table(&self) -> &ViewTable {
        &self.table
    }

    /// Projects until shutdown, waking on commits (SQLite) or every 50 ms (PostgreSQL, written
    /// by other processes too).
    pub async fn run(&self, shutdown: Shutdown) {
        let mut commits = self.db().commits();
        loop {
            if shutdown.is_triggered() {
                return;
            }
            match self.step(self.table.name, self.table.table, 1000).await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(projection = self.table.name, error = %e, "projection failed; retrying")
                }
            }
            let wait = async {
                match commits.as_mut() {
                    Some(rx) => {
                        let _ =
                            tokio::time::timeout(Duration::from_millis(500), rx.changed()).await;
                    }
                    None => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            tokio::select! {
                _ = wait => {}
                _ = shutdown.clone().wait() => return,
            }
        }
    }

    /// Projects the next events after checkpoint `name` into `table`; returns how many.
    async fn step(&self, name: &str, table: &str, max: usize) -> Result<usize> {
        // Not fsynced: a step lost in a crash is redone from the store (rows know their version).
        let mut tx = self.db().begin_relaxed().await?;
        if !tx.try_lock(PROJECTOR_LOCK_CLASS, name).await? {
            // Another instance is projecting; its steps serve this one's reads too.
            tx.rollback().await?;
            return Ok(0);
        }
        // Read under the lock, so the checkpoint never moves backwards.
        let position = checkpoint::get_in(&mut tx, name).await?;
        let events = self.store.read_all(position, max).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            tx.rollback().await?;
            return Ok(0);
        };
        self.project(&mut tx, table, &events).await?;
        checkpoint::set(&mut tx, name, last).await?;
        tx.commit().await?;
        Ok(events.len())
    }

    /// Projects `events` into `table`: each row they touch read once and written once, after
    /// its last event here.
    async fn project(&self, tx: &mut Tx, table: &str, events: &[StoredEvent]) -> Result<()> {
        let mut rows = self.rows(tx, table, events).await?;
        // The streams changed, in the order of their first change, and each one's last event.
        let mut order: Vec<&str> = Vec::new();
        let mut touched: HashMap<&str, &StoredEvent> = HashMap::new();
        for e in events {
            let Some(row) = rows.get_mut(e.stream_id.as_str()) else {
                continue;
            };
            if self.project_one(tx, row, e).await?
                && touched.insert(e.stream_id.as_str(), e).is_none()
            {
                order.push(e.stream_id.as_str());
            }
        }
        for key in order {
            let (Some((version, state)), Some(e)) = (rows.get(key), touched.get(key)) else {
                continue;
            };
            let json = serde_json::to_string(state).map_err(|err| Error::Corrupt {
                what: "view state",
                stream: key.to_owned(),
                reason: err.to_string(),
            })?;
            let mut params = vec![Value::from(key)];
            params.extend(self.view.columns(state));
            params.extend([
                Value::from(*version),
                Value::from(e.position),
                Value::from(e.recorded_at_ms),
                Value::from(json),
            ]);
            // Nothing reads its answer: on PostgreSQL it travels with the next statement.
            tx.execute_deferred(&self.upsert_sql(table), &params)
                .await?;
        }
        Ok(())
    }

    /// The rows of `table` the streams of `events` have now (version 0 and the default state
    /// for one not projected yet): one primary-key probe per stream, 64 streams a statement.
    async fn rows(
        &self,
        tx: &mut Tx,
        table: &str,
        events: &[StoredEvent],
    ) -> Result<HashMap<String, (u64, V::State)>> {
        let mut keys: Vec<&str> = Vec::new();
        let mut rows: HashMap<String, (u64, V::State)> = HashMap::new();
        for e in events {
            if !rows.contains_key(e.stream_id.as_str()) {
                rows.insert(e.stream_id.clone(), (0, V::State::default()));
                keys.push(e.stream_id.as_str());
            }
        }
        for run in shopflow_store::in_lists(&keys) {
            let sql = self.rows_sql(table, run.len());
            let params: Vec<Value> = run.into_iter().map(Value::from).collect();
            for r in tx.query(&sql, &params).await? {
                let (Some(version), Some(state)) = (r.opt_i64(1)?, r.opt_str(2)?) else {
                    continue;
                };
                let stream = r.str(0)?;
                let state = self.parse(stream, state)?;
                rows.insert(stream.to_owned(), (version.max(0) as u64, state));
            }
        }
        Ok(rows)
    }

    /// Applies `e` to its stream's `row` (version, state); `false` when it was applied already.
    async fn project_one(
        &self,
        tx: &mut Tx,
        row: &mut (u64, V::State),
        e: &StoredEvent,
    ) -> Result<bool> {
        let (version, state) = row;
        if e.version <= *version {
            return Ok(false); // applied already
        }
        if e.version != *version + 1 {
            // A gap: never guess. Refold the row from its stream, up to this event.
            tracing::warn!(projection = self.table.name, stream = %e.stream_id, have = *version, got = e.version, "gap in the projection; refolding the stream");
            *state = V::State::default();
            for s in self
                .store
                .read_stream_in(tx, &e.stream_id, 1, e.version as usize)
                .await?
            {
                self.view.apply(state, &s.decode(&self.registry)?)?;
            }
        } else {
            self.view.apply(state, &e.decode(&self.registry)?)?;
        }
        *version = e.version;
        Ok(true)
    }

    fn parse(&self, key: &str, json: &str) -> Result<V::State> {
        serde_json::from_str(json).map_err(|e| Error::Corrupt {
            what: "view row",
            stream: key.to_owned(),
            reason: e.to_string(),
        })
    }

    /// A row's state, as projected so far.
    pub async fn get(&self, key: &str) -> Result<Option<V::State>> {
        let rows = self
            .db()
            .query(
                &format!(
                    "SELECT state FROM {} WHERE {} = $1",
                    self.table.table, self.table.key
                ),
                shopflow_store::params![key],
            )
            .await?;
        rows.first().map(|r| self.parse(key, r.str(0)?)).transpose()
    }

    /// States of rows selected by `filter` (SQL after `WHERE`, over the extra columns and the key,
    /// `$n` placeholders), ordered by `order` (SQL after `ORDER BY`), at most `limit`.
    pub async fn query(
        &self,
        filter: &str,
        order: &str,
        params: &[Value],
        limit: u32,
    ) -> Result<Vec<(String, V::State)>> {
        let sql = format!(
            "SELECT {key}, state FROM {table} WHERE {filter} ORDER BY {order} LIMIT {limit}",
            key = self.table.key,
            table = self.table.table,
        );
        let rows = self.db().query(&sql, params).await?;
        rows.iter()
            .map(|r| {
                let key = r.str(0)?.to_owned();
                let state = self.parse(&key, r.str(1)?)?;
                Ok((key, state))
            })
            .collect()
    }

    /// How far the view is behind the store.
    pub async fn freshness(&self) -> Result<Freshness> {
        let projected = checkpoint::get(self.db(), self.table.name).await?;
        let head = self.store.head_position().await?;
        Ok(Freshness {
            projected_position: projected,
            store_position: head,
            behind_events: self.store.count_after(projected).await?,
        })
    }

    /// Rebuilds the view from the whole event store while the live projector keeps serving:
    /// replays into a shadow table, catches up, then swaps in one transaction. Returns how many
    /// events were replayed.
    pub async fn rebuild(&self) -> Result<u64> {
        let shadow = self.table.shadow();
        let mut tx = self.db().begin().await?;
        tx.batch(&format!(
            "DROP TABLE IF EXISTS {shadow}; {}",
            self.table.create(&shadow)
        ))
        .await?;
        checkpoint::delete(&mut tx, &shadow).await?;
        tx.commit().await?;
        let mut replayed = 0u64;
        loop {
            let n = self.step(&shadow, &shadow, 5000).await?;
            if n == 0 {
                break;
            }
            replayed += n as u64;
        }
        // Swap: one transaction, after a last catch-up inside it.
        let mut tx = self.db().begin().await?;
        let mut position = checkpoint::get_in(&mut tx, &shadow).await?;
        loop {
            let events = self.store.read_all_in(&mut tx, position, 1000).await?;
            if events.is_empty() {
                break;
            }
            self.project(&mut tx, &shadow, &events).await?;
            if let Some(e) = events.last() {
                position = e.position;
            }
            replayed += events.len() as u64;
        }
        let (table, cols) = (self.table.table, self.table.column_list());
        tx.batch(&format!(
            "DELETE FROM {table}; INSERT INTO {table} ({cols}) SELECT {cols} FROM {shadow}; DROP TABLE {shadow}"
        ))
        .await?;
        checkpoint::delete(&mut tx, &shadow).await?;
        checkpoint::set(&mut tx, self.table.name, position).await?;
        tx.commit().await?;
        Ok(replayed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: ViewTable = ViewTable {
        name: "things",
        table: "thing_view",
        key: "thing_id",
        columns: &[("colour", "TEXT NOT NULL")],
    };

    #[test]
    fn the_table_sql_names_every_column_once() {
        assert_eq!(
            TABLE.column_list(),
            "thing_id, colour, version, position, updated_at, state"
        );
        assert_eq!(
            TABLE.create("t"),
            "CREATE TABLE t (thing_id TEXT PRIMARY KEY, colour TEXT NOT NULL, version BIGINT NOT NULL, position BIGINT NOT NULL, updated_at BIGINT NOT NULL, state TEXT NOT NULL)"
        );
        let up = TABLE.upsert("t");
        assert!(up.starts_with("INSERT INTO t (thing_id, colour, version, position, updated_at, state) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (thing_id) DO UPDATE SET colour = excluded.colour, version"), "{up}");
    }
}
