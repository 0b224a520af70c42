//! The shipping service as the deployment knows it.

use serde_json::json;
use shopflow_contracts::audit::Facts;
use shopflow_runtime::BoxHandler;
use shopflow_service::openapi::{op, part, with_params};
use shopflow_service::{BoxFuture, Context, Result, SagaStyle, Service, Started};
use shopflow_store::Db;

use crate::{MIGRATIONS, NAME, Shipping, ShippingCommands};

/// The shipping service: a shipment (carrier and tracking number) for every reserved order it
/// can ship, a failure for the others.
pub const SERVICE: Service<Facts> = Service {
    name: NAME,
    about: "creates shipments for reserved orders",
    migrations: &[(NAME, MIGRATIONS)],
    groups: &[NAME, "shipping-commands"],
    register: shopflow_service::no_events,
    topics: shopflow_service::no_topics,
    start,
    audit,
    openapi,
};

fn start(ctx: Context) -> BoxFuture<'static, Result<Started>> {
    Box::pin(async move {
        let shipping = Shipping::open(ctx.db).await?;
        let mut s = Started::new(shipping.router());
        s.handlers.push(match ctx.settings.saga {
            SagaStyle::Choreography => BoxHandler::new(shipping),
            SagaStyle::Orchestration => BoxHandler::new(ShippingCommands),
        });
        Ok(s)
    })
}

fn audit<'a>(db: &'a Db, facts: &'a mut Facts) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        for row in db
            .query("SELECT order_id, status FROM shipments", &[])
            .await?
        {
            facts
                .shipments
                .insert(row.str(0)?.to_owned(), row.str(1)?.to_owned());
        }
        Ok(())
    })
}

fn openapi() -> serde_json::Value {
    part(
        json!({"/orders/{id}/shipment": {"get": with_params(op("The order's shipment", "200", "Shipment"), &[("id", "path", true)])}}),
        json!({"Shipment": {"type": "object"}}),
    )
}
