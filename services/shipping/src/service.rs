//! The shipping service as the deployment knows it.

use shopflow_contracts::audit::{Facts, ShipmentFact};
use shopflow_runtime::BoxHandler;
use shopflow_service::{Context, Result, SagaStyle, Service, Started};
use shopflow_store::Db;

use crate::{MIGRATIONS, NAME, Shipping, ShippingCommands};

/// The shipping service: a shipment (carrier and tracking number) for every reserved order it
/// can ship, a failure for the others.
pub static SERVICE: Service<Facts> = Service {
    about: "creates shipments for reserved orders",
    migrations: &[(NAME, MIGRATIONS)],
    groups: &[NAME, "shipping-commands"],
    start: |ctx| Box::pin(start(ctx)),
    audit: |db, facts| Box::pin(audit(db, facts)),
    openapi,
    ..Service::named(NAME)
};

async fn start(ctx: Context) -> Result<Started> {
    let shipping = Shipping::open(ctx.db).await?;
    let mut s = Started::new(shipping.router());
    s.handlers.push(match ctx.settings.saga {
        SagaStyle::Choreography => BoxHandler::new(shipping),
        SagaStyle::Orchestration => BoxHandler::new(ShippingCommands),
    });
    Ok(s)
}

async fn audit(db: &Db, facts: &mut Facts) -> Result<()> {
    for row in db
        .query(
            "SELECT order_id, status, tracking_number, carrier FROM shipments",
            &[],
        )
        .await?
    {
        facts.shipments.insert(
            row.str(0)?.to_owned(),
            ShipmentFact {
                status: row.str(1)?.to_owned(),
                tracking_number: row.opt_str(2)?.map(str::to_owned),
                carrier: row.opt_str(3)?.map(str::to_owned),
            },
        );
    }
    Ok(())
}

fn openapi() -> serde_json::Value {
    shopflow_service::openapi::generated(<crate::Api as utoipa::OpenApi>::openapi())
}
