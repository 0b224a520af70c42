//! Parked keys: the storage of sequenced dead letters (the runtime's `park` stage decides).
//!
//! When a consumer group dead-letters a record of key K, K is parked in that group with the
//! dead letter as its head; the group's later records of K are kept here, in arrival order,
//! instead of being handled out of order. Other keys flow on. Redriving the head (and the group
//! handling it) or discarding it releases the parked records, in order. All of it lives in the
//! consumer's own database and changes in the transaction of the record that causes it.

use std::sync::Arc;

use bytes::Bytes;
use shopflow_bus::Record;

use crate::{Db, Result, Tx, params};

/// The dead letter a parked key waits behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The event id of the head, when it could be decoded.
    pub event_id: Option<String>,
    /// Where the head was read: its topic, partition and offset.
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub error: String,
}

/// A parked key of a consumer group, for operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkedKey {
    pub consumer: String,
    pub key: String,
    /// The head: the dead letter's event id (when it decoded) and original position.
    pub head_event_id: Option<String>,
    pub head_topic: String,
    pub head_partition: u32,
    pub head_offset: u64,
    pub head_error: String,
    /// Records waiting behind the head.
    pub depth: u64,
    /// Milliseconds since the epoch (UTC) when the key was parked.
    pub parked_at: i64,
}

/// A record's key as parked keys name it (keys are aggregate ids; anything else is kept as
/// lossy UTF-8, which can only park more records together, never fewer).
pub fn key_of(r: &Record) -> Option<String> {
    r.key.as_ref().map(|k| crate::value::text(k))
}

/// Whether any key of `consumer` is parked (one index probe; a consumer asks once per batch and
/// skips the per-record lookup when none is).
pub async fn any(tx: &mut Tx, consumer: &str) -> Result<bool> {
    Ok(!tx
        .query(
            "SELECT 1 FROM parked_keys WHERE consumer = $1 LIMIT 1",
            params![consumer],
        )
        .await?
        .is_empty())
}

/// The head `key` is parked behind in `consumer`, if it is parked.
pub async fn head(tx: &mut Tx, consumer: &str, key: &str) -> Result<Option<Head>> {
    let rows = tx
        .query(
            "SELECT head_event_id, head_topic, head_partition, head_offset, head_error FROM parked_keys WHERE consumer = $1 AND msg_key = $2",
            params![consumer, key],
        )
        .await?;
    rows.first()
        .map(|r| {
            Ok(Head {
                event_id: r.opt_str(0)?.map(str::to_owned),
                topic: r.str(1)?.to_owned(),
                partition: r.u64(2)? as u32,
                offset: r.u64(3)?,
                error: r.str(4)?.to_owned(),
            })
        })
        .transpose()
}

/// Parks `key` in `consumer` behind `head` (or moves its head there: a redriven head that failed
/// again).
pub async fn park_key(tx: &mut Tx, consumer: &str, key: &str, head: &Head) -> Result<()> {
    tx.execute(
        "INSERT INTO parked_keys (consumer, msg_key, head_event_id, head_topic, head_partition, head_offset, head_error, parked_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (consumer, msg_key) DO UPDATE SET head_event_id = $3, head_topic = $4, head_partition = $5, head_offset = $6, head_error = $7",
        params![
            consumer,
            key,
            head.event_id.clone(),
            head.topic.as_str(),
            u64::from(head.partition),
            head.offset,
            head.error.as_str(),
            shopflow_envelope::sim::now().timestamp_millis()
        ],
    )
    .await?;
    Ok(())
}

/// Keeps `r` behind its key's head. False when it is parked already (a redelivery).
pub async fn park_record(tx: &mut Tx, consumer: &str, key: &str, r: &Record) -> Result<bool> {
    let n = tx
        .execute(
            "INSERT INTO parked_records (consumer, msg_key, topic, part, record_offset, timestamp_ms, record_key, record_value, headers, parked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (consumer, topic, part, record_offset) DO NOTHING",
            params![
                consumer,
                key,
                &*r.topic,
                u64::from(r.partition),
                r.offset,
                r.timestamp_ms,
                r.key.as_ref().map(|k| k.to_vec()),
                r.value.to_vec(),
                crate::headers::encode(&r.headers),
                shopflow_envelope::sim::now().timestamp_millis()
            ],
        )
        .await?;
    Ok(n > 0)
}

/// The records parked behind `key`, in the order they arrived, each with its number.
pub async fn records(tx: &mut Tx, consumer: &str, key: &str) -> Result<Vec<(i64, Record)>> {
    let rows = tx
        .query(
            "SELECT seq, topic, part, record_offset, timestamp_ms, record_key, record_value, headers FROM parked_records WHERE consumer = $1 AND msg_key = $2 ORDER BY seq",
            params![consumer, key],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.i64(0)?,
                Record {
                    topic: Arc::from(r.str(1)?),
                    partition: r.u64(2)? as u32,
                    offset: r.u64(3)?,
                    timestamp_ms: r.i64(4)?,
                    key: r.opt_bytes(5)?.map(Bytes::copy_from_slice),
                    value: Bytes::copy_from_slice(r.bytes(6)?),
                    headers: crate::headers::decode(r.bytes(7)?)?,
                },
            ))
        })
        .collect()
}

/// Removes one parked record (it has been released).
pub async fn unpark_record(tx: &mut Tx, seq: i64) -> Result<()> {
    tx.execute("DELETE FROM parked_records WHERE seq = $1", params![seq])
        .await?;
    Ok(())
}

/// Releases `key`: nothing of it waits any more.
pub async fn release_key(tx: &mut Tx, consumer: &str, key: &str) -> Result<()> {
    tx.execute(
        "DELETE FROM parked_keys WHERE consumer = $1 AND msg_key = $2",
        params![consumer, key],
    )
    .await?;
    Ok(())
}

/// Every parked key of this database, with how many records wait behind each.
pub async fn list(db: &Db) -> Result<Vec<ParkedKey>> {
    let rows = db
        .query(
            "SELECT k.consumer, k.msg_key, k.head_event_id, k.head_topic, k.head_partition, k.head_offset, k.head_error, k.parked_at,
                    (SELECT COUNT(*) FROM parked_records r WHERE r.consumer = k.consumer AND r.msg_key = k.msg_key)
             FROM parked_keys k ORDER BY k.consumer, k.parked_at, k.msg_key",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(ParkedKey {
                consumer: r.str(0)?.to_owned(),
                key: r.str(1)?.to_owned(),
                head_event_id: r.opt_str(2)?.map(str::to_owned),
                head_topic: r.str(3)?.to_owned(),
                head_partition: r.u64(4)? as u32,
                head_offset: r.u64(5)?,
                head_error: r.str(6)?.to_owned(),
                parked_at: r.i64(7)?,
                depth: r.u64(8)?,
            })
        })
        .collect()
}
