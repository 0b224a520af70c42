//! What the order service's tests share: a placeable order and the copies it is checked
//! against (the catalog's MUG and its registered customer).
#![allow(dead_code, unreachable_pub)]

use shopflow_order::PlaceOrder;
use shopflow_store::{Db, params};

/// The customer every test order is for.
pub const CUSTOMER: &str = "usr_0192d5e0a1b27c3d8e4f5a6b7c8d9e0f";

/// Two mugs for [`CUSTOMER`], paid with a vault token.
pub fn order() -> PlaceOrder {
    serde_json::from_value(serde_json::json!({
        "customerId": CUSTOMER,
        "items": [{"sku": "MUG", "quantity": 2}],
        "payment": {"token": "tok_0123456789abcdef0123456789abcdef", "last4": "4242"},
        "shippingAddress": {"name": "Ada", "line1": "1 Analytical St", "city": "London",
                            "postalCode": "N1 9GU", "country": "GB"}
    }))
    .unwrap()
}

/// The order service's copies as it learns them from ProductUpdated and UserRegistered: MUG at
/// 12.50 EUR, and [`CUSTOMER`].
pub async fn seed(db: &Db) {
    let mut tx = db.begin().await.unwrap();
    tx.execute(
        "INSERT INTO catalog (sku, name, price_minor, currency) VALUES ('MUG', 'Mug', 1250, 'EUR')",
        params![],
    )
    .await
    .unwrap();
    tx.execute(
        "INSERT INTO customers (user_id, registered_at) VALUES ($1, 0)",
        params![CUSTOMER],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}
