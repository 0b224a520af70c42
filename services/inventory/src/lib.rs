#![doc = include_str!("../README.md")]

pub mod legacy;
mod service;
pub use service::SERVICE;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use shopflow_contracts::{
    InventoryUpdated, OrderLine, OrderShipped, PaymentCompleted, ProductUpdated, ReleaseStock,
    ReserveStock, ShipmentFailed, Sku, StockReleased, StockReservationFailed, StockReserved,
};
use shopflow_envelope::{CorrelationId, Envelope, Event, Meta};
use shopflow_http::{ApiError, Json, reply};
use shopflow_runtime::{Handler, HandlerError, Outgoing};
use shopflow_store::emit;
use shopflow_store::{Db, Migration, Tx, params};

pub const NAME: &str = "inventory";
const SOURCE: &str = "inventory-service";

pub const MIGRATIONS: &[Migration] = &[
    Migration::portable(
        1,
        "inventory",
        include_str!("../migrations/001_inventory.sql"),
    ),
    Migration::portable(2, "legacy", include_str!("../migrations/002_legacy.sql")),
];

#[derive(Clone, Debug)]
pub struct Inventory {
    db: Db,
}

/// A product's name, price and stock, as the operator sets them.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PutProduct {
    #[schema(schema_with = shopflow_http::text200)]
    pub name: String,
    /// Integer minor units (cents): 1 to 10^12.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64, example = 1299)]
    #[serde(deserialize_with = "shopflow_http::int::i64")]
    pub price_minor: i64,
    /// ISO 4217: three capital letters.
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: String,
    /// The quantity available from now on: 0 to 10^9.
    #[schema(minimum = 0, maximum = 1_000_000_000, example = 25)]
    #[serde(deserialize_with = "shopflow_http::int::i64")]
    pub stock: i64,
}

/// A product and its stock.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductView {
    pub sku: String,
    pub name: String,
    pub price_minor: i64,
    pub currency: String,
    pub available: i64,
    pub reserved: i64,
    pub shipped: i64,
}

pub fn validate_currency(c: &str) -> Result<(), ApiError> {
    if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "`{c}` is not an ISO 4217 currency code (three capital letters)"
        )))
    }
}

impl Inventory {
    pub async fn open(db: Db) -> shopflow_store::Result<Self> {
        SERVICE.migrate(&db).await?;
        Ok(Self { db })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/products", get(list_products))
            .route("/products/{sku}", get(get_product).put(put_product))
            .route("/orders/{id}/reservation", get(get_reservation))
            .with_state(Arc::new(self.clone()))
    }

    /// Creates or updates a product; `stock` becomes its available quantity. Returns whether it
    /// was created.
    pub async fn put(
        &self,
        sku: &str,
        req: PutProduct,
        correlation: CorrelationId,
    ) -> Result<(bool, ProductView), ApiError> {
        let sku = Sku::parse(sku).map_err(ApiError::invalid)?;
        let name = shopflow_http::text("name", &req.name, 200)?;
        // A price of 0 would make every order of it fail at the payment gateway.
        if !(1..=1_000_000_000_000).contains(&req.price_minor) {
            return Err(ApiError::invalid(
                "priceMinor must be between 1 and 10^12 (minor units)",
            ));
        }
        validate_currency(&req.currency)?;
        if !(0..=1_000_000_000).contains(&req.stock) {
            return Err(ApiError::invalid("stock must be between 0 and 10^9"));
        }
        let now = shopflow_envelope::sim::now().timestamp_millis();
        let mut tx = self.db.begin().await?;
        // The row is read to compute the stock delta: on PostgreSQL it is locked for that, or a
        // reservation committing in between would be counted wrong (SQLite's writer is alone).
        let lock = tx.for_update();
        let existing = tx
            .query(
                &format!("SELECT name, price_minor, currency, available, reserved, shipped FROM products WHERE sku = $1{lock}"),
                params![sku.as_str()],
            )
            .await?;
        let (created, catalog_changed, reserved, shipped) = match existing.first() {
            None => {
                tx.execute(
                    "INSERT INTO products (sku, name, price_minor, currency, available, reserved, shipped, stocked, updated_at)
                     VALUES ($1, $2, $3, $4, $5, 0, 0, $5, $6)",
                    params![sku.as_str(), name.as_str(), req.price_minor, req.currency.as_str(), req.stock, now],
                )
                .await?;
                (true, true, 0, 0)
            }
            Some(r) => {
                let changed =
                    r.str(0)? != name || r.i64(1)? != req.price_minor || r.str(2)? != req.currency;
                let delta = req.stock - r.i64(3)?;
                tx.execute(
                    "UPDATE products SET name = $2, price_minor = $3, currency = $4, available = $5,
                         stocked = stocked + $6, updated_at = $7 WHERE sku = $1",
                    params![sku.as_str(), name.as_str(), req.price_minor, req.currency.as_str(), req.stock, delta, now],
                )
                .await?;
                (false, changed, r.i64(4)?, r.i64(5)?)
            }
        };
        let meta =
            || Meta::new(SOURCE, sku.as_str(), now as u64).with_correlation(correlation.clone());
        let mut out = vec![Outgoing::event(
            &InventoryUpdated {
                sku: sku.clone(),
                available: req.stock,
                reserved,
            },
            meta(),
        )?];
        if catalog_changed {
            let e = ProductUpdated {
                sku: sku.clone(),
                name: name.clone(),
                price_minor: req.price_minor,
                currency: req.currency.clone(),
            };
            out.insert(0, Outgoing::event(&e, meta())?);
        }
        emit(&mut tx, out).await?;
        tx.commit().await?;
        Ok((
            created,
            ProductView {
                sku: sku.to_string(),
                name,
                price_minor: req.price_minor,
                currency: req.currency,
                available: req.stock,
                reserved,
                shipped,
            },
        ))
    }

    pub async fn get(&self, sku: &str) -> Result<ProductView, ApiError> {
        let rows = self
            .db
            .query("SELECT sku, name, price_minor, currency, available, reserved, shipped FROM products WHERE sku = $1", params![sku])
            .await?;
        rows.first()
            .map(product_view)
            .transpose()?
            .ok_or_else(|| ApiError::not_found("product", sku))
    }

    pub async fn list(&self) -> Result<Vec<ProductView>, ApiError> {
        let rows = self
            .db
            .query("SELECT sku, name, price_minor, currency, available, reserved, shipped FROM products ORDER BY sku LIMIT 1000", &[])
            .await?;
        rows.iter().map(product_view).collect()
    }

    /// The handler of the inventory's events.
    pub fn handler(&self) -> StockHandler {
        StockHandler
    }
}

fn product_view(r: &shopflow_store::Row) -> Result<ProductView, ApiError> {
    Ok(ProductView {
        sku: r.str(0)?.to_owned(),
        name: r.str(1)?.to_owned(),
        price_minor: r.i64(2)?,
        currency: r.str(3)?.to_owned(),
        available: r.i64(4)?,
        reserved: r.i64(5)?,
        shipped: r.i64(6)?,
    })
}

/// Every product and its stock.
#[utoipa::path(get, path = "/products", tag = "inventory", operation_id = "listProducts",
    responses(
        shopflow_http::responses::Unavailable,
        (status = 200, description = "The catalog", body = Vec<ProductView>),
    ))]
async fn list_products(
    State(s): State<Arc<Inventory>>,
) -> Result<Json<Vec<ProductView>>, ApiError> {
    s.list().await.map(Json)
}

/// A product and its stock.
#[utoipa::path(get, path = "/products/{sku}", tag = "inventory", operation_id = "getProduct",
    params(("sku" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The stock-keeping unit")),
    responses(
        shopflow_http::responses::Unavailable,
        (status = 200, description = "The product", body = ProductView),
        (status = 404, description = "No such product", body = shopflow_http::ErrorBody),
        (status = 422, description = "Not a sku", body = shopflow_http::ErrorBody),
    ))]
async fn get_product(
    State(s): State<Arc<Inventory>>,
    Path(sku): Path<String>,
) -> Result<Json<ProductView>, ApiError> {
    s.get(&sku).await.map(Json)
}

/// The stock an order holds: `RESERVED`, `SHIPPED`, `RELEASED` (given back, or a compensation
/// that came first), or `FAILED` (not enough stock).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReservationView {
    pub order_id: String,
    pub status: String,
    pub items: Vec<OrderLine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RFC 3339, UTC.
    pub updated_at: String,
}

/// An order's reservation (the order id is the capability, as for its payment and shipment).
#[utoipa::path(get, path = "/orders/{id}/reservation", tag = "inventory", operation_id = "getReservation",
    params(("id" = String, Path, description = "The order id (`ord_…`)")),
    responses(
        shopflow_http::responses::Unavailable,
        (status = 200, description = "The reservation", body = ReservationView),
        (status = 404, description = "No reservation for this order (yet)", body = shopflow_http::ErrorBody),
    ))]
async fn get_reservation(
    State(s): State<Arc<Inventory>>,
    Path(id): Path<String>,
) -> Result<Json<ReservationView>, ApiError> {
    let rows = s
        .db
        .query(
            "SELECT order_id, status, items, reason, updated_at FROM reservations WHERE order_id = $1",
            params![id.as_str()],
        )
        .await?;
    let r = rows
        .first()
        .ok_or_else(|| ApiError::not_found("reservation of order", &id))?;
    let items: Vec<OrderLine> = serde_json::from_str(r.str(2)?).map_err(|e| {
        ApiError::from(shopflow_store::Error::Corrupt {
            what: "reservation items",
            reason: e.to_string(),
        })
    })?;
    Ok(Json(ReservationView {
        order_id: r.str(0)?.to_owned(),
        status: r.str(1)?.to_owned(),
        items,
        reason: r.opt_str(3)?.map(str::to_owned),
        updated_at: chrono::DateTime::from_timestamp_millis(r.i64(4)?)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }))
}

/// Create (201) or update (200) a product and set its stock: publishes `ProductUpdated` and
/// `InventoryUpdated`.
#[utoipa::path(put, path = "/products/{sku}", tag = "inventory", operation_id = "putProduct",
    params(("sku" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The stock-keeping unit")),
    request_body = PutProduct,
    security(("adminToken" = [])),
    responses(
        shopflow_http::responses::JsonBody,
        shopflow_http::responses::NeedsAdmin,
        shopflow_http::responses::Unavailable,
        (status = 200, description = "Updated", body = ProductView),
        (status = 201, description = "Created", body = ProductView),
        (status = 409, description = "Created twice at once: try again", body = shopflow_http::ErrorBody),
    ))]
async fn put_product(
    State(s): State<Arc<Inventory>>,
    Path(sku): Path<String>,
    headers: axum::http::HeaderMap,
    Json(req): Json<PutProduct>,
) -> Result<Response, ApiError> {
    let (created, view) = s
        .put(&sku, req, shopflow_http::correlation(&headers))
        .await?;
    Ok(reply(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        view,
    ))
}

/// Reacts to payments and shipments.
#[derive(Debug)]
pub struct StockHandler;

/// Quantities per sku (an order may list a sku twice).
fn quantities(items: &[OrderLine]) -> BTreeMap<&str, i64> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i.sku.as_str()).or_insert(0) += i64::from(i.quantity);
    }
    m
}

impl StockHandler {
    async fn reservation(tx: &mut Tx, order_id: &str) -> Result<Option<String>, HandlerError> {
        let rows = tx
            .query(
                "SELECT status FROM reservations WHERE order_id = $1",
                params![order_id],
            )
            .await?;
        Ok(rows
            .first()
            .map(|r| r.str(0).map(str::to_owned))
            .transpose()?)
    }

    async fn reserve(
        tx: &mut Tx,
        env: &Envelope,
        e: ReserveStock,
    ) -> Result<Vec<Outgoing>, HandlerError> {
        let order = e.order_id.as_str();
        if Self::reservation(tx, order).await?.is_some() {
            return Ok(vec![]); // reserved, failed or compensated already
        }
        let now = shopflow_envelope::sim::now().timestamp_millis();
        let items_json =
            serde_json::to_string(&e.items).map_err(|e| HandlerError::Permanent(e.to_string()))?;
        // Savepoints and the reservation row need no answer: deferred, they travel with the next
        // statement on PostgreSQL instead of costing a round trip each.
        tx.savepoint("reserve").await?;
        let mut failure = None;
        for (sku, q) in quantities(&e.items) {
            let n = tx
                .execute(
                    "UPDATE products SET available = available - $2, reserved = reserved + $2, updated_at = $3
                     WHERE sku = $1 AND available >= $2",
                    params![sku, q, now],
                )
                .await?;
            if n == 0 {
                let known = !tx
                    .query("SELECT 1 FROM products WHERE sku = $1", params![sku])
                    .await?
                    .is_empty();
                failure = Some(if known {
                    format!("insufficient stock for {sku}")
                } else {
                    format!("unknown sku {sku}")
                });
                break;
            }
        }
        let meta = Meta::caused_by(env, SOURCE, order, 1);
        match failure {
            None => {
                tx.release_savepoint("reserve").await?;
                tx.execute_deferred(
                    "INSERT INTO reservations (order_id, status, items, updated_at) VALUES ($1, 'RESERVED', $2, $3)",
                    params![order, items_json, now],
                )
                .await?;
                let r = StockReserved {
                    order_id: e.order_id,
                    items: e.items,
                    shipping_address: e.shipping_address,
                };
                Ok(vec![Outgoing::event(&r, meta)?])
            }
            Some(reason) => {
                tx.rollback_to_savepoint("reserve").await?;
                tx.release_savepoint("reserve").await?;
                tx.execute_deferred(
                    "INSERT INTO reservations (order_id, status, items, reason, updated_at) VALUES ($1, 'FAILED', $2, $3, $4)",
                    params![order, items_json, reason.as_str(), now],
                )
                .await?;
                Ok(vec![Outgoing::event(
                    &StockReservationFailed {
                        order_id: e.order_id,
                        reason,
                    },
                    meta,
                )?])
            }
        }
    }

    async fn settle(
        tx: &mut Tx,
        env: &Envelope,
        order_id: &shopflow_contracts::OrderId,
        items: Vec<OrderLine>,
        shipped: bool,
    ) -> Result<Vec<Outgoing>, HandlerError> {
        let order = order_id.as_str();
        let now = shopflow_envelope::sim::now().timestamp_millis();
        let status = Self::reservation(tx, order).await?;
        if status.as_deref() != Some("RESERVED") {
            if status.is_none() {
                // The compensation arrived before the reservation: leave a tombstone so that a
                // late PaymentCompleted does not reserve for an order that will not ship.
                let items_json = serde_json::to_string(&items)
                    .map_err(|e| HandlerError::Permanent(e.to_string()))?;
                tx.execute_deferred(
                    "INSERT INTO reservations (order_id, status, items, reason, updated_at) VALUES ($1, 'RELEASED', $2, 'compensated before reservation', $3)",
                    params![order, items_json, now],
                )
                .await?;
            }
            return Ok(vec![]);
        }
        let sql = if shipped {
            "UPDATE products SET reserved = reserved - $2, shipped = shipped + $2, updated_at = $3 WHERE sku = $1"
        } else {
            "UPDATE products SET reserved = reserved - $2, available = available + $2, updated_at = $3 WHERE sku = $1"
        };
        // No answer needed: on PostgreSQL these travel with the next statement (or the commit)
        // instead of costing a round trip each; a failure still fails the transaction.
        for (sku, q) in quantities(&items) {
            tx.execute_deferred(sql, params![sku, q, now]).await?;
        }
        tx.execute_deferred(
            "UPDATE reservations SET status = $2, updated_at = $3 WHERE order_id = $1",
            params![order, if shipped { "SHIPPED" } else { "RELEASED" }, now],
        )
        .await?;
        if shipped {
            return Ok(vec![]);
        }
        let meta = Meta::caused_by(env, SOURCE, order, 2);
        Ok(vec![Outgoing::event(
            &StockReleased {
                order_id: order_id.clone(),
                items,
            },
            meta,
        )?])
    }
}

impl Handler for StockHandler {
    fn name(&self) -> &'static str {
        NAME
    }

    fn topics(&self) -> Vec<String> {
        vec![
            PaymentCompleted::topic(),
            ShipmentFailed::topic(),
            OrderShipped::topic(),
        ]
    }
    /// Its effects are rows of its own database: a batch may run without savepoints.
    fn only_database_effects(&self) -> bool {
        true
    }

    async fn handle(&self, tx: &mut Tx, env: &Envelope) -> Result<Vec<Outgoing>, HandlerError> {
        if env.is::<PaymentCompleted>() {
            let e: PaymentCompleted = env.data_as()?;
            let cmd = ReserveStock {
                order_id: e.order_id,
                items: e.items,
                shipping_address: e.shipping_address,
            };
            Self::reserve(tx, env, cmd).await
        } else if env.is::<ShipmentFailed>() {
            let e: ShipmentFailed = env.data_as()?;
            Self::settle(tx, env, &e.order_id, e.items, false).await
        } else if env.is::<OrderShipped>() {
            let e: OrderShipped = env.data_as()?;
            Self::settle(tx, env, &e.order_id, e.items, true).await
        } else {
            Ok(vec![])
        }
    }
}

/// The inventory service's command side (orchestration): `ReserveStock` and `ReleaseStock`,
/// answered by the same events as in the choreography; it follows `OrderShipped` to move shipped
/// units out of the reservation, as in the choreography.
#[derive(Debug, Clone)]
pub struct StockCommands;

impl Handler for StockCommands {
    fn name(&self) -> &'static str {
        "inventory-commands"
    }

    fn topics(&self) -> Vec<String> {
        vec![ReserveStock::topic(), OrderShipped::topic()]
    }
    /// Its effects are rows of its own database: a batch may run without savepoints.
    fn only_database_effects(&self) -> bool {
        true
    }

    async fn handle(&self, tx: &mut Tx, env: &Envelope) -> Result<Vec<Outgoing>, HandlerError> {
        if env.is::<ReserveStock>() {
            StockHandler::reserve(tx, env, env.data_as()?).await
        } else if env.is::<ReleaseStock>() {
            let c: ReleaseStock = env.data_as()?;
            let out = StockHandler::settle(tx, env, &c.order_id, c.items.clone(), false).await?;
            if !out.is_empty() {
                return Ok(out);
            }
            // Nothing held (never reserved, failed, or released already): the answer is the
            // same, so that the orchestrator can carry on.
            let meta = Meta::caused_by(env, SOURCE, c.order_id.as_str(), 2);
            Ok(vec![Outgoing::event(
                &StockReleased {
                    order_id: c.order_id,
                    items: c.items,
                },
                meta,
            )?])
        } else if env.is::<OrderShipped>() {
            let e: OrderShipped = env.data_as()?;
            StockHandler::settle(tx, env, &e.order_id, e.items, true).await
        } else {
            Ok(vec![])
        }
    }
}

/// The inventory service's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list_products, get_product, put_product, get_reservation),
    components(schemas(PutProduct, ProductView, ReservationView, shopflow_http::ErrorBody))
)]
pub(crate) struct Api;
