//! The inbox: which messages a consumer has handled, recorded in the same transaction as the
//! handler's effects. A redelivered message finds its id there and changes nothing.

use foldhash::{HashSet, HashSetExt};

use crate::{Db, Result, Tx, Value, params};

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

/// Which of `message_ids` `consumer` has handled, within the transaction `tx`: one statement
/// per 64 ids, for a consumer that checks a whole batch before handling it and then records
/// the new ids with [`record_all`].
pub async fn handled_among(
    tx: &mut Tx,
    consumer: &str,
    message_ids: &[&str],
) -> Result<HashSet<String>> {
    static SQL: crate::SqlByWidth = crate::SqlByWidth::new();
    let mut handled = HashSet::new();
    for run in crate::in_lists(message_ids) {
        // One primary-key lookup per id, whatever the planner knows of the table: an `IN`
        // list over a young table's index would be a filter over the consumer's every row.
        let sql = SQL.get(run.len(), |width| {
            format!(
                "SELECT v.column1 FROM (VALUES {}) AS v
                 WHERE (SELECT 1 FROM inbox WHERE consumer = $1 AND message_id = v.column1) IS NOT NULL",
                crate::values(2, width)
            )
        });
        let mut params = Vec::with_capacity(run.len() + 1);
        params.push(Value::from(consumer));
        params.extend(run.into_iter().map(Value::from));
        for row in tx.query(&sql, &params).await? {
            handled.insert(row.str(0)?.to_owned());
        }
    }
    Ok(handled)
}

/// Records every one of `message_ids`, which the caller knows `consumer` has not handled (it
/// asked [`handled_among`] in this transaction): a few multi-row statements, deferred — on
/// PostgreSQL they travel with the transaction's next statement. If another transaction
/// recorded one of the ids meanwhile (a second member of the group, before a rebalance
/// settled), the insert fails and with it the transaction, whose records are then delivered
/// again and found handled.
pub async fn record_all(tx: &mut Tx, consumer: &str, message_ids: &[String]) -> Result<()> {
    let now = chrono::Utc::now().timestamp_millis();
    static SQL: crate::SqlByWidth = crate::SqlByWidth::new();
    for run in crate::exact_runs(message_ids) {
        let sql = SQL.get(run.len(), |width| {
            let rows = (0..width)
                .map(|i| format!("($1, ${}, $2)", i + 3))
                .collect::<Vec<_>>()
                .join(", ");
            format!("INSERT INTO inbox (consumer, message_id, handled_at) VALUES {rows}")
        });
        let mut params = Vec::with_capacity(run.len() + 2);
        params.push(Value::from(consumer));
        params.push(Value::from(now));
        params.extend(run.iter().map(Value::from));
        tx.execute_deferred(&sql, &params).await?;
    }
    Ok(())
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
