//! PostgreSQL backend: a deadpool connection pool, one schema per service (`search_path`).

use std::future::Future;
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

use shopflow_bus::Message;
use tokio::sync::Notify;

use super::EventRow;
use crate::{Error, Result, Row, Value};

#[derive(Clone, Debug)]
pub struct PgDb {
    pub(crate) pool: Pool,
    pub(crate) schema: Arc<str>,
    pub(crate) config: tokio_postgres::Config,
}

/// A schema name: lowercase letters, digits and `_`, not starting with a digit, at most 63 bytes.
pub(crate) fn validate_schema(schema: &str) -> Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            what: "schema name",
            reason: format!("`{schema}` must be 1-63 of [a-z0-9_], not starting with a digit"),
        })
    }
}

impl PgDb {
    pub(crate) async fn connect(url: &str, schema: &str, pool_size: usize) -> Result<Self> {
        validate_schema(schema)?;
        let base: tokio_postgres::Config =
            url.parse()
                .map_err(|e: tokio_postgres::Error| Error::Invalid {
                    what: "PostgreSQL URL",
                    reason: e.to_string(),
                })?;
        // A server that does not answer is an error within seconds, naming where it was looked
        // for — not a start-up that hangs.
        let mut base = base;
        if base.get_connect_timeout().is_none() {
            base.connect_timeout(CONNECT_TIMEOUT);
        }
        // Create the schema with a plain connection first.
        {
            let (client, conn) = base.connect(NoTls).await.map_err(|e| Error::Unavailable {
                reason: format!(
                    "cannot connect to PostgreSQL at {} within {} s: {}",
                    where_(&base),
                    CONNECT_TIMEOUT.as_secs(),
                    postgres_reason(&e)
                ),
            })?;
            let task = tokio::spawn(conn);
            client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await
                .or_else(|e| {
                    // Two processes racing to create the schema: the loser sees a unique violation.
                    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })?;
            drop(client);
            let _ = task.await;
        }
        let mut config = base.clone();
        config.options(format!("-c search_path={schema}"));
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .build()
            .map_err(|e| Error::Pool {
                reason: e.to_string(),
            })?;
        Ok(Self {
            pool,
            schema: Arc::from(schema),
            config,
        })
    }

    pub(crate) async fn client(&self) -> Result<Object> {
        self.pool.get().await.map_err(|e| Error::Pool {
            reason: e.to_string(),
        })
    }

    pub(crate) async fn begin(&self, relaxed: bool) -> Result<PgTx> {
        let client = self.client().await?;
        client
            .batch_execute(if relaxed {
                "BEGIN; SET LOCAL synchronous_commit = off"
            } else {
                "BEGIN"
            })
            .await?;
        Ok(PgTx {
            client: Some(client),
            done: false,
            before_commit: Vec::new(),
            positions: 0,
            deferred: Vec::new(),
            notifies: false,
            pending: Default::default(),
        })
    }

    pub(crate) async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let client = self.client().await?;
        query(&client, sql, params).await
    }

    /// The channel the outbox relay listens on.
    pub(crate) fn outbox_channel(&self) -> String {
        format!("shopflow_outbox_{}", self.schema)
    }
}

fn refs(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

pub(crate) async fn query(client: &Object, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
    let stmt = client.prepare_cached(sql).await?;
    let rows = client.query(&stmt, &refs(params)).await?;
    rows.iter().map(Row::from_postgres).collect()
}

pub(crate) async fn execute(client: &Object, sql: &str, params: &[Value]) -> Result<u64> {
    let stmt = client.prepare_cached(sql).await?;
    Ok(client.execute(&stmt, &refs(params)).await?)
}

/// Advisory-lock class of outbox keys: `enqueue` locks each message key for the rest of its
/// transaction, which makes id order equal commit order per key.
const KEY_LOCK_CLASS: i32 = 0x5346_4f4b; // "SFOK"
/// Advisory-lock class of the relay lease: one relay per schema.
const RELAY_LOCK_CLASS: i32 = 0x5346_4f52; // "SFOR"

pub(crate) async fn stream_versions(
    client: &Object,
    streams: &[&str],
) -> Result<Vec<(String, u64)>> {
    let stmt = client
        .prepare_cached("SELECT stream_id, version FROM streams WHERE stream_id = ANY($1)")
        .await?;
    let mut out = Vec::new();
    for r in client.query(&stmt, &[&streams]).await? {
        let id: String = r.try_get(0)?;
        let v: i64 = r.try_get(1)?;
        out.push((id, v as u64));
    }
    Ok(out)
}

/// Inserts event rows and sets each touched stream's version, in one statement. Positions are
/// `(transaction id << 20) + first + i` (see the migration `006_positions_by_transaction.sql`).
pub(crate) async fn insert_events(
    client: &Object,
    rows: &[EventRow],
    versions: &[(&str, u64)],
    first: i64,
) -> Result<()> {
    let streams: Vec<&str> = rows.iter().map(|r| r.stream.as_str()).collect();
    let vers: Vec<i64> = rows.iter().map(|r| r.version).collect();
    let ids: Vec<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
    let types: Vec<&str> = rows.iter().map(|r| r.event_type.as_str()).collect();
    let evs: Vec<i64> = rows.iter().map(|r| r.event_version).collect();
    let ats: Vec<i64> = rows.iter().map(|r| r.recorded_at).collect();
    let envs: Vec<&[u8]> = rows.iter().map(|r| r.envelope.as_slice()).collect();
    let sids: Vec<&str> = versions.iter().map(|(s, _)| *s).collect();
    let svs: Vec<i64> = versions.iter().map(|(_, v)| *v as i64).collect();
    let stmt = client
        .prepare_cached(
            "WITH appended AS (
                 INSERT INTO events (position, stream_id, version, event_id, event_type, event_version, recorded_at, envelope)
                 SELECT (pg_current_xact_id()::text::bigint << 20) + $8 + ord - 1, s, v, e, t, ev, r, env
                 FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::int8[], $6::int8[], $7::bytea[])
                      WITH ORDINALITY AS x(s, v, e, t, ev, r, env, ord)
             )
             INSERT INTO streams (stream_id, version) SELECT * FROM UNNEST($9::text[], $10::int8[])
             ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version",
        )
        .await?;
    let params: [&(dyn ToSql + Sync); 10] = [
        &streams, &vers, &ids, &types, &evs, &ats, &envs, &first, &sids, &svs,
    ];
    client.execute(&stmt, &params).await?;
    Ok(())
}

/// Queues the outbox rows of `messages` on `tx` (sent with its next statement or its commit):
/// the key locks, the insert and the relay's wake-up need no answer but success.
pub(crate) async fn insert_outbox(tx: &mut PgTx, messages: &[Message], now_us: i64) -> Result<()> {
    let mut locks: Vec<i32> = messages
        .iter()
        .map(|m| shopflow_bus::murmur2(m.key.as_deref().unwrap_or(b"")))
        .collect();
    locks.sort_unstable();
    locks.dedup();
    tx.defer(
        "SELECT pg_advisory_xact_lock($1, k) FROM UNNEST($2::int4[]) WITH ORDINALITY AS x(k, ord) ORDER BY ord",
        vec![Box::new(KEY_LOCK_CLASS), Box::new(locks)],
    )
    .await?;
    let topics: Vec<String> = messages.iter().map(|m| m.topic.clone()).collect();
    let keys: Vec<Option<Vec<u8>>> = messages
        .iter()
        .map(|m| m.key.as_ref().map(|k| k.to_vec()))
        .collect();
    let payloads: Vec<Vec<u8>> = messages.iter().map(|m| m.value.to_vec()).collect();
    let headers: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| crate::headers::encode(&m.headers))
        .collect();
    let created: Vec<i64> = vec![now_us; messages.len()];
    tx.defer(
        "INSERT INTO outbox (topic, msg_key, payload, headers, created_at)
         SELECT t, k, p, h, c
         FROM UNNEST($1::text[], $2::bytea[], $3::bytea[], $4::bytea[], $5::int8[])
              WITH ORDINALITY AS x(t, k, p, h, c, ord)
         ORDER BY ord",
        vec![
            Box::new(topics),
            Box::new(keys),
            Box::new(payloads),
            Box::new(headers),
            Box::new(created),
        ],
    )
    .await?;
    if !tx.notifies {
        // One wake-up per transaction (PostgreSQL folds equal notifications anyway).
        tx.notifies = true;
        tx.defer(
            "SELECT pg_notify('shopflow_outbox_' || current_schema(), '')",
            Vec::new(),
        )
        .await?;
    }
    Ok(())
}

pub(crate) async fn delete_outbox(client: &Object, ids: &[i64]) -> Result<()> {
    let stmt = client
        .prepare_cached("DELETE FROM outbox WHERE id = ANY($1)")
        .await?;
    client.execute(&stmt, &[&ids]).await?;
    Ok(())
}

/// A dedicated PostgreSQL session that holds the relay lock of a schema and LISTENs for commits.
pub(crate) struct PgListener {
    _client: tokio_postgres::Client,
    task: tokio::task::JoinHandle<()>,
}

impl PgListener {
    /// `None` when another session holds the relay lock.
    pub(crate) async fn start(db: &PgDb, signal: Arc<Notify>) -> Result<Option<Self>> {
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

    pub(crate) fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Most events one transaction may append: the low 20 bits of a position.
const POSITIONS_PER_TRANSACTION: usize = 1 << 20;

/// A transaction on a pooled connection.
pub struct PgTx {
    client: Option<Object>,
    done: bool,
    pub(crate) before_commit: super::Hooks,
    /// Event positions this transaction has taken (the index part of the next one).
    positions: usize,
    /// Statements whose answer is only success or failure, sent with the next statement (one
    /// round trip for all of them; see [`PgTx::pipelined`]).
    deferred: Vec<Deferred>,
    /// Whether the relay's wake-up is already queued.
    notifies: bool,
    /// What the transaction publishes, written to the outbox when it commits.
    pub(crate) pending: crate::outbox::Pending,
}

/// A parameter of a deferred statement, owned until it is sent.
pub(crate) type OwnedParam = Box<dyn ToSql + Sync + Send>;

/// A statement queued on a transaction.
enum Deferred {
    /// Without parameters (savepoints): the simple protocol.
    Simple(String),
    /// Prepared already, so that sending it is the first thing its future does.
    Prepared(tokio_postgres::Statement, Vec<OwnedParam>),
}

async fn run_deferred(client: &Object, d: &Deferred) -> Result<()> {
    match d {
        Deferred::Simple(sql) => client.batch_execute(sql).await?,
        Deferred::Prepared(stmt, params) => {
            let refs: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            client.execute(stmt, &refs).await?;
        }
    }
    Ok(())
}

impl std::fmt::Debug for PgTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTx")
            .field("done", &self.done)
            .field("before_commit", &self.before_commit.len())
            .finish()
    }
}

impl PgTx {
    /// The connection. Private: every statement of the transaction goes through
    /// [`PgTx::pipelined`] (or [`PgTx::defer`]), so none can overtake a deferred one.
    fn client(&self) -> &Object {
        self.client.as_ref().expect("client present until drop")
    }

    /// Queues a statement that needs no answer but success: it is sent with the next statement
    /// of the transaction (or its commit), and its failure is that statement's failure.
    pub(crate) async fn defer(&mut self, sql: &str, params: Vec<OwnedParam>) -> Result<()> {
        let d = if params.is_empty() && !sql.contains('$') {
            Deferred::Simple(sql.to_owned())
        } else {
            Deferred::Prepared(self.client().prepare_cached(sql).await?, params)
        };
        self.deferred.push(d);
        Ok(())
    }

    /// Runs `main` on the connection with every deferred statement written before it, all in
    /// one round trip (tokio-postgres pipelines requests issued together); the first failure,
    /// in the order they were sent, is the result.
    pub(crate) async fn pipelined<'a, T, F>(
        &'a mut self,
        main: impl FnOnce(&'a Object) -> F,
    ) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let deferred = std::mem::take(&mut self.deferred);
        let client = self.client();
        if deferred.is_empty() {
            return main(client).await;
        }
        // join_all polls its futures in order on its first poll, and each sends its request on
        // its first poll: the deferred statements go out before `main`'s.
        let before =
            futures_util::future::join_all(deferred.iter().map(|d| run_deferred(client, d)));
        let (before, out) = futures_util::future::join(before, main(client)).await;
        for r in before {
            r?;
        }
        out
    }

    /// Takes the index part of `n` event positions; returns the first.
    pub(crate) fn take_positions(&mut self, n: usize) -> Result<i64> {
        let first = self.positions;
        if first + n > POSITIONS_PER_TRANSACTION {
            return Err(Error::Invalid {
                what: "append",
                reason: format!(
                    "one transaction may append at most {POSITIONS_PER_TRANSACTION} events"
                ),
            });
        }
        self.positions += n;
        Ok(first as i64)
    }

    pub(crate) async fn commit(mut self) -> Result<()> {
        let hooks = std::mem::take(&mut self.before_commit);
        if !hooks.is_empty() {
            super::sqlite::blocking(|| super::run_before_commit(hooks))?;
        }
        // A deferred statement that failed fails the commit (PostgreSQL would answer the COMMIT
        // of the aborted transaction with a rollback, not an error).
        self.pipelined(|c| async move { Ok(c.batch_execute("COMMIT").await?) })
            .await?;
        self.done = true;
        Ok(())
    }

    pub(crate) async fn rollback(mut self) -> Result<()> {
        self.done = true;
        self.client().batch_execute("ROLLBACK").await?;
        Ok(())
    }
}

impl Drop for PgTx {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let Some(client) = self.client.take() else {
            return;
        };
        // Abandoned mid-transaction: roll back before the connection goes back to the pool, or
        // take it out of the pool when there is no runtime to do that on.
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    if let Err(e) = client.batch_execute("ROLLBACK").await {
                        tracing::warn!(error = %e, "rollback of an abandoned transaction failed; dropping the connection");
                        let _ = Object::take(client);
                    }
                });
            }
            Err(_) => {
                let _ = Object::take(client);
            }
        }
    }
}

/// How long a connection attempt may take before start-up gives up on the server.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `host:port/dbname` of a configuration, for messages (never the password).
fn where_(c: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .zip(c.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(h, p)| match h {
            tokio_postgres::config::Host::Tcp(h) => format!("{h}:{p}"),
            tokio_postgres::config::Host::Unix(path) => format!("{}:{p}", path.display()),
        })
        .collect();
    format!("{}/{}", hosts.join(","), c.get_dbname().unwrap_or(""))
}

/// The error with its cause (tokio-postgres says "error connecting to server" and keeps the
/// why in its source).
fn postgres_reason(e: &tokio_postgres::Error) -> String {
    let mut out = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}
