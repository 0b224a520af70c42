//! The order-fulfilment saga (orchestration): payment → stock → shipping, compensated in reverse,
//! reaching the same final states — with the same cancel reasons — as the choreography.

use std::time::Duration;

use shopflow_contracts::{
    ApproveOrder, CancelOrder, CompleteOrder, ConfirmReservation, OrderCreated, OrderShipped,
    PaymentCompleted, PaymentFailed, PaymentRefunded, ProcessPayment, RefundPayment, ReleaseStock,
    ReserveStock, ShipOrder, ShipmentFailed, StockReleased, StockReservationFailed, StockReserved,
};
use shopflow_saga::{CommandDef, FailureKind, SagaData, SagaDef, Step};

/// The saga type, its orchestrator's consumer group and inbox name.
pub const FULFILMENT: &str = "order-fulfilment";

/// How long each step may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SagaTimeouts {
    pub payment: Duration,
    pub stock: Duration,
    pub shipping: Duration,
    /// An unconfirmed compensation is sent again after this long.
    pub resend_compensation: Duration,
}

impl Default for SagaTimeouts {
    fn default() -> Self {
        Self {
            payment: Duration::from_secs(120),
            stock: Duration::from_secs(60),
            shipping: Duration::from_secs(60),
            resend_compensation: Duration::from_secs(30),
        }
    }
}

fn order(d: &SagaData) -> Result<OrderCreated, String> {
    d.trigger::<OrderCreated>()
}

/// Why the payment is refunded — the same words the payment service uses in the choreography.
fn refund_reason(d: &SagaData) -> String {
    match &d.failure {
        Some(f) => match (f.kind, f.event_type.as_deref()) {
            (FailureKind::Reply, Some("StockReservationFailed")) => {
                format!("out of stock: {}", f.reason)
            }
            (FailureKind::Reply, Some("ShipmentFailed")) => {
                format!("shipment failed: {}", f.reason)
            }
            (FailureKind::Cancelled, _) => format!("cancelled by an operator: {}", f.reason),
            _ => f.reason.clone(),
        },
        None => "compensated".into(),
    }
}

/// Why the order is cancelled — as the order service words it in the choreography: the refund's
/// reason when there was a refund, the payment's failure otherwise.
fn cancel_reason(d: &SagaData) -> Result<String, String> {
    if let Some(r) = d.reply::<PaymentRefunded>()? {
        return Ok(r.reason);
    }
    Ok(match &d.failure {
        Some(f) if f.event_type.as_deref() == Some("PaymentFailed") => {
            format!("payment failed: {}", f.reason)
        }
        _ => refund_reason(d),
    })
}

/// The order-fulfilment saga.
pub fn fulfilment(t: &SagaTimeouts) -> SagaDef {
    SagaDef::new(FULFILMENT, "order-saga")
        .started_by::<OrderCreated>()
        .keyed_by("orderId")
        .answered_by(&["payment-service", "inventory-service", "shipping-service"])
        .step(
            Step::new(
                "payment",
                CommandDef::of(|d| Ok(ProcessPayment::from(order(d)?))),
            )
            .completes_on::<PaymentCompleted>()
            .fails_on::<PaymentFailed>()
            .timeout(t.payment)
            .compensate_with::<PaymentRefunded>(CommandDef::of(|d| {
                Ok(RefundPayment {
                    order_id: order(d)?.order_id,
                    reason: refund_reason(d),
                })
            }))
            // "nothing was charged" also settles a refund.
            .or_compensated_on::<PaymentFailed>()
            .then_send(CommandDef::of(|d| {
                let p = d.required::<PaymentCompleted>()?;
                Ok(ApproveOrder {
                    order_id: p.order_id,
                    payment_id: p.payment_id,
                })
            })),
        )
        .step(
            Step::new(
                "stock",
                CommandDef::of(|d| {
                    let o = order(d)?;
                    Ok(ReserveStock {
                        order_id: o.order_id,
                        items: o.items,
                        shipping_address: o.shipping_address,
                    })
                }),
            )
            .completes_on::<StockReserved>()
            .fails_on::<StockReservationFailed>()
            .timeout(t.stock)
            .compensate_with::<StockReleased>(CommandDef::of(|d| {
                let o = order(d)?;
                Ok(ReleaseStock {
                    order_id: o.order_id,
                    items: o.items,
                })
            }))
            .then_send(CommandDef::of(|d| {
                Ok(ConfirmReservation {
                    order_id: order(d)?.order_id,
                })
            })),
        )
        .step(
            Step::new(
                "shipping",
                CommandDef::of(|d| {
                    let o = order(d)?;
                    Ok(ShipOrder {
                        order_id: o.order_id,
                        items: o.items,
                        shipping_address: o.shipping_address,
                    })
                }),
            )
            .completes_on::<OrderShipped>()
            .fails_on::<ShipmentFailed>()
            .timeout(t.shipping),
        )
        .on_completed(CommandDef::of(|d| {
            let s = d.required::<OrderShipped>()?;
            Ok(CompleteOrder {
                order_id: s.order_id,
                shipment_id: s.shipment_id,
                carrier: s.carrier,
                tracking_number: s.tracking_number,
            })
        }))
        .on_compensated(CommandDef::of(|d| {
            Ok(CancelOrder {
                order_id: order(d)?.order_id,
                reason: cancel_reason(d)?,
            })
        }))
        .resend_compensation_after(t.resend_compensation)
}
