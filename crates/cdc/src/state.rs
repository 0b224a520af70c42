//! The connector's own record of its slot: whether the initial snapshot finished. The slot in
//! PostgreSQL remembers where streaming stands; only this tells a slot whose snapshot completed
//! from one whose connector died half-way through it (that slot is dropped and the snapshot
//! taken again, or rows would be missing for good).

use shopflow_store::{Db, Migration, params};

pub(crate) const MIGRATIONS: &[Migration] = &[Migration::portable(
    1,
    "cdc",
    "CREATE TABLE cdc_slots (
        slot          TEXT    PRIMARY KEY,
        snapshot_lsn  BIGINT,
        snapshot_done INTEGER NOT NULL,
        updated_at    BIGINT  NOT NULL
    );",
)];

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
    tx.execute(
        "INSERT INTO cdc_slots (slot, snapshot_lsn, snapshot_done, updated_at) VALUES ($1, $2, $3, $4)",
        params![slot, lsn, i64::from(done), now],
    )
    .await?;
    tx.commit().await
}
