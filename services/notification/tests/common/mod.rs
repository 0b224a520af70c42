//! What the notification service's tests share: the events a customer's messages come from.
#![allow(dead_code, unreachable_pub)]

use shopflow_contracts::{Address, OrderCreated, OrderId, OrderLine, Sku, UserId, UserRegistered};
use shopflow_envelope::{Envelope, Meta};

/// `user` registers with `email` (no phone).
pub fn registered(user: &UserId, email: &str) -> Envelope {
    Envelope::new(
        &UserRegistered {
            user_id: user.clone(),
            email: email.to_owned(),
            name: "Ada".into(),
            phone: None,
        },
        Meta::new("user-service", user.as_str(), 1),
    )
    .unwrap()
}

/// `user` orders one mug as `order`.
pub fn order_created(order: &OrderId, user: &UserId) -> Envelope {
    Envelope::new(
        &OrderCreated {
            order_id: order.clone(),
            customer_id: user.clone(),
            items: vec![OrderLine {
                sku: Sku::parse("MUG").unwrap(),
                quantity: 1,
                unit_price_minor: 1250,
            }],
            total_minor: 1250,
            currency: "EUR".into(),
            payment_token: "tok_0123456789abcdef0123456789abcdef".into(),
            card_last4: "4242".into(),
            shipping_address: Address {
                name: "Ada".into(),
                line1: "1 Analytical St".into(),
                city: "London".into(),
                postal_code: "N1 9GU".into(),
                country: "GB".into(),
            },
        },
        Meta::new("order-service", order.as_str(), 1),
    )
    .unwrap()
}
