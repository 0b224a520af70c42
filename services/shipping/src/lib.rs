#![doc = include_str!("../README.md")]

mod service;
pub use service::SERVICE;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use serde::Serialize;
use shopflow_contracts::{OrderShipped, ShipOrder, ShipmentFailed, ShipmentId, StockReserved};
use shopflow_envelope::{Envelope, Event, Meta};
use shopflow_http::{ApiError, Json};
use shopflow_runtime::{Handler, HandlerError, Outgoing};
use shopflow_store::{Db, Migration, Tx, params};

pub const NAME: &str = "shipping";
const SOURCE: &str = "shipping-service";

pub const MIGRATIONS: &[Migration] = &[Migration::portable(
    1,
    "shipments",
    include_str!("../migrations/001_shipments.sql"),
)];

/// Countries the shop ships to (ISO 3166-1 alpha-2), and the carrier for each region.
const COUNTRIES: &[(&str, &str)] = &[
    ("AT", "DHL"),
    ("BE", "DHL"),
    ("CH", "DHL"),
    ("CZ", "DHL"),
    ("DE", "DHL"),
    ("DK", "DHL"),
    ("ES", "DHL"),
    ("FI", "DHL"),
    ("FR", "DHL"),
    ("GB", "Royal Mail"),
    ("IE", "DHL"),
    ("IT", "DHL"),
    ("LU", "DHL"),
    ("NL", "DHL"),
    ("NO", "DHL"),
    ("PL", "DHL"),
    ("PT", "DHL"),
    ("SE", "DHL"),
    ("US", "UPS"),
    ("CA", "UPS"),
    ("AU", "DHL"),
    ("JP", "DHL"),
];

pub fn carrier_for(country: &str) -> Option<&'static str> {
    COUNTRIES
        .iter()
        .find(|(c, _)| *c == country)
        .map(|(_, carrier)| *carrier)
}

#[derive(Clone, Debug)]
pub struct Shipping {
    db: Db,
}

/// An order's shipment, or why it failed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShipmentView {
    pub order_id: String,
    pub shipment_id: Option<String>,
    pub status: String,
    pub country: String,
    pub carrier: Option<String>,
    pub tracking_number: Option<String>,
    pub reason: Option<String>,
}

impl Shipping {
    pub async fn open(db: Db) -> shopflow_store::Result<Self> {
        SERVICE.migrate(&db).await?;
        Ok(Self { db })
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/orders/{id}/shipment", get(get_shipment))
            .with_state(Arc::new(self.clone()))
    }

    pub async fn get(&self, order_id: &str) -> Result<ShipmentView, ApiError> {
        let rows = self
            .db
            .query(
                "SELECT order_id, shipment_id, status, country, carrier, tracking_number, reason FROM shipments WHERE order_id = $1",
                params![order_id],
            )
            .await?;
        let r = rows
            .first()
            .ok_or_else(|| ApiError::not_found("shipment of order", order_id))?;
        Ok(ShipmentView {
            order_id: r.str(0)?.to_owned(),
            shipment_id: r.opt_str(1)?.map(str::to_owned),
            status: r.str(2)?.to_owned(),
            country: r.str(3)?.to_owned(),
            carrier: r.opt_str(4)?.map(str::to_owned),
            tracking_number: r.opt_str(5)?.map(str::to_owned),
            reason: r.opt_str(6)?.map(str::to_owned),
        })
    }
}

/// The order's shipment: carrier and tracking number, or the reason it failed.
#[utoipa::path(get, path = "/orders/{id}/shipment", tag = "shipping", operation_id = "getShipment",
    params(("id" = String, Path, description = "The order id (`ord_…`)")),
    responses(
        shopflow_http::responses::Unavailable,
        (status = 200, description = "The shipment", body = ShipmentView),
        (status = 404, description = "No shipment for this order (yet)", body = shopflow_http::ErrorBody),
    ))]
async fn get_shipment(
    State(s): State<Arc<Shipping>>,
    Path(id): Path<String>,
) -> Result<Json<ShipmentView>, ApiError> {
    s.get(&id).await.map(Json)
}

impl Handler for Shipping {
    fn name(&self) -> &'static str {
        NAME
    }
    /// A shipment is the record's own order's row: lanes may overlap.
    fn lanes(&self) -> usize {
        usize::MAX
    }

    fn topics(&self) -> Vec<String> {
        vec![StockReserved::topic()]
    }
    /// Its effects are rows of its own database: a batch may run without savepoints.
    fn only_database_effects(&self) -> bool {
        true
    }

    async fn handle(&self, tx: &mut Tx, env: &Envelope) -> Result<Vec<Outgoing>, HandlerError> {
        if !env.is::<StockReserved>() {
            return Ok(vec![]);
        }
        let e: StockReserved = env.data_as()?;
        Self::ship(
            tx,
            env,
            ShipOrder {
                order_id: e.order_id,
                items: e.items,
                shipping_address: e.shipping_address,
            },
        )
        .await
    }
}

/// The shipping service's command side (orchestration): `ShipOrder`, answered by the same
/// events as in the choreography.
#[derive(Debug, Clone)]
pub struct ShippingCommands;

impl Handler for ShippingCommands {
    fn name(&self) -> &'static str {
        "shipping-commands"
    }
    /// A shipment is the record's own order's row: lanes may overlap.
    fn lanes(&self) -> usize {
        usize::MAX
    }

    fn topics(&self) -> Vec<String> {
        vec![ShipOrder::topic()]
    }
    /// Its effects are rows of its own database: a batch may run without savepoints.
    fn only_database_effects(&self) -> bool {
        true
    }

    async fn handle(&self, tx: &mut Tx, env: &Envelope) -> Result<Vec<Outgoing>, HandlerError> {
        if env.is::<ShipOrder>() {
            Shipping::ship(tx, env, env.data_as()?).await
        } else {
            Ok(vec![])
        }
    }
}

impl Shipping {
    /// Creates the order's shipment once; a repeat answers nothing new.
    async fn ship(
        tx: &mut Tx,
        env: &Envelope,
        e: ShipOrder,
    ) -> Result<Vec<Outgoing>, HandlerError> {
        let order = e.order_id.as_str();
        if !tx
            .query(
                "SELECT 1 FROM shipments WHERE order_id = $1",
                params![order],
            )
            .await?
            .is_empty()
        {
            return Ok(vec![]);
        }
        let now = chrono::Utc::now().timestamp_millis();
        let country = e.shipping_address.country.clone();
        let meta = Meta::caused_by(env, SOURCE, order, 1);
        match carrier_for(&country) {
            Some(carrier) => {
                let id = ShipmentId::generate();
                let tracking = format!(
                    "{}{}",
                    &carrier[..1],
                    &id.as_str()[id.as_str().len() - 12..]
                )
                .to_ascii_uppercase();
                tx.execute_deferred(
                    "INSERT INTO shipments (order_id, shipment_id, status, country, carrier, tracking_number, created_at)
                     VALUES ($1, $2, 'SHIPPED', $3, $4, $5, $6)",
                    params![order, id.as_str(), country.as_str(), carrier, tracking.as_str(), now],
                )
                .await?;
                let s = OrderShipped {
                    order_id: e.order_id,
                    shipment_id: id,
                    carrier: carrier.into(),
                    tracking_number: tracking,
                    items: e.items,
                };
                Ok(vec![Outgoing::event(&s, meta)?])
            }
            None => {
                let reason = format!("we do not ship to {country}");
                tx.execute_deferred(
                    "INSERT INTO shipments (order_id, status, country, reason, created_at) VALUES ($1, 'FAILED', $2, $3, $4)",
                    params![order, country.as_str(), reason.as_str(), now],
                )
                .await?;
                Ok(vec![Outgoing::event(
                    &ShipmentFailed {
                        order_id: e.order_id,
                        reason,
                        items: e.items,
                    },
                    meta,
                )?])
            }
        }
    }
}

/// The shipping service's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(get_shipment),
    components(schemas(ShipmentView, shopflow_http::ErrorBody))
)]
pub(crate) struct Api;
