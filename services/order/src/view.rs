//! The read side (CQRS): the order view table, folded from the event store by the projector, and
//! what `GET /orders…` answers from it.

use serde::Serialize;
use shopflow_contracts::{Address, OrderLine};
use shopflow_envelope::Envelope;
use shopflow_eventsourcing::{Freshness, Until, View, ViewTable, fold_envelope};
use shopflow_http::ApiError;
use shopflow_store::{Value, params};

use crate::Orders;
use crate::aggregate::{Order, Status};

/// The read model: one row per order with its status and customer for queries, and its state.
pub(crate) const ORDER_VIEW: ViewTable = ViewTable {
    name: "order_view",
    table: "order_view",
    key: "order_id",
    columns: &[
        ("customer_id", "TEXT NOT NULL"),
        ("status", "TEXT NOT NULL"),
    ],
};

/// The order view's rows hold the order aggregate's own state.
#[derive(Debug)]
pub(crate) struct OrderProjection;

impl View for OrderProjection {
    type State = Order;

    fn apply(&self, state: &mut Order, event: &Envelope) -> shopflow_envelope::Result<()> {
        fold_envelope(state, event)
    }

    fn columns(&self, o: &Order) -> Vec<Value> {
        vec![
            Value::from(
                o.customer_id
                    .as_ref()
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
            ),
            Value::from(o.status.as_str()),
        ]
    }
}

/// An order: from the read model, or folded from its events (time travel).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    pub order_id: String,
    #[schema(value_type = crate::aggregate::Status)]
    pub status: &'static str,
    pub customer_id: String,
    pub items: Vec<OrderLine>,
    pub total_minor: i64,
    pub currency: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    /// A cancellation that came after the order had shipped (the order stayed SHIPPED).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused_cancellation: Option<String>,
    pub shipping_address: Option<Address>,
    /// The card's last four digits (the order never sees more of it).
    pub card_last4: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    /// Whether its stock was reserved.
    pub reserved: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shipment_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carrier: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub version: u64,
    /// `read-model` (the projection) or `event-store` (a fold: time travel, or not projected yet).
    #[schema(value_type = String, pattern = "^(read-model|event-store)$")]
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub projection: Option<Freshness>,
}

pub(crate) fn view(o: &Order, source: &'static str, projection: Option<Freshness>) -> OrderView {
    OrderView {
        order_id: o
            .order_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        status: o.status.as_str(),
        customer_id: o
            .customer_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        items: o.items.clone(),
        total_minor: o.total_minor,
        currency: o.currency.clone(),
        cancel_reason: o.cancel_reason.clone(),
        refused_cancellation: o.refused_cancellation.clone(),
        shipping_address: o.shipping_address.clone(),
        card_last4: o.card_last4.clone(),
        payment_id: o.payment_id.as_ref().map(ToString::to_string),
        reserved: o.reserved,
        shipment_id: o.shipment_id.as_ref().map(ToString::to_string),
        tracking_number: o.tracking_number.clone(),
        carrier: o.carrier.clone(),
        created_at: o.created_at.clone(),
        updated_at: o.updated_at.clone(),
        version: o.version,
        source,
        projection,
    }
}

/// A page of `GET /orders`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Page {
    pub(crate) orders: Vec<OrderView>,
    pub(crate) next_cursor: Option<String>,
    pub(crate) projection: Freshness,
}

fn es(e: shopflow_eventsourcing::Error) -> ApiError {
    match e {
        shopflow_eventsourcing::Error::Store(e) => ApiError::from(e),
        other => ApiError::invalid(other.to_string()),
    }
}

impl Orders {
    /// Folds an order's stream up to a version or a point in time (time travel), or to its end.
    pub async fn fold(
        &self,
        order_id: &str,
        version: Option<u64>,
        at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Option<Order>, ApiError> {
        let until = Until { version, time: at };
        let folded = self.orders.fold(order_id, until).await.map_err(es)?;
        Ok(folded.map(|v| v.state).filter(Order::exists))
    }

    /// An order's events as stored, oldest first, each decoded (and upcast) through the
    /// registry: its audit trail. Empty for an order that does not exist.
    pub async fn history(
        &self,
        order_id: &str,
    ) -> Result<Vec<(shopflow_store::StoredEvent, Envelope)>, ApiError> {
        self.orders.history(order_id).await.map_err(es)
    }

    pub async fn freshness(&self) -> Result<Freshness, ApiError> {
        self.projector.freshness().await.map_err(es)
    }

    pub async fn get(&self, order_id: &str) -> Result<OrderView, ApiError> {
        let projected = self.projector.get(order_id).await.map_err(es)?;
        let freshness = self.freshness().await?;
        match projected {
            Some(o) => Ok(view(&o, "read-model", Some(freshness))),
            // Accepted but not projected yet: answer from the store rather than a false 404.
            None => match self.fold(order_id, None, None).await? {
                Some(o) => Ok(view(&o, "event-store", Some(freshness))),
                None => Err(ApiError::not_found("order", order_id)),
            },
        }
    }

    /// Orders from the read model, newest first, filtered by status and customer, after `cursor`.
    pub(crate) async fn list(
        &self,
        status: Option<String>,
        customer_id: Option<String>,
        cursor: Option<String>,
        limit: u32,
    ) -> Result<Page, ApiError> {
        if !(1..=500).contains(&limit) {
            return Err(ApiError::invalid("limit must be between 1 and 500"));
        }
        if let Some(st) = &status
            && Status::parse(st).is_none()
        {
            return Err(ApiError::invalid(
                "status must be one of PENDING, PAID, RESERVED, SHIPPED, CANCELLED",
            ));
        }
        let rows = self
            .projector
            .query(
                "($1 = '' OR status = $1) AND ($2 = '' OR customer_id = $2) AND ($3 = '' OR order_id < $3)",
                "order_id DESC",
                params![
                    status.unwrap_or_default(),
                    customer_id.unwrap_or_default(),
                    cursor.unwrap_or_default()
                ],
                limit + 1,
            )
            .await
            .map_err(es)?;
        let orders: Vec<OrderView> = rows
            .iter()
            .take(limit as usize)
            .map(|(_, o)| view(o, "read-model", None))
            .collect();
        let next_cursor = (rows.len() > limit as usize)
            .then(|| orders.last().map(|o| o.order_id.clone()))
            .flatten();
        Ok(Page {
            orders,
            next_cursor,
            projection: self.freshness().await?,
        })
    }
}
