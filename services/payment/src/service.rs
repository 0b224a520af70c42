//! The payment service as the deployment knows it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use serde_json::json;
use shopflow_contracts::audit::{Facts, PaymentFact};
use shopflow_runtime::BoxHandler;
use shopflow_service::{Context, Error, Result, SagaStyle, Service, Started};
use shopflow_store::Db;

use crate::{MIGRATIONS, NAME, PaymentCommands, Payments, Simulator, Vault, VaultKeys};

/// The simulated gateway's latency (a typed setting of the deployment; none by default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayLatency(pub Duration);

/// The text of the card vault's key file, given by the deployment (`SHOPFLOW_VAULT_KEYS`);
/// without it, `<data-dir>/payment/vault.keys` (created on first start).
#[derive(Clone, PartialEq, Eq)]
pub struct VaultKeyText(pub String);

impl std::fmt::Debug for VaultKeyText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VaultKeyText(…)")
    }
}

/// The payment gateway to charge through, when the deployment brings its own: one that outlives
/// restarts of the service, as a real provider does (the simulator's). Without it the service
/// makes a [`Simulator`] with [`GatewayLatency`].
#[derive(Clone, Debug)]
pub struct SharedGateway(pub Arc<Simulator>);

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
    let gateway = match ctx.settings.get::<SharedGateway>() {
        Some(SharedGateway(g)) => g,
        None => Arc::new(Simulator::new(latency.0)),
    };
    let keys = match ctx.settings.get::<VaultKeyText>() {
        Some(VaultKeyText(text)) => VaultKeys::parse(&text),
        None => VaultKeys::load_or_create(&ctx.settings.data_dir.join(NAME).join("vault.keys")),
    }
    .map_err(|e| Error::Config {
        what: "card vault",
        reason: e.to_string(),
    })?;
    let payments = Payments::open(ctx.db, gateway.clone(), Vault::new(keys))
        .await?
        .with_breaker(ctx.settings.breaker.clone());
    let router = payments.router().route(
        "/admin/payment-gateway",
        axum::routing::put(set_gateway).with_state(gateway),
    );
    let mut s = Started::new(router);
    s.breakers.push(payments.breaker().clone());
    s.exports.insert(payments.vault());
    s.handlers.push(match ctx.settings.saga {
        SagaStyle::Choreography => BoxHandler::new(payments),
        SagaStyle::Orchestration => BoxHandler::new(PaymentCommands(payments)),
    });
    Ok(s)
}

/// Whether the simulated payment gateway is down.
#[derive(Debug, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct GatewayMode {
    outage: bool,
}

/// Take the simulated payment gateway down (`{"outage": true}`) or bring it back, for
/// reliability drills.
#[utoipa::path(put, path = "/admin/payment-gateway", tag = "payment", operation_id = "setPaymentGateway",
    request_body = GatewayMode,
    security(("adminToken" = [])),
    responses(
        shopflow_http::responses::JsonBody,
        shopflow_http::responses::NeedsAdmin,
        (status = 200, description = "Switched", body = GatewayMode),
    ))]
pub(crate) async fn set_gateway(
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
    shopflow_service::openapi::generated(<crate::Api as utoipa::OpenApi>::openapi())
}
