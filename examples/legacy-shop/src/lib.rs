//! The legacy monolith of the migration guide: plain handlers over one PostgreSQL schema.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::Deserialize;
use serde_json::{Value, json};

/// The tables, created when missing.
pub fn schema_sql(schema: &str) -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.products (
             sku         TEXT PRIMARY KEY,
             name        TEXT NOT NULL,
             price_cents BIGINT NOT NULL,
             currency    TEXT NOT NULL DEFAULT 'EUR',
             description TEXT
         );
         CREATE TABLE IF NOT EXISTS {schema}.stock (
             sku      TEXT PRIMARY KEY REFERENCES {schema}.products (sku),
             quantity INTEGER NOT NULL CHECK (quantity >= 0)
         );
         CREATE TABLE IF NOT EXISTS {schema}.customers (
             id         TEXT PRIMARY KEY,
             created_at TIMESTAMPTZ NOT NULL DEFAULT now()
         );
         CREATE TABLE IF NOT EXISTS {schema}.orders (
             id          BIGSERIAL PRIMARY KEY,
             customer_id TEXT NOT NULL REFERENCES {schema}.customers (id),
             lines       JSONB NOT NULL,
             total_cents BIGINT NOT NULL,
             status      TEXT NOT NULL,
             created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
         );"
    )
}

#[derive(Clone, Debug)]
pub struct Legacy {
    pool: Pool,
    schema: Arc<str>,
}

impl Legacy {
    /// Connects to `url`, creating the schema's tables when missing.
    pub async fn connect(url: &str, schema: &str) -> anyhow::Result<Self> {
        if schema.is_empty()
            || !schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            anyhow::bail!("schema `{schema}`: lower-case letters, digits and _ only");
        }
        let config: tokio_postgres::Config = url.parse()?;
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager).max_size(16).build()?;
        pool.get().await?.batch_execute(&schema_sql(schema)).await?;
        Ok(Self {
            pool,
            schema: schema.into(),
        })
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/products", get(products))
            .route("/products/{sku}", get(product))
            .route("/orders", post(place_order))
            .route("/orders/{id}", get(order))
            .route("/backoffice/products/{sku}", put(backoffice_product))
            .route(
                "/health",
                get(|| async { axum::Json(json!({"status": "ok"})) }),
            )
            .with_state(Arc::new(self.clone()))
    }
}

struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let code = match self.0 {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::CONFLICT => "conflict",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid_request",
            _ => "internal",
        };
        (self.0, axum::Json(json!({"code": code, "message": self.1}))).into_response()
    }
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        tracing::error!(error = %e, "legacy shop: database error");
        Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

fn product_json(r: &tokio_postgres::Row) -> Value {
    json!({
        "sku": r.get::<_, String>(0),
        "name": r.get::<_, String>(1),
        "priceMinor": r.get::<_, i64>(2),
        "currency": r.get::<_, String>(3),
        "available": i64::from(r.get::<_, Option<i32>>(4).unwrap_or(0)),
    })
}

async fn products(State(l): State<Arc<Legacy>>) -> Result<axum::Json<Value>, Failure> {
    let s = &l.schema;
    let c = l.pool.get().await?;
    let rows = c
        .query(
            &format!(
                "SELECT p.sku, p.name, p.price_cents, p.currency, s.quantity FROM {s}.products p
                 LEFT JOIN {s}.stock s ON s.sku = p.sku ORDER BY p.sku LIMIT 1000"
            ),
            &[],
        )
        .await?;
    Ok(axum::Json(Value::Array(
        rows.iter().map(product_json).collect(),
    )))
}

async fn product(
    State(l): State<Arc<Legacy>>,
    Path(sku): Path<String>,
) -> Result<axum::Json<Value>, Failure> {
    let s = &l.schema;
    let c = l.pool.get().await?;
    let row = c
        .query_opt(
            &format!(
                "SELECT p.sku, p.name, p.price_cents, p.currency, s.quantity FROM {s}.products p
                 LEFT JOIN {s}.stock s ON s.sku = p.sku WHERE p.sku = $1"
            ),
            &[&sku],
        )
        .await?;
    row.map(|r| axum::Json(product_json(&r))).ok_or_else(|| {
        Failure(
            StatusCode::NOT_FOUND,
            format!("product `{sku}` does not exist"),
        )
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Line {
    sku: String,
    quantity: i32,
}

/// The same body the new shop takes; the legacy shop does not look at the payment (its
/// payment provider is called by a nightly batch, as such systems do).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlaceOrder {
    customer_id: String,
    items: Vec<Line>,
    #[allow(dead_code)]
    payment: Value,
    #[allow(dead_code)]
    shipping_address: Value,
}

async fn place_order(
    State(l): State<Arc<Legacy>>,
    body: axum::body::Bytes,
) -> Result<Response, Failure> {
    let req: PlaceOrder = serde_json::from_slice(&body)
        .map_err(|e| Failure(StatusCode::UNPROCESSABLE_ENTITY, format!("the order: {e}")))?;
    if req.items.is_empty() || req.items.iter().any(|i| i.quantity < 1) {
        return Err(Failure(
            StatusCode::UNPROCESSABLE_ENTITY,
            "an order has lines of at least 1".into(),
        ));
    }
    let s = &l.schema;
    let mut c = l.pool.get().await?;
    let tx = c.transaction().await?;
    tx.execute(
        &format!("INSERT INTO {s}.customers (id) VALUES ($1) ON CONFLICT DO NOTHING"),
        &[&req.customer_id],
    )
    .await?;
    let mut total = 0i64;
    for line in &req.items {
        let price = tx
            .query_opt(
                &format!("SELECT price_cents FROM {s}.products WHERE sku = $1"),
                &[&line.sku],
            )
            .await?
            .map(|r| r.get::<_, i64>(0))
            .ok_or_else(|| {
                Failure(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("unknown sku `{}`", line.sku),
                )
            })?;
        let taken = tx
            .execute(
                &format!("UPDATE {s}.stock SET quantity = quantity - $2 WHERE sku = $1 AND quantity >= $2"),
                &[&line.sku, &line.quantity],
            )
            .await?;
        if taken == 0 {
            return Err(Failure(
                StatusCode::CONFLICT,
                format!("`{}` is out of stock", line.sku),
            ));
        }
        total += price * i64::from(line.quantity);
    }
    let lines = json!(
        req.items
            .iter()
            .map(|i| json!({"sku": i.sku, "quantity": i.quantity}))
            .collect::<Vec<_>>()
    )
    .to_string();
    let id: i64 = tx
        .query_one(
            &format!("INSERT INTO {s}.orders (customer_id, lines, total_cents, status) VALUES ($1, ($2::text)::jsonb, $3, 'CONFIRMED') RETURNING id"),
            &[&req.customer_id, &lines, &total],
        )
        .await?
        .get(0);
    tx.commit().await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(
            json!({"orderId": format!("L-{id}"), "status": "CONFIRMED", "totalMinor": total}),
        ),
    )
        .into_response())
}

async fn order(
    State(l): State<Arc<Legacy>>,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, Failure> {
    let n: i64 = id
        .strip_prefix("L-")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            Failure(
                StatusCode::NOT_FOUND,
                format!("order `{id}` does not exist"),
            )
        })?;
    let s = &l.schema;
    let c = l.pool.get().await?;
    let row = c
        .query_opt(
            &format!(
                "SELECT customer_id, lines::text, total_cents, status FROM {s}.orders WHERE id = $1"
            ),
            &[&n],
        )
        .await?
        .ok_or_else(|| {
            Failure(
                StatusCode::NOT_FOUND,
                format!("order `{id}` does not exist"),
            )
        })?;
    Ok(axum::Json(json!({
        "orderId": id,
        "customerId": row.get::<_, String>(0),
        "items": serde_json::from_str::<Value>(&row.get::<_, String>(1)).unwrap_or(Value::Null),
        "totalMinor": row.get::<_, i64>(2),
        "status": row.get::<_, String>(3),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BackofficeProduct {
    name: String,
    price_minor: i64,
    currency: Option<String>,
    stock: i32,
}

async fn backoffice_product(
    State(l): State<Arc<Legacy>>,
    Path(sku): Path<String>,
    body: axum::body::Bytes,
) -> Result<axum::Json<Value>, Failure> {
    let p: BackofficeProduct = serde_json::from_slice(&body).map_err(|e| {
        Failure(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the product: {e}"),
        )
    })?;
    if p.stock < 0 || p.price_minor < 1 {
        return Err(Failure(
            StatusCode::UNPROCESSABLE_ENTITY,
            "stock >= 0 and priceMinor >= 1".into(),
        ));
    }
    let s = &l.schema;
    let mut c = l.pool.get().await?;
    let tx = c.transaction().await?;
    let currency = p.currency.unwrap_or_else(|| "EUR".into());
    tx.execute(
        &format!(
            "INSERT INTO {s}.products (sku, name, price_cents, currency) VALUES ($1, $2, $3, $4)
             ON CONFLICT (sku) DO UPDATE SET name = $2, price_cents = $3, currency = $4"
        ),
        &[&sku, &p.name, &p.price_minor, &currency],
    )
    .await?;
    tx.execute(
        &format!("INSERT INTO {s}.stock (sku, quantity) VALUES ($1, $2) ON CONFLICT (sku) DO UPDATE SET quantity = $2"),
        &[&sku, &p.stock],
    )
    .await?;
    tx.commit().await?;
    Ok(axum::Json(
        json!({"sku": sku, "name": p.name, "priceMinor": p.price_minor, "currency": currency, "available": p.stock}),
    ))
}
