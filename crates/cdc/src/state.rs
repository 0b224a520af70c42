//! The connector's own record of its slot: whether the initial snapshot finished. The slot in
//! PostgreSQL remembers where streaming stands; only this tells a slot whose snapshot completed
//! from one whose connector died half-way through it (that slot is dropped and the snapshot
//! taken again, or rows would be missing for good).

use shopflow_store::{Db, Migration, params};

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration::portable(
        1,
        "cdc",
        "CREATE TABLE cdc_slots (
            slot          TEXT    PRIMARY KEY,
            snapshot_lsn  BIGINT,
            snapshot_done INTEGER NOT NULL,
            updated_at    BIGINT  NOT NULL
        );",
    ),
    // The keys an unfinished snapshot has put on the bus, written before they are published.
    // A snapshot taken again after a crash publishes a delete for each one it no longer finds
    // (the row was deleted in between), so no row of an abandoned snapshot outlives it on the
    // bus; a finished snapshot forgets them.
    Migration::portable(
        2,
        "cdc",
        "CREATE TABLE cdc_snapshot_keys (
            slot         TEXT   NOT NULL,
            topic        TEXT   NOT NULL,
            msg_key      TEXT   NOT NULL,
            schema_name  TEXT   NOT NULL,
            table_name   TEXT   NOT NULL,
            key_columns  TEXT   NOT NULL,
            snapshot_lsn BIGINT NOT NULL,
            PRIMARY KEY (slot, topic, msg_key)
        );",
    ),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlotState {
    pub snapshot_done: bool,
}

pub(crate) async fn load(db: &Db, slot: &str) -> shopflow_store::Result<Option<SlotState>> {
    let rows = db
        .query(
            "SELECT snapshot_done FROM cdc_slots WHERE slot = $1",
            params![slot],
        )
        .await?;
    rows.first()
        .map(|r| {
            Ok(SlotState {
                snapshot_done: r.i64(0)? != 0,
            })
        })
        .transpose()
}

/// Records the slot's snapshot as started (`done` false) or finished; a finished one forgets
/// the keys its unfinished attempts recorded.
pub(crate) async fn save(
    db: &Db,
    slot: &str,
    snapshot_lsn: Option<u64>,
    done: bool,
) -> shopflow_store::Result<()> {
    let now = chrono::Utc::now().timestamp_millis();
    let lsn = snapshot_lsn.map(|l| l as i64);
    let mut tx = db.begin().await?;
    tx.execute("DELETE FROM cdc_slots WHERE slot = $1", params![slot])
        .await?;
    if done {
        tx.execute(
            "DELETE FROM cdc_snapshot_keys WHERE slot = $1",
            params![slot],
        )
        .await?;
    }
    tx.execute(
        "INSERT INTO cdc_slots (slot, snapshot_lsn, snapshot_done, updated_at) VALUES ($1, $2, $3, $4)",
        params![slot, lsn, i64::from(done), now],
    )
    .await?;
    tx.commit().await
}

/// A row a snapshot put on the bus: where, under which key, and its key columns (the `before`
/// of the delete that withdraws it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SnapshotKey {
    pub topic: String,
    pub msg_key: String,
    pub schema: String,
    pub table: String,
    /// The key columns as a JSON object.
    pub key_columns: String,
}

/// Records, before they are published, the keys of a batch of the snapshot taken at `lsn`.
pub(crate) async fn remember(
    db: &Db,
    slot: &str,
    lsn: u64,
    keys: &[SnapshotKey],
) -> shopflow_store::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    // A hundred rows per statement: one statement per key costs more than the publish.
    const ROWS: usize = 100;
    let mut tx = db.begin().await?;
    for chunk in keys.chunks(ROWS) {
        let mut sql = String::from(
            "INSERT INTO cdc_snapshot_keys (slot, topic, msg_key, schema_name, table_name, key_columns, snapshot_lsn) VALUES ",
        );
        let mut params = Vec::with_capacity(chunk.len() * 7);
        for (i, k) in chunk.iter().enumerate() {
            let n = i * 7;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
                n + 1,
                n + 2,
                n + 3,
                n + 4,
                n + 5,
                n + 6,
                n + 7
            ));
            params.extend_from_slice(params![
                slot,
                k.topic.as_str(),
                k.msg_key.as_str(),
                k.schema.as_str(),
                k.table.as_str(),
                k.key_columns.as_str(),
                lsn as i64
            ]);
        }
        sql.push_str(
            " ON CONFLICT (slot, topic, msg_key) DO UPDATE SET snapshot_lsn = excluded.snapshot_lsn",
        );
        tx.execute_deferred(&sql, &params).await?;
    }
    tx.commit().await
}

/// The keys earlier, abandoned snapshots published that the snapshot at `lsn` did not find,
/// `page` at a time after `after` (topic, key order).
pub(crate) async fn stale(
    db: &Db,
    slot: &str,
    lsn: u64,
    after: Option<(&str, &str)>,
    page: usize,
) -> shopflow_store::Result<Vec<SnapshotKey>> {
    let (topic, key) = after.unwrap_or(("", ""));
    let rows = db
        .query(
            "SELECT topic, msg_key, schema_name, table_name, key_columns FROM cdc_snapshot_keys
              WHERE slot = $1 AND snapshot_lsn <> $2 AND (topic > $3 OR (topic = $3 AND msg_key > $4))
              ORDER BY topic, msg_key LIMIT $5",
            params![slot, lsn as i64, topic, key, page as i64],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(SnapshotKey {
                topic: r.str(0)?.to_owned(),
                msg_key: r.str(1)?.to_owned(),
                schema: r.str(2)?.to_owned(),
                table: r.str(3)?.to_owned(),
                key_columns: r.str(4)?.to_owned(),
            })
        })
        .collect()
}
