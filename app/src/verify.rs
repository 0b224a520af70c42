//! `shopflow verify`: every service reads its own database into the shop's facts and says what
//! is wrong there (its `audit`); then the rules across services run over the whole
//! (`shopflow_contracts::audit::check`). Works on the services' databases alone (SQLite files or
//! PostgreSQL schemas), so it can run against a stopped shop or a live one.

use std::collections::BTreeMap;

use serde::Serialize;
use shopflow_contracts::audit::{self, Facts};
use shopflow_store::{Db, DbUrl, sequence};

use crate::services::SERVICES;

/// The services' databases, by service name.
#[derive(Debug, Clone)]
pub struct Databases(pub Vec<(&'static str, Db)>);

impl Databases {
    /// Opens the databases of an existing deployment: its SQLite files, or its PostgreSQL
    /// schemas.
    pub async fn open(dir: &std::path::Path, db: &DbUrl) -> anyhow::Result<Self> {
        let mut out = Vec::new();
        for s in SERVICES {
            out.push((s.name, db.open_existing(dir, s.name).await?));
        }
        Ok(Self(out))
    }

    /// The database of `service`.
    pub fn get(&self, service: &str) -> Option<&Db> {
        self.0.iter().find(|(n, _)| *n == service).map(|(_, d)| d)
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
    /// Sequence anomalies (reorderings, gaps while late events were on their way) each consumer
    /// group counted: the order in which facts arrived, not violations.
    pub sequence_anomalies: BTreeMap<String, u64>,
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
        if !self.sequence_anomalies.is_empty() {
            println!(
                "out of order  {} (events that came after a later one of their producer, by group)",
                self.sequence_anomalies
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
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
    let mut facts = Facts::new(settled);
    let mut anomalies = BTreeMap::new();
    for s in SERVICES {
        let db = dbs
            .get(s.name)
            .ok_or_else(|| anyhow::anyhow!("no database of the {} service to verify", s.name))?;
        (s.audit)(db, &mut facts)
            .await
            .map_err(|e| anyhow::anyhow!("reading the {} database: {e}", s.name))?;
        // What the consumers of this database have seen of the producers they read completely:
        // once the shop has settled, every number of theirs has been handled.
        if settled {
            for m in sequence::gaps(db).await? {
                facts.violation(format!(
                    "{} has handled {} of events 1..{} of {} for {}: the others never arrived (an open dead letter?)",
                    m.consumer, m.seen, m.last, m.source, m.aggregate
                ));
            }
        }
        for (group, n) in sequence::anomalies(db).await? {
            *anomalies.entry(group).or_default() += n;
        }
    }
    audit::check(&mut facts);
    let mut r = Report {
        orders: facts.orders.len(),
        skus: facts.counts.get("skus").copied().unwrap_or(0),
        notifications: facts.counts.get("notifications").copied().unwrap_or(0),
        deferred_notifications: facts
            .counts
            .get("deferred notifications")
            .copied()
            .unwrap_or(0),
        ..Report::default()
    };
    for (id, o) in &facts.orders {
        *r.by_status.entry(o.status.clone()).or_default() += 1;
        if !o.is_final() {
            r.in_flight.push(id.clone());
        }
    }
    r.sagas = facts.sagas;
    r.sequence_anomalies = anomalies;
    r.in_flight.sort();
    facts.violations.sort();
    r.violations = facts.violations;
    Ok(r)
}
