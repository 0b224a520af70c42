//! The order service reads history written by older versions, and rebuilds its read model.

use shopflow_envelope::{Envelope, Kind, Meta};
use shopflow_order::Orders;
use shopflow_order::aggregate::Status;
use shopflow_store::{Db, EventStore, ExpectedVersion};

/// A log written by an older order service: `OrderCreated` v1 with the seed's float `amount`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_v1_events_is_read_through_the_upcaster() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_sqlite(dir.path().join("order.db")).unwrap();
    let orders = Orders::open(db.clone()).await.unwrap();
    let store = EventStore::new(db.clone());
    let v1 = Envelope::from_parts(
        "OrderCreated",
        1,
        Kind::Integration,
        serde_json::json!({
            "orderId": "ord_legacy1", "customerId": "usr_legacy", "amount": "99.99",
            "items": [{"sku": "MUG", "quantity": 1}],
            "shippingAddress": {"name": "A", "line1": "B", "city": "C", "postalCode": "D", "country": "DE"}
        }),
        Meta::new("legacy-order-service", "ord_legacy1", 1),
    )
    .unwrap();
    let paid = Envelope::from_parts(
        "OrderPaid",
        1,
        Kind::Domain,
        serde_json::json!({"orderId": "ord_legacy1", "paymentId": "pay_1"}),
        Meta::new("order-service", "ord_legacy1", 2),
    )
    .unwrap();
    let mut tx = db.begin().await.unwrap();
    store
        .append(
            &mut tx,
            "ord_legacy1",
            ExpectedVersion::NoStream,
            &[v1, paid],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // Replay (time travel and the current state) goes through the same upcaster.
    let now = orders
        .fold("ord_legacy1", None, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.status, Status::Paid);
    assert_eq!(now.total_minor, 9999);
    assert_eq!(now.currency, "EUR");
    let then = orders
        .fold("ord_legacy1", Some(1), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(then.status, Status::Pending);

    // So does the projection, and a rebuild of it.
    let replayed = orders.rebuild_projection().await.unwrap();
    assert_eq!(replayed, 2);
    let view = orders.get("ord_legacy1").await.unwrap();
    assert_eq!(
        (view.status, view.total_minor, view.source),
        ("PAID", 9999, "read-model")
    );
}

/// `verify` reads every order's history: a fact recorded twice (a duplicate that got past the
/// aggregate, say through a hand-edited store) is reported with both versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_a_fact_recorded_twice() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_sqlite(dir.path().join("order.db")).unwrap();
    let _orders = Orders::open(db.clone()).await.unwrap();
    let store = EventStore::new(db.clone());
    let created = Envelope::from_parts(
        "OrderCreated",
        2,
        Kind::Integration,
        serde_json::json!({
            "orderId": "ord_twice", "customerId": "usr_twice", "totalMinor": 1250, "currency": "EUR",
            "items": [{"sku": "MUG", "quantity": 1, "unitPriceMinor": 1250}],
            "paymentToken": "tok_0123456789abcdef0123456789abcdef", "cardLast4": "4242",
            "shippingAddress": {"name": "A", "line1": "B", "city": "C", "postalCode": "D", "country": "DE"}
        }),
        Meta::new("order-service", "ord_twice", 1),
    )
    .unwrap();
    let paid = |v| {
        Envelope::from_parts(
            "OrderPaid",
            1,
            Kind::Domain,
            serde_json::json!({"orderId": "ord_twice", "paymentId": "pay_1"}),
            Meta::new("order-service", "ord_twice", v),
        )
        .unwrap()
    };
    let mut tx = db.begin().await.unwrap();
    store
        .append(
            &mut tx,
            "ord_twice",
            ExpectedVersion::NoStream,
            &[created, paid(2), paid(3)],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let mut facts = shopflow_contracts::audit::Facts::new(false);
    (shopflow_order::SERVICE.audit)(&db, &mut facts)
        .await
        .unwrap();
    assert_eq!(
        facts.violations,
        vec!["order ord_twice: OrderPaid recorded twice (versions 2 and 3)"]
    );
}
