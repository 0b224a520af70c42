//! Following a legacy monolith's catalog while the shop replaces it (docs/MIGRATING.md): its
//! back office keeps writing `products` and `stock` in its own database; change data capture
//! (`shopflow_cdc`) puts each row change on `<prefix>.products` and `<prefix>.stock`; these two
//! handlers keep the inventory's catalog and stock from them, through the inbox like every
//! consumer.
//!
//! - A product row (`sku`, `name`, `price_cents`, `currency`) creates or updates the product;
//!   its deletion stops it being sold (its available stock goes to 0; reservations stand).
//! - A stock row (`sku`, `quantity`) moves the available stock by the change of the legacy
//!   quantity since the last one applied: the legacy system's own sales and restocking count,
//!   and so do the reservations the shop took meanwhile. A quantity that would take the
//!   available stock below zero stops at zero (counted in
//!   `shopflow_legacy_stock_clamped_total`).
//! - Each change's position (`RowChanged::position`: commit LSN, index in its transaction) is
//!   kept per SKU: an older or repeated change is dropped, so a connector's restart, which may
//!   send changes again, changes nothing.
//! - A stock row for a SKU whose product has not arrived yet is retried (the two tables travel
//!   on different topics), and dead-lettered with the reason if the product never comes.

use shopflow_cdc::{Op, RowChanged};
use shopflow_contracts::{InventoryUpdated, ProductUpdated, Sku};
use shopflow_envelope::{Envelope, Meta};
use shopflow_runtime::{Handler, HandlerError, Outgoing};
use shopflow_store::{Tx, params};

use crate::SOURCE;

/// The setting that turns the legacy catalog on: the topic prefix of the legacy tables'
/// changes (`cdc.legacy` for the tables `legacy.products` and `legacy.stock`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyCatalog(pub String);

/// Products from the legacy catalog.
#[derive(Clone, Debug)]
pub struct LegacyProducts(pub String);

/// Stock levels from the legacy catalog.
#[derive(Clone, Debug)]
pub struct LegacyStock(pub String);

fn change(env: &Envelope) -> Result<Option<RowChanged>, HandlerError> {
    if !env.is::<RowChanged>() {
        return Ok(None);
    }
    let c: RowChanged = env.data_as()?;
    if c.op == Op::Truncate {
        tracing::warn!(
            table = c.source.table,
            "the legacy table was truncated: nothing is changed in the shop"
        );
        return Ok(None);
    }
    Ok(Some(c))
}

fn sku_of(c: &RowChanged) -> Result<Sku, HandlerError> {
    let row = c
        .row()
        .ok_or_else(|| HandlerError::Permanent("a row change without a row".into()))?;
    let sku = row
        .get("sku")
        .and_then(|v| v.as_str())
        .ok_or_else(|| HandlerError::Permanent("the legacy row has no text column `sku`".into()))?;
    Sku::parse(sku).map_err(HandlerError::Permanent)
}

/// Whether the change is newer than the last one applied for this SKU; records it if so.
async fn advance(
    tx: &mut Tx,
    source: &str,
    sku: &Sku,
    (commit_lsn, idx): (u64, u64),
    quantity: Option<i64>,
) -> Result<Option<Option<i64>>, HandlerError> {
    let lock = tx.for_update();
    let rows = tx
        .query(
            &format!("SELECT commit_lsn, idx, quantity FROM legacy_sync WHERE source = $1 AND sku = $2{lock}"),
            params![source, sku.as_str()],
        )
        .await?;
    let previous = match rows.first() {
        Some(r) if (r.u64(0)?, r.u64(1)?) >= (commit_lsn, idx) => return Ok(None),
        Some(r) => {
            let q = r.opt_i64(2)?;
            tx.execute(
                "UPDATE legacy_sync SET commit_lsn = $3, idx = $4, quantity = $5 WHERE source = $1 AND sku = $2",
                params![source, sku.as_str(), commit_lsn, idx, quantity],
            )
            .await?;
            q
        }
        None => {
            tx.execute(
                "INSERT INTO legacy_sync (source, sku, commit_lsn, idx, quantity) VALUES ($1, $2, $3, $4, $5)",
                params![source, sku.as_str(), commit_lsn, idx, quantity],
            )
            .await?;
            None
        }
    };
    Ok(Some(previous))
}

fn text(
    row: &serde_json::Map<String, serde_json::Value>,
    col: &str,
) -> Result<String, HandlerError> {
    row.get(col)
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            HandlerError::Permanent(format!("the legacy row has no text column `{col}`"))
        })
}

fn int(row: &serde_json::Map<String, serde_json::Value>, col: &str) -> Result<i64, HandlerError> {
    row.get(col).and_then(|v| v.as_i64()).ok_or_else(|| {
        HandlerError::Permanent(format!("the legacy row has no integer column `{col}`"))
    })
}

impl Handler for LegacyProducts {
    fn name(&self) -> &'static str {
        "inventory-legacy-products"
    }

    fn topics(&self) -> Vec<String> {
        vec![format!("{}.products", self.0)]
    }
    /// Its effects are rows of its own database: a batch may run without savepoints.
    fn only_database_effects(&self) -> bool {
        true
    }

    async fn handle(&self, tx: &mut Tx, env: &Envelope) -> Result<Vec<Outgoing>, HandlerError> {
        let Some(c) = change(env)? else {
            return Ok(vec![]);
        };
        let sku = sku_of(&c)?;
        if advance(tx, "products", &sku, c.position(), None)
            .await?
            .is_none()
        {
            return Ok(vec![]);
        }
        let now = shopflow_envelope::sim::now().timestamp_millis();
        let key = sku.to_string();
        let meta = || Meta::caused_by(env, SOURCE, key.as_str(), 1);
        let lock = tx.for_update();
        let existing = tx
            .query(
                &format!("SELECT name, price_minor, currency, available, reserved FROM products WHERE sku = $1{lock}"),
                params![sku.as_str()],
            )
            .await?;
        if c.op == Op::Delete {
            let Some(r) = existing.first() else {
                return Ok(vec![]);
            };
            let reserved = r.i64(4)?;
            tx.execute(
                "UPDATE products SET stocked = stocked - available, available = 0, updated_at = $2 WHERE sku = $1",
                params![sku.as_str(), now],
            )
            .await?;
            tracing::info!(
                sku = sku.as_str(),
                "the legacy catalog deleted a product: it is no longer sold"
            );
            return Ok(vec![Outgoing::event(
                &InventoryUpdated {
                    sku,
                    available: 0,
                    reserved,
                },
                meta(),
            )?]);
        }
        let row = c
            .after
            .as_ref()
            .ok_or_else(|| HandlerError::Permanent("an insert or update without `after`".into()))?;
        let name = text(row, "name")?;
        let price = int(row, "price_cents")?;
        let currency = row
            .get("currency")
            .and_then(|v| v.as_str())
            .unwrap_or("EUR")
            .to_owned();
        if !(1..=1_000_000_000_000).contains(&price) {
            return Err(HandlerError::Permanent(format!(
                "price_cents {price} is not between 1 and 10^12"
            )));
        }
        crate::validate_currency(&currency).map_err(|e| HandlerError::Permanent(e.message))?;
        let mut out = Vec::new();
        match existing.first() {
            None => {
                tx.execute(
                    "INSERT INTO products (sku, name, price_minor, currency, available, reserved, shipped, stocked, updated_at)
                     VALUES ($1, $2, $3, $4, 0, 0, 0, 0, $5)",
                    params![sku.as_str(), name.as_str(), price, currency.as_str(), now],
                )
                .await?;
                out.push(Outgoing::event(
                    &ProductUpdated {
                        sku: sku.clone(),
                        name,
                        price_minor: price,
                        currency,
                    },
                    meta(),
                )?);
                out.push(Outgoing::event(
                    &InventoryUpdated {
                        sku,
                        available: 0,
                        reserved: 0,
                    },
                    meta(),
                )?);
            }
            Some(r) => {
                if r.str(0)? != name || r.i64(1)? != price || r.str(2)? != currency {
                    tx.execute(
                        "UPDATE products SET name = $2, price_minor = $3, currency = $4, updated_at = $5 WHERE sku = $1",
                        params![sku.as_str(), name.as_str(), price, currency.as_str(), now],
                    )
                    .await?;
                    out.push(Outgoing::event(
                        &ProductUpdated {
                            sku,
                            name,
                            price_minor: price,
                            currency,
                        },
                        meta(),
                    )?);
                }
            }
        }
        Ok(out)
    }
}

impl Handler for LegacyStock {
    fn name(&self) -> &'static str {
        "inventory-legacy-stock"
    }

    fn topics(&self) -> Vec<String> {
        vec![format!("{}.stock", self.0)]
    }
    /// Its effects are rows of its own database: a batch may run without savepoints.
    fn only_database_effects(&self) -> bool {
        true
    }

    async fn handle(&self, tx: &mut Tx, env: &Envelope) -> Result<Vec<Outgoing>, HandlerError> {
        let Some(c) = change(env)? else {
            return Ok(vec![]);
        };
        let sku = sku_of(&c)?;
        let lock = tx.for_update();
        let product = tx
            .query(
                &format!("SELECT available, reserved FROM products WHERE sku = $1{lock}"),
                params![sku.as_str()],
            )
            .await?;
        let quantity = match c.op {
            Op::Delete => 0,
            _ => {
                let q = int(
                    c.after
                        .as_ref()
                        .ok_or_else(|| HandlerError::Permanent("no `after`".into()))?,
                    "quantity",
                )?;
                if q < 0 {
                    return Err(HandlerError::Permanent(format!(
                        "legacy quantity {q} is negative"
                    )));
                }
                q
            }
        };
        let Some(p) = product.first() else {
            if c.op == Op::Delete {
                advance(tx, "stock", &sku, c.position(), Some(0)).await?;
                return Ok(vec![]);
            }
            return Err(HandlerError::Transient(format!(
                "stock for {sku}, whose product has not arrived from the legacy catalog (yet)"
            )));
        };
        let (available, reserved) = (p.i64(0)?, p.i64(1)?);
        let Some(previous) = advance(tx, "stock", &sku, c.position(), Some(quantity)).await? else {
            return Ok(vec![]);
        };
        let delta = quantity - previous.unwrap_or(0);
        let now_available = (available + delta).max(0);
        let applied = now_available - available;
        if applied != delta {
            metrics::counter!("shopflow_legacy_stock_clamped_total").increment(1);
            tracing::warn!(
                sku = sku.as_str(),
                delta,
                applied,
                "the legacy stock fell below what the shop holds for orders: available stops at 0"
            );
        }
        if applied == 0 {
            return Ok(vec![]);
        }
        let now = shopflow_envelope::sim::now().timestamp_millis();
        tx.execute(
            "UPDATE products SET available = $2, stocked = stocked + $3, updated_at = $4 WHERE sku = $1",
            params![sku.as_str(), now_available, applied, now],
        )
        .await?;
        Ok(vec![Outgoing::event(
            &InventoryUpdated {
                sku: sku.clone(),
                available: now_available,
                reserved,
            },
            Meta::caused_by(env, SOURCE, sku.as_str(), 1),
        )?])
    }
}
