//! System events: facts about the system itself rather than the shop's business, as
//! `kind: system` envelopes on `system.*` topics — a service started or stopped, a consumer
//! paused because a dependency's circuit breaker opened (and resumed when it closed), an event
//! dead-lettered. They travel through the same outboxes as every other event.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shopflow_envelope::{Event, Kind, Meta, Registry};
use shopflow_store::{Db, Outgoing};

use crate::{BreakerState, CircuitBreaker, Shutdown};

macro_rules! system_event {
    ($name:ident) => {
        impl Event for $name {
            const TYPE: &'static str = stringify!($name);
            const VERSION: u32 = 1;
            const KIND: Kind = Kind::System;
            const DOMAIN: &'static str = "system";
        }
    };
}

/// A service started in a process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStarted {
    pub service: String,
    /// The process (`<host>:<pid>`), so that instances of one service can be told apart.
    pub instance: String,
    pub version: String,
    /// The consumer groups it runs.
    pub consumers: Vec<String>,
}
system_event!(ServiceStarted);

/// A service stopped cleanly (a crash says nothing: its absence is the fact).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStopped {
    pub service: String,
    pub instance: String,
}
system_event!(ServiceStopped);

/// Consumers stopped taking events because a dependency's circuit breaker opened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerPaused {
    pub breaker: String,
    pub consumers: Vec<String>,
    pub instance: String,
}
system_event!(ConsumerPaused);

/// The breaker closed again: the consumers take events again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerResumed {
    pub breaker: String,
    pub consumers: Vec<String>,
    pub instance: String,
}
system_event!(ConsumerResumed);

/// A consumer gave an event up: it is on `<topic>.dlq` with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventDeadLettered {
    pub consumer: String,
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    /// Absent when the record was not a valid envelope.
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    /// The aggregate the event belongs to (the order, the sku…), when it was readable.
    pub aggregate_id: Option<String>,
    pub correlation_id: Option<String>,
    pub error: String,
    pub attempts: u32,
}
system_event!(EventDeadLettered);

/// An operator moved a route of the strangler-fig gateway (shopflow-gateway) to another target:
/// `legacy`, `new` or `shadow` (served by `serve`, compared with the other side).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteSwitched {
    pub method: String,
    pub path: String,
    pub from: String,
    pub to: String,
    pub serve: Option<String>,
    pub instance: String,
}
system_event!(RouteSwitched);

/// Registers the system events.
pub fn register(r: &mut Registry) {
    r.register::<ServiceStarted>()
        .register::<ServiceStopped>()
        .register::<ConsumerPaused>()
        .register::<ConsumerResumed>()
        .register::<EventDeadLettered>()
        .register::<RouteSwitched>();
}

/// The system topics.
pub fn topics() -> Vec<String> {
    vec![
        ServiceStarted::topic(),
        ServiceStopped::topic(),
        ConsumerPaused::topic(),
        ConsumerResumed::topic(),
        EventDeadLettered::topic(),
        RouteSwitched::topic(),
    ]
}

/// This process, as system events name it.
pub fn instance() -> String {
    // Read once: it cannot change while the process lives.
    static INSTANCE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".to_owned());
        format!("{host}:{}", std::process::id())
    });
    INSTANCE.clone()
}

/// The source of system events of a component (`system:<component>`).
pub fn source(component: &str) -> String {
    format!("system:{component}")
}

/// `event` as an outgoing system event of `component`, keyed by `aggregate`.
pub fn outgoing<E: Event>(
    event: &E,
    component: &str,
    aggregate: &str,
) -> Result<Outgoing, shopflow_envelope::Error> {
    Outgoing::event(event, Meta::new(source(component), aggregate, 1))
}

/// Publishes (through `db`'s outbox) one event in its own transaction.
pub async fn publish(db: &Db, outgoing: Outgoing) -> shopflow_store::Result<()> {
    let mut tx = db.begin().await?;
    shopflow_store::emit(&mut tx, vec![outgoing]).await?;
    tx.commit().await
}

/// The consumer groups among `handlers` that depend on `breaker` (they pause while it is open):
/// what [`watch_breaker`] names in its announcements.
pub fn dependents(breaker: &CircuitBreaker, handlers: &[crate::BoxHandler]) -> Vec<String> {
    handlers
        .iter()
        .filter(|h| {
            crate::Handler::breakers(*h)
                .iter()
                .any(|d| d.name() == breaker.name())
        })
        .map(|h| crate::Handler::name(h).to_owned())
        .collect()
}

/// Watches a breaker until shutdown: ConsumerPaused when it opens, ConsumerResumed when it
/// closes again, published through `db`'s outbox.
pub async fn watch_breaker(
    breaker: Arc<CircuitBreaker>,
    consumers: Vec<String>,
    db: Db,
    shutdown: Shutdown,
) {
    let mut changes = breaker.changes();
    let instance = instance();
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut paused = false;
    loop {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = &mut stop => return,
        }
        let state = *changes.borrow_and_update();
        let event = match (state, paused) {
            (BreakerState::Open, false) => {
                paused = true;
                outgoing(
                    &ConsumerPaused {
                        breaker: breaker.name().to_owned(),
                        consumers: consumers.clone(),
                        instance: instance.clone(),
                    },
                    breaker.name(),
                    breaker.name(),
                )
            }
            (BreakerState::Closed, true) => {
                paused = false;
                outgoing(
                    &ConsumerResumed {
                        breaker: breaker.name().to_owned(),
                        consumers: consumers.clone(),
                        instance: instance.clone(),
                    },
                    breaker.name(),
                    breaker.name(),
                )
            }
            _ => continue,
        };
        let result = match event {
            Ok(o) => publish(&db, o).await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = result {
            tracing::warn!(breaker = breaker.name(), error = %e, "a system event about the breaker was not published");
        }
    }
}
