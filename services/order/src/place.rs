//! Placing an order: validation of the request, pricing from the local catalog copy, and group
//! commit — the batcher task takes every placement waiting at that moment into one transaction
//! (one fsync for all of them), a savepoint each, so one bad request fails alone.

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use shopflow_contracts::{Address, OrderCreated, OrderId, OrderLine, Sku, UserId};
use shopflow_envelope::{CorrelationId, Meta};
use shopflow_eventsourcing::{Aggregate, Versioned};
use shopflow_http::ApiError;
use shopflow_runtime::HandlerError;
use shopflow_store::{Tx, params};

use crate::aggregate::{Command, Order};
use crate::{Orders, SOURCE};

/// Most placements committed in one transaction.
pub(crate) const MAX_PLACE_BATCH: usize = 256;

/// An order as a client places it. The customer must be registered and every sku in the
/// catalog, in one currency (else 422).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlaceOrder {
    #[schema(
        pattern = "^[A-Za-z0-9_-]{1,64}$",
        example = "usr_0192d5e0a1b27c3d8e4f5a6b7c8d9e0f"
    )]
    pub customer_id: String,
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<PlaceLine>,
    #[schema(value_type = OrderPayment)]
    pub payment: PaymentMethod,
    pub shipping_address: ShippingAddress,
}

/// One line of an order.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlaceLine {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$", example = "MUG-01")]
    pub sku: String,
    #[schema(minimum = 1, maximum = 1000, example = 2)]
    #[serde(deserialize_with = "shopflow_http::int::i64")]
    pub quantity: i64,
}

/// How a client pays: a card number (the edge swaps it for the vault's token before the order
/// service sees it) or a token from `POST /payments/tokens`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
// Describes the request as the client sends it, for the OpenAPI document: the edge (the
// payment service's tokenisation) turns it into `PaymentMethod` before the order service reads it.
#[allow(dead_code)]
pub(crate) enum OrderPayment {
    Card(CardPayment),
    Token(TokenPayment),
}

/// A card number: 12 to 19 digits (spaces and dashes between them ignored), Luhn-valid.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// Describes the request as the client sends it, for the OpenAPI document: the edge (the
// payment service's tokenisation) turns it into `PaymentMethod` before the order service reads it.
#[allow(dead_code)]
pub(crate) struct CardPayment {
    #[schema(pattern = "^[ -]*([0-9][ -]*){12,19}$", example = "4242424242424242")]
    pub card_number: String,
}

/// A token of the card vault.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// Describes the request as the client sends it, for the OpenAPI document: the edge (the
// payment service's tokenisation) turns it into `PaymentMethod` before the order service reads it.
#[allow(dead_code)]
pub(crate) struct TokenPayment {
    #[schema(
        pattern = "^tok_[0-9a-f]{32}$",
        example = "tok_0123456789abcdef0123456789abcdef"
    )]
    pub token: String,
}

/// Where an order goes, as a client gives it (unknown fields refused; the event's `Address`
/// tolerates additions, the request does not).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShippingAddress {
    #[schema(schema_with = shopflow_http::text200)]
    pub name: String,
    #[schema(schema_with = shopflow_http::text200)]
    pub line1: String,
    #[schema(schema_with = shopflow_http::text200)]
    pub city: String,
    #[schema(schema_with = shopflow_http::text200)]
    pub postal_code: String,
    /// ISO 3166-1 alpha-2.
    #[schema(pattern = "^[A-Z]{2}$", example = "DE")]
    pub country: String,
}

impl From<&ShippingAddress> for Address {
    fn from(a: &ShippingAddress) -> Self {
        Address {
            name: a.name.trim().to_owned(),
            line1: a.line1.trim().to_owned(),
            city: a.city.trim().to_owned(),
            postal_code: a.postal_code.trim().to_owned(),
            country: a.country.clone(),
        }
    }
}

/// How the order is paid: the card vault's token and the card's last four digits. The card
/// number itself never reaches the order service: the edge swaps it for these (see the payment
/// service's `edge`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PaymentMethod {
    pub token: String,
    pub last4: String,
}

/// Accepted: the order exists and its saga runs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placed {
    #[schema(example = "ord_0192d5e0a1b27c3d8e4f5a6b7c8d9e0f")]
    pub order_id: String,
    #[schema(value_type = String, example = "PENDING")]
    pub status: &'static str,
}

/// A placement waiting for the batcher.
#[derive(Debug)]
pub(crate) struct PlaceJob {
    req: PlaceOrder,
    key: Option<String>,
    correlation: CorrelationId,
    reply: tokio::sync::oneshot::Sender<Result<(bool, OrderId), ApiError>>,
}

fn check_text(field: &str, v: &str) -> Result<(), ApiError> {
    shopflow_http::text(field, v, 200).map(drop)
}

fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the order service is shutting down",
    )
}

/// What an HTTP client is told when the write side fails.
fn api_error(e: HandlerError) -> ApiError {
    match e {
        HandlerError::Permanent(m) => ApiError::invalid(m),
        HandlerError::Transient(m)
        | HandlerError::Unavailable { reason: m, .. }
        | HandlerError::Dependency { reason: m, .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
        }
    }
}

impl Orders {
    /// Commits placements in groups until every `Orders` handle is gone.
    pub(crate) async fn run_placer(self, mut rx: tokio::sync::mpsc::Receiver<PlaceJob>) {
        while let Some(first) = rx.recv().await {
            let mut jobs = vec![first];
            while jobs.len() < MAX_PLACE_BATCH {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            self.place_batch(jobs).await;
        }
    }

    /// One transaction for many placements, a savepoint each: one bad request fails alone.
    async fn place_batch(&self, jobs: Vec<PlaceJob>) {
        let mut tx = match self.db.begin().await {
            Ok(tx) => tx,
            Err(e) => {
                let e = ApiError::from(e);
                for j in jobs {
                    let _ = j.reply.send(Err(e.clone()));
                }
                return;
            }
        };
        let mut results = Vec::with_capacity(jobs.len());
        for j in &jobs {
            let r = async {
                // Savepoints travel with the next statement (no round trip of their own).
                tx.savepoint("place").await?;
                let r = self
                    .place_in(&mut tx, &j.req, j.key.as_deref(), j.correlation.clone())
                    .await;
                if r.is_err() {
                    tx.rollback_to_savepoint("place").await?;
                }
                tx.release_savepoint("place").await?;
                r
            }
            .await;
            results.push(r);
        }
        match tx.commit().await {
            Ok(()) => {
                for (j, r) in jobs.into_iter().zip(results) {
                    let _ = j.reply.send(r);
                }
            }
            Err(e) => {
                let e = ApiError::from(e);
                for j in jobs {
                    let _ = j.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Validates and places an order. Returns `(created, order id)`.
    pub async fn place(
        &self,
        req: PlaceOrder,
        idempotency_key: Option<String>,
        correlation: CorrelationId,
    ) -> Result<(bool, OrderId), ApiError> {
        // Everything that needs no database is checked here, before joining a batch.
        UserId::parse(&req.customer_id).map_err(ApiError::invalid)?;
        if req.items.is_empty() || req.items.len() > 100 {
            return Err(ApiError::invalid("an order has 1 to 100 lines"));
        }
        let p = &req.payment;
        if !shopflow_contracts::is_payment_token(&p.token)
            || p.last4.len() != 4
            || !p.last4.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(ApiError::invalid(
                "payment must be a card vault token and its last four digits",
            ));
        }
        let a = &req.shipping_address;
        for (f, v) in [
            ("shippingAddress.name", &a.name),
            ("shippingAddress.line1", &a.line1),
            ("shippingAddress.city", &a.city),
            ("shippingAddress.postalCode", &a.postal_code),
        ] {
            check_text(f, v)?;
        }
        if a.country.len() != 2 || !a.country.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ApiError::invalid(
                "shippingAddress.country must be an ISO 3166-1 alpha-2 code such as DE",
            ));
        }
        if let Some(k) = &idempotency_key
            && (k.is_empty() || k.len() > 200)
        {
            return Err(ApiError::invalid(
                "Idempotency-Key must be 1 to 200 characters",
            ));
        }
        let placer = self.placer.as_ref().ok_or_else(unavailable)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        placer
            .send(PlaceJob {
                req,
                key: idempotency_key,
                correlation,
                reply,
            })
            .await
            .map_err(|_| unavailable())?;
        answer.await.map_err(|_| unavailable())?
    }

    /// The transactional half of placing an order, inside the batcher's transaction.
    async fn place_in(
        &self,
        tx: &mut Tx,
        req: &PlaceOrder,
        idempotency_key: Option<&str>,
        correlation: CorrelationId,
    ) -> Result<(bool, OrderId), ApiError> {
        let customer_id = UserId::parse(&req.customer_id).map_err(ApiError::invalid)?;
        let request = serde_json::to_string(&req).map_err(|e| ApiError::invalid(e.to_string()))?;
        if let Some(k) = idempotency_key {
            let rows = tx
                .query(
                    "SELECT order_id, request FROM idempotency_keys WHERE idem_key = $1",
                    params![k],
                )
                .await?;
            if let Some(r) = rows.first() {
                if r.str(1)? != request {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "idempotency_key_reused",
                        "this Idempotency-Key was used for a different request",
                    ));
                }
                return Ok((false, OrderId::parse(r.str(0)?).map_err(ApiError::invalid)?));
            }
        }
        // The customer copy is fed by UserRegistered (like the catalog, it follows the users
        // service by a few milliseconds: a client that has just registered retries).
        if tx
            .query(
                "SELECT 1 FROM customers WHERE user_id = $1",
                params![customer_id.as_str()],
            )
            .await?
            .is_empty()
        {
            return Err(ApiError::invalid(format!("unknown customer {customer_id}")));
        }
        let mut lines = Vec::with_capacity(req.items.len());
        let mut currency: Option<String> = None;
        let mut total: i64 = 0;
        for l in &req.items {
            let sku = Sku::parse(&l.sku).map_err(ApiError::invalid)?;
            if !(1..=1000).contains(&l.quantity) {
                return Err(ApiError::invalid(format!(
                    "quantity of {sku} must be between 1 and 1000"
                )));
            }
            let rows = tx
                .query(
                    "SELECT price_minor, currency FROM catalog WHERE sku = $1",
                    params![sku.as_str()],
                )
                .await?;
            let r = rows
                .first()
                .ok_or_else(|| ApiError::invalid(format!("unknown sku {sku}")))?;
            let (price, cur) = (r.i64(0)?, r.str(1)?.to_owned());
            if currency.get_or_insert_with(|| cur.clone()) != &cur {
                return Err(ApiError::invalid(
                    "all lines of an order must be in one currency",
                ));
            }
            total = price
                .checked_mul(l.quantity)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| ApiError::invalid("order total is out of range"))?;
            lines.push(OrderLine {
                sku,
                quantity: l.quantity as u32,
                unit_price_minor: price,
            });
        }
        let order_id = OrderId::generate();
        let created = OrderCreated {
            order_id: order_id.clone(),
            customer_id,
            items: lines,
            total_minor: total,
            currency: currency.unwrap_or_default(),
            card_last4: req.payment.last4.clone(),
            payment_token: req.payment.token.clone(),
            shipping_address: Address::from(&req.shipping_address),
        };
        let new = Versioned::<Order>::default();
        let events = new
            .state
            .handle(Command::Place(created))
            .map_err(|e| ApiError::conflict(e.to_string()))?;
        let meta =
            |v: u64| Meta::new(SOURCE, order_id.as_str(), v).with_correlation(correlation.clone());
        let outgoing = self
            .orders
            // A fresh id: nothing to read before the first append.
            .append_known(tx, order_id.as_str(), new, &events, meta)
            .await
            .map_err(|e| api_error(e.into()))?;
        shopflow_store::emit(tx, outgoing)
            .await
            .map_err(|e| api_error(e.into()))?;
        if let Some(k) = idempotency_key {
            tx.execute(
                "INSERT INTO idempotency_keys (idem_key, order_id, request, created_at) VALUES ($1, $2, $3, $4)",
                params![k, order_id.as_str(), request, chrono::Utc::now().timestamp_millis()],
            )
            .await?;
        }
        Ok((true, order_id))
    }
}
