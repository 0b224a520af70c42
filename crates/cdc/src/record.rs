//! What a change looks like on the bus: a shopflow envelope (`RowChanged` v1) whose data is
//! Debezium's change event — `before`, `after`, `op`, `source`, `ts_ms` — on the topic
//! `<prefix>.<schema>.<table>`, keyed by the row's primary key.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use shopflow_bus::Message;
use shopflow_envelope::{CorrelationId, Envelope, Event, EventId, Kind, Meta, headers};

/// What happened to the row, in Debezium's letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Op {
    /// Created (INSERT).
    #[serde(rename = "c")]
    Create,
    /// Updated.
    #[serde(rename = "u")]
    Update,
    /// Deleted.
    #[serde(rename = "d")]
    Delete,
    /// Read by the initial snapshot.
    #[serde(rename = "r")]
    Read,
    /// The table was truncated (`before` and `after` are null).
    #[serde(rename = "t")]
    Truncate,
}

impl Op {
    pub fn as_str(&self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
        }
    }
}

/// Where the change came from (Debezium's `source` block for PostgreSQL).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Source {
    /// The connector's version.
    pub version: String,
    /// Always `postgresql`.
    pub connector: String,
    /// The logical name of the captured server (the slot, unless configured).
    pub name: String,
    /// When the change was committed at the source, ms since the Unix epoch (UTC); for a
    /// snapshot row, when the snapshot was taken.
    pub ts_ms: i64,
    /// `"true"` for rows of the initial snapshot, `"false"` for streamed changes.
    pub snapshot: String,
    pub db: String,
    pub schema: String,
    pub table: String,
    /// The source transaction id (none for snapshot rows).
    #[serde(rename = "txId")]
    pub tx_id: Option<i64>,
    /// The change's own position in the write-ahead log (for a snapshot row: the snapshot's).
    /// Not an order by itself: a transaction that began before the snapshot and committed after
    /// it has changes below the snapshot's LSN. Order by [`RowChanged::position`].
    pub lsn: u64,
    /// The commit position of the change's transaction (for a snapshot row: the snapshot's).
    pub commit_lsn: u64,
    /// The change's place in its transaction, from 1 (0 for a snapshot row).
    pub index: u64,
    /// Debezium's `[last committed lsn, lsn]` as strings: the commit position of this change's
    /// transaction and this change's own.
    pub sequence: String,
}

/// A row change captured from PostgreSQL, as Debezium writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RowChanged {
    /// The row before the change (updates under replica identity FULL or a changed key, and
    /// deletes: at least its key); null for creates and reads.
    pub before: Option<Map<String, Value>>,
    /// The row after the change; null for deletes.
    pub after: Option<Map<String, Value>>,
    pub op: Op,
    pub source: Source,
    /// When the connector processed the change, ms since the Unix epoch (UTC).
    pub ts_ms: i64,
}

impl Event for RowChanged {
    const TYPE: &'static str = "RowChanged";
    const VERSION: u32 = 1;
    const KIND: Kind = Kind::Integration;
    const DOMAIN: &'static str = "cdc";
}

impl RowChanged {
    /// The row as it is now: `after`, or `before` for a delete.
    pub fn row(&self) -> Option<&Map<String, Value>> {
        self.after.as_ref().or(self.before.as_ref())
    }

    /// Where the change stands in the source's commit order: `(commit_lsn, index)`. Within a
    /// key it only grows — the snapshot's rows first, then transactions in commit order, then
    /// changes in their transaction — so a consumer that has applied a position can drop any
    /// change at or below it: that is a repeat (a connector's restart sends changes again).
    pub fn position(&self) -> (u64, u64) {
        (self.source.commit_lsn, self.source.index)
    }
}

/// The topic of a table's changes.
pub fn topic(prefix: &str, schema: &str, table: &str) -> String {
    format!("{prefix}.{schema}.{table}")
}

/// The record key and envelope aggregate id of a row: its key columns as compact JSON
/// (`{"id":1}`), or the table's name for a table without a key (one partition keeps its order).
pub fn key(schema: &str, table: &str, key: &Map<String, Value>) -> String {
    if key.is_empty() {
        return format!("{schema}.{table}");
    }
    let k = Value::Object(key.clone()).to_string();
    if k.len() <= 200 {
        k
    } else {
        // Aggregate ids are bounded; a very long key is named by its digest.
        let d = Sha256::digest(k.as_bytes());
        format!("sha256:{}", hex(&d[..16]))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A UUIDv7 that is the same every time the same change is captured: its time is the commit's,
/// the rest a digest of `parts` (slot, transaction, index). A repeat after a restart therefore
/// has the id of the first copy, and every consumer's inbox drops it.
pub fn stable_id(at: DateTime<Utc>, parts: &[&[u8]]) -> EventId {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    let d = h.finalize();
    let ms = at.timestamp_millis().max(0) as u64;
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6..].copy_from_slice(&d[..10]);
    b[6] = 0x70 | (b[6] & 0x0f);
    b[8] = 0x80 | (b[8] & 0x3f);
    EventId::from_uuid(uuid::Uuid::from_bytes(b))
}

/// The producer name envelopes carry.
pub const PRODUCER: &str = "cdc";

/// One change, ready to publish.
pub(crate) fn message(
    topic: String,
    key: String,
    change: &RowChanged,
    id: EventId,
    correlation: &str,
) -> Result<Message, shopflow_envelope::Error> {
    let at = DateTime::<Utc>::from_timestamp_millis(change.source.ts_ms).unwrap_or_else(Utc::now);
    let meta = Meta::new(PRODUCER, key.clone(), 0)
        .with_correlation(CorrelationId::new(correlation))
        .at(at);
    let envelope = Envelope::new(change, meta)?.with_event_id(id);
    let value = envelope.encode()?;
    Ok(Message {
        topic,
        key: Some(Bytes::from(key)),
        value: Bytes::from(value),
        headers: vec![
            (
                headers::CORRELATION_ID.into(),
                Bytes::copy_from_slice(correlation.as_bytes()),
            ),
            (
                headers::EVENT_TYPE.into(),
                Bytes::from_static(b"RowChanged"),
            ),
        ],
        timestamp_ms: Some(change.source.ts_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stable_ids_are_uuidv7_and_repeatable() {
        let at = Utc::now();
        let a = stable_id(at, &[b"slot", b"42", b"0"]);
        let b = stable_id(at, &[b"slot", b"42", b"0"]);
        let c = stable_id(at, &[b"slot", b"42", b"1"]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.as_uuid().get_version_num(), 7);
        // Parts are length-prefixed: ("ab","c") and ("a","bc") differ.
        assert_ne!(stable_id(at, &[b"ab", b"c"]), stable_id(at, &[b"a", b"bc"]));
    }

    #[test]
    fn writes_debezium_field_names() {
        let change = RowChanged {
            before: None,
            after: Some(json!({"id": 1}).as_object().unwrap().clone()),
            op: Op::Create,
            source: Source {
                version: "x".into(),
                connector: "postgresql".into(),
                name: "s".into(),
                ts_ms: 1,
                snapshot: "false".into(),
                db: "test".into(),
                schema: "legacy".into(),
                table: "products".into(),
                tx_id: Some(7),
                lsn: 99,
                commit_lsn: 120,
                index: 1,
                sequence: "[\"90\",\"99\"]".into(),
            },
            ts_ms: 2,
        };
        let v = serde_json::to_value(&change).unwrap();
        assert_eq!(v["op"], "c");
        assert_eq!(v["source"]["txId"], 7);
        assert_eq!(v["source"]["lsn"], 99);
        assert!(v["before"].is_null());
        let m = message(
            "cdc.legacy.products".into(),
            "{\"id\":1}".into(),
            &change,
            stable_id(Utc::now(), &[b"x"]),
            "cdc-1",
        )
        .unwrap();
        let env = Envelope::decode(&m.value).unwrap();
        assert_eq!(env.event_type(), "RowChanged");
        assert_eq!(env.data_as::<RowChanged>().unwrap(), change);
    }

    #[test]
    fn keys_are_compact_json_and_bounded() {
        let k = json!({"sku": "A-1"}).as_object().unwrap().clone();
        assert_eq!(key("legacy", "products", &k), r#"{"sku":"A-1"}"#);
        assert_eq!(key("legacy", "log", &Map::new()), "legacy.log");
        let long = json!({"k": "x".repeat(500)}).as_object().unwrap().clone();
        assert!(key("s", "t", &long).starts_with("sha256:"));
    }
}
