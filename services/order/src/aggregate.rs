//! The order aggregate: every business rule in `handle`, state changes only in `apply`.

use serde::{Deserialize, Serialize};
use shopflow_contracts::{
    Address, OrderCancelled, OrderCreated, OrderId, OrderLine, PaymentId, ShipmentId, UserId,
};
use shopflow_envelope::{Envelope, Event, Kind, Meta};
use shopflow_eventsourcing::{Aggregate, Applied, DomainEvent};

/// Where an order is. `Shipped` and `Cancelled` are final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    #[default]
    Pending,
    Paid,
    Reserved,
    Shipped,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Paid => "PAID",
            Status::Reserved => "RESERVED",
            Status::Shipped => "SHIPPED",
            Status::Cancelled => "CANCELLED",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            Status::Pending,
            Status::Paid,
            Status::Reserved,
            Status::Shipped,
            Status::Cancelled,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
    pub fn is_final(self) -> bool {
        matches!(self, Status::Shipped | Status::Cancelled)
    }
    fn rank(self) -> u8 {
        self as u8
    }
}

macro_rules! domain_event {
    ($name:ident) => {
        impl Event for $name {
            const TYPE: &'static str = stringify!($name);
            const VERSION: u32 = 1;
            const KIND: Kind = Kind::Domain;
            const DOMAIN: &'static str = "orders";
        }
    };
}

/// Payment for the order was taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderPaid {
    pub order_id: OrderId,
    pub payment_id: PaymentId,
}
domain_event!(OrderPaid);

/// Stock for the order was reserved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderReserved {
    pub order_id: OrderId,
}
domain_event!(OrderReserved);

/// The order left the warehouse: status SHIPPED.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderCompleted {
    pub order_id: OrderId,
    pub shipment_id: ShipmentId,
    pub carrier: String,
    pub tracking_number: String,
}
domain_event!(OrderCompleted);

/// A cancellation came after the order had shipped: recorded as what it is, the order stays
/// SHIPPED (and nobody is told it was cancelled).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CancellationRefused {
    pub order_id: OrderId,
    /// Why the order would have been cancelled.
    pub reason: String,
}
domain_event!(CancellationRefused);

/// Everything that happens to an order, as stored in its stream.
#[derive(Clone, Debug, PartialEq)]
pub enum OrderEvent {
    Created(OrderCreated),
    Paid(OrderPaid),
    Reserved(OrderReserved),
    Completed(OrderCompleted),
    Cancelled(OrderCancelled),
    CancellationRefused(CancellationRefused),
}

impl DomainEvent for OrderEvent {
    fn from_envelope(env: &Envelope) -> shopflow_envelope::Result<Self> {
        Ok(match env.event_type() {
            t if t == OrderCreated::TYPE => OrderEvent::Created(env.data_as()?),
            t if t == OrderPaid::TYPE => OrderEvent::Paid(env.data_as()?),
            t if t == OrderReserved::TYPE => OrderEvent::Reserved(env.data_as()?),
            t if t == OrderCompleted::TYPE => OrderEvent::Completed(env.data_as()?),
            t if t == OrderCancelled::TYPE => OrderEvent::Cancelled(env.data_as()?),
            t if t == CancellationRefused::TYPE => OrderEvent::CancellationRefused(env.data_as()?),
            other => {
                return Err(shopflow_envelope::Error::UnknownEventType {
                    event_type: other.to_owned(),
                });
            }
        })
    }

    fn to_envelope(&self, meta: Meta) -> shopflow_envelope::Result<Envelope> {
        match self {
            OrderEvent::Created(e) => Envelope::new(e, meta),
            OrderEvent::Paid(e) => Envelope::new(e, meta),
            OrderEvent::Reserved(e) => Envelope::new(e, meta),
            OrderEvent::Completed(e) => Envelope::new(e, meta),
            OrderEvent::Cancelled(e) => Envelope::new(e, meta),
            OrderEvent::CancellationRefused(e) => Envelope::new(e, meta),
        }
    }

    /// Whether other services hear of it (the rest stays in the order's stream).
    fn topic(&self) -> Option<String> {
        match self {
            OrderEvent::Created(_) => Some(OrderCreated::topic()),
            OrderEvent::Cancelled(_) => Some(OrderCancelled::topic()),
            _ => None,
        }
    }
}

/// What the order service is asked to do to an order.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Place(OrderCreated),
    RecordPayment {
        payment_id: PaymentId,
    },
    RecordReservation,
    RecordShipment {
        shipment_id: ShipmentId,
        carrier: String,
        tracking_number: String,
    },
    Cancel {
        reason: String,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DomainError {
    #[error("order already exists")]
    AlreadyExists,
    #[error("order does not exist")]
    NotFound,
}

/// An order's state: the fold of its events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub order_id: Option<OrderId>,
    pub customer_id: Option<UserId>,
    pub status: Status,
    pub items: Vec<OrderLine>,
    pub total_minor: i64,
    pub currency: String,
    pub card_last4: String,
    pub shipping_address: Option<Address>,
    pub cancel_reason: Option<String>,
    /// A cancellation that came after the order shipped (the order stayed SHIPPED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_cancellation: Option<String>,
    pub payment_id: Option<PaymentId>,
    /// Whether its stock was reserved (a fact of its own: it may arrive after the shipment).
    #[serde(default)]
    pub reserved: bool,
    pub shipment_id: Option<ShipmentId>,
    pub carrier: Option<String>,
    pub tracking_number: Option<String>,
    /// RFC 3339 UTC of the first and the latest event.
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    /// The version of the last event folded in.
    pub version: u64,
}

impl Order {
    pub fn exists(&self) -> bool {
        self.order_id.is_some()
    }

    /// The status a fact leads to: forward only, and a final status (the first of SHIPPED or
    /// CANCELLED to be recorded) stays.
    fn advance(&mut self, to: Status) {
        if !self.status.is_final() && (to.is_final() || self.status.rank() < to.rank()) {
            self.status = to;
        }
    }
}

impl Aggregate for Order {
    type Command = Command;
    type Event = OrderEvent;
    type Error = DomainError;

    /// Decides. Every fact — payment, reservation, shipment, cancellation — is recorded once,
    /// in whatever order it arrives: a repeat decides nothing, a late one is recorded as what it
    /// is. The status is derived from the facts (see `apply`) and never moves back.
    fn handle(&self, cmd: Command) -> Result<Vec<OrderEvent>, DomainError> {
        if let Command::Place(e) = cmd {
            return if self.exists() {
                Err(DomainError::AlreadyExists)
            } else {
                Ok(vec![OrderEvent::Created(e)])
            };
        }
        let Some(order_id) = self.order_id.clone() else {
            return Err(DomainError::NotFound);
        };
        if self.status.is_final()
            && !matches!(cmd, Command::Cancel { .. })
            && shopflow_envelope::sim::planted(shopflow_envelope::sim::Bug::OrderDropsLateFact)
        {
            return Ok(vec![]);
        }
        Ok(match cmd {
            Command::Place(_) => unreachable!("handled above"),
            Command::RecordPayment { .. } if self.payment_id.is_some() => vec![],
            Command::RecordPayment { payment_id } => vec![OrderEvent::Paid(OrderPaid {
                order_id,
                payment_id,
            })],
            Command::RecordReservation if self.reserved => vec![],
            Command::RecordReservation => vec![OrderEvent::Reserved(OrderReserved { order_id })],
            Command::RecordShipment { .. } if self.shipment_id.is_some() => vec![],
            Command::RecordShipment {
                shipment_id,
                carrier,
                tracking_number,
            } => vec![OrderEvent::Completed(OrderCompleted {
                order_id,
                shipment_id,
                carrier,
                tracking_number,
            })],
            Command::Cancel { .. }
                if self.cancel_reason.is_some() || self.refused_cancellation.is_some() =>
            {
                vec![]
            }
            Command::Cancel { reason } if self.status == Status::Shipped => {
                vec![OrderEvent::CancellationRefused(CancellationRefused {
                    order_id,
                    reason,
                })]
            }
            Command::Cancel { reason } => vec![OrderEvent::Cancelled(OrderCancelled {
                order_id,
                customer_id: self.customer_id.clone().ok_or(DomainError::NotFound)?,
                reason,
            })],
        })
    }

    /// Moves state; no rules here.
    fn apply(&mut self, event: &OrderEvent, applied: Applied) {
        let at = applied
            .at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let at = at.as_str();
        match event {
            OrderEvent::Created(e) => {
                self.order_id = Some(e.order_id.clone());
                self.customer_id = Some(e.customer_id.clone());
                self.items = e.items.clone();
                self.total_minor = e.total_minor;
                self.currency = e.currency.clone();
                self.card_last4 = e.card_last4.clone();
                self.shipping_address = Some(e.shipping_address.clone());
                self.status = Status::Pending;
                self.created_at = Some(at.to_owned());
            }
            OrderEvent::Paid(e) => {
                self.payment_id = Some(e.payment_id.clone());
                self.advance(Status::Paid);
            }
            OrderEvent::Reserved(_) => {
                self.reserved = true;
                self.advance(Status::Reserved);
            }
            OrderEvent::Completed(e) => {
                self.shipment_id = Some(e.shipment_id.clone());
                self.carrier = Some(e.carrier.clone());
                self.tracking_number = Some(e.tracking_number.clone());
                self.advance(Status::Shipped);
            }
            OrderEvent::Cancelled(e) => {
                self.cancel_reason = Some(e.reason.clone());
                self.advance(Status::Cancelled);
            }
            OrderEvent::CancellationRefused(e) => {
                self.refused_cancellation = Some(e.reason.clone());
            }
        }
        self.version = applied.version;
        self.updated_at = Some(at.to_owned());
    }
}

#[cfg(test)]
mod tests {
    //! Given / when / then.
    use super::*;
    use shopflow_eventsourcing::testing::TestFramework;

    type Given = TestFramework<Order>;

    fn created() -> OrderCreated {
        OrderCreated {
            order_id: OrderId::parse("ord_1").unwrap(),
            customer_id: UserId::parse("usr_1").unwrap(),
            items: vec![OrderLine {
                sku: shopflow_contracts::Sku::parse("MUG").unwrap(),
                quantity: 2,
                unit_price_minor: 1299,
            }],
            total_minor: 2598,
            currency: "EUR".into(),
            payment_token: "tok_4242424242424242".into(),
            card_last4: "4242".into(),
            shipping_address: Address {
                name: "Ada".into(),
                line1: "1 Main St".into(),
                city: "Berlin".into(),
                postal_code: "10115".into(),
                country: "DE".into(),
            },
        }
    }

    fn paid() -> OrderEvent {
        OrderEvent::Paid(OrderPaid {
            order_id: OrderId::parse("ord_1").unwrap(),
            payment_id: PaymentId::parse("pay_1").unwrap(),
        })
    }

    fn record_payment() -> Command {
        Command::RecordPayment {
            payment_id: PaymentId::parse("pay_1").unwrap(),
        }
    }

    #[test]
    fn placing_creates_once() {
        Given::given_no_previous_events()
            .when(Command::Place(created()))
            .then_expect_events(vec![OrderEvent::Created(created())]);
        Given::given(vec![OrderEvent::Created(created())])
            .when(Command::Place(created()))
            .then_expect_error(DomainError::AlreadyExists);
    }

    #[test]
    fn payment_moves_pending_to_paid_once() {
        Given::given(vec![OrderEvent::Created(created())])
            .when(record_payment())
            .then_expect_events(vec![paid()]);
        let after_payment = Given::given(vec![OrderEvent::Created(created()), paid()]);
        assert_eq!(after_payment.state().status, Status::Paid);
        // A duplicate payment decides nothing.
        after_payment.when(record_payment()).then_expect_no_events();
    }

    #[test]
    fn a_payment_overtaken_by_the_reservation_is_still_recorded() {
        let reserved = Given::given(vec![OrderEvent::Created(created())])
            .when(Command::RecordReservation)
            .result()
            .unwrap();
        assert_eq!(reserved.len(), 1);
        let mut past = vec![OrderEvent::Created(created())];
        past.extend(reserved);
        let o = Given::given(past);
        assert_eq!(o.state().status, Status::Reserved);
        // The late payment is recorded, and does not move the status back.
        o.when(record_payment())
            .then_expect_events(vec![paid()])
            .and_state(|o| {
                assert_eq!(o.status, Status::Reserved);
                assert_eq!(o.payment_id.as_ref().map(|p| p.as_str()), Some("pay_1"));
            });
    }

    fn cancelled(reason: &str) -> OrderEvent {
        OrderEvent::Cancelled(OrderCancelled {
            order_id: OrderId::parse("ord_1").unwrap(),
            customer_id: UserId::parse("usr_1").unwrap(),
            reason: reason.into(),
        })
    }

    fn shipment() -> Command {
        Command::RecordShipment {
            shipment_id: ShipmentId::parse("shp_1").unwrap(),
            carrier: "DHL".into(),
            tracking_number: "D1".into(),
        }
    }

    #[test]
    fn final_states_stay_final_and_late_facts_are_still_recorded() {
        let was_cancelled = vec![OrderEvent::Created(created()), cancelled("card_declined")];
        assert_eq!(
            Given::given(was_cancelled.clone()).state().status,
            Status::Cancelled
        );
        // A reservation that arrives after the cancellation is a fact of its own.
        Given::given(was_cancelled.clone())
            .when(Command::RecordReservation)
            .then_expect_events(vec![OrderEvent::Reserved(OrderReserved {
                order_id: OrderId::parse("ord_1").unwrap(),
            })])
            .and_state(|o| assert_eq!(o.status, Status::Cancelled));
        // A second cancellation decides nothing: it is recorded once.
        Given::given(was_cancelled)
            .when(Command::Cancel {
                reason: "again".into(),
            })
            .then_expect_no_events();

        let shipped = Given::given(vec![OrderEvent::Created(created()), paid()])
            .when(shipment())
            .result()
            .unwrap();
        let mut past = vec![OrderEvent::Created(created()), paid()];
        past.extend(shipped);
        assert_eq!(Given::given(past.clone()).state().status, Status::Shipped);
        Given::given(past.clone())
            .when(shipment())
            .then_expect_no_events();
        // A cancellation after the shipment is recorded as refused; nobody hears of it.
        let refused = Given::given(past.clone())
            .when(Command::Cancel {
                reason: "late refund".into(),
            })
            .then_expect_events(vec![OrderEvent::CancellationRefused(CancellationRefused {
                order_id: OrderId::parse("ord_1").unwrap(),
                reason: "late refund".into(),
            })])
            .and_state(|o| assert_eq!(o.status, Status::Shipped));
        assert!(
            OrderEvent::CancellationRefused(CancellationRefused {
                order_id: OrderId::parse("ord_1").unwrap(),
                reason: String::new(),
            })
            .topic()
            .is_none()
        );
        past.push(OrderEvent::CancellationRefused(CancellationRefused {
            order_id: OrderId::parse("ord_1").unwrap(),
            reason: "late refund".into(),
        }));
        assert_eq!(refused.refused_cancellation.as_deref(), Some("late refund"));
        Given::given(past)
            .when(Command::Cancel {
                reason: "again".into(),
            })
            .then_expect_no_events();
    }

    /// Every order of the outcomes, each also delivered twice: every fact once, and the status
    /// the facts lead to.
    #[test]
    fn every_arrival_order_records_every_fact_once() {
        let outcomes = [record_payment(), Command::RecordReservation, shipment()];
        let orders = [
            [0usize, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        for perm in orders {
            let mut stream = vec![OrderEvent::Created(created())];
            for &i in perm.iter().chain(perm.iter()) {
                let o = Given::given(stream.clone());
                stream.extend(o.when(outcomes[i].clone()).result().unwrap());
            }
            assert_eq!(stream.len(), 4, "{perm:?}: {stream:?}");
            let o = Given::given(stream);
            let o = o.state();
            assert_eq!(o.status, Status::Shipped, "{perm:?}");
            assert!(o.payment_id.is_some() && o.reserved && o.tracking_number.is_some());
        }
    }

    #[test]
    fn commands_for_an_unknown_order_fail() {
        Given::given_no_previous_events()
            .when(Command::RecordReservation)
            .then_expect_error(DomainError::NotFound);
    }
}
