//! The order service's consumers: outcomes of the other services move orders (choreography),
//! commands of the order-fulfilment saga do the same (orchestration), and both keep the local
//! copies of the catalog (prices) and of the registered customers that new orders are checked
//! against.

use shopflow_contracts::{
    ApproveOrder, CancelOrder, CompleteOrder, ConfirmReservation, OrderId, OrderShipped,
    PaymentCompleted, PaymentFailed, PaymentRefunded, ProductUpdated, StockReserved,
    UserRegistered,
};
use shopflow_envelope::{Envelope, Event, Meta};
use shopflow_runtime::{Handler, HandlerError, Outgoing};
use shopflow_store::{Tx, params};

use crate::aggregate::{Command, DomainError};
use crate::{NAME, Orders, SOURCE};

impl From<DomainError> for HandlerError {
    fn from(e: DomainError) -> Self {
        HandlerError::Permanent(e.to_string())
    }
}

impl Orders {
    /// Loads the order, decides `cmd`, appends what it decided; returns what to publish.
    async fn decide(
        &self,
        tx: &mut Tx,
        env: &Envelope,
        order_id: &OrderId,
        cmd: Command,
    ) -> Result<Vec<Outgoing>, HandlerError> {
        let meta = |v: u64| Meta::caused_by(env, SOURCE, order_id.as_str(), v);
        Ok(self
            .orders
            .execute(tx, order_id.as_str(), cmd, meta)
            .await??)
    }

    /// Keeps the copies that new orders are checked against: the catalog (prices) and the
    /// registered customers. `None` when `env` is neither.
    async fn copies(
        &self,
        tx: &mut Tx,
        env: &Envelope,
    ) -> Result<Option<Vec<Outgoing>>, HandlerError> {
        if env.is::<UserRegistered>() {
            let u: UserRegistered = env.data_as()?;
            tx.execute(
                "INSERT INTO customers (user_id, registered_at) VALUES ($1, $2)
                 ON CONFLICT (user_id) DO NOTHING",
                params![u.user_id.as_str(), env.timestamp().timestamp_millis()],
            )
            .await?;
            return Ok(Some(vec![]));
        }
        if !env.is::<ProductUpdated>() {
            return Ok(None);
        }
        let p: ProductUpdated = env.data_as()?;
        tx.execute(
            "INSERT INTO catalog (sku, name, price_minor, currency) VALUES ($1, $2, $3, $4)
             ON CONFLICT (sku) DO UPDATE SET name = excluded.name, price_minor = excluded.price_minor, currency = excluded.currency",
            params![p.sku.as_str(), p.name.as_str(), p.price_minor, p.currency.as_str()],
        )
        .await?;
        Ok(Some(vec![]))
    }
}

/// Moves orders on the other services' outcomes, and keeps the catalog and customer copies.
#[derive(Debug)]
pub struct OutcomeHandler(pub(crate) Orders);

impl Handler for OutcomeHandler {
    fn name(&self) -> &'static str {
        NAME
    }
    /// An order's stream and the catalog or customer row of a copy are the record's own key's
    /// rows: lanes may overlap.
    fn lanes(&self) -> usize {
        usize::MAX
    }

    /// Every topic the payment service and the users service number events on.
    fn complete_sources(&self) -> Vec<&'static str> {
        vec!["payment-service", "user-service"]
    }

    fn topics(&self) -> Vec<String> {
        vec![
            ProductUpdated::topic(),
            UserRegistered::topic(),
            PaymentCompleted::topic(),
            PaymentFailed::topic(),
            PaymentRefunded::topic(),
            StockReserved::topic(),
            OrderShipped::topic(),
        ]
    }
    /// Its effects are rows of its own database: a batch may run without savepoints.
    fn only_database_effects(&self) -> bool {
        true
    }

    async fn handle(&self, tx: &mut Tx, env: &Envelope) -> Result<Vec<Outgoing>, HandlerError> {
        if let Some(out) = self.0.copies(tx, env).await? {
            return Ok(out);
        }
        let (order_id, cmd) = if env.is::<PaymentCompleted>() {
            let e: PaymentCompleted = env.data_as()?;
            (
                e.order_id,
                Command::RecordPayment {
                    payment_id: e.payment_id,
                },
            )
        } else if env.is::<PaymentFailed>() {
            let e: PaymentFailed = env.data_as()?;
            (
                e.order_id,
                Command::Cancel {
                    reason: format!("payment failed: {}", e.reason),
                },
            )
        } else if env.is::<PaymentRefunded>() {
            let e: PaymentRefunded = env.data_as()?;
            (e.order_id, Command::Cancel { reason: e.reason })
        } else if env.is::<StockReserved>() {
            (
                env.data_as::<StockReserved>()?.order_id,
                Command::RecordReservation,
            )
        } else if env.is::<OrderShipped>() {
            let e: OrderShipped = env.data_as()?;
            (
                e.order_id,
                Command::RecordShipment {
                    shipment_id: e.shipment_id,
                    carrier: e.carrier,
                    tracking_number: e.tracking_number,
                },
            )
        } else {
            return Ok(vec![]);
        };
        self.0.decide(tx, env, &order_id, cmd).await
    }
}

/// The order service's command side (orchestration): `ApproveOrder`, `ConfirmReservation`,
/// `CompleteOrder`, `CancelOrder` move the aggregate as the outcome events do in the
/// choreography; the catalog and customer copies are fed by events in both styles.
#[derive(Debug, Clone)]
pub struct OrderCommands(pub(crate) Orders);

impl Handler for OrderCommands {
    fn name(&self) -> &'static str {
        "order-commands"
    }
    /// An order's stream and the catalog or customer row of a copy are the record's own key's
    /// rows: lanes may overlap.
    fn lanes(&self) -> usize {
        usize::MAX
    }

    fn topics(&self) -> Vec<String> {
        vec![
            ProductUpdated::topic(),
            UserRegistered::topic(),
            CancelOrder::topic(),
        ]
    }
    /// Its effects are rows of its own database: a batch may run without savepoints.
    fn only_database_effects(&self) -> bool {
        true
    }

    async fn handle(&self, tx: &mut Tx, env: &Envelope) -> Result<Vec<Outgoing>, HandlerError> {
        if let Some(out) = self.0.copies(tx, env).await? {
            return Ok(out);
        }
        let (order_id, cmd) = if env.is::<ApproveOrder>() {
            let c: ApproveOrder = env.data_as()?;
            (
                c.order_id,
                Command::RecordPayment {
                    payment_id: c.payment_id,
                },
            )
        } else if env.is::<ConfirmReservation>() {
            let c: ConfirmReservation = env.data_as()?;
            (c.order_id, Command::RecordReservation)
        } else if env.is::<CompleteOrder>() {
            let c: CompleteOrder = env.data_as()?;
            (
                c.order_id,
                Command::RecordShipment {
                    shipment_id: c.shipment_id,
                    carrier: c.carrier,
                    tracking_number: c.tracking_number,
                },
            )
        } else if env.is::<CancelOrder>() {
            let c: CancelOrder = env.data_as()?;
            (c.order_id, Command::Cancel { reason: c.reason })
        } else {
            return Ok(vec![]);
        };
        self.0.decide(tx, env, &order_id, cmd).await
    }
}
