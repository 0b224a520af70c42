#![doc = include_str!("../README.md")]

pub mod edge;
mod service;
pub mod vault;
pub use service::{GatewayLatency, SERVICE, SharedGateway, VaultKeyText};
pub use vault::{Vault, VaultKeys};

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use serde::Serialize;
use shopflow_contracts::{
    OrderCreated, OrderId, PaymentCompleted, PaymentFailed, PaymentId, PaymentRefunded,
    ProcessPayment, RefundPayment, ShipmentFailed, StockReservationFailed,
};
use shopflow_envelope::{Envelope, Event, Meta};
use shopflow_http::{ApiError, Json};
use shopflow_runtime::{BreakerConfig, CircuitBreaker, Handler, HandlerError, Outgoing};
use shopflow_store::{Db, Migration, Tx, params};

pub const NAME: &str = "payment";
const SOURCE: &str = "payment-service";

pub const MIGRATIONS: &[Migration] = &[
    Migration::portable(
        1,
        "payments",
        include_str!("../migrations/001_payments.sql"),
    ),
    Migration::portable(2, "vault", include_str!("../migrations/002_vault.sql")),
];

/// A charge request. `idempotency_key` is the order id: the same key never charges twice. The
/// card number comes out of the vault for this call only (the gateway is the card's provider).
#[derive(Clone)]
pub struct Charge {
    pub idempotency_key: String,
    pub card_number: String,
    pub amount_minor: i64,
    pub currency: String,
}

impl std::fmt::Debug for Charge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the card number, not even in a debug print.
        f.debug_struct("Charge")
            .field("idempotency_key", &self.idempotency_key)
            .field("amount_minor", &self.amount_minor)
            .field("currency", &self.currency)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Approved { payment_id: PaymentId },
    Declined { reason: String },
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum GatewayError {
    #[error("payment gateway unavailable: {0}")]
    Unavailable(String),
}

/// An external payment provider.
pub trait PaymentGateway: Send + Sync + 'static {
    fn charge(
        &self,
        charge: &Charge,
    ) -> impl Future<Output = Result<ChargeOutcome, GatewayError>> + Send;
    fn refund(
        &self,
        payment_id: &PaymentId,
        amount_minor: i64,
    ) -> impl Future<Output = Result<(), GatewayError>> + Send;
}

/// A provider's test mode, in process.
#[derive(Debug, Default)]
pub struct Simulator {
    latency: Duration,
    outage: AtomicBool,
    charges: Mutex<HashMap<String, PaymentId>>,
    /// Payments refunded: a refund asked again (after a crash before its commit) is answered
    /// from here, as a provider's idempotent refund API does.
    refunds: Mutex<std::collections::HashSet<PaymentId>>,
    pub charged: AtomicU64,
    pub refunded: AtomicU64,
}

impl Simulator {
    pub fn new(latency: Duration) -> Self {
        Self {
            latency,
            ..Self::default()
        }
    }
    /// Takes the gateway down (or brings it back).
    pub fn set_outage(&self, down: bool) {
        self.outage.store(down, Ordering::SeqCst);
    }
}

impl PaymentGateway for Simulator {
    async fn charge(&self, c: &Charge) -> Result<ChargeOutcome, GatewayError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        if self.outage.load(Ordering::SeqCst) {
            return Err(GatewayError::Unavailable("simulated outage".into()));
        }
        if let Some(id) = self
            .charges
            .lock()
            .expect("charges lock")
            .get(&c.idempotency_key)
        {
            return Ok(ChargeOutcome::Approved {
                payment_id: id.clone(),
            });
        }
        let card = c.card_number.as_str();
        let outcome = match card {
            _ if !shopflow_contracts::luhn_valid(card) => ChargeOutcome::Declined {
                reason: "invalid card number".into(),
            },
            "4000000000000002" => ChargeOutcome::Declined {
                reason: "card_declined".into(),
            },
            "4000000000009995" => ChargeOutcome::Declined {
                reason: "insufficient_funds".into(),
            },
            _ if c.amount_minor <= 0 => ChargeOutcome::Declined {
                reason: "amount must be positive".into(),
            },
            _ => {
                let id = PaymentId::generate();
                self.charges
                    .lock()
                    .expect("charges lock")
                    .insert(c.idempotency_key.clone(), id.clone());
                self.charged.fetch_add(1, Ordering::Relaxed);
                ChargeOutcome::Approved { payment_id: id }
            }
        };
        Ok(outcome)
    }

    async fn refund(&self, payment_id: &PaymentId, _amount_minor: i64) -> Result<(), GatewayError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        if self.outage.load(Ordering::SeqCst) {
            return Err(GatewayError::Unavailable("simulated outage".into()));
        }
        if self
            .refunds
            .lock()
            .expect("refunds lock")
            .insert(payment_id.clone())
        {
            self.refunded.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The payment service.
#[derive(Debug)]
pub struct Payments<G: PaymentGateway> {
    db: Db,
    gateway: Arc<G>,
    /// Where the cards are: only this service turns a token back into a card.
    vault: Vault,
    /// Guards every call to the gateway (the handlers declare it to the runtime): while the
    /// provider is down the payment consumer pauses instead of burning retries.
    breaker: Arc<CircuitBreaker>,
}

impl<G: PaymentGateway> Clone for Payments<G> {
    fn clone(&self) -> Self {
        Self {
            db: self.db.clone(),
            gateway: self.gateway.clone(),
            vault: self.vault.clone(),
            breaker: self.breaker.clone(),
        }
    }
}

/// An order's payment.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentView {
    pub order_id: String,
    pub payment_id: Option<String>,
    pub status: String,
    pub amount_minor: i64,
    pub currency: String,
    pub card_last4: String,
    pub reason: Option<String>,
}

impl<G: PaymentGateway> Payments<G> {
    pub async fn open(db: Db, gateway: Arc<G>, vault: Vault) -> shopflow_store::Result<Self> {
        SERVICE.migrate(&db).await?;
        Ok(Self {
            db,
            gateway,
            vault,
            breaker: Arc::new(CircuitBreaker::new(
                "payment-gateway",
                BreakerConfig::default(),
            )),
        })
    }

    /// Replaces the gateway's circuit breaker settings.
    pub fn with_breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = Arc::new(CircuitBreaker::new("payment-gateway", config));
        self
    }

    /// The gateway's circuit breaker.
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/orders/{id}/payment", get(get_payment::<G>))
            .with_state(Arc::new(self.clone()))
            .merge(edge::router(self.vault.clone(), self.db.clone()))
    }

    /// The card vault, for the edge of a process that runs this service.
    pub fn vault(&self) -> edge::CardVault {
        edge::CardVault::Local {
            vault: self.vault.clone(),
            db: self.db.clone(),
        }
    }

    /// The card behind a token, for one charge. Histories written before the vault carry
    /// `tok_<the card's digits>`; those still charge (new tokens never look like that: the
    /// edge only lets the vault's own through).
    async fn card(&self, tx: &mut Tx, token: &str) -> Result<Option<String>, HandlerError> {
        match self.vault.reveal(tx, token).await {
            Ok(Some(card)) => return Ok(Some(card)),
            Ok(None) => {}
            Err(vault::VaultError::Store(e)) => return Err(e.into()),
            Err(e) => return Err(HandlerError::Permanent(e.to_string())),
        }
        Ok(token
            .strip_prefix("tok_")
            .and_then(vault::card_digits)
            .filter(|d| token.len() == d.len() + 4))
    }

    pub async fn get(&self, order_id: &str) -> Result<PaymentView, ApiError> {
        let rows = self
            .db
            .query(
                "SELECT order_id, payment_id, status, amount_minor, currency, card_last4, reason FROM payments WHERE order_id = $1",
                params![order_id],
            )
            .await?;
        let r = rows
            .first()
            .ok_or_else(|| ApiError::not_found("payment of order", order_id))?;
        Ok(PaymentView {
            order_id: r.str(0)?.to_owned(),
            payment_id: r.opt_str(1)?.map(str::to_owned),
            status: r.str(2)?.to_owned(),
            amount_minor: r.i64(3)?,
            currency: r.str(4)?.to_owned(),
            card_last4: r.str(5)?.to_owned(),
            reason: r.opt_str(6)?.map(str::to_owned),
        })
    }

    async fn charge(
        &self,
        tx: &mut Tx,
        env: &Envelope,
        e: ProcessPayment,
    ) -> Result<Vec<Outgoing>, HandlerError> {
        let existing = tx
            .query(
                "SELECT status FROM payments WHERE order_id = $1",
                params![e.order_id.as_str()],
            )
            .await?;
        let meta = Meta::caused_by(env, SOURCE, e.order_id.as_str(), 1);
        if let Some(r) = existing.first() {
            if r.str(0)? == "CANCELLED" {
                // Compensated before we got to charge: never charge it.
                let f = PaymentFailed {
                    order_id: e.order_id,
                    reason: "order was compensated before payment".into(),
                };
                return Ok(vec![Outgoing::event(&f, meta)?]);
            }
            return Ok(vec![]); // charged (or declined) already
        }
        let outcome = match self.card(tx, &e.payment_token).await? {
            None => ChargeOutcome::Declined {
                reason: "unknown payment token".into(),
            },
            Some(card_number) => {
                let charge = Charge {
                    idempotency_key: e.order_id.to_string(),
                    card_number,
                    amount_minor: e.total_minor,
                    currency: e.currency.clone(),
                };
                self.gateway
                    .charge(&charge)
                    .await
                    .map_err(|e| HandlerError::dependency(&self.breaker, e))?
            }
        };
        let now = chrono::Utc::now().timestamp_millis();
        match outcome {
            ChargeOutcome::Approved { payment_id } => {
                tx.execute_deferred(
                    "INSERT INTO payments (order_id, payment_id, status, amount_minor, currency, card_last4, created_at, updated_at)
                     VALUES ($1, $2, 'COMPLETED', $3, $4, $5, $6, $6)",
                    params![e.order_id.as_str(), payment_id.as_str(), e.total_minor, e.currency.as_str(), e.card_last4.as_str(), now],
                )
                .await?;
                let done = PaymentCompleted {
                    order_id: e.order_id,
                    payment_id,
                    amount_minor: e.total_minor,
                    currency: e.currency,
                    items: e.items,
                    shipping_address: e.shipping_address,
                };
                Ok(vec![Outgoing::event(&done, meta)?])
            }
            ChargeOutcome::Declined { reason } => {
                tx.execute_deferred(
                    "INSERT INTO payments (order_id, status, amount_minor, currency, card_last4, reason, created_at, updated_at)
                     VALUES ($1, 'FAILED', $2, $3, $4, $5, $6, $6)",
                    params![e.order_id.as_str(), e.total_minor, e.currency.as_str(), e.card_last4.as_str(), reason.as_str(), now],
                )
                .await?;
                Ok(vec![Outgoing::event(
                    &PaymentFailed {
                        order_id: e.order_id,
                        reason,
                    },
                    meta,
                )?])
            }
        }
    }

    async fn refund(
        &self,
        tx: &mut Tx,
        env: &Envelope,
        order_id: OrderId,
        reason: String,
    ) -> Result<Vec<Outgoing>, HandlerError> {
        let rows = tx
            .query("SELECT status, payment_id, amount_minor, currency FROM payments WHERE order_id = $1", params![order_id.as_str()])
            .await?;
        let now = chrono::Utc::now().timestamp_millis();
        let Some(r) = rows.first() else {
            // The compensation overtook the charge: remember it, so the charge never happens.
            tx.execute_deferred(
                "INSERT INTO payments (order_id, status, amount_minor, currency, card_last4, reason, created_at, updated_at)
                 VALUES ($1, 'CANCELLED', 0, 'XXX', '', $2, $3, $3)",
                params![order_id.as_str(), reason.as_str(), now],
            )
            .await?;
            return Ok(vec![]);
        };
        if r.str(0)? != "COMPLETED" {
            return Ok(vec![]); // nothing charged, or refunded already
        }
        let payment_id =
            PaymentId::parse(r.opt_str(1)?.unwrap_or_default()).map_err(HandlerError::Permanent)?;
        let (amount, currency) = (r.i64(2)?, r.str(3)?.to_owned());
        self.gateway
            .refund(&payment_id, amount)
            .await
            .map_err(|e| HandlerError::dependency(&self.breaker, e))?;
        tx.execute_deferred(
            "UPDATE payments SET status = 'REFUNDED', reason = $2, updated_at = $3 WHERE order_id = $1",
            params![order_id.as_str(), reason.as_str(), now],
        )
        .await?;
        let meta = Meta::caused_by(env, SOURCE, order_id.as_str(), 2);
        let e = PaymentRefunded {
            order_id,
            payment_id,
            amount_minor: amount,
            currency,
            reason,
        };
        Ok(vec![Outgoing::event(&e, meta)?])
    }
}

/// The order's payment: status, amount, the card's last four digits.
#[utoipa::path(get, path = "/orders/{id}/payment", tag = "payment", operation_id = "getPayment",
    params(("id" = String, Path, description = "The order id (`ord_…`)")),
    responses(
        shopflow_http::responses::Unavailable,
        (status = 200, description = "The payment", body = PaymentView),
        (status = 404, description = "No payment for this order (yet)", body = shopflow_http::ErrorBody),
    ))]
async fn get_payment<G: PaymentGateway>(
    State(s): State<Arc<Payments<G>>>,
    Path(id): Path<String>,
) -> Result<Json<PaymentView>, ApiError> {
    s.get(&id).await.map(Json)
}

impl<G: PaymentGateway> Handler for Payments<G> {
    fn name(&self) -> &'static str {
        NAME
    }
    /// A payment is the record's own order's row (cards are only read): lanes may overlap.
    fn lanes(&self) -> usize {
        usize::MAX
    }

    fn breakers(&self) -> Vec<Arc<CircuitBreaker>> {
        vec![self.breaker.clone()]
    }

    fn topics(&self) -> Vec<String> {
        vec![
            OrderCreated::topic(),
            StockReservationFailed::topic(),
            ShipmentFailed::topic(),
        ]
    }

    async fn handle(&self, tx: &mut Tx, env: &Envelope) -> Result<Vec<Outgoing>, HandlerError> {
        if env.is::<OrderCreated>() {
            let e: OrderCreated = env.data_as()?;
            self.charge(tx, env, e.into()).await
        } else if env.is::<StockReservationFailed>() {
            let e: StockReservationFailed = env.data_as()?;
            self.refund(tx, env, e.order_id, format!("out of stock: {}", e.reason))
                .await
        } else if env.is::<ShipmentFailed>() {
            let e: ShipmentFailed = env.data_as()?;
            self.refund(
                tx,
                env,
                e.order_id,
                format!("shipment failed: {}", e.reason),
            )
            .await
        } else {
            Ok(vec![])
        }
    }
}

/// The payment service's command side (orchestration): `ProcessPayment` and `RefundPayment`,
/// answered by the same events as in the choreography.
#[derive(Debug)]
pub struct PaymentCommands<G: PaymentGateway>(pub Payments<G>);

impl<G: PaymentGateway> Handler for PaymentCommands<G> {
    fn name(&self) -> &'static str {
        "payment-commands"
    }
    /// A payment is the record's own order's row (cards are only read): lanes may overlap.
    fn lanes(&self) -> usize {
        usize::MAX
    }

    fn breakers(&self) -> Vec<Arc<CircuitBreaker>> {
        vec![self.0.breaker.clone()]
    }

    fn topics(&self) -> Vec<String> {
        vec![ProcessPayment::topic()]
    }

    async fn handle(&self, tx: &mut Tx, env: &Envelope) -> Result<Vec<Outgoing>, HandlerError> {
        if env.is::<ProcessPayment>() {
            self.0.charge(tx, env, env.data_as()?).await
        } else if env.is::<RefundPayment>() {
            let c: RefundPayment = env.data_as()?;
            let out = self
                .0
                .refund(tx, env, c.order_id.clone(), c.reason.clone())
                .await?;
            if !out.is_empty() {
                return Ok(out);
            }
            // Nothing refunded now: answer with what is true, so the orchestrator can carry on.
            let rows = tx
                .query(
                    "SELECT status, payment_id, amount_minor, currency, reason FROM payments WHERE order_id = $1",
                    params![c.order_id.as_str()],
                )
                .await?;
            let meta = Meta::caused_by(env, SOURCE, c.order_id.as_str(), 2);
            match rows.first() {
                Some(r) if r.str(0)? == "REFUNDED" => {
                    let payment_id = PaymentId::parse(r.opt_str(1)?.unwrap_or_default())
                        .map_err(HandlerError::Permanent)?;
                    let e = PaymentRefunded {
                        order_id: c.order_id,
                        payment_id,
                        amount_minor: r.i64(2)?,
                        currency: r.str(3)?.to_owned(),
                        reason: r.opt_str(4)?.unwrap_or_default().to_owned(),
                    };
                    Ok(vec![Outgoing::event(&e, meta)?])
                }
                _ => Ok(vec![Outgoing::event(
                    &PaymentFailed {
                        order_id: c.order_id,
                        reason: "nothing was charged".into(),
                    },
                    meta,
                )?]),
            }
        } else {
            Ok(vec![])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn simulator_is_deterministic_and_idempotent() {
        let g = Simulator::default();
        let c = |key: &str, card: &str| Charge {
            idempotency_key: key.into(),
            card_number: card.into(),
            amount_minor: 100,
            currency: "EUR".into(),
        };
        let a = g.charge(&c("o1", "4242424242424242")).await.unwrap();
        let b = g.charge(&c("o1", "4242424242424242")).await.unwrap();
        assert_eq!(a, b, "same key, same charge");
        assert_eq!(g.charged.load(Ordering::Relaxed), 1);
        assert_eq!(
            g.charge(&c("o2", "4000000000000002")).await.unwrap(),
            ChargeOutcome::Declined {
                reason: "card_declined".into()
            }
        );
        g.set_outage(true);
        assert!(g.charge(&c("o3", "4242424242424242")).await.is_err());
    }
}

/// The payment service's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        get_payment,
        edge::tokenize,
        edge::token,
        edge::rekey,
        service::set_gateway
    ),
    components(schemas(
        PaymentView,
        edge::TokenizeBody,
        vault::Tokenized,
        edge::Rekeyed,
        service::GatewayMode,
        shopflow_http::ErrorBody
    ))
)]
pub(crate) struct Api;
