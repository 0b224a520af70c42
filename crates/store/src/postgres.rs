//! PostgreSQL backend: a deadpool connection pool, one schema per service (`search_path`).

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

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
        // Create the schema with a plain connection first.
        {
            let (client, conn) = base.connect(NoTls).await?;
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

/// A transaction on a pooled connection.
#[derive(Debug)]
pub struct PgTx {
    client: Option<Object>,
    done: bool,
}

impl PgTx {
    pub(crate) fn client(&self) -> &Object {
        self.client.as_ref().expect("client present until drop")
    }

    pub(crate) async fn commit(mut self) -> Result<()> {
        self.client().batch_execute("COMMIT").await?;
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
