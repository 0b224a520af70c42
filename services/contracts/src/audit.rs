//! What `verify` knows about a shop: each service reads its own database into these facts (and
//! reports what it finds wrong there), then [`check`] applies the rules that span services.
//! Pure data and rules: no I/O.

use std::collections::{BTreeMap, BTreeSet};

/// An order as its event history tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderFact {
    /// `PENDING`, `PAID`, `RESERVED`, `SHIPPED` or `CANCELLED`.
    pub status: String,
    pub customer_id: String,
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
    /// Shipment status by order id (shipping service).
    pub shipments: BTreeMap<String, String>,
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
        let ship = facts.shipments.get(id).map(String::as_str);
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
        f.shipments.insert("ord_1".into(), "SHIPPED".into());
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
        f.orders.get_mut("ord_1").unwrap().status = "CANCELLED".into();
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
