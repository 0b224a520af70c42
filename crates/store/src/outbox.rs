//! The transactional outbox and its relay.
//!
//! ```text
//!  handler tx: state change + outbox rows ──commit──▶ outbox table
//!                                                       │  wake-up (in-process signal / NOTIFY)
//!                                                       ▼
//!  Relay: fetch oldest rows ─▶ publish to the bus (durable) ─▶ delete exactly those rows
//! ```
//! A crash between publish and delete publishes the rows again: duplicates are possible, loss is
//! not, and the consumers' inbox turns the duplicate into a no-op. A rolled-back transaction
//! leaves no rows, so nothing is published for it.
//!
//! Order: rows are published in id order. On SQLite, id order is commit order. On PostgreSQL,
//! `enqueue` takes a transaction-scoped advisory lock per message key, so for each key id order is
//! commit order; one relay per schema runs at a time (a session advisory lock), so two relays can
//! never interleave.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use shopflow_bus::{Bus, Headers, Message};
use tokio::sync::Notify;
use tokio_postgres::types::ToSql;

use crate::postgres::PgDb;
use crate::{Db, Error, Result, Row, Tx, params};

const KEY_LOCK_CLASS: i32 = 0x5346_4f4b; // "SFOK"
const RELAY_LOCK_CLASS: i32 = 0x5346_4f52; // "SFOR"

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Adds messages to the outbox inside the caller's transaction.
pub async fn enqueue(tx: &mut Tx, messages: &[Message]) -> Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let now = now_us();
    match tx {
        Tx::Sqlite(t) => {
            let mut stmt = t.conn().prepare_cached(
                "INSERT INTO outbox (topic, msg_key, payload, headers, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for m in messages {
                stmt.execute(rusqlite::params![
                    m.topic,
                    m.key.as_deref(),
                    &m.value[..],
                    encode_headers(&m.headers),
                    now
                ])?;
            }
            drop(stmt);
            t.wrote_outbox = true;
        }
        Tx::Postgres(t) => {
            let client = t.client();
            let mut locks: Vec<i32> = messages
                .iter()
                .map(|m| shopflow_bus::murmur2(m.key.as_deref().unwrap_or(b"")))
                .collect();
            locks.sort_unstable();
            locks.dedup();
            let stmt = client
                .prepare_cached("SELECT pg_advisory_xact_lock($1, k) FROM UNNEST($2::int4[]) WITH ORDINALITY AS x(k, ord) ORDER BY ord")
                .await?;
            client.execute(&stmt, &[&KEY_LOCK_CLASS, &locks]).await?;
            let topics: Vec<&str> = messages.iter().map(|m| m.topic.as_str()).collect();
            let keys: Vec<Option<&[u8]>> = messages.iter().map(|m| m.key.as_deref()).collect();
            let payloads: Vec<&[u8]> = messages.iter().map(|m| &m.value[..]).collect();
            let headers: Vec<Vec<u8>> = messages
                .iter()
                .map(|m| encode_headers(&m.headers))
                .collect();
            let created: Vec<i64> = vec![now; messages.len()];
            let stmt = client
                .prepare_cached(
                    "INSERT INTO outbox (topic, msg_key, payload, headers, created_at)
                     SELECT t, k, p, h, c
                     FROM UNNEST($1::text[], $2::bytea[], $3::bytea[], $4::bytea[], $5::int8[])
                          WITH ORDINALITY AS x(t, k, p, h, c, ord)
                     ORDER BY ord",
                )
                .await?;
            let p: [&(dyn ToSql + Sync); 5] = [&topics, &keys, &payloads, &headers, &created];
            client.execute(&stmt, &p).await?;
            let stmt = client
                .prepare_cached("SELECT pg_notify('shopflow_outbox_' || current_schema(), '')")
                .await?;
            client.execute(&stmt, &[]).await?;
        }
    }
    Ok(())
}

/// Number of rows waiting in the outbox.
pub async fn backlog(db: &Db) -> Result<u64> {
    let rows = db.query("SELECT COUNT(*) FROM outbox", &[]).await?;
    rows.first()
        .map(|r| r.u64(0))
        .transpose()
        .map(|v| v.unwrap_or(0))
}

fn encode_headers(h: &Headers) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    for (n, v) in h {
        out.extend_from_slice(&(n.len() as u16).to_le_bytes());
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    out
}

fn decode_headers(b: &[u8]) -> Result<Headers> {
    let corrupt = || Error::Corrupt {
        what: "outbox headers",
        reason: "truncated header encoding".into(),
    };
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<&[u8]> {
        let s = b.get(pos..pos + n).ok_or_else(corrupt)?;
        pos += n;
        Ok(s)
    };
    let count = u16::from_le_bytes(take(2)?.try_into().map_err(|_| corrupt())?);
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let nl = u16::from_le_bytes(take(2)?.try_into().map_err(|_| corrupt())?) as usize;
        let name = String::from_utf8(take(nl)?.to_vec()).map_err(|_| corrupt())?;
        let vl = u32::from_le_bytes(take(4)?.try_into().map_err(|_| corrupt())?) as usize;
        out.push((name, Bytes::copy_from_slice(take(vl)?)));
    }
    Ok(out)
}

/// Settings of a relay.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Rows published per bus call.
    pub batch_size: usize,
    /// A fallback poll, for wake-ups that cannot arrive (a lost LISTEN connection).
    pub poll_interval: Duration,
    /// Pause after a failed round before trying again.
    pub retry_backoff: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            poll_interval: Duration::from_secs(1),
            retry_backoff: Duration::from_millis(200),
        }
    }
}

/// What a relay has done so far.
#[derive(Debug)]
pub struct RelayStats {
    pub published: AtomicU64,
    pub rounds: AtomicU64,
    pub failures: AtomicU64,
    /// Microseconds from enqueue to the bus acknowledging the publish.
    pub lag_us: Mutex<Histogram<u64>>,
}

impl Default for RelayStats {
    fn default() -> Self {
        Self {
            published: AtomicU64::new(0),
            rounds: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            lag_us: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds"),
            ),
        }
    }
}

/// Rows fetched from the outbox, ready to publish.
#[derive(Debug)]
pub struct Batch {
    ids: Vec<i64>,
    created_us: Vec<i64>,
    messages: Vec<Message>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }
}

/// Publishes outbox rows to the bus, oldest first, then deletes them.
#[derive(Debug)]
pub struct Relay<B: Bus> {
    db: Db,
    bus: B,
    config: RelayConfig,
    stats: Arc<RelayStats>,
}

impl<B: Bus> Relay<B> {
    pub fn new(db: Db, bus: B, config: RelayConfig) -> Self {
        Self {
            db,
            bus,
            config,
            stats: Arc::new(RelayStats::default()),
        }
    }

    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// The oldest rows, at most `batch_size`.
    pub async fn fetch(&self) -> Result<Batch> {
        let rows = self
            .db
            .query(
                "SELECT id, topic, msg_key, payload, headers, created_at FROM outbox ORDER BY id LIMIT $1",
                params![self.config.batch_size as u64],
            )
            .await?;
        let mut batch = Batch {
            ids: Vec::with_capacity(rows.len()),
            created_us: Vec::with_capacity(rows.len()),
            messages: Vec::with_capacity(rows.len()),
        };
        for r in &rows {
            batch.ids.push(r.i64(0)?);
            batch.created_us.push(r.i64(5)?);
            batch.messages.push(row_to_message(r)?);
        }
        Ok(batch)
    }

    /// Publishes a fetched batch; when it returns `Ok`, the bus has it durably.
    pub async fn publish(&self, batch: &Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.bus.publish(batch.messages.clone()).await?;
        metrics::counter!("shopflow_outbox_published_total").increment(batch.len() as u64);
        let now = now_us();
        let mut h = self.stats.lag_us.lock().expect("stats lock");
        for c in &batch.created_us {
            let _ = h.record((now - c).max(1) as u64);
        }
        Ok(())
    }

    /// Deletes exactly the rows of a published batch. Not fsynced: a delete lost in a crash only
    /// republishes rows the bus already has, which consumers' inboxes absorb.
    pub async fn acknowledge(&self, batch: Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin_relaxed().await?;
        match &mut tx {
            Tx::Sqlite(t) => {
                let mut stmt = t
                    .conn()
                    .prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
                for id in &batch.ids {
                    stmt.execute([id])?;
                }
            }
            Tx::Postgres(t) => {
                let stmt = t
                    .client()
                    .prepare_cached("DELETE FROM outbox WHERE id = ANY($1)")
                    .await?;
                t.client().execute(&stmt, &[&batch.ids]).await?;
            }
        }
        tx.commit().await?;
        self.stats
            .published
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// One round: fetch, publish, delete. Returns the number of rows relayed.
    pub async fn drain_once(&self) -> Result<usize> {
        let batch = self.fetch().await?;
        let n = batch.len();
        self.publish(&batch).await?;
        self.acknowledge(batch).await?;
        self.stats.rounds.fetch_add(1, Ordering::Relaxed);
        Ok(n)
    }

    /// Relays until `shutdown` completes, waking on every commit that wrote outbox rows (and at
    /// least every `poll_interval`). Errors are logged and retried; they never end the loop.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<()> {
        tokio::pin!(shutdown);
        let signal = Arc::new(Notify::new());
        let mut pg: Option<PgListener> = None;
        loop {
            // PostgreSQL: hold the relay lock and LISTEN before relaying.
            if let Db::Postgres(db) = &self.db
                && pg.as_ref().is_none_or(|l| l.task.is_finished())
            {
                pg = match PgListener::start(db, signal.clone()).await {
                    Ok(Some(l)) => Some(l),
                    Ok(None) => {
                        tracing::debug!("another relay holds this outbox; standing by");
                        tokio::select! {
                            _ = tokio::time::sleep(self.config.poll_interval) => continue,
                            _ = &mut shutdown => return Ok(()),
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox relay cannot listen; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(self.config.retry_backoff) => continue,
                            _ = &mut shutdown => return Ok(()),
                        }
                    }
                };
            }
            let wake = match &self.db {
                Db::Sqlite(db) => db.inner.outbox_signal.clone(),
                Db::Postgres(_) => signal.clone(),
            };
            match self.drain_once().await {
                Ok(n) if n >= self.config.batch_size => continue,
                Ok(_) => {}
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "outbox relay round failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(self.config.retry_backoff) => continue,
                        _ = &mut shutdown => return Ok(()),
                    }
                }
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(self.config.poll_interval) => {}
                _ = &mut shutdown => return Ok(()),
            }
        }
    }
}

fn row_to_message(r: &Row) -> Result<Message> {
    Ok(Message {
        topic: r.str(1)?.to_owned(),
        key: r.opt_bytes(2)?.map(Bytes::copy_from_slice),
        value: Bytes::copy_from_slice(r.bytes(3)?),
        headers: decode_headers(r.bytes(4)?)?,
        timestamp_ms: None,
    })
}

/// A dedicated PostgreSQL session that holds the relay lock of a schema and LISTENs for commits.
struct PgListener {
    _client: tokio_postgres::Client,
    task: tokio::task::JoinHandle<()>,
}

impl PgListener {
    async fn start(db: &PgDb, signal: Arc<Notify>) -> Result<Option<Self>> {
        let (client, mut conn) = db.config.connect(tokio_postgres::NoTls).await?;
        let wake = signal.clone();
        let task = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => wake.notify_one(),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "outbox LISTEN connection lost");
                        break;
                    }
                    None => break,
                }
            }
            wake.notify_one();
        });
        let got: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, hashtext(current_schema()))",
                &[&RELAY_LOCK_CLASS],
            )
            .await?
            .try_get(0)?;
        if !got {
            task.abort();
            return Ok(None);
        }
        client
            .batch_execute(&format!("LISTEN {}", db.outbox_channel()))
            .await?;
        Ok(Some(Self {
            _client: client,
            task,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_reject_truncation() {
        let h: Headers = vec![
            ("a".into(), Bytes::from_static(b"1")),
            ("bb".into(), Bytes::new()),
        ];
        let enc = encode_headers(&h);
        assert_eq!(decode_headers(&enc).unwrap(), h);
        for cut in 0..enc.len() {
            assert!(decode_headers(&enc[..cut]).is_err());
        }
    }
}
