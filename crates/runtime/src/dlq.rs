//! Dead-letter operations: an index of every dead letter on the bus, and the operator's actions
//! on it — list (filtered), show, redrive back to the original topic, discard with a reason.
//!
//! The [`Indexer`] consumes the `*.dlq` topics into a `dead_letters` table of an operations
//! database. A redrive writes the original record (key, value, headers without the `dlq-*` ones,
//! plus `redriven-from`) to that database's outbox in the same transaction that marks the dead
//! letter redriven, so a redrive is published exactly as reliably as any other event. On the
//! original topic the record meets the consumers' inboxes: a consumer that handled the event
//! before skips it, the one that dead-lettered it handles it now.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use shopflow_bus::{Bus, Consumer, Message, Record, TopicPartition};
use shopflow_store::{Db, Migration, Row, Tx, Value, outbox, params};

use crate::{Shutdown, headers};

/// The operations database's table of dead letters.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "dead_letters",
    sqlite: "CREATE TABLE dead_letters (
        id                 TEXT    PRIMARY KEY,
        dlq_topic          TEXT    NOT NULL,
        original_topic     TEXT    NOT NULL,
        original_partition INTEGER NOT NULL,
        original_offset    INTEGER NOT NULL,
        consumer           TEXT    NOT NULL,
        event_type         TEXT    NOT NULL,
        event_id           TEXT,
        correlation_id     TEXT,
        error              TEXT    NOT NULL,
        attempts           INTEGER NOT NULL,
        first_failed_at    TEXT    NOT NULL,
        last_failed_at     TEXT    NOT NULL,
        record_key         BLOB,
        record_value       BLOB    NOT NULL,
        headers            TEXT    NOT NULL,
        status             TEXT    NOT NULL,
        status_reason      TEXT,
        status_at          INTEGER,
        indexed_at         INTEGER NOT NULL
    );
    CREATE INDEX dead_letters_status ON dead_letters (status, original_topic);",
    postgres: "CREATE TABLE dead_letters (
        id                 TEXT    PRIMARY KEY,
        dlq_topic          TEXT    NOT NULL,
        original_topic     TEXT    NOT NULL,
        original_partition BIGINT  NOT NULL,
        original_offset    BIGINT  NOT NULL,
        consumer           TEXT    NOT NULL,
        event_type         TEXT    NOT NULL,
        event_id           TEXT,
        correlation_id     TEXT,
        error              TEXT    NOT NULL,
        attempts           BIGINT  NOT NULL,
        first_failed_at    TEXT    NOT NULL,
        last_failed_at     TEXT    NOT NULL,
        record_key         BYTEA,
        record_value       BYTEA   NOT NULL,
        headers            TEXT    NOT NULL,
        status             TEXT    NOT NULL,
        status_reason      TEXT,
        status_at          BIGINT,
        indexed_at         BIGINT  NOT NULL
    );
    CREATE INDEX dead_letters_status ON dead_letters (status, original_topic);",
}];

/// Errors of dead-letter operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] shopflow_store::Error),
    #[error("no dead letter `{0}`")]
    NotFound(String),
    #[error("dead letter `{id}` is {status} already")]
    NotOpen { id: String, status: String },
    #[error("{0}")]
    Invalid(String),
}

/// One dead letter, as listed.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub id: String,
    pub dlq_topic: String,
    pub original_topic: String,
    pub original_partition: i64,
    pub original_offset: i64,
    pub consumer: String,
    pub event_type: String,
    pub event_id: Option<String>,
    pub correlation_id: Option<String>,
    pub error: String,
    pub attempts: i64,
    pub first_failed_at: String,
    pub last_failed_at: String,
    /// `open`, `redriven` or `discarded`.
    #[schema(pattern = "^(open|redriven|discarded)$")]
    pub status: String,
    pub status_reason: Option<String>,
}

/// One dead letter with its record.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterDetail {
    #[serde(flatten)]
    pub letter: DeadLetter,
    pub key: Option<String>,
    /// The record's value: as JSON when it is JSON, else as (lossy) text.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// Whether the value was valid UTF-8 JSON (else `payload` is a lossy rendering).
    pub payload_is_json: bool,
    pub headers: BTreeMap<String, String>,
}

/// A key parked behind a dead letter in a consumer group (sequenced dead letters): its later
/// records wait until the head is redriven and handled, or discarded.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Parked {
    pub consumer: String,
    pub key: String,
    /// The head's event id, when it could be decoded.
    pub head_event_id: Option<String>,
    /// Where the head was read: `<topic>/<partition>/<offset>` (its dead letter's original
    /// position).
    pub head: String,
    pub head_error: String,
    /// Records waiting behind the head.
    pub depth: u64,
    /// When the key was parked (RFC 3339, UTC).
    pub parked_at: String,
}

/// The keys parked in the consumer groups of `db` (a service's database).
pub async fn parked(db: &Db) -> Result<Vec<Parked>, Error> {
    Ok(shopflow_store::parked::list(db)
        .await?
        .into_iter()
        .map(|k| Parked {
            consumer: k.consumer,
            key: k.key,
            head_event_id: k.head_event_id,
            head: format!("{}/{}/{}", k.head_topic, k.head_partition, k.head_offset),
            head_error: k.head_error,
            depth: k.depth,
            parked_at: chrono::DateTime::from_timestamp_millis(k.parked_at)
                .unwrap_or_default()
                .to_rfc3339(),
        })
        .collect())
}

/// Which dead letters to list or redrive (the query of `GET /admin/dlq`).
#[derive(Clone, Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Filter {
    /// The original topic.
    pub topic: Option<String>,
    pub event_type: Option<String>,
    pub consumer: Option<String>,
    /// A substring of the error.
    pub error: Option<String>,
    /// `open` (the default for redrive), `redriven`, `discarded` or `all`.
    #[param(pattern = "^(open|redriven|discarded|all)$")]
    pub status: Option<String>,
    /// Listing: 1 to 1000 (default 100). Redriving: 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

const COLUMNS: &str = "id, dlq_topic, original_topic, original_partition, original_offset, consumer, event_type, event_id, correlation_id, error, attempts, first_failed_at, last_failed_at, status, status_reason";

fn letter(r: &Row) -> shopflow_store::Result<DeadLetter> {
    Ok(DeadLetter {
        id: r.str(0)?.to_owned(),
        dlq_topic: r.str(1)?.to_owned(),
        original_topic: r.str(2)?.to_owned(),
        original_partition: r.i64(3)?,
        original_offset: r.i64(4)?,
        consumer: r.str(5)?.to_owned(),
        event_type: r.str(6)?.to_owned(),
        event_id: r.opt_str(7)?.map(str::to_owned),
        correlation_id: r.opt_str(8)?.map(str::to_owned),
        error: r.str(9)?.to_owned(),
        attempts: r.i64(10)?,
        first_failed_at: r.str(11)?.to_owned(),
        last_failed_at: r.str(12)?.to_owned(),
        status: r.str(13)?.to_owned(),
        status_reason: r.opt_str(14)?.map(str::to_owned),
    })
}

fn header_str(r: &Record, name: &str) -> Option<String> {
    r.header(name)
        .map(|h| String::from_utf8_lossy(h).into_owned())
}

/// The row of a dead-letter record; the id is its position on the DLQ topic,
/// `<topic>:<partition>:<offset>` (safe in a URL path: topic names have no `:` or `/`).
fn row_of(r: &Record) -> Vec<Value> {
    let id = format!("{}:{}:{}", r.topic, r.partition, r.offset);
    let json: Option<serde_json::Value> = serde_json::from_slice(&r.value).ok();
    let field = |k: &str| {
        json.as_ref()
            .and_then(|j| j.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let event_type = header_str(r, headers::EVENT_TYPE)
        .or_else(|| field("eventType"))
        .unwrap_or_else(|| "(undecodable)".to_owned());
    let headers_json: BTreeMap<String, String> = r
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    let now = shopflow_envelope::sim::now().to_rfc3339();
    let num = |name: &str| {
        header_str(r, name)
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or(-1)
    };
    params![
        id,
        r.topic.to_string(),
        header_str(r, headers::DLQ_TOPIC)
            .unwrap_or_else(|| r.topic.trim_end_matches(".dlq").to_owned()),
        num(headers::DLQ_PARTITION),
        num(headers::DLQ_OFFSET),
        header_str(r, headers::DLQ_CONSUMER).unwrap_or_else(|| "unknown".to_owned()),
        event_type,
        field("eventId"),
        header_str(r, headers::CORRELATION_ID).or_else(|| field("correlationId")),
        header_str(r, headers::DLQ_ERROR).unwrap_or_else(|| "(no reason recorded)".to_owned()),
        num(headers::DLQ_ATTEMPTS).max(1),
        header_str(r, headers::DLQ_FIRST_FAILED_AT)
            .or_else(|| header_str(r, headers::DLQ_FAILED_AT))
            .unwrap_or_else(|| now.clone()),
        header_str(r, headers::DLQ_FAILED_AT).unwrap_or(now),
        r.key.as_ref().map(|k| k.to_vec()),
        r.value.to_vec(),
        serde_json::to_string(&headers_json).unwrap_or_else(|_| "{}".to_owned()),
        shopflow_envelope::sim::now().timestamp_millis()
    ]
    .to_vec()
}

/// Records dead letters in the index; a record seen before is ignored.
pub async fn index(tx: &mut Tx, records: &[Record]) -> shopflow_store::Result<u64> {
    let mut added = 0;
    for r in records {
        added += tx
            .execute(
                "INSERT INTO dead_letters (id, dlq_topic, original_topic, original_partition, original_offset, consumer, event_type, event_id, correlation_id, error, attempts, first_failed_at, last_failed_at, record_key, record_value, headers, status, indexed_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, 'open', $17)
                 ON CONFLICT (id) DO NOTHING",
                &row_of(r),
            )
            .await?;
    }
    Ok(added)
}

/// The consumer group of the [`Indexer`].
pub const GROUP: &str = "dlq-index";

/// Consumes the dead-letter topics into the index until shutdown.
#[derive(Debug)]
pub struct Indexer<B: Bus> {
    bus: B,
    db: Db,
    topics: Vec<String>,
}

impl<B: Bus> Indexer<B> {
    /// The consumer group of the indexer.
    pub const GROUP: &'static str = GROUP;

    pub fn new(bus: B, db: Db, dlq_topics: Vec<String>) -> Self {
        Self {
            bus,
            db,
            topics: dlq_topics,
        }
    }

    pub async fn run(self, shutdown: Shutdown) {
        loop {
            if shutdown.is_triggered() {
                return;
            }
            if let Err(e) = self.consume(shutdown.clone()).await {
                tracing::warn!(error = %e, "dead-letter indexer failed; restarting");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    async fn consume(&self, shutdown: Shutdown) -> Result<(), String> {
        let mut consumer = self
            .bus
            .subscribe(Self::GROUP, &self.topics)
            .await
            .map_err(|e| e.to_string())?;
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            let records = tokio::select! {
                r = consumer.poll(500, Duration::from_secs(1)) => r.map_err(|e| e.to_string())?,
                _ = &mut stop => return Ok(()),
            };
            if records.is_empty() {
                continue;
            }
            let mut tx = self.db.begin().await.map_err(|e| e.to_string())?;
            let added = index(&mut tx, &records).await.map_err(|e| e.to_string())?;
            tx.commit().await.map_err(|e| e.to_string())?;
            let mut next: BTreeMap<TopicPartition, u64> = BTreeMap::new();
            for r in &records {
                next.insert(r.topic_partition(), r.offset + 1);
            }
            let offsets: Vec<_> = next.into_iter().collect();
            consumer.commit(&offsets).await.map_err(|e| e.to_string())?;
            if added > 0 {
                tracing::warn!(added, "dead letters indexed");
            }
        }
    }
}

fn where_clause(f: &Filter, default_status: Option<&str>) -> Result<(String, Vec<Value>), Error> {
    let mut sql = String::from(" WHERE 1 = 1");
    let mut params: Vec<Value> = Vec::new();
    let mut add = |sql: &mut String, cond: &str, v: Value| {
        params.push(v);
        sql.push_str(&cond.replace('?', &format!("${}", params.len())));
    };
    let status = f.status.as_deref().or(default_status);
    match status {
        None | Some("all") => {}
        Some(s @ ("open" | "redriven" | "discarded")) => {
            add(&mut sql, " AND status = ?", Value::Text(s.to_owned()))
        }
        Some(other) => {
            return Err(Error::Invalid(format!(
                "unknown status `{other}` (open, redriven, discarded, all)"
            )));
        }
    }
    if let Some(t) = &f.topic {
        add(&mut sql, " AND original_topic = ?", Value::Text(t.clone()));
    }
    if let Some(t) = &f.event_type {
        add(&mut sql, " AND event_type = ?", Value::Text(t.clone()));
    }
    if let Some(c) = &f.consumer {
        add(&mut sql, " AND consumer = ?", Value::Text(c.clone()));
    }
    if let Some(e) = &f.error {
        // A substring match that treats the operator's text literally.
        let escaped = e
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        add(
            &mut sql,
            " AND error LIKE ? ESCAPE '\\'",
            Value::Text(format!("%{escaped}%")),
        );
    }
    Ok((sql, params))
}

/// Dead letters matching `filter` (open ones unless it names a status), oldest first (at most
/// `limit`, default 100, max 1000).
pub async fn list(db: &Db, filter: &Filter) -> Result<Vec<DeadLetter>, Error> {
    let (clause, params) = where_clause(filter, Some("open"))?;
    let limit = filter.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Error::Invalid("limit must be between 1 and 1000".into()));
    }
    let rows = db
        .query(
            &format!(
                "SELECT {COLUMNS} FROM dead_letters{clause} ORDER BY indexed_at, id LIMIT {limit}"
            ),
            &params,
        )
        .await?;
    Ok(rows.iter().map(letter).collect::<Result<_, _>>()?)
}

/// Counts of dead letters by status.
pub async fn counts(db: &Db) -> Result<BTreeMap<String, i64>, Error> {
    let rows = db
        .query(
            "SELECT status, COUNT(*) FROM dead_letters GROUP BY status",
            &[],
        )
        .await?;
    let mut out = BTreeMap::new();
    for r in rows {
        out.insert(r.str(0)?.to_owned(), r.i64(1)?);
    }
    Ok(out)
}

/// One dead letter with its record.
pub async fn show(db: &Db, id: &str) -> Result<DeadLetterDetail, Error> {
    let rows = db
        .query(
            &format!(
                "SELECT {COLUMNS}, record_key, record_value, headers FROM dead_letters WHERE id = $1"
            ),
            params![id],
        )
        .await?;
    let r = rows.first().ok_or_else(|| Error::NotFound(id.to_owned()))?;
    let value = r.bytes(16)?;
    let (payload, payload_is_json) = match serde_json::from_slice::<serde_json::Value>(value) {
        Ok(v) => (v, true),
        Err(_) => (
            serde_json::Value::String(String::from_utf8_lossy(value).into_owned()),
            false,
        ),
    };
    Ok(DeadLetterDetail {
        letter: letter(r)?,
        key: r
            .opt_bytes(15)?
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        payload,
        payload_is_json,
        headers: serde_json::from_str(r.str(17)?).unwrap_or_default(),
    })
}

/// What happened to one dead letter of a redrive.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Redriven {
    pub id: String,
    pub topic: String,
    /// The one consumer group it goes back to (the one that dead-lettered it).
    pub consumer: String,
    /// It had been redriven before: nothing was sent this time.
    pub already_redriven: bool,
}

async fn redrive_in(tx: &mut Tx, id: &str) -> Result<Redriven, Error> {
    let rows = tx
        .query(
            "SELECT status, original_topic, record_key, record_value, headers, consumer, original_partition, original_offset FROM dead_letters WHERE id = $1",
            params![id],
        )
        .await?;
    let r = rows.first().ok_or_else(|| Error::NotFound(id.to_owned()))?;
    let status = r.str(0)?;
    let consumer = r.str(5)?.to_owned();
    let topic = r.str(1)?.to_owned();
    if status == "redriven" {
        // Once is enough: a second redrive (a retried call, two operators) sends nothing.
        return Ok(Redriven {
            id: id.to_owned(),
            topic: r.str(1)?.to_owned(),
            consumer,
            already_redriven: true,
        });
    }
    if status != "open" {
        return Err(Error::NotOpen {
            id: id.to_owned(),
            status: status.to_owned(),
        });
    }
    let stored: BTreeMap<String, String> = serde_json::from_str(r.str(4)?).unwrap_or_default();
    let mut hdrs: Vec<(String, Bytes)> = stored
        .into_iter()
        .filter(|(k, _)| {
            !k.starts_with("dlq-")
                && k != headers::REDRIVEN_FROM
                && k != headers::REDRIVEN_FOR
                && k != headers::REDRIVEN_ORIGIN
        })
        .map(|(k, v)| (k, Bytes::from(v.into_bytes())))
        .collect();
    hdrs.push((
        headers::REDRIVEN_FROM.to_owned(),
        Bytes::copy_from_slice(id.as_bytes()),
    ));
    // The group that parked the record's key behind it knows its head by this.
    hdrs.push((
        headers::REDRIVEN_ORIGIN.to_owned(),
        Bytes::from(format!("{topic}/{}/{}", r.i64(6)?, r.i64(7)?).into_bytes()),
    ));
    // Only the group that dead-lettered it handles it again (see `stage::redrive`); a dead
    // letter of unknown origin goes to every group, as it came.
    if consumer != "unknown" {
        hdrs.push((
            headers::REDRIVEN_FOR.to_owned(),
            Bytes::copy_from_slice(consumer.as_bytes()),
        ));
    }
    let msg = Message {
        topic: topic.clone(),
        key: r.opt_bytes(2)?.map(Bytes::copy_from_slice),
        value: Bytes::copy_from_slice(r.bytes(3)?),
        headers: hdrs,
        timestamp_ms: None,
    };
    outbox::enqueue(tx, &[msg]).await?;
    tx.execute(
        "UPDATE dead_letters SET status = 'redriven', status_reason = NULL, status_at = $2 WHERE id = $1",
        params![id, shopflow_envelope::sim::now().timestamp_millis()],
    )
    .await?;
    tracing::info!(id, topic, consumer, "dead letter redriven");
    Ok(Redriven {
        id: id.to_owned(),
        topic,
        consumer,
        already_redriven: false,
    })
}

/// Sends one open dead letter back to its original topic.
pub async fn redrive(db: &Db, id: &str) -> Result<Redriven, Error> {
    let mut tx = db.begin().await?;
    let out = redrive_in(&mut tx, id).await?;
    tx.commit().await?;
    Ok(out)
}

/// The most dead letters one bulk redrive sends (and the default when no `limit` is given
/// is [`DEFAULT_BULK_REDRIVE`]): a redrive is a deliberate act, in bounded steps.
pub const MAX_BULK_REDRIVE: u32 = 1000;
pub const DEFAULT_BULK_REDRIVE: u32 = 100;

/// What a bulk redrive did.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkRedrive {
    pub redriven: Vec<Redriven>,
    /// How many were sent back now.
    pub count: usize,
    /// Open dead letters matching the filter that this call left (past its limit).
    pub remaining: i64,
    pub limit: u32,
}

/// Sends the oldest open dead letters matching `filter` back, each to the one group it failed
/// in, in one transaction: at most `limit` (default [`DEFAULT_BULK_REDRIVE`], at most
/// [`MAX_BULK_REDRIVE`]); says how many matching ones remain.
pub async fn redrive_matching(db: &Db, filter: &Filter) -> Result<BulkRedrive, Error> {
    let (redriven, remaining, limit) = bulk(db, filter, "redriven", |tx, id| {
        Box::pin(async move { redrive_in(tx, &id).await })
    })
    .await?;
    Ok(BulkRedrive {
        count: redriven.len(),
        redriven,
        remaining,
        limit,
    })
}

type BulkStep<'t, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, Error>> + Send + 't>>;

/// Applies `step` to the oldest open dead letters matching `filter` (at most its limit), in one
/// transaction; returns the results, how many matching ones remain, and the limit.
async fn bulk<T>(
    db: &Db,
    filter: &Filter,
    what: &str,
    step: impl for<'t> Fn(&'t mut Tx, String) -> BulkStep<'t, T>,
) -> Result<(Vec<T>, i64, u32), Error> {
    if filter.status.as_deref().is_some_and(|s| s != "open") {
        return Err(Error::Invalid(format!(
            "only open dead letters can be {what}"
        )));
    }
    let (clause, params) = where_clause(filter, Some("open"))?;
    let limit = filter.limit.unwrap_or(DEFAULT_BULK_REDRIVE);
    if !(1..=MAX_BULK_REDRIVE).contains(&limit) {
        return Err(Error::Invalid(format!(
            "limit must be between 1 and {MAX_BULK_REDRIVE}"
        )));
    }
    let mut tx = db.begin().await?;
    let ids: Vec<String> = tx
        .query(
            &format!("SELECT id FROM dead_letters{clause} ORDER BY indexed_at, id LIMIT {limit}"),
            &params,
        )
        .await?
        .iter()
        .map(|r| r.str(0).map(str::to_owned))
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(step(&mut tx, id).await?);
    }
    let remaining = tx
        .query(
            &format!("SELECT COUNT(*) FROM dead_letters{clause}"),
            &params,
        )
        .await?
        .first()
        .map(|r| r.i64(0))
        .transpose()?
        .unwrap_or(0);
    tx.commit().await?;
    Ok((out, remaining, limit))
}

/// Closes an open dead letter without redriving it; the reason is kept. The group that
/// dead-lettered it is told (a discard marker on the original topic, under the record's key), so
/// that it releases the records it parked behind it (see `stage::park`).
pub async fn discard(db: &Db, id: &str, reason: &str) -> Result<DeadLetter, Error> {
    if reason.trim().is_empty() {
        return Err(Error::Invalid("a discard needs a reason".into()));
    }
    let mut tx = db.begin().await?;
    let out = discard_in(&mut tx, id, reason).await?;
    tx.commit().await?;
    Ok(out)
}

async fn discard_in(tx: &mut Tx, id: &str, reason: &str) -> Result<DeadLetter, Error> {
    let rows = tx
        .query(
            "SELECT status, original_topic, original_partition, original_offset, consumer, record_key FROM dead_letters WHERE id = $1",
            params![id],
        )
        .await?;
    let row = rows.first().ok_or_else(|| Error::NotFound(id.to_owned()))?;
    let status = row.str(0)?.to_owned();
    if status != "open" {
        return Err(Error::NotOpen {
            id: id.to_owned(),
            status,
        });
    }
    let topic = row.str(1)?.to_owned();
    let consumer = row.str(4)?.to_owned();
    if let Some(key) = row.opt_bytes(5)? {
        let mut hdrs = vec![
            (
                headers::DISCARDED_FROM.to_owned(),
                Bytes::copy_from_slice(id.as_bytes()),
            ),
            (
                headers::REDRIVEN_ORIGIN.to_owned(),
                Bytes::from(format!("{topic}/{}/{}", row.i64(2)?, row.i64(3)?).into_bytes()),
            ),
        ];
        if consumer != "unknown" {
            hdrs.push((
                headers::REDRIVEN_FOR.to_owned(),
                Bytes::copy_from_slice(consumer.as_bytes()),
            ));
        }
        let marker = Message {
            topic,
            key: Some(Bytes::copy_from_slice(key)),
            value: Bytes::new(),
            headers: hdrs,
            timestamp_ms: None,
        };
        outbox::enqueue(tx, &[marker]).await?;
    }
    tx.execute(
        "UPDATE dead_letters SET status = 'discarded', status_reason = $2, status_at = $3 WHERE id = $1",
        params![id, reason, shopflow_envelope::sim::now().timestamp_millis()],
    )
    .await?;
    let rows = tx
        .query(
            &format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1"),
            params![id],
        )
        .await?;
    let out = letter(&rows[0])?;
    tracing::info!(id, reason, "dead letter discarded");
    Ok(out)
}

/// What a bulk discard did.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkDiscard {
    pub discarded: Vec<DeadLetter>,
    pub count: usize,
    /// Open dead letters matching the filter that this call left (past its limit).
    pub remaining: i64,
    pub limit: u32,
}

/// Discards the oldest open dead letters matching `filter`, with one reason, in one transaction
/// (at most `limit`, as a bulk redrive): each group that parked keys behind them is told.
pub async fn discard_matching(
    db: &Db,
    filter: &Filter,
    reason: &str,
) -> Result<BulkDiscard, Error> {
    if reason.trim().is_empty() {
        return Err(Error::Invalid("a discard needs a reason".into()));
    }
    let reason = reason.to_owned();
    let (discarded, remaining, limit) = bulk(db, filter, "discarded", |tx, id| {
        let reason = reason.clone();
        Box::pin(async move { discard_in(tx, &id, &reason).await })
    })
    .await?;
    Ok(BulkDiscard {
        count: discarded.len(),
        discarded,
        remaining,
        limit,
    })
}
