//! A refund request that overtakes the charge prevents the charge; refunds happen once.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use shopflow_contracts::{
    Address, OrderCreated, OrderId, OrderLine, Sku, StockReservationFailed, UserId,
};
use shopflow_envelope::{Envelope, Meta};
use shopflow_payment::{Payments, Simulator, Vault, VaultKeys};
use shopflow_runtime::Handler;
use shopflow_store::Db;

fn vault() -> Vault {
    Vault::new(VaultKeys::parse(&VaultKeys::generate()).unwrap())
}

/// (A history written before the vault: its token is `tok_` and the card's digits, which the
/// payment service still charges.)
fn created(order: &str) -> Envelope {
    let e = OrderCreated {
        order_id: OrderId::parse(order).unwrap(),
        customer_id: UserId::parse("usr_1").unwrap(),
        items: vec![OrderLine {
            sku: Sku::parse("BOX").unwrap(),
            quantity: 1,
            unit_price_minor: 500,
        }],
        total_minor: 500,
        currency: "EUR".into(),
        payment_token: "tok_4242424242424242".into(),
        card_last4: "4242".into(),
        shipping_address: Address {
            name: "A".into(),
            line1: "B".into(),
            city: "C".into(),
            postal_code: "D".into(),
            country: "DE".into(),
        },
    };
    Envelope::new(&e, Meta::new("order-service", order, 1)).unwrap()
}

fn out_of_stock(order: &str) -> Envelope {
    Envelope::new(
        &StockReservationFailed {
            order_id: OrderId::parse(order).unwrap(),
            reason: "insufficient".into(),
        },
        Meta::new("inventory-service", order, 1),
    )
    .unwrap()
}

async fn handle(p: &Payments<Simulator>, env: &Envelope) -> Vec<String> {
    let mut tx = p.db().begin().await.unwrap();
    let out = p.handle(&mut tx, env).await.unwrap();
    tx.commit().await.unwrap();
    out.into_iter()
        .map(|o| o.envelope.event_type().to_owned())
        .collect()
}

#[tokio::test]
async fn refund_before_charge_means_no_charge() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Arc::new(Simulator::default());
    let p = Payments::open(
        Db::open_sqlite(dir.path().join("pay.db")).unwrap(),
        gateway.clone(),
        vault(),
    )
    .await
    .unwrap();
    assert!(handle(&p, &out_of_stock("ord_early")).await.is_empty());
    assert_eq!(
        handle(&p, &created("ord_early")).await,
        vec!["PaymentFailed"]
    );
    assert_eq!(gateway.charged.load(Ordering::Relaxed), 0, "never charged");
}

#[tokio::test]
async fn charge_once_refund_once() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Arc::new(Simulator::default());
    let p = Payments::open(
        Db::open_sqlite(dir.path().join("pay.db")).unwrap(),
        gateway.clone(),
        vault(),
    )
    .await
    .unwrap();
    assert_eq!(
        handle(&p, &created("ord_1")).await,
        vec!["PaymentCompleted"]
    );
    assert!(
        handle(&p, &created("ord_1")).await.is_empty(),
        "the same order again"
    );
    assert_eq!(
        handle(&p, &out_of_stock("ord_1")).await,
        vec!["PaymentRefunded"]
    );
    assert!(
        handle(&p, &out_of_stock("ord_1")).await.is_empty(),
        "a second refund"
    );
    assert_eq!(gateway.charged.load(Ordering::Relaxed), 1);
    assert_eq!(gateway.refunded.load(Ordering::Relaxed), 1);
    assert_eq!(p.get("ord_1").await.unwrap().status, "REFUNDED");
}
