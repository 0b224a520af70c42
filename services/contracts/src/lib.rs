#![doc = include_str!("../README.md")]

pub mod audit;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use shopflow_envelope::{Event, Kind, Registry};

macro_rules! event {
    ($name:ident, $domain:literal, $version:literal) => {
        impl Event for $name {
            const TYPE: &'static str = stringify!($name);
            const VERSION: u32 = $version;
            const KIND: Kind = Kind::Integration;
            const DOMAIN: &'static str = $domain;
        }
    };
}

macro_rules! id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// A new, time-ordered id (`<prefix>_<uuidv7>`).
            pub fn generate() -> Self {
                Self(format!(concat!($prefix, "_{}"), shopflow_envelope::sim::uuid_v7().simple()))
            }
            /// Accepts an id from outside: 1 to 64 of `[A-Za-z0-9_-]`.
            pub fn parse(s: &str) -> Result<Self, String> {
                if !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(format!(concat!("`{}` is not a valid ", stringify!($name), " (1-64 of A-Z a-z 0-9 _ -)"), s))
                }
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id!(/// An order.
    OrderId, "ord");
id!(/// A registered user (the customer of an order).
    UserId, "usr");
id!(/// A product's stock-keeping unit, chosen by the shop (`MUG-01`).
    Sku, "sku");
id!(/// A charge at the payment gateway.
    PaymentId, "pay");
id!(/// A shipment.
    ShipmentId, "shp");

/// One line of an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderLine {
    pub sku: Sku,
    pub quantity: u32,
    pub unit_price_minor: i64,
}

/// Where an order goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    pub name: String,
    pub line1: String,
    pub city: String,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2.
    pub country: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserRegistered {
    pub user_id: UserId,
    pub email: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}
event!(UserRegistered, "users", 1);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductUpdated {
    pub sku: Sku,
    pub name: String,
    pub price_minor: i64,
    pub currency: String,
}
event!(ProductUpdated, "inventory", 1);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventoryUpdated {
    pub sku: Sku,
    pub available: i64,
    pub reserved: i64,
}
event!(InventoryUpdated, "inventory", 1);

/// v2: money as minor units + currency (v1 had a float `amount`, as in the seed document).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreated {
    pub order_id: OrderId,
    pub customer_id: UserId,
    pub items: Vec<OrderLine>,
    pub total_minor: i64,
    pub currency: String,
    /// The card as the payment service's vault token (`tok_` and 32 hex digits), taken at the
    /// edge before any event exists; never a card number in the log.
    pub payment_token: String,
    /// The card's last four digits, for receipts and support.
    pub card_last4: String,
    pub shipping_address: Address,
}
event!(OrderCreated, "orders", 2);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderCancelled {
    pub order_id: OrderId,
    pub customer_id: UserId,
    pub reason: String,
}
event!(OrderCancelled, "orders", 1);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentCompleted {
    pub order_id: OrderId,
    pub payment_id: PaymentId,
    pub amount_minor: i64,
    pub currency: String,
    /// Carried on so that the next step needs nothing from another service (event-carried state).
    pub items: Vec<OrderLine>,
    pub shipping_address: Address,
}
event!(PaymentCompleted, "payments", 1);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentFailed {
    pub order_id: OrderId,
    pub reason: String,
}
event!(PaymentFailed, "payments", 1);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRefunded {
    pub order_id: OrderId,
    pub payment_id: PaymentId,
    pub amount_minor: i64,
    pub currency: String,
    pub reason: String,
}
event!(PaymentRefunded, "payments", 1);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StockReserved {
    pub order_id: OrderId,
    pub items: Vec<OrderLine>,
    pub shipping_address: Address,
}
event!(StockReserved, "inventory", 1);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StockReservationFailed {
    pub order_id: OrderId,
    pub reason: String,
}
event!(StockReservationFailed, "inventory", 1);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StockReleased {
    pub order_id: OrderId,
    pub items: Vec<OrderLine>,
}
event!(StockReleased, "inventory", 1);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderShipped {
    pub order_id: OrderId,
    pub shipment_id: ShipmentId,
    pub carrier: String,
    pub tracking_number: String,
    pub items: Vec<OrderLine>,
}
event!(OrderShipped, "shipping", 1);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShipmentFailed {
    pub order_id: OrderId,
    pub reason: String,
    pub items: Vec<OrderLine>,
}
event!(ShipmentFailed, "shipping", 1);

/// The shape of a card token of the payment service's vault: `tok_` and 32 lowercase hex digits.
/// Events carry this and the card's last four digits, never the card.
pub fn is_payment_token(t: &str) -> bool {
    t.strip_prefix("tok_")
        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Luhn check of a card number given as 12 to 19 ASCII digits.
pub fn luhn_valid(digits: &str) -> bool {
    if !(12..=19).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

// ---- Commands (orchestration) ----------------------------------------------------------------
//
// Imperative messages an orchestrator sends to one service, on that service's command topic
// `<domain>.commands` (keyed by order id, so one order's commands arrive in order). The service
// answers with the same past-tense events as in the choreography.

macro_rules! command {
    ($name:ident, $domain:literal) => {
        impl Event for $name {
            const TYPE: &'static str = stringify!($name);
            const VERSION: u32 = 1;
            const KIND: Kind = Kind::Command;
            const DOMAIN: &'static str = $domain;
            fn topic() -> String {
                command_topic($domain)
            }
        }
    };
}

/// The command topic of a domain: `payments.commands`.
pub fn command_topic(domain: &str) -> String {
    format!("{domain}.commands")
}

/// Charge an order. Answered by `PaymentCompleted` or `PaymentFailed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessPayment {
    pub order_id: OrderId,
    pub items: Vec<OrderLine>,
    pub total_minor: i64,
    pub currency: String,
    pub payment_token: String,
    pub card_last4: String,
    pub shipping_address: Address,
}
command!(ProcessPayment, "payments");

impl From<OrderCreated> for ProcessPayment {
    fn from(e: OrderCreated) -> Self {
        Self {
            order_id: e.order_id,
            items: e.items,
            total_minor: e.total_minor,
            currency: e.currency,
            payment_token: e.payment_token,
            card_last4: e.card_last4,
            shipping_address: e.shipping_address,
        }
    }
}

/// Refund an order's charge (a compensation). Answered by `PaymentRefunded`, or by
/// `PaymentFailed` when nothing was charged (and then nothing ever will be).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefundPayment {
    pub order_id: OrderId,
    pub reason: String,
}
command!(RefundPayment, "payments");

/// Reserve an order's stock. Answered by `StockReserved` or `StockReservationFailed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReserveStock {
    pub order_id: OrderId,
    pub items: Vec<OrderLine>,
    pub shipping_address: Address,
}
command!(ReserveStock, "inventory");

/// Release an order's reservation (a compensation). Always answered by `StockReleased`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseStock {
    pub order_id: OrderId,
    pub items: Vec<OrderLine>,
}
command!(ReleaseStock, "inventory");

/// Ship an order. Answered by `OrderShipped` or `ShipmentFailed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShipOrder {
    pub order_id: OrderId,
    pub items: Vec<OrderLine>,
    pub shipping_address: Address,
}
command!(ShipOrder, "shipping");

/// Record an order as paid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApproveOrder {
    pub order_id: OrderId,
    pub payment_id: PaymentId,
}
command!(ApproveOrder, "orders");

/// Record that an order's stock is reserved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfirmReservation {
    pub order_id: OrderId,
}
command!(ConfirmReservation, "orders");

/// Record an order as shipped (its final state).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompleteOrder {
    pub order_id: OrderId,
    pub shipment_id: ShipmentId,
    pub carrier: String,
    pub tracking_number: String,
}
command!(CompleteOrder, "orders");

/// Cancel an order (its final state), with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CancelOrder {
    pub order_id: OrderId,
    pub reason: String,
}
command!(CancelOrder, "orders");

/// The command topics of the shop.
pub fn command_topics() -> Vec<String> {
    ["payments", "inventory", "shipping", "orders"]
        .into_iter()
        .map(command_topic)
        .collect()
}

/// Every topic of the shop: event topics, then command topics (dead-letter topics are
/// `<topic>.dlq`).
pub fn all_topics() -> Vec<String> {
    let mut t = topics();
    t.extend(command_topics());
    t
}

/// Every event topic of the shop (dead-letter topics are `<topic>.dlq`).
pub fn topics() -> Vec<String> {
    vec![
        UserRegistered::topic(),
        ProductUpdated::topic(),
        InventoryUpdated::topic(),
        OrderCreated::topic(),
        OrderCancelled::topic(),
        PaymentCompleted::topic(),
        PaymentFailed::topic(),
        PaymentRefunded::topic(),
        StockReserved::topic(),
        StockReservationFailed::topic(),
        StockReleased::topic(),
        OrderShipped::topic(),
        ShipmentFailed::topic(),
    ]
}

/// Parses the seed's decimal `amount` ("99.99", 99.99 or 99) into minor units without floats.
fn decimal_to_minor(v: &serde_json::Value) -> Result<i64, String> {
    let text = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        other => return Err(format!("amount {other} is not a number")),
    };
    let (whole, frac) = text.split_once('.').unwrap_or((&text, ""));
    if frac.len() > 2 || !frac.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("amount {text} has more than two decimals"));
    }
    let whole: i64 = whole
        .parse()
        .map_err(|_| format!("amount {text} is not a decimal"))?;
    let frac: i64 = format!("{frac:0<2}")
        .parse()
        .map_err(|_| format!("amount {text} is not a decimal"))?;
    whole
        .checked_mul(100)
        .and_then(|w| w.checked_add(if whole < 0 { -frac } else { frac }))
        .ok_or_else(|| format!("amount {text} is out of range"))
}

/// Old versions of events, as Rust types: only the upcasters read them, and their schemas are
/// what `schemas/<Type>.v<N>.json` records for those versions.
pub mod legacy {
    use super::*;

    /// `OrderCreated` v1, as the seed document's services wrote it: the total as a decimal
    /// `amount` in major units (a JSON number or a string), one currency (EUR) unless it says
    /// otherwise, lines without unit prices, no card token.
    #[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct OrderCreatedV1 {
        pub order_id: OrderId,
        pub customer_id: UserId,
        #[schemars(with = "DecimalAmount")]
        pub amount: serde_json::Value,
        #[serde(default)]
        pub currency: Option<String>,
        pub items: Vec<OrderLineV1>,
        pub shipping_address: Address,
        #[serde(default)]
        pub payment_token: Option<String>,
        #[serde(default)]
        pub card_last4: Option<String>,
    }

    /// A line of a v1 order: the price may be missing.
    #[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct OrderLineV1 {
        pub sku: Sku,
        pub quantity: u32,
        #[serde(default)]
        pub unit_price_minor: Option<i64>,
    }

    /// A decimal amount in major units: `99.99` or `"99.99"`.
    #[derive(JsonSchema)]
    #[serde(untagged)]
    #[allow(dead_code)]
    enum DecimalAmount {
        Number(f64),
        Text(String),
    }

    impl OrderCreatedV1 {
        /// v1 → v2: the amount in minor units without floats, EUR unless said, lines priced at
        /// the average unit price where v1 had none, `tok_legacy` for the missing token.
        pub fn into_v2(self) -> Result<OrderCreated, String> {
            let total = decimal_to_minor(&self.amount)?;
            let units: i64 = self.items.iter().map(|i| i64::from(i.quantity)).sum();
            let average = if units > 0 { total / units } else { 0 };
            Ok(OrderCreated {
                order_id: self.order_id,
                customer_id: self.customer_id,
                items: self
                    .items
                    .into_iter()
                    .map(|i| OrderLine {
                        sku: i.sku,
                        quantity: i.quantity,
                        unit_price_minor: i.unit_price_minor.unwrap_or(average),
                    })
                    .collect(),
                total_minor: total,
                currency: self.currency.unwrap_or_else(|| "EUR".into()),
                payment_token: self.payment_token.unwrap_or_else(|| "tok_legacy".into()),
                card_last4: self.card_last4.unwrap_or_else(|| "0000".into()),
                shipping_address: self.shipping_address,
            })
        }
    }
}

/// The registry of every shop event, with the upcasters for older versions.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register::<UserRegistered>()
        .register::<ProductUpdated>()
        .register::<InventoryUpdated>()
        .register::<OrderCreated>()
        .register::<OrderCancelled>()
        .register::<PaymentCompleted>()
        .register::<PaymentFailed>()
        .register::<PaymentRefunded>()
        .register::<StockReserved>()
        .register::<StockReservationFailed>()
        .register::<StockReleased>()
        .register::<OrderShipped>()
        .register::<ShipmentFailed>()
        .register::<ProcessPayment>()
        .register::<RefundPayment>()
        .register::<ReserveStock>()
        .register::<ReleaseStock>()
        .register::<ShipOrder>()
        .register::<ApproveOrder>()
        .register::<ConfirmReservation>()
        .register::<CompleteOrder>()
        .register::<CancelOrder>();
    r.schema_version::<legacy::OrderCreatedV1>("OrderCreated", 1)
        .upcaster("OrderCreated", 1, |env| {
            let v1: legacy::OrderCreatedV1 =
                serde_json::from_str(env.data_json()).map_err(|e| e.to_string())?;
            serde_json::to_value(v1.into_v2()?).map_err(|e| e.to_string())
        });
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopflow_envelope::{Envelope, Kind, Meta};

    #[test]
    fn order_created_v1_is_read_as_v2() {
        let v1 = Envelope::from_parts(
            "OrderCreated",
            1,
            Kind::Integration,
            serde_json::json!({
                "orderId": "12345", "customerId": "user123", "amount": 99.99,
                "items": [{"sku": "MUG", "quantity": 2}, {"sku": "CAP", "quantity": 1}],
                "shippingAddress": {"name": "A", "line1": "B", "city": "C", "postalCode": "1", "country": "DE"}
            }),
            Meta::new("legacy-order-service", "12345", 1),
        )
        .unwrap();
        let env = registry().decode(&v1.encode().unwrap()).unwrap();
        let e: OrderCreated = env.data_as().unwrap();
        assert_eq!(e.total_minor, 9999);
        assert_eq!(e.currency, "EUR");
        assert_eq!(e.items[0].unit_price_minor, 3333);
    }

    #[test]
    fn decimals_never_go_through_floats() {
        assert_eq!(decimal_to_minor(&serde_json::json!("0.10")).unwrap(), 10);
        assert_eq!(decimal_to_minor(&serde_json::json!(19.9)).unwrap(), 1990);
        assert_eq!(decimal_to_minor(&serde_json::json!(7)).unwrap(), 700);
        assert!(decimal_to_minor(&serde_json::json!("1.999")).is_err());
        assert!(decimal_to_minor(&serde_json::json!(true)).is_err());
    }

    #[test]
    fn luhn() {
        assert!(luhn_valid("4242424242424242"));
        assert!(luhn_valid("4000000000000002"));
        assert!(!luhn_valid("4242424242424241"));
        assert!(!luhn_valid("42"));
        assert!(!luhn_valid("42424242424242a2"));
    }

    #[test]
    fn one_topic_per_type() {
        let t = topics();
        let mut dedup = t.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(t.len(), dedup.len());
        assert!(t.contains(&"orders.order-created".to_string()));
        assert!(t.contains(&"inventory.stock-reservation-failed".to_string()));
        assert_eq!(ProcessPayment::topic(), "payments.commands");
        assert_eq!(all_topics().len(), t.len() + 4);
    }

    #[test]
    fn commands_are_a_distinct_kind() {
        let env = shopflow_envelope::Envelope::new(
            &CancelOrder {
                order_id: OrderId::generate(),
                reason: "test".into(),
            },
            shopflow_envelope::Meta::new("order-saga", "ord_1", 1),
        )
        .unwrap();
        assert_eq!(env.kind(), Kind::Command);
        let back = registry().decode(&env.encode().unwrap()).unwrap();
        assert!(back.is::<CancelOrder>());
        assert_eq!(back.kind(), Kind::Command);
    }
}
