//! Checkpoints: how far a follower of the event store (a projection) has read, by name. Kept in
//! the same database as the follower's own writes, so a step's effects and its new checkpoint
//! commit together.

use crate::{Db, Result, Row, Tx, params};

const GET: &str = "SELECT position FROM projections WHERE name = $1";

fn position(rows: &[Row]) -> Result<u64> {
    rows.first().map(|r| r.u64(0)).unwrap_or(Ok(0))
}

/// The position a follower has read up to (0 when it never ran).
pub async fn get(db: &Db, name: &str) -> Result<u64> {
    position(&db.query(GET, params![name]).await?)
}

/// [`get`] inside a transaction (after taking the follower's lock, so it never moves back).
pub async fn get_in(tx: &mut Tx, name: &str) -> Result<u64> {
    position(&tx.query(GET, params![name]).await?)
}

/// Moves a follower's checkpoint to `position`.
pub async fn set(tx: &mut Tx, name: &str, position: u64) -> Result<()> {
    tx.execute(
        "INSERT INTO projections (name, position) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        params![name, position],
    )
    .await?;
    Ok(())
}

/// Forgets a follower's checkpoint (it starts from the beginning next time).
pub async fn delete(tx: &mut Tx, name: &str) -> Result<()> {
    tx.execute("DELETE FROM projections WHERE name = $1", params![name])
        .await?;
    Ok(())
}
