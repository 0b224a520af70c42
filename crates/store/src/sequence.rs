//! Per-aggregate sequence numbers. A producer numbers everything it publishes for an aggregate,
//! 1, 2, 3, …, in the publishing transaction ([`crate::emit`] does it, so the numbers are
//! gap-free and commit with the producer's state). A consumer records what it has handled of
//! each producer's numbers ([`observe`]): an event that comes after a later one of the same
//! producer and aggregate is a reordering (outcomes travel on different topics); a number
//! skipped is a gap — which means something only for a consumer that reads every topic the
//! producer numbers for the aggregate (`complete`), and then only until the late event arrives:
//! once the shop has settled, [`gaps`] lists what is still missing.

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt};

use crate::{Db, Result, Tx, Value, params};

/// Takes `count` numbers of each `(source, aggregate, count)` (one entry each); returns the first
/// of each, in the order given. A few multi-row statements for all of them.
pub(crate) async fn take_all(tx: &mut Tx, wanted: &[(String, String, u64)]) -> Result<Vec<u64>> {
    let mut first = Vec::with_capacity(wanted.len());
    static SQL: crate::SqlByWidth = crate::SqlByWidth::new();
    for run in crate::exact_runs(wanted) {
        let sql = SQL.get(run.len(), |width| {
            let rows = (0..width)
                .map(|i| format!("(${}, ${}, ${})", 1 + i * 3, 2 + i * 3, 3 + i * 3))
                .collect::<Vec<_>>()
                .join(", ");
            // `next` is the number after the last one taken; a new row starts at 1.
            format!(
                "INSERT INTO sequences (source, aggregate_id, next) VALUES {rows}
                 ON CONFLICT (source, aggregate_id) DO UPDATE SET next = sequences.next + excluded.next - 1
                 RETURNING source, aggregate_id, next"
            )
        });
        let mut params = Vec::with_capacity(run.len() * 3);
        for (source, aggregate, count) in run {
            params.extend([
                Value::from(source.as_str()),
                Value::from(aggregate.as_str()),
                Value::from(count + 1),
            ]);
        }
        let returned = tx.query(&sql, &params).await?;
        let mut next: HashMap<(&str, &str), u64> = HashMap::with_capacity(returned.len());
        for r in &returned {
            next.insert((r.str(0)?, r.str(1)?), r.u64(2)?);
        }
        for (source, aggregate, count) in run {
            let n = next
                .get(&(source.as_str(), aggregate.as_str()))
                .ok_or_else(|| crate::Error::Corrupt {
                    what: "sequences",
                    reason: format!("no number returned for {source} / {aggregate}"),
                })?;
            first.push(n.saturating_sub(*count));
        }
    }
    Ok(first)
}

/// What a consumer's handling of one number says about the order it came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    /// The next number (or the first of the aggregate, or one a partial reader cannot judge).
    InOrder,
    /// Numbers between the last one handled and this one have not come (yet).
    Gap { expected: u64, got: u64 },
    /// A later number was handled before this one.
    Reordered { last: u64, got: u64 },
}

impl Observed {
    pub fn kind(self) -> Option<&'static str> {
        match self {
            Observed::InOrder => None,
            Observed::Gap { .. } => Some("gap"),
            Observed::Reordered { .. } => Some("reordered"),
        }
    }
}

/// Records, in the consumer's transaction, that `consumer` handled number `seq` of
/// `(source, aggregate)`. `complete`: the consumer reads every topic `source` numbers.
pub async fn observe(
    tx: &mut Tx,
    consumer: &str,
    source: &str,
    aggregate: &str,
    seq: u64,
    complete: bool,
) -> Result<Observed> {
    let rows = tx
        .query(
            "SELECT last FROM sequence_seen WHERE consumer = $1 AND source = $2 AND aggregate_id = $3",
            params![consumer, source, aggregate],
        )
        .await?;
    let last = rows.first().map(|r| r.u64(0)).transpose()?.unwrap_or(0);
    observe_after(tx, consumer, source, aggregate, seq, complete, last).await
}

/// The highest number `consumer` has handled of each of `keys` (`(source, aggregate)`), by
/// source and aggregate, within the transaction `tx`; 0 for one it has handled none of. One statement per source and 64
/// aggregates, for a consumer that reads a whole batch's before handling it and then records
/// each number with [`observe_after`].
pub async fn last_among(
    tx: &mut Tx,
    consumer: &str,
    keys: &[(&str, &str)],
) -> Result<HashMap<String, HashMap<String, u64>>> {
    let mut last: HashMap<String, HashMap<String, u64>> = HashMap::new();
    for (source, aggregate) in keys {
        last.entry((*source).to_owned())
            .or_default()
            .insert((*aggregate).to_owned(), 0);
    }
    let mut by_source: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (source, aggregate) in keys {
        by_source.entry(source).or_default().push(aggregate);
    }
    for (source, aggregates) in by_source {
        for run in crate::in_lists(&aggregates) {
            // One primary-key lookup per aggregate, whatever the planner knows of the table
            // (see `inbox::handled_among`).
            static SQL: crate::SqlByWidth = crate::SqlByWidth::new();
            let sql = SQL.get(run.len(), |width| {
                format!(
                    "SELECT v.column1, (SELECT last FROM sequence_seen
                         WHERE consumer = $1 AND source = $2 AND aggregate_id = v.column1)
                     FROM (VALUES {}) AS v",
                    crate::values(3, width)
                )
            });
            let mut params = Vec::with_capacity(run.len() + 2);
            params.push(Value::from(consumer));
            params.push(Value::from(source));
            params.extend(run.into_iter().map(Value::from));
            for row in tx.query(&sql, &params).await? {
                if let Some(n) = row.opt_i64(1)? {
                    last.entry(source.to_owned())
                        .or_default()
                        .insert(row.str(0)?.to_owned(), n.max(0) as u64);
                }
            }
        }
    }
    Ok(last)
}

/// What handling number `seq` says when `last` is the highest handled before (`complete`: the
/// consumer reads every topic of the source).
pub fn classify(seq: u64, last: u64, complete: bool) -> Observed {
    if seq < last {
        Observed::Reordered { last, got: seq }
    } else if complete && seq > last + 1 {
        Observed::Gap {
            expected: last + 1,
            got: seq,
        }
    } else {
        Observed::InOrder
    }
}

/// What a consumer handled of one `(source, aggregate)` in a batch, for [`record_all`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handled {
    pub source: String,
    pub aggregate: String,
    /// The highest number handled.
    pub last: u64,
    /// How many numbers were handled.
    pub seen: u64,
    pub complete: bool,
    /// How many of them were gaps or reorderings.
    pub anomalies: u64,
}

/// Records what `consumer` handled of each `(source, aggregate)` (one entry each): what
/// [`observe_after`] records one number at a time, in a few multi-row statements, deferred.
pub async fn record_all(tx: &mut Tx, consumer: &str, handled: &[Handled]) -> Result<()> {
    static SQL: crate::SqlByWidth = crate::SqlByWidth::new();
    for run in crate::exact_runs(handled) {
        let sql = SQL.get(run.len(), |width| {
            let rows = (0..width)
                .map(|i| {
                    let p = 2 + i * 6;
                    format!(
                        "($1, ${}, ${}, ${}, ${}, ${}, ${})",
                        p,
                        p + 1,
                        p + 2,
                        p + 3,
                        p + 4,
                        p + 5
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "INSERT INTO sequence_seen (consumer, source, aggregate_id, last, seen, complete, anomalies)
                 VALUES {rows}
                 ON CONFLICT (consumer, source, aggregate_id) DO UPDATE SET
                     last = CASE WHEN sequence_seen.last > excluded.last THEN sequence_seen.last ELSE excluded.last END,
                     seen = sequence_seen.seen + excluded.seen,
                     complete = excluded.complete,
                     anomalies = sequence_seen.anomalies + excluded.anomalies"
            )
        });
        let mut params = Vec::with_capacity(1 + run.len() * 6);
        params.push(Value::from(consumer));
        for h in run {
            params.extend([
                Value::from(h.source.as_str()),
                Value::from(h.aggregate.as_str()),
                Value::from(h.last),
                Value::from(h.seen),
                Value::from(h.complete),
                Value::from(h.anomalies),
            ]);
        }
        tx.execute_deferred(&sql, &params).await?;
    }
    Ok(())
}

/// [`observe`] for a caller that knows the highest number handled before, `last` (from
/// [`last_among`] in this transaction and what it observed since).
pub async fn observe_after(
    tx: &mut Tx,
    consumer: &str,
    source: &str,
    aggregate: &str,
    seq: u64,
    complete: bool,
    last: u64,
) -> Result<Observed> {
    let observed = classify(seq, last, complete);
    let handled = Handled {
        source: source.to_owned(),
        aggregate: aggregate.to_owned(),
        last: seq,
        seen: 1,
        complete,
        anomalies: u64::from(observed.kind().is_some()),
    };
    record_all(tx, consumer, &[handled]).await?;
    Ok(observed)
}

/// A consumer that reads every topic of a producer but has not handled every number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    pub consumer: String,
    pub source: String,
    pub aggregate: String,
    /// The highest number handled, and how many were.
    pub last: u64,
    pub seen: u64,
}

/// What complete readers of this database are still missing.
pub async fn gaps(db: &Db) -> Result<Vec<Missing>> {
    let rows = db
        .query(
            "SELECT consumer, source, aggregate_id, last, seen FROM sequence_seen
             WHERE complete AND seen <> last ORDER BY consumer, source, aggregate_id",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Missing {
                consumer: r.str(0)?.to_owned(),
                source: r.str(1)?.to_owned(),
                aggregate: r.str(2)?.to_owned(),
                last: r.u64(3)?,
                seen: r.u64(4)?,
            })
        })
        .collect()
}

/// Anomalies (gaps and reorderings) each consumer of this database has counted.
pub async fn anomalies(db: &Db) -> Result<Vec<(String, u64)>> {
    let rows = db
        .query(
            "SELECT consumer, CAST(SUM(anomalies) AS BIGINT) FROM sequence_seen GROUP BY consumer ORDER BY consumer",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.str(0)?.to_owned(),
                r.opt_i64(1)?.unwrap_or(0).max(0) as u64,
            ))
        })
        .collect()
}
