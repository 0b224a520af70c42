//! The order service as the deployment knows it.

use std::sync::Arc;
use std::time::Duration;

use shopflow_contracts::audit::{Facts, OrderFact, ViewFact};
use shopflow_envelope::Registry;
use shopflow_eventsourcing::fold_envelope;
use shopflow_runtime::BoxHandler;
use shopflow_saga::{Orchestrator, SagaHandler, SystemClock};
use shopflow_service::{Context, MetricsHook, Result, SagaStyle, Service, Started};
use shopflow_store::{Db, EventStore, params};

use crate::aggregate::{Order, Status};
use crate::saga::{FULFILMENT, SagaTimeouts, fulfilment};
use crate::saga_api::{self, Sagas};
use crate::view::{ORDER_VIEW, OrderProjection};
use crate::{MIGRATIONS, NAME, Orders};

/// The order service: event-sourced orders, their read model with time travel, and the
/// order-fulfilment saga (orchestration).
pub static SERVICE: Service<Facts> = Service {
    about: "event-sourced orders, their read model, the order-fulfilment saga",
    migrations: &[(NAME, MIGRATIONS), ("saga", shopflow_saga::MIGRATIONS)],
    groups: &[NAME, "order-commands", FULFILMENT],
    register,
    start: |ctx| Box::pin(start(ctx)),
    audit: |db, facts| Box::pin(audit(db, facts)),
    openapi,
    ..Service::named(NAME)
};

/// The order stream's own events, beside the shop's contracts.
fn register(r: &mut Registry) {
    r.register::<crate::aggregate::OrderPaid>()
        .register::<crate::aggregate::OrderReserved>()
        .register::<crate::aggregate::OrderCompleted>()
        .register::<crate::aggregate::CancellationRefused>();
}

async fn start(ctx: Context) -> Result<Started> {
    let snapshots = ctx
        .settings
        .get::<crate::OrderSnapshots>()
        .map_or(crate::DEFAULT_SNAPSHOTS, |s| s.0);
    let orders = Orders::open_with(ctx.db.clone(), snapshots).await?;
    let timeouts = ctx.settings.get::<SagaTimeouts>().unwrap_or_default();
    let orchestrator = Arc::new(Orchestrator::new(
        fulfilment(&timeouts),
        Arc::new(SystemClock),
    ));
    let sagas = Sagas {
        style: ctx.settings.saga,
        orchestrator: orchestrator.clone(),
        db: ctx.db.clone(),
    };
    let mut s = Started::new(orders.router().merge(saga_api::router(sagas.clone())));
    match ctx.settings.saga {
        SagaStyle::Choreography => s.handlers.push(BoxHandler::new(orders.handler())),
        SagaStyle::Orchestration => {
            s.handlers.push(BoxHandler::new(orders.command_handler()));
            s.handlers
                .push(BoxHandler::new(SagaHandler(orchestrator.clone())));
            s.tasks.push(Box::pin(orchestrator.run_timers(
                ctx.db.clone(),
                Duration::from_millis(200),
                ctx.shutdown.clone(),
            )));
        }
    }
    let shutdown = ctx.shutdown.clone();
    s.tasks.push(Box::pin(
        async move { orders.run_projector(shutdown).await },
    ));
    let hook: MetricsHook = Arc::new(move || {
        let sagas = sagas.clone();
        Box::pin(async move { sagas.publish_gauges().await })
    });
    s.metrics.push(hook);
    Ok(s)
}

/// Every order folded from its events (the source of truth): versions follow one another and
/// every event reads; every saga finished or legitimately at work, and its end agrees with its
/// order's.
async fn audit(db: &Db, facts: &mut Facts) -> Result<()> {
    let registry = crate::registry();
    let store = EventStore::new(db.clone());
    let mut orders: std::collections::BTreeMap<String, Order> = Default::default();
    // Every fact of an order is recorded once: the version each type was first seen at.
    let mut recorded: std::collections::HashMap<(String, String), u64> = Default::default();
    let mut after = 0u64;
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
                        facts.violation(format!(
                            "order {}: event version {} follows {}",
                            e.stream_id,
                            env.sequence(),
                            o.version
                        ));
                    }
                    let fact = (e.stream_id.clone(), env.event_type().to_owned());
                    if let Some(first) = recorded.insert(fact, env.sequence()) {
                        facts.violation(format!(
                            "order {}: {} recorded twice (versions {first} and {})",
                            e.stream_id,
                            env.event_type(),
                            env.sequence()
                        ));
                    }
                    if let Err(err) = fold_envelope(o, &env) {
                        facts.violation(format!(
                            "order {}: event {} cannot be read: {err}",
                            e.stream_id, e.event_id
                        ));
                    }
                }
                Err(err) => facts.violation(format!(
                    "order {}: event {} cannot be decoded: {err}",
                    e.stream_id, e.event_id
                )),
            }
        }
    }
    let settled = facts.settled;
    for row in db
        .query(
            "SELECT saga_id, state FROM sagas WHERE saga_type = $1",
            params![FULFILMENT],
        )
        .await?
    {
        let (id, state) = (row.str(0)?, row.str(1)?);
        *facts.sagas.entry(state.to_owned()).or_default() += 1;
        let order = orders.get(id).map(|o| o.status);
        match (state, order) {
            (_, None) => facts.violation(format!("saga {id}: no such order")),
            ("completed", Some(Status::Shipped)) | ("compensated", Some(Status::Cancelled)) => {}
            // The closing command may still be on its way to the order (not when settled).
            ("completed" | "compensated", Some(s)) if settled || s.is_final() => facts.violation(
                format!("saga {id}: {state} but its order is {}", s.as_str()),
            ),
            (_, Some(_)) if settled => {
                facts.violation(format!("saga {id}: still {state} after the shop settled"))
            }
            _ => {}
        }
    }
    let projector = shopflow_eventsourcing::Projector::new(
        store,
        std::sync::Arc::new(registry),
        OrderProjection,
        ORDER_VIEW,
    );
    let mut views = std::collections::BTreeMap::new();
    let mut after = String::new();
    loop {
        let page = projector
            .query("order_id > $1", "order_id", params![after.as_str()], 5000)
            .await
            .map_err(|e| shopflow_service::Error::Corrupt {
                what: "order read model",
                reason: e.to_string(),
            })?;
        let Some((last, _)) = page.last() else { break };
        after = last.clone();
        views.extend(page);
    }
    for (id, o) in orders {
        let view = views.remove(&id).map(|v: Order| ViewFact {
            status: v.status.as_str().to_owned(),
            version: v.version,
            payment_id: v.payment_id.as_ref().map(ToString::to_string),
            tracking_number: v.tracking_number.clone(),
            carrier: v.carrier.clone(),
        });
        facts.orders.insert(
            id,
            OrderFact {
                status: o.status.as_str().to_owned(),
                customer_id: o
                    .customer_id
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                payment_id: o.payment_id.as_ref().map(ToString::to_string),
                reserved: o.reserved,
                tracking_number: o.tracking_number.clone(),
                carrier: o.carrier.clone(),
                view,
            },
        );
    }
    for id in views.into_keys() {
        facts.violation(format!(
            "order {id}: in the read model but not in the event store"
        ));
    }
    Ok(())
}

fn openapi() -> serde_json::Value {
    shopflow_service::openapi::generated(<crate::Api as utoipa::OpenApi>::openapi())
}
