//! A customer's mailbox tells the story in the order it happened, whatever order the events
//! arrive in: the welcome, then the order's confirmation, then its shipment or cancellation.
//! The three come on different topics from different services, so every arrangement is tried.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use shopflow_contracts::{OrderCancelled, OrderId, OrderShipped, ShipmentId, UserId};
use shopflow_envelope::{Envelope, Meta};
use shopflow_notification::{Notifications, Spool};
use shopflow_runtime::Handler;
use shopflow_store::Db;

fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, first.clone());
            out.push(p);
        }
    }
    out
}

/// The mailbox: subjects in the order they were spooled, by recipient.
fn mailbox(dir: &std::path::Path) -> BTreeMap<String, Vec<String>> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("mail"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in files {
        let mut to = String::new();
        for line in std::fs::read_to_string(f).unwrap().lines() {
            if let Some(t) = line.strip_prefix("To: ") {
                to = t.to_owned();
            } else if let Some(s) = line.strip_prefix("Subject: ") {
                out.entry(to.clone()).or_default().push(s.to_owned());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_confirmation_comes_before_the_shipment_or_cancellation_in_any_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_sqlite(dir.path().join("notification.db")).unwrap();
    let spool = Arc::new(Spool::new(dir.path()));
    let n = Notifications::open(db.clone(), spool).await.unwrap();

    let mut expected = BTreeMap::new();
    for (k, ends_shipped) in [(0, true), (1, false)] {
        for (p, arrival) in permutations(&[0, 1, 2]).into_iter().enumerate() {
            let user = UserId::generate();
            let order = OrderId::generate();
            let email = format!("c{k}{p}@example.com");
            let registered = common::registered(&user, &email);
            let created = common::order_created(&order, &user);
            let last = if ends_shipped {
                Envelope::new(
                    &OrderShipped {
                        order_id: order.clone(),
                        shipment_id: ShipmentId::generate(),
                        carrier: "DHL".into(),
                        tracking_number: "TRK-1".into(),
                        items: vec![],
                    },
                    Meta::new("shipping-service", order.as_str(), 1),
                )
            } else {
                Envelope::new(
                    &OrderCancelled {
                        order_id: order.clone(),
                        customer_id: user.clone(),
                        reason: "payment failed: card declined".into(),
                    },
                    Meta::new("order-service", order.as_str(), 2),
                )
            }
            .unwrap();
            let events = [registered, created, last];
            for i in &arrival {
                let mut tx = db.begin().await.unwrap();
                n.handle(&mut tx, &events[*i]).await.unwrap();
                tx.commit().await.unwrap();
            }
            let end = if ends_shipped {
                format!("Your order {order} has shipped")
            } else {
                format!("Your order {order} was cancelled")
            };
            expected.insert(
                email,
                vec![
                    "Welcome to shopflow".to_owned(),
                    format!("Your order {order} is confirmed"),
                    end,
                ],
            );
        }
    }
    assert_eq!(mailbox(dir.path()), expected);
}
