//! The payment service as the deployment knows it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use serde_json::json;
use shopflow_contracts::audit::{Facts, PaymentFact};
use shopflow_runtime::BoxHandler;
use shopflow_service::openapi::{op, part, with_body, with_params};
use shopflow_service::{Context, Result, SagaStyle, Service, Started};
use shopflow_store::Db;

use crate::{MIGRATIONS, NAME, PaymentCommands, Payments, Simulator};

/// The simulated gateway's latency (a typed setting of the deployment; none by default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayLatency(pub Duration);

/// The payment service: charges orders through the payment gateway (behind a circuit breaker)
/// and refunds them when they are compensated.
pub static SERVICE: Service<Facts> = Service {
    about: "charges and refunds through the payment gateway",
    migrations: &[(NAME, MIGRATIONS)],
    groups: &[NAME, "payment-commands"],
    start: |ctx| Box::pin(start(ctx)),
    audit: |db, facts| Box::pin(audit(db, facts)),
    openapi,
    ..Service::named(NAME)
};

async fn start(ctx: Context) -> Result<Started> {
    let latency = ctx.settings.get::<GatewayLatency>().unwrap_or_default();
    let gateway = Arc::new(Simulator::new(latency.0));
    let payments = Payments::open(ctx.db, gateway.clone())
        .await?
        .with_breaker(ctx.settings.breaker.clone());
    let router = payments.router().route(
        "/admin/payment-gateway",
        axum::routing::put(set_gateway).with_state(gateway),
    );
    let mut s = Started::new(router);
    s.breakers.push(payments.breaker().clone());
    s.handlers.push(match ctx.settings.saga {
        SagaStyle::Choreography => BoxHandler::new(payments),
        SagaStyle::Orchestration => BoxHandler::new(PaymentCommands(payments)),
    });
    Ok(s)
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayMode {
    outage: bool,
}

/// Takes the simulated payment gateway down or brings it back (for reliability drills).
async fn set_gateway(
    State(g): State<Arc<Simulator>>,
    shopflow_http::Json(mode): shopflow_http::Json<GatewayMode>,
) -> axum::Json<serde_json::Value> {
    g.set_outage(mode.outage);
    tracing::warn!(outage = mode.outage, "payment gateway simulator switched");
    axum::Json(json!({"outage": mode.outage}))
}

/// One payment row per order, so at most one charge each; a payment id charges one order; a
/// refund follows a charge.
async fn audit(db: &Db, facts: &mut Facts) -> Result<()> {
    let mut orders_of: HashMap<String, String> = HashMap::new();
    for row in db
        .query("SELECT order_id, status, payment_id FROM payments", &[])
        .await?
    {
        let (order, status, pid) = (
            row.str(0)?.to_owned(),
            row.str(1)?.to_owned(),
            row.opt_str(2)?.map(str::to_owned),
        );
        if let Some(p) = &pid
            && let Some(other) = orders_of.insert(p.clone(), order.clone())
        {
            facts.violation(format!(
                "payment {p} charged for two orders: {other} and {order}"
            ));
        }
        if status == "REFUNDED" && pid.is_none() {
            facts.violation(format!("order {order}: refunded without a charge"));
        }
        facts.payments.insert(
            order,
            PaymentFact {
                status,
                payment_id: pid,
            },
        );
    }
    Ok(())
}

fn openapi() -> serde_json::Value {
    part(
        json!({
            "/orders/{id}/payment": {"get": with_params(op("The order's payment", "200", "Payment"), &[("id", "path", true)])},
            "/admin/payment-gateway": {"put": with_body(op("Take the simulated payment gateway down ({\"outage\": true}) or bring it back", "200", "GatewayMode"), "GatewayMode")}
        }),
        json!({
            "Payment": {"type": "object"},
            "GatewayMode": {"type": "object", "required": ["outage"], "properties": {"outage": {"type": "boolean"}}}
        }),
    )
}
