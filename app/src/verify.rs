//! `shopflow verify`: reads every service's state and the order history and checks the business
//! invariants. Works on the services' databases alone (SQLite files or PostgreSQL schemas), so it
//! can run against a stopped shop or a live one.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use shopflow_order::aggregate::{Order, Status};
use shopflow_store::Db;

/// The six services' databases.
#[derive(Debug, Clone)]
pub struct Databases {
    pub users: Db,
    pub inventory: Db,
    pub payment: Db,
    pub shipping: Db,
    pub notification: Db,
    pub order: Db,
}

impl Databases {
    /// Opens the databases of an existing deployment: its SQLite files, or its PostgreSQL
    /// schemas.
    pub async fn open(dir: &std::path::Path, db: &crate::shop::DbConfig) -> anyhow::Result<Self> {
        Ok(Self {
            users: db.open_existing(dir, "users").await?,
            inventory: db.open_existing(dir, "inventory").await?,
            payment: db.open_existing(dir, "payment").await?,
            shipping: db.open_existing(dir, "shipping").await?,
            notification: db.open_existing(dir, "notification").await?,
            order: db.open_existing(dir, "order").await?,
        })
    }
}

/// What `verify` found.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub orders: usize,
    pub by_status: BTreeMap<String, usize>,
    pub in_flight: Vec<String>,
    pub skus: usize,
    pub notifications: usize,
    pub deferred_notifications: usize,
    /// Orchestrated sagas by state (empty under choreography).
    pub sagas: BTreeMap<String, usize>,
    pub violations: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn print(&self) {
        println!(
            "orders        {} ({})",
            self.orders,
            self.by_status
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("in flight     {}", self.in_flight.len());
        println!("skus          {}", self.skus);
        if !self.sagas.is_empty() {
            println!(
                "sagas         {}",
                self.sagas
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        println!(
            "notifications {} sent, {} waiting for a recipient",
            self.notifications, self.deferred_notifications
        );
        if self.ok() {
            println!("OK: every invariant holds");
        } else {
            println!("{} VIOLATIONS:", self.violations.len());
            for v in &self.violations {
                println!("  - {v}");
            }
        }
    }
}

/// Checks the invariants. With `settled`, an order still in flight, or a step of a saga not yet
/// taken by every service, is a violation too (use it after the shop has drained).
pub async fn verify(dbs: &Databases, settled: bool) -> anyhow::Result<Report> {
    let mut r = Report::default();
    let mut violations: Vec<String> = Vec::new();
    let mut bad = |v: String| violations.push(v);

    // The orders, folded from the event store: the source of truth.
    let registry = shopflow_order::registry();
    let mut orders: HashMap<String, Order> = HashMap::new();
    let mut after = 0u64;
    let store = shopflow_store::EventStore::new(dbs.order.clone());
    loop {
        let page = store.read_all(after, 5000).await?;
        let Some(last) = page.last().map(|e| e.position) else {
            break;
        };
        after = last;
        for e in page {
            match e.decode(&registry) {
                Ok(env) => {
                    let o = orders.entry(e.stream_id.clone()).or_default();
                    if env.sequence() != o.version + 1 {
                        bad(format!(
                            "order {}: event version {} follows {}",
                            e.stream_id,
                            env.sequence(),
                            o.version
                        ));
                    }
                    if let Err(err) = shopflow_eventsourcing::fold_envelope(o, &env) {
                        bad(format!(
                            "order {}: event {} cannot be read: {err}",
                            e.stream_id, e.event_id
                        ));
                    }
                }
                Err(err) => bad(format!(
                    "order {}: event {} cannot be decoded: {err}",
                    e.stream_id, e.event_id
                )),
            }
        }
    }

    // Payments: one row per order, so at most one charge each.
    let mut payments: HashMap<String, (String, Option<String>)> = HashMap::new();
    let mut payment_ids: HashMap<String, String> = HashMap::new();
    for row in dbs
        .payment
        .query("SELECT order_id, status, payment_id FROM payments", &[])
        .await?
    {
        let (order, status, pid) = (
            row.str(0)?.to_owned(),
            row.str(1)?.to_owned(),
            row.opt_str(2)?.map(str::to_owned),
        );
        if let Some(p) = &pid
            && let Some(other) = payment_ids.insert(p.clone(), order.clone())
        {
            bad(format!(
                "payment {p} charged for two orders: {other} and {order}"
            ));
        }
        if (status == "COMPLETED" || status == "REFUNDED") && !orders.contains_key(&order) {
            bad(format!(
                "order {order}: charged ({status}) but the order does not exist"
            ));
        }
        if status == "REFUNDED" && pid.is_none() {
            bad(format!("order {order}: refunded without a charge"));
        }
        payments.insert(order, (status, pid));
    }

    // Stock: stocked = available + reserved + shipped, nothing negative, and the totals match the
    // reservations.
    let mut reserved_by_sku: HashMap<String, i64> = HashMap::new();
    let mut shipped_by_sku: HashMap<String, i64> = HashMap::new();
    let mut reservations: HashMap<String, String> = HashMap::new();
    for row in dbs
        .inventory
        .query("SELECT order_id, status, items FROM reservations", &[])
        .await?
    {
        let (order, status) = (row.str(0)?.to_owned(), row.str(1)?.to_owned());
        let items: Vec<shopflow_contracts::OrderLine> = serde_json::from_str(row.str(2)?)?;
        for i in &items {
            let q = i64::from(i.quantity);
            match status.as_str() {
                "RESERVED" => *reserved_by_sku.entry(i.sku.to_string()).or_default() += q,
                "SHIPPED" => *shipped_by_sku.entry(i.sku.to_string()).or_default() += q,
                _ => {}
            }
        }
        reservations.insert(order, status);
    }
    for row in dbs
        .inventory
        .query(
            "SELECT sku, available, reserved, shipped, stocked FROM products",
            &[],
        )
        .await?
    {
        let (sku, available, reserved, shipped, stocked) = (
            row.str(0)?.to_owned(),
            row.i64(1)?,
            row.i64(2)?,
            row.i64(3)?,
            row.i64(4)?,
        );
        if available < 0 || reserved < 0 || shipped < 0 {
            bad(format!(
                "sku {sku}: negative stock (available {available}, reserved {reserved}, shipped {shipped})"
            ));
        }
        if stocked != available + reserved + shipped {
            bad(format!(
                "sku {sku}: stocked {stocked} != available {available} + reserved {reserved} + shipped {shipped}"
            ));
        }
        let want_reserved = reserved_by_sku.get(&sku).copied().unwrap_or(0);
        let want_shipped = shipped_by_sku.get(&sku).copied().unwrap_or(0);
        if reserved != want_reserved || shipped != want_shipped {
            bad(format!(
                "sku {sku}: reserved {reserved}/shipped {shipped}, but reservations say {want_reserved}/{want_shipped}"
            ));
        }
        r.skus += 1;
    }

    let shipments: HashMap<String, String> = dbs
        .shipping
        .query("SELECT order_id, status FROM shipments", &[])
        .await?
        .iter()
        .map(|row| Ok((row.str(0)?.to_owned(), row.str(1)?.to_owned())))
        .collect::<anyhow::Result<_>>()?;

    // Notifications: never more than one per event and channel; with `settled`, exactly one per
    // notifiable order event unless it waits for its recipient.
    let mut sent: HashMap<(String, String), usize> = HashMap::new();
    for row in dbs
        .notification
        .query(
            "SELECT order_id, event_type, channel FROM notifications WHERE order_id IS NOT NULL",
            &[],
        )
        .await?
    {
        r.notifications += 1;
        if row.str(2)? == "email" {
            *sent
                .entry((row.str(0)?.to_owned(), row.str(1)?.to_owned()))
                .or_default() += 1;
        }
    }
    r.deferred_notifications = dbs
        .notification
        .query("SELECT COUNT(*) FROM deferred", &[])
        .await?[0]
        .i64(0)? as usize;
    let known_users: std::collections::HashSet<String> = dbs
        .users
        .query("SELECT user_id FROM users", &[])
        .await?
        .iter()
        .map(|row| row.str(0).map(str::to_owned))
        .collect::<Result<_, _>>()?;

    for (id, o) in &orders {
        r.orders += 1;
        *r.by_status.entry(o.status.as_str().to_owned()).or_default() += 1;
        if !o.status.is_final() {
            r.in_flight.push(id.clone());
            if settled {
                bad(format!(
                    "order {id}: still {} after the shop settled",
                    o.status.as_str()
                ));
            }
            continue;
        }
        let pay = payments.get(id).map(|p| p.0.as_str());
        let res = reservations.get(id).map(String::as_str);
        let ship = shipments.get(id).map(String::as_str);
        let mails = |t: &str| sent.get(&(id.clone(), t.to_owned())).copied().unwrap_or(0);
        for t in ["OrderCreated", "OrderShipped", "OrderCancelled"] {
            if mails(t) > 1 {
                bad(format!("order {id}: {} {t} e-mails", mails(t)));
            }
        }
        match o.status {
            Status::Shipped => {
                if pay != Some("COMPLETED") {
                    bad(format!("order {id}: SHIPPED but payment is {pay:?}"));
                }
                if settled && res != Some("SHIPPED") {
                    bad(format!(
                        "order {id}: SHIPPED but its reservation is {res:?}"
                    ));
                }
                if ship != Some("SHIPPED") {
                    bad(format!("order {id}: SHIPPED but the shipment is {ship:?}"));
                }
            }
            Status::Cancelled => {
                if pay == Some("COMPLETED") {
                    bad(format!("order {id}: CANCELLED but still charged"));
                }
                if settled && matches!(res, Some("RESERVED") | Some("SHIPPED")) {
                    bad(format!(
                        "order {id}: CANCELLED but stock is still {}",
                        res.unwrap_or_default()
                    ));
                }
                if ship == Some("SHIPPED") {
                    bad(format!("order {id}: CANCELLED but shipped"));
                }
            }
            _ => {}
        }
        let customer_known = o
            .customer_id
            .as_ref()
            .is_some_and(|c| known_users.contains(c.as_str()));
        if settled && customer_known {
            let want = [
                ("OrderCreated", true),
                ("OrderShipped", o.status == Status::Shipped),
                ("OrderCancelled", o.status == Status::Cancelled),
            ];
            for (t, expected) in want {
                if expected && mails(t) != 1 {
                    bad(format!("order {id}: {} {t} e-mails, expected 1", mails(t)));
                }
            }
        }
    }
    for (order, (status, _)) in &payments {
        if status == "COMPLETED"
            && orders
                .get(order)
                .is_some_and(|o| o.status == Status::Cancelled)
            && settled
        {
            bad(format!(
                "order {order}: cancelled but its payment was never refunded"
            ));
        }
    }
    // Orchestrated sagas: every saga finished (completed or compensated) or still legitimately
    // at work, and its end agrees with its order's.
    let sagas = dbs
        .order
        .query(
            "SELECT saga_id, state FROM sagas WHERE saga_type = $1",
            shopflow_store::params![shopflow_order::saga::FULFILMENT],
        )
        .await?;
    for row in &sagas {
        let (id, state) = (row.str(0)?, row.str(1)?);
        *r.sagas.entry(state.to_owned()).or_default() += 1;
        let order = orders.get(id).map(|o| o.status);
        match (state, order) {
            (_, None) => bad(format!("saga {id}: no such order")),
            ("completed", Some(Status::Shipped)) | ("compensated", Some(Status::Cancelled)) => {}
            // The closing command may still be on its way to the order (not when settled).
            ("completed" | "compensated", Some(s)) if settled || s.is_final() => bad(format!(
                "saga {id}: {state} but its order is {}",
                s.as_str()
            )),
            (_, Some(_)) if settled => {
                bad(format!("saga {id}: still {state} after the shop settled"))
            }
            _ => {}
        }
    }
    r.in_flight.sort();
    violations.sort();
    r.violations = violations;
    Ok(r)
}
