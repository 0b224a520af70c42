//! The order service's consumers: outcomes of the other services move orders (choreography),
//! commands of the order-fulfilment saga do the same (orchestration), and both keep the local
//! copy of the catalog that prices new orders.

use shopflow_contracts::{
    ApproveOrder, CancelOrder, CompleteOrder, ConfirmReservation, OrderId, OrderShipped,
    PaymentCompleted, PaymentFailed, PaymentRefunded, ProductUpdated, StockReserved,
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

    /// Keeps the catalog copy that prices new orders.
    async fn catalog(&self, tx: &mut Tx, env: &Envelope) -> Result<Vec<Outgoing>, HandlerError> {
        let p: ProductUpdated = env.data_as()?;
        tx.execute(
            "INSERT INTO catalog (sku, name, price_minor, currency) VALUES ($1, $2, $3, $4)
             ON CONFLICT (sku) DO UPDATE SET name = excluded.name, price_minor = excluded.price_minor, currency = excluded.currency",
            params![p.sku.as_str(), p.name.as_str(), p.price_minor, p.currency.as_str()],
        )
        .await?;
        Ok(vec![])
    }
}

/// Moves orders on the other services' outcomes, and keeps the catalog copy.
#[derive(Debug)]
pub struct OutcomeHandler(pub(crate) Orders);

impl Handler for OutcomeHandler {
    fn name(&self) -> &'static str {
        NAME
    }

    fn topics(&self) -> Vec<String> {
        vec![
            ProductUpdated::topic(),
            PaymentCompleted::topic(),
            PaymentFailed::topic(),
            PaymentRefunded::topic(),
            StockReserved::topic(),
            OrderShipped::topic(),
        ]
    }

    async fn handle(&self, tx: &mut Tx, env: &Envelope) -> Result<Vec<Outgoing>, HandlerError> {
        if env.is::<ProductUpdated>() {
            return self.0.catalog(tx, env).await;
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
/// `CompleteOrder`, `CancelOrder` move the aggregate as the outcome events do in the choreography; the catalog
/// copy is fed by `ProductUpdated` in both styles.
#[derive(Debug, Clone)]
pub struct OrderCommands(pub(crate) Orders);

impl Handler for OrderCommands {
    fn name(&self) -> &'static str {
        "order-commands"
    }

    fn topics(&self) -> Vec<String> {
        vec![ProductUpdated::topic(), CancelOrder::topic()]
    }

    async fn handle(&self, tx: &mut Tx, env: &Envelope) -> Result<Vec<Outgoing>, HandlerError> {
        let (order_id, cmd) = if env.is::<ProductUpdated>() {
            return self.0.catalog(tx, env).await;
        } else if env.is::<ApproveOrder>() {
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
