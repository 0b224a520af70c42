//! The facts of an order arrive in any order, and twice: every distinct arrangement of each
//! outcome, each fact delivered twice (half of the repeats the same envelope, as a redelivery,
//! half a fresh one, as a producer that retried), many orders interleaved, several events per
//! transaction. Every fact is recorded exactly once, the status is the first final fact,
//! exactly one `OrderCancelled` leaves for an order that ends cancelled and none for one that
//! ships, and the read model agrees with the history, in both saga styles.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shopflow_contracts::{
    ApproveOrder, CancelOrder, CompleteOrder, ConfirmReservation, OrderId, OrderShipped,
    PaymentCompleted, PaymentFailed, PaymentId, PaymentRefunded, ShipmentId, StockReserved,
};
use shopflow_envelope::{CorrelationId, Envelope, Meta};
use shopflow_order::Orders;
use shopflow_runtime::{Handler, Shutdown};
use shopflow_store::Db;

/// A fact about an order, as the other services (or the saga) report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fact {
    Paid,
    Reserved,
    Shipped,
    Refunded,
    PaymentFailed,
}

/// How an order's outcome goes: its facts (each delivered twice).
#[derive(Clone, Copy, Debug)]
enum Outcome {
    Ships,
    OutOfStock,
    ShipmentFailed,
    Declined,
    /// Shipped and refunded at once: whichever is recorded first decides.
    LateRefund,
}

impl Outcome {
    fn facts(self) -> &'static [Fact] {
        match self {
            Outcome::Ships => &[Fact::Paid, Fact::Reserved, Fact::Shipped],
            Outcome::OutOfStock => &[Fact::Paid, Fact::Refunded],
            Outcome::ShipmentFailed => &[Fact::Paid, Fact::Reserved, Fact::Refunded],
            Outcome::Declined => &[Fact::PaymentFailed],
            Outcome::LateRefund => &[Fact::Paid, Fact::Reserved, Fact::Shipped, Fact::Refunded],
        }
    }
}

/// Every distinct arrangement of a multiset (sorted input), in lexicographic order.
fn arrangements(mut items: Vec<Fact>) -> Vec<Vec<Fact>> {
    items.sort();
    let mut out = vec![items.clone()];
    loop {
        // The next permutation (handles repeats, so each arrangement comes once).
        let Some(i) = (1..items.len()).rev().find(|&i| items[i - 1] < items[i]) else {
            return out;
        };
        let j = (i..items.len())
            .rev()
            .find(|&j| items[j] > items[i - 1])
            .unwrap();
        items.swap(i - 1, j);
        items[i..].reverse();
        out.push(items.clone());
    }
}

/// A small seeded generator, so that a failure replays.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What one order is told: its outcome, and the facts in the order they are delivered.
struct Case {
    id: OrderId,
    outcome: Outcome,
    deliveries: Vec<Fact>,
    payment_id: PaymentId,
    shipment_id: ShipmentId,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    Choreography,
    Orchestration,
}

/// The envelope that tells the order service `fact`, in `style`.
fn envelope(style: Style, case: &Case, fact: Fact, seq: u64) -> Envelope {
    let id = case.id.clone();
    let items = vec![];
    let address = serde_json::from_value(
        serde_json::json!({"name": "Ada", "line1": "1 Analytical St",
        "city": "London", "postalCode": "N1 9GU", "country": "GB"}),
    )
    .unwrap();
    let tracking = format!("TRK-{}", case.id);
    let refund_reason = "out of stock: MUG".to_owned();
    match style {
        Style::Choreography => {
            let meta = |source: &str| Meta::new(source, id.as_str(), seq);
            match fact {
                Fact::Paid => Envelope::new(
                    &PaymentCompleted {
                        order_id: id.clone(),
                        payment_id: case.payment_id.clone(),
                        amount_minor: 2500,
                        currency: "EUR".into(),
                        items,
                        shipping_address: address,
                    },
                    meta("payment-service"),
                ),
                Fact::Reserved => Envelope::new(
                    &StockReserved {
                        order_id: id.clone(),
                        items,
                        shipping_address: address,
                    },
                    meta("inventory-service"),
                ),
                Fact::Shipped => Envelope::new(
                    &OrderShipped {
                        order_id: id.clone(),
                        shipment_id: case.shipment_id.clone(),
                        carrier: "DHL".into(),
                        tracking_number: tracking,
                        items,
                    },
                    meta("shipping-service"),
                ),
                Fact::Refunded => Envelope::new(
                    &PaymentRefunded {
                        order_id: id.clone(),
                        payment_id: case.payment_id.clone(),
                        amount_minor: 2500,
                        currency: "EUR".into(),
                        reason: refund_reason,
                    },
                    meta("payment-service"),
                ),
                Fact::PaymentFailed => Envelope::new(
                    &PaymentFailed {
                        order_id: id.clone(),
                        reason: "card declined".into(),
                    },
                    meta("payment-service"),
                ),
            }
        }
        Style::Orchestration => {
            let meta = Meta::new("order-fulfilment-saga", id.as_str(), seq);
            match fact {
                Fact::Paid => Envelope::new(
                    &ApproveOrder {
                        order_id: id.clone(),
                        payment_id: case.payment_id.clone(),
                    },
                    meta,
                ),
                Fact::Reserved => Envelope::new(
                    &ConfirmReservation {
                        order_id: id.clone(),
                    },
                    meta,
                ),
                Fact::Shipped => Envelope::new(
                    &CompleteOrder {
                        order_id: id.clone(),
                        shipment_id: case.shipment_id.clone(),
                        carrier: "DHL".into(),
                        tracking_number: tracking,
                    },
                    meta,
                ),
                Fact::Refunded => Envelope::new(
                    &CancelOrder {
                        order_id: id.clone(),
                        reason: refund_reason,
                    },
                    meta,
                ),
                Fact::PaymentFailed => Envelope::new(
                    &CancelOrder {
                        order_id: id.clone(),
                        reason: "payment failed: card declined".into(),
                    },
                    meta,
                ),
            }
        }
    }
    .unwrap()
}

async fn shop() -> (tempfile::TempDir, Db, Orders) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_sqlite(dir.path().join("order.db")).unwrap();
    let orders = Orders::open(db.clone()).await.unwrap();
    common::seed(&db).await;
    (dir, db, orders)
}

/// The cases: every arrangement of each outcome with every fact twice, and a sample of the
/// late-refund arrangements (all 2,520 would add nothing the sample does not).
fn cases(orders: &[OrderId], rng: &mut Rng) -> Vec<Case> {
    let mut plans = Vec::new();
    for outcome in [
        Outcome::Ships,
        Outcome::OutOfStock,
        Outcome::ShipmentFailed,
        Outcome::Declined,
    ] {
        let twice: Vec<Fact> = outcome.facts().iter().flat_map(|f| [*f, *f]).collect();
        for a in arrangements(twice) {
            plans.push((outcome, a));
        }
    }
    let late: Vec<Fact> = Outcome::LateRefund
        .facts()
        .iter()
        .flat_map(|f| [*f, *f])
        .collect();
    let all_late = arrangements(late);
    for _ in 0..40 {
        plans.push((
            Outcome::LateRefund,
            all_late[rng.below(all_late.len())].clone(),
        ));
    }
    assert_eq!(plans.len(), 90 + 6 + 90 + 1 + 40);
    assert!(orders.len() >= plans.len());
    plans
        .into_iter()
        .zip(orders)
        .map(|((outcome, deliveries), id)| Case {
            id: id.clone(),
            outcome,
            deliveries,
            payment_id: PaymentId::generate(),
            shipment_id: ShipmentId::generate(),
        })
        .collect()
}

/// What the order should end as: its status, the types in its history, and whether one
/// `OrderCancelled` left.
fn expected(case: &Case) -> (&'static str, BTreeMap<&'static str, usize>, bool) {
    let first_final = case
        .deliveries
        .iter()
        .find(|f| matches!(f, Fact::Shipped | Fact::Refunded | Fact::PaymentFailed))
        .unwrap();
    let cancelled = *first_final != Fact::Shipped;
    let mut types = BTreeMap::from([("OrderCreated", 1)]);
    for fact in case.outcome.facts() {
        let t = match fact {
            Fact::Paid => "OrderPaid",
            Fact::Reserved => "OrderReserved",
            Fact::Shipped => "OrderCompleted",
            Fact::Refunded | Fact::PaymentFailed if cancelled => "OrderCancelled",
            Fact::Refunded | Fact::PaymentFailed => "CancellationRefused",
        };
        types.insert(t, 1);
    }
    let status = if cancelled { "CANCELLED" } else { "SHIPPED" };
    (status, types, cancelled)
}

async fn run(style: Style, seed: u64) {
    let (_dir, db, orders) = shop().await;
    let mut rng = Rng(seed);

    // Place the orders (concurrently, so that the batcher groups them).
    let placing: Vec<_> = (0..227)
        .map(|_| {
            let orders = orders.clone();
            tokio::spawn(async move {
                orders
                    .place(common::order(), None, CorrelationId::generate())
                    .await
                    .unwrap()
                    .1
            })
        })
        .collect();
    let mut ids = Vec::new();
    for p in placing {
        ids.push(p.await.unwrap());
    }
    let cases = cases(&ids, &mut rng);

    // Every delivery as an envelope: the second of a pair is either the same envelope again
    // (a redelivery) or a fresh one with a new id (a producer that retried).
    let mut queues: Vec<Vec<Envelope>> = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let mut sent: BTreeMap<Fact, Envelope> = BTreeMap::new();
        let mut queue = Vec::new();
        for (seq, fact) in case.deliveries.iter().enumerate() {
            let env = match sent.get(fact) {
                Some(first) if (n + seq) % 2 == 0 => first.clone(),
                _ => envelope(style, case, *fact, seq as u64 + 1),
            };
            sent.entry(*fact).or_insert_with(|| env.clone());
            queue.push(env);
        }
        queue.reverse(); // popped from the back
        queues.push(queue);
    }

    // Interleave the orders at random, a random batch of events per transaction.
    let mut cancelled_sent: BTreeMap<String, usize> = BTreeMap::new();
    let mut pending: Vec<usize> = (0..cases.len()).collect();
    while !pending.is_empty() {
        let mut tx = db.begin().await.unwrap();
        for _ in 0..1 + rng.below(8) {
            if pending.is_empty() {
                break;
            }
            let k = rng.below(pending.len());
            let n = pending[k];
            let env = queues[n].pop().unwrap();
            if queues[n].is_empty() {
                pending.swap_remove(k);
            }
            let out = match style {
                Style::Choreography => orders.handler().handle(&mut tx, &env).await,
                Style::Orchestration => orders.command_handler().handle(&mut tx, &env).await,
            }
            .unwrap_or_else(|e| panic!("{}: {e}", env.event_type()));
            for o in out {
                assert_eq!(
                    o.envelope.event_type(),
                    "OrderCancelled",
                    "only a cancellation leaves the order service on these facts"
                );
                *cancelled_sent
                    .entry(o.envelope.aggregate_id().to_owned())
                    .or_default() += 1;
            }
        }
        tx.commit().await.unwrap();
    }

    // The read model catches up with every history.
    let (stop, shutdown) = Shutdown::new();
    let projector = {
        let orders = orders.clone();
        tokio::spawn(async move { orders.run_projector(shutdown).await })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    for case in &cases {
        let history = orders.history(case.id.as_str()).await.unwrap();
        let id = case.id.as_str();
        let label = format!("{id} {:?} {:?}", case.outcome, case.deliveries);

        // Each fact once, versions contiguous from 1.
        let (status, types, cancelled) = expected(case);
        let mut seen: BTreeMap<&'static str, usize> = BTreeMap::new();
        for (i, (stored, env)) in history.iter().enumerate() {
            assert_eq!(stored.version, i as u64 + 1, "{label}: versions");
            let t = [
                "OrderCreated",
                "OrderPaid",
                "OrderReserved",
                "OrderCompleted",
                "OrderCancelled",
                "CancellationRefused",
            ]
            .into_iter()
            .find(|t| *t == env.event_type())
            .unwrap_or_else(|| panic!("{label}: unexpected {}", env.event_type()));
            *seen.entry(t).or_default() += 1;
        }
        assert_eq!(seen, types, "{label}: the history");
        assert_eq!(
            cancelled_sent.get(id).copied().unwrap_or(0),
            usize::from(cancelled),
            "{label}: OrderCancelled published"
        );

        // The read model says what the history says.
        let view = loop {
            let v = orders.get(id).await.unwrap();
            if v.source == "read-model" && v.version == history.len() as u64 {
                break v;
            }
            assert!(Instant::now() < deadline, "{label}: not projected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(view.status, status, "{label}: status");
        let facts = case.outcome.facts();
        assert_eq!(
            view.payment_id.as_deref(),
            facts
                .contains(&Fact::Paid)
                .then_some(case.payment_id.as_str()),
            "{label}: payment"
        );
        assert_eq!(view.reserved, facts.contains(&Fact::Reserved), "{label}");
        assert_eq!(
            view.shipment_id.as_deref(),
            facts
                .contains(&Fact::Shipped)
                .then_some(case.shipment_id.as_str()),
            "{label}: shipment"
        );
        assert_eq!(
            view.tracking_number.is_some(),
            facts.contains(&Fact::Shipped),
            "{label}: tracking"
        );
        assert_eq!(view.cancel_reason.is_some(), cancelled, "{label}: reason");
        assert_eq!(
            view.refused_cancellation.is_some(),
            !cancelled && facts.contains(&Fact::Refunded),
            "{label}: refused cancellation"
        );
        // The aggregate (folded from the store) agrees with the read model.
        let folded = orders.fold(id, None, None).await.unwrap().unwrap();
        assert_eq!(folded.status.as_str(), status, "{label}: folded status");
        assert_eq!(folded.version, history.len() as u64, "{label}");
    }
    stop.trigger();
    projector.await.unwrap();
}

#[test]
fn arrangements_are_distinct_and_complete() {
    let twice = |f: &[Fact]| f.iter().flat_map(|f| [*f, *f]).collect::<Vec<_>>();
    let three = arrangements(twice(&[Fact::Paid, Fact::Reserved, Fact::Shipped]));
    assert_eq!(three.len(), 90); // 6! / 2^3
    let mut unique = three.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 90);
    assert_eq!(arrangements(twice(&[Fact::Paid, Fact::Refunded])).len(), 6);
    assert_eq!(arrangements(twice(Outcome::LateRefund.facts())).len(), 2520);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn choreography_facts_in_any_order_twice_are_recorded_once() {
    run(Style::Choreography, 0x5eed_0001).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestration_commands_in_any_order_twice_are_recorded_once() {
    run(Style::Orchestration, 0x5eed_0002).await;
}
