//! The inbox: which messages a consumer has handled, recorded in the same transaction as the
//! handler's effects. A redelivered message finds its id there and changes nothing.

use crate::{Db, Result, Tx, params};

/// Records that `consumer` handled `message_id`. Returns `false` when it had already been
/// recorded: the caller must then skip the handler's effects (and may commit or drop the
/// transaction; nothing was written).
pub async fn record(tx: &mut Tx, consumer: &str, message_id: &str) -> Result<bool> {
    let n = tx
        .execute(
            "INSERT INTO inbox (consumer, message_id, handled_at) VALUES ($1, $2, $3)
             ON CONFLICT (consumer, message_id) DO NOTHING",
            params![consumer, message_id, chrono::Utc::now().timestamp_millis()],
        )
        .await?;
    Ok(n == 1)
}

/// Whether `consumer` has handled `message_id` (committed records only).
pub async fn contains(db: &Db, consumer: &str, message_id: &str) -> Result<bool> {
    let rows = db
        .query(
            "SELECT 1 FROM inbox WHERE consumer = $1 AND message_id = $2",
            params![consumer, message_id],
        )
        .await?;
    Ok(!rows.is_empty())
}

/// Whether `consumer` has handled `message_id`, within the transaction `tx`.
pub async fn contains_in(tx: &mut Tx, consumer: &str, message_id: &str) -> Result<bool> {
    let rows = tx
        .query(
            "SELECT 1 FROM inbox WHERE consumer = $1 AND message_id = $2",
            params![consumer, message_id],
        )
        .await?;
    Ok(!rows.is_empty())
}

/// Deletes records handled before `before_ms` (ms since the epoch). Keep them longer than any
/// message can be redelivered: the bus's retention is the natural bound.
pub async fn purge_before(db: &Db, before_ms: i64) -> Result<u64> {
    let mut tx = db.begin().await?;
    let n = tx
        .execute(
            "DELETE FROM inbox WHERE handled_at < $1",
            params![before_ms],
        )
        .await?;
    tx.commit().await?;
    Ok(n)
}
