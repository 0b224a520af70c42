//! What `verify` knows about a shop: each service reads its own database into these facts (and
//! reports what it finds wrong there), then [`check`] applies the rules that span services.
//! Pure data and rules: no I/O.

use std::collections::{BTreeMap, BTreeSet};

/// An order as its event history tells it (and as its read model shows it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrderFact {
    /// `PENDING`, `PAID`, `RESERVED`, `SHIPPED` or `CANCELLED`.
    pub status: String,
    pub customer_id: String,
    /// The facts its history holds.
    pub payment_id: Option<String>,
    pub reserved: bool,
    pub tracking_number: Option<String>,
    pub carrier: Option<String>,
    /// Its row in the read model, if it has one.
    pub view: Option<ViewFact>,
}

/// What the order's read model says of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ViewFact {
    pub status: String,
    pub version: u64,
    pub payment_id: Option<String>,
    pub tracking_number: Option<String>,
    pub carrier: Option<String>,
}

/// The shipping service's record of an order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShipmentFact {
    /// `SHIPPED` or `FAILED`.
    pub status: String,
    pub tracking_number: Option<String>,
    pub carrier: Option<String>,
}

impl OrderFact {
    pub fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "SHIPPED" | "CANCELLED")
    }
}

/// The payment service's record of an order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentFact {
    /// `COMPLETED`, `FAILED`, `REFUNDED` or `CANCELLED` (compensated before the charge).
    pub status: String,
    pub payment_id: Option<String>,
}

/// Everything verify collected, by service.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// The shop has drained: whatever is still in flight is a violation too.
    pub settled: bool,
    /// By order id (order service).
    pub orders: BTreeMap<String, OrderFact>,
    /// By order id (payment service).
    pub payments: BTreeMap<String, PaymentFact>,
    /// Reservation status by order id (inventory service).
    pub reservations: BTreeMap<String, String>,
    /// By order id (shipping service).
    pub shipments: BTreeMap<String, ShipmentFact>,
    /// E-mails sent per (order id, event type) (notification service).
    pub emails: BTreeMap<(String, String), usize>,
    /// Registered users (users service).
    pub users: BTreeSet<String>,
    /// Counts worth reporting (`skus`, `notifications`, `deferred notifications`).
    pub counts: BTreeMap<&'static str, usize>,
    /// Orchestrated sagas by state.
    pub sagas: BTreeMap<String, usize>,
    /// What is wrong, in words that name the order, sku or payment.
    pub violations: Vec<String>,
}

impl Facts {
    pub fn new(settled: bool) -> Self {
        Self {
            settled,
            ..Self::default()
        }
    }

    pub fn violation(&mut self, v: impl Into<String>) {
        self.violations.push(v.into());
    }

    pub fn count(&mut self, what: &'static str, n: usize) {
        *self.counts.entry(what).or_default() += n;
    }
}

/// The rules across services: what a final order implies for its payment, stock, shipment and
/// notifications. Adds to `facts.violations`.
pub fn check(facts: &mut Facts) {
    let settled = facts.settled;
    let mut bad = Vec::new();
    for (order, p) in &facts.payments {
        if (p.status == "COMPLETED" || p.status == "REFUNDED") && !facts.orders.contains_key(order)
        {
            bad.push(format!(
                "order {order}: charged ({}) but the order does not exist",
                p.status
            ));
        }
    }
    for (id, o) in &facts.orders {
        if !o.is_final() {
            if settled {
                bad.push(format!(
                    "order {id}: still {} after the shop settled",
                    o.status
                ));
            }
            continue;
        }
        let pay = facts.payments.get(id).map(|p| p.status.as_str());
        let res = facts.reservations.get(id).map(String::as_str);
        let shipment = facts.shipments.get(id);
        let ship = shipment.map(|s| s.status.as_str());
        let payment = facts.payments.get(id);
        // What the order's history says agrees with the services' records, and so does its
        // read model once the shop has drained.
        if let (Some(mine), Some(theirs)) =
            (&o.payment_id, payment.and_then(|p| p.payment_id.as_ref()))
            && mine != theirs
        {
            bad.push(format!(
                "order {id}: its history records payment {mine}, the payment service {theirs}"
            ));
        }
        if let (Some(mine), Some(theirs)) = (
            &o.tracking_number,
            shipment.and_then(|s| s.tracking_number.as_ref()),
        ) && mine != theirs
        {
            bad.push(format!(
                "order {id}: its history records tracking number {mine}, the shipping service {theirs}"
            ));
        }
        if settled {
            match &o.view {
                None => bad.push(format!("order {id}: not in the read model")),
                Some(v) => {
                    let mine = (&o.status, &o.payment_id, &o.tracking_number, &o.carrier);
                    let shown = (&v.status, &v.payment_id, &v.tracking_number, &v.carrier);
                    if mine != shown {
                        bad.push(format!(
                            "order {id}: the read model shows {shown:?}, its history {mine:?}"
                        ));
                    }
                }
            }
        }
        let mails = |t: &str| {
            facts
                .emails
                .get(&(id.clone(), t.to_owned()))
                .copied()
                .unwrap_or(0)
        };
        for t in ["OrderCreated", "OrderShipped", "OrderCancelled"] {
            if mails(t) > 1 {
                bad.push(format!("order {id}: {} {t} e-mails", mails(t)));
            }
        }
        match o.status.as_str() {
            "SHIPPED" => {
                if settled && (o.payment_id.is_none() || !o.reserved) {
                    bad.push(format!(
                        "order {id}: SHIPPED but its history lacks {}",
                        match (o.payment_id.is_none(), !o.reserved) {
                            (true, true) => "its payment and its reservation",
                            (true, false) => "its payment",
                            _ => "its reservation",
                        }
                    ));
                }
                if pay != Some("COMPLETED") {
                    bad.push(format!("order {id}: SHIPPED but payment is {pay:?}"));
                }
                if settled && res != Some("SHIPPED") {
                    bad.push(format!(
                        "order {id}: SHIPPED but its reservation is {res:?}"
                    ));
                }
                if ship != Some("SHIPPED") {
                    bad.push(format!("order {id}: SHIPPED but the shipment is {ship:?}"));
                }
            }
            _ => {
                if pay == Some("COMPLETED") {
                    bad.push(format!("order {id}: CANCELLED but still charged"));
                    if settled {
                        bad.push(format!(
                            "order {id}: cancelled but its payment was never refunded"
                        ));
                    }
                }
                if settled && matches!(res, Some("RESERVED") | Some("SHIPPED")) {
                    bad.push(format!(
                        "order {id}: CANCELLED but stock is still {}",
                        res.unwrap_or_default()
                    ));
                }
                if ship == Some("SHIPPED") {
                    bad.push(format!("order {id}: CANCELLED but shipped"));
                }
            }
        }
        if settled && facts.users.contains(&o.customer_id) {
            let want = [
                ("OrderCreated", true),
                ("OrderShipped", o.status == "SHIPPED"),
                ("OrderCancelled", o.status == "CANCELLED"),
            ];
            for (t, expected) in want {
                if expected && mails(t) != 1 {
                    bad.push(format!("order {id}: {} {t} e-mails, expected 1", mails(t)));
                }
            }
        }
    }
    facts.violations.extend(bad);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped_order() -> Facts {
        let mut f = Facts::new(true);
        f.orders.insert(
            "ord_1".into(),
            OrderFact {
                status: "SHIPPED".into(),
                customer_id: "usr_1".into(),
                payment_id: Some("pay_1".into()),
                reserved: true,
                tracking_number: Some("D1".into()),
                carrier: Some("DHL".into()),
                view: Some(ViewFact {
                    status: "SHIPPED".into(),
                    version: 4,
                    payment_id: Some("pay_1".into()),
                    tracking_number: Some("D1".into()),
                    carrier: Some("DHL".into()),
                }),
            },
        );
        f.users.insert("usr_1".into());
        f.payments.insert(
            "ord_1".into(),
            PaymentFact {
                status: "COMPLETED".into(),
                payment_id: Some("pay_1".into()),
            },
        );
        f.reservations.insert("ord_1".into(), "SHIPPED".into());
        f.shipments.insert(
            "ord_1".into(),
            ShipmentFact {
                status: "SHIPPED".into(),
                tracking_number: Some("D1".into()),
                carrier: Some("DHL".into()),
            },
        );
        f.emails.insert(("ord_1".into(), "OrderCreated".into()), 1);
        f.emails.insert(("ord_1".into(), "OrderShipped".into()), 1);
        f
    }

    #[test]
    fn a_consistent_shipped_order_passes_and_each_broken_fact_is_named() {
        let mut ok = shipped_order();
        check(&mut ok);
        assert!(ok.violations.is_empty(), "{:?}", ok.violations);

        let mut unpaid = shipped_order();
        unpaid.payments.clear();
        check(&mut unpaid);
        assert_eq!(
            unpaid.violations,
            vec!["order ord_1: SHIPPED but payment is None"]
        );

        let mut lacking = shipped_order();
        lacking.orders.get_mut("ord_1").unwrap().reserved = false;
        check(&mut lacking);
        assert_eq!(
            lacking.violations,
            vec!["order ord_1: SHIPPED but its history lacks its reservation"]
        );

        let mut stale_view = shipped_order();
        let o = stale_view.orders.get_mut("ord_1").unwrap();
        o.view.as_mut().unwrap().payment_id = None;
        check(&mut stale_view);
        assert_eq!(
            stale_view.violations.len(),
            1,
            "{:?}",
            stale_view.violations
        );
        assert!(stale_view.violations[0].contains("the read model shows"));

        let mut other_payment = shipped_order();
        other_payment.payments.get_mut("ord_1").unwrap().payment_id = Some("pay_2".into());
        check(&mut other_payment);
        assert!(
            other_payment
                .violations
                .iter()
                .any(|v| v.contains("records payment pay_1, the payment service pay_2")),
            "{:?}",
            other_payment.violations
        );

        let mut twice = shipped_order();
        twice
            .emails
            .insert(("ord_1".into(), "OrderShipped".into()), 2);
        check(&mut twice);
        assert!(
            twice
                .violations
                .iter()
                .any(|v| v.contains("2 OrderShipped e-mails"))
        );
    }

    #[test]
    fn a_cancelled_order_must_be_refunded_and_released_once_settled() {
        let mut f = shipped_order();
        let o = f.orders.get_mut("ord_1").unwrap();
        o.status = "CANCELLED".into();
        o.tracking_number = None;
        o.carrier = None;
        o.view.as_mut().unwrap().status = "CANCELLED".into();
        o.view.as_mut().unwrap().tracking_number = None;
        o.view.as_mut().unwrap().carrier = None;
        f.shipments.clear();
        f.reservations.insert("ord_1".into(), "RESERVED".into());
        f.emails.clear();
        f.emails.insert(("ord_1".into(), "OrderCreated".into()), 1);
        f.emails
            .insert(("ord_1".into(), "OrderCancelled".into()), 1);
        check(&mut f);
        let mut v = f.violations.clone();
        v.sort();
        assert_eq!(
            v,
            vec![
                "order ord_1: CANCELLED but still charged",
                "order ord_1: CANCELLED but stock is still RESERVED",
                "order ord_1: cancelled but its payment was never refunded",
            ]
        );
    }
}
