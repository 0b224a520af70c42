//! Compensations are idempotent and tolerate arriving before the step they compensate.

use shopflow_contracts::{
    Address, OrderId, OrderLine, PaymentCompleted, PaymentId, ShipmentFailed, Sku,
};
use shopflow_envelope::{CorrelationId, Envelope, Meta};
use shopflow_inventory::{Inventory, PutProduct};
use shopflow_runtime::Handler;
use shopflow_store::Db;

fn line() -> Vec<OrderLine> {
    vec![OrderLine {
        sku: Sku::parse("BOX").unwrap(),
        quantity: 2,
        unit_price_minor: 100,
    }]
}

fn address() -> Address {
    Address {
        name: "A".into(),
        line1: "B".into(),
        city: "C".into(),
        postal_code: "D".into(),
        country: "DE".into(),
    }
}

async fn setup() -> (Inventory, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let inv = Inventory::open(Db::open_sqlite(dir.path().join("inv.db")).unwrap())
        .await
        .unwrap();
    inv.put(
        "BOX",
        PutProduct {
            name: "Box".into(),
            price_minor: 100,
            currency: "EUR".into(),
            stock: 5,
        },
        CorrelationId::generate(),
    )
    .await
    .unwrap();
    (inv, dir)
}

async fn handle(inv: &Inventory, env: &Envelope) -> Vec<String> {
    let mut tx = inv.db().begin().await.unwrap();
    let out = inv.handler().handle(&mut tx, env).await.unwrap();
    tx.commit().await.unwrap();
    out.into_iter()
        .map(|o| o.envelope.event_type().to_owned())
        .collect()
}

fn paid(order: &str) -> Envelope {
    let e = PaymentCompleted {
        order_id: OrderId::parse(order).unwrap(),
        payment_id: PaymentId::parse("pay_1").unwrap(),
        amount_minor: 200,
        currency: "EUR".into(),
        items: line(),
        shipping_address: address(),
    };
    Envelope::new(&e, Meta::new("payment-service", order, 1)).unwrap()
}

fn shipment_failed(order: &str) -> Envelope {
    let e = ShipmentFailed {
        order_id: OrderId::parse(order).unwrap(),
        reason: "no".into(),
        items: line(),
    };
    Envelope::new(&e, Meta::new("shipping-service", order, 1)).unwrap()
}

#[tokio::test]
async fn release_before_reservation_leaves_a_tombstone() {
    let (inv, _dir) = setup().await;
    assert!(handle(&inv, &shipment_failed("ord_early")).await.is_empty());
    // The late payment must not reserve for an order that is already compensated.
    assert!(handle(&inv, &paid("ord_early")).await.is_empty());
    let p = inv.get("BOX").await.unwrap();
    assert_eq!((p.available, p.reserved), (5, 0));
}

#[tokio::test]
async fn reserve_and_release_are_idempotent() {
    let (inv, _dir) = setup().await;
    assert_eq!(handle(&inv, &paid("ord_1")).await, vec!["StockReserved"]);
    assert!(
        handle(&inv, &paid("ord_1")).await.is_empty(),
        "a second reservation"
    );
    let p = inv.get("BOX").await.unwrap();
    assert_eq!((p.available, p.reserved), (3, 2));
    assert_eq!(
        handle(&inv, &shipment_failed("ord_1")).await,
        vec!["StockReleased"]
    );
    assert!(
        handle(&inv, &shipment_failed("ord_1")).await.is_empty(),
        "a second release"
    );
    let p = inv.get("BOX").await.unwrap();
    assert_eq!((p.available, p.reserved, p.shipped), (5, 0, 0));
}
