//! The inventory service as the deployment knows it.

use std::collections::HashMap;

use shopflow_contracts::OrderLine;
use shopflow_contracts::audit::Facts;
use shopflow_runtime::BoxHandler;
use shopflow_service::{Context, Error, Result, SagaStyle, Service, Started};
use shopflow_store::Db;

use crate::{Inventory, MIGRATIONS, NAME, StockCommands};

/// The inventory service: the catalog and its stock; reserves stock for paid orders and
/// releases it when they are compensated.
pub static SERVICE: Service<Facts> = Service {
    about: "the catalog and its stock: reservations and releases",
    migrations: &[(NAME, MIGRATIONS)],
    groups: &[
        NAME,
        "inventory-commands",
        "inventory-legacy-products",
        "inventory-legacy-stock",
    ],
    register: |r| {
        r.register::<shopflow_cdc::RowChanged>();
    },
    start: |ctx| Box::pin(start(ctx)),
    audit: |db, facts| Box::pin(audit(db, facts)),
    openapi,
    ..Service::named(NAME)
};

async fn start(ctx: Context) -> Result<Started> {
    let inventory = Inventory::open(ctx.db).await?;
    let mut s = Started::new(inventory.router());
    s.handlers.push(match ctx.settings.saga {
        SagaStyle::Choreography => BoxHandler::new(inventory.handler()),
        SagaStyle::Orchestration => BoxHandler::new(StockCommands),
    });
    // Following a legacy catalog through change data capture (docs/MIGRATING.md).
    if let Some(crate::legacy::LegacyCatalog(prefix)) = ctx.settings.get() {
        s.handlers
            .push(BoxHandler::new(crate::legacy::LegacyProducts(
                prefix.clone(),
            )));
        s.handlers
            .push(BoxHandler::new(crate::legacy::LegacyStock(prefix)));
    }
    Ok(s)
}

/// Reservations by order, and the stock books: stocked = available + reserved + shipped, nothing
/// negative, and the reserved and shipped totals equal what the reservations say.
async fn audit(db: &Db, facts: &mut Facts) -> Result<()> {
    let mut reserved_by_sku: HashMap<String, i64> = HashMap::new();
    let mut shipped_by_sku: HashMap<String, i64> = HashMap::new();
    for row in db
        .query("SELECT order_id, status, items FROM reservations", &[])
        .await?
    {
        let (order, status) = (row.str(0)?.to_owned(), row.str(1)?.to_owned());
        let items: Vec<OrderLine> =
            serde_json::from_str(row.str(2)?).map_err(|e| Error::Corrupt {
                what: "reservation items",
                reason: format!("order {order}: {e}"),
            })?;
        for i in &items {
            let q = i64::from(i.quantity);
            match status.as_str() {
                "RESERVED" => *reserved_by_sku.entry(i.sku.to_string()).or_default() += q,
                "SHIPPED" => *shipped_by_sku.entry(i.sku.to_string()).or_default() += q,
                _ => {}
            }
        }
        facts.reservations.insert(order, status);
    }
    for row in db
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
            facts.violation(format!(
                "sku {sku}: negative stock (available {available}, reserved {reserved}, shipped {shipped})"
            ));
        }
        if stocked != available + reserved + shipped {
            facts.violation(format!(
                "sku {sku}: stocked {stocked} != available {available} + reserved {reserved} + shipped {shipped}"
            ));
        }
        let want_reserved = reserved_by_sku.get(&sku).copied().unwrap_or(0);
        let want_shipped = shipped_by_sku.get(&sku).copied().unwrap_or(0);
        if reserved != want_reserved || shipped != want_shipped {
            facts.violation(format!(
                "sku {sku}: reserved {reserved}/shipped {shipped}, but reservations say {want_reserved}/{want_shipped}"
            ));
        }
        facts.count("skus", 1);
    }
    Ok(())
}

fn openapi() -> serde_json::Value {
    shopflow_service::openapi::generated(<crate::Api as utoipa::OpenApi>::openapi())
}
