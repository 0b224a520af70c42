//! The order service's HTTP routes.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use shopflow_http::{ApiError, Json, Query, reply};

use crate::Orders;
use crate::aggregate::Status;
use crate::place::{PlaceOrder, Placed};
use crate::view::{OrderView, Page, view};

pub(crate) fn router(orders: Orders) -> Router {
    Router::new()
        .route("/orders", post(place).get(list))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/events", get(events))
        .route("/admin/projections/orders/rebuild", post(rebuild))
        .route("/admin/orders/stats", get(stats))
        .with_state(Arc::new(orders))
}

/// Place an order: 202 at once, and its saga runs (payment → stock → shipping). The same
/// `Idempotency-Key` gives the same order.
#[utoipa::path(post, path = "/orders", tag = "orders", operation_id = "placeOrder",
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 200 characters: a retry with the same key is the same order"),
        ("X-Correlation-Id" = Option<String>, Header, description = "Carried through every event of the order"),
    ),
    request_body = PlaceOrder,
    responses(
        shopflow_http::responses::JsonBody,
        shopflow_http::responses::Unavailable,
        (status = 202, description = "Accepted", body = Placed),
        (status = 409, description = "The Idempotency-Key was used for another order, or two requests raced: try again", body = shopflow_http::ErrorBody),
        (status = 422, description = "Invalid: unknown customer or sku, a card that is not one, mixed currencies, …", body = shopflow_http::ErrorBody),
    ))]
pub(crate) async fn place(
    State(s): State<Arc<Orders>>,
    headers: HeaderMap,
    Json(req): Json<PlaceOrder>,
) -> Result<Response, ApiError> {
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()
        .map_err(|_| ApiError::invalid("Idempotency-Key must be ASCII"))?;
    let (_created, id) = s
        .place(req, key, shopflow_http::correlation(&headers))
        .await?;
    Ok(reply(
        StatusCode::ACCEPTED,
        Placed {
            order_id: id.to_string(),
            status: Status::Pending.as_str(),
        },
    ))
}

/// Time travel: the order as it was at a moment or after a version.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct GetParams {
    /// RFC 3339 (UTC or with an offset).
    #[param(format = DateTime)]
    at: Option<String>,
    /// After its n-th event (1 = as created).
    #[param(minimum = 0)]
    version: Option<u64>,
}

/// An order: from the read model (`source: read-model`, with how far it is behind), or, with
/// `at` or `version`, folded from its events as it was then.
#[utoipa::path(get, path = "/orders/{id}", tag = "orders", operation_id = "getOrder",
    params(("id" = String, Path, description = "The order id (`ord_…`)"), GetParams),
    responses(
        shopflow_http::responses::Unavailable,
        (status = 200, description = "The order", body = OrderView),
        (status = 400, description = "`at` is not RFC 3339, or `version` not a number", body = shopflow_http::ErrorBody),
        (status = 404, description = "No such order (at that point)", body = shopflow_http::ErrorBody),
    ))]
pub(crate) async fn get_order(
    State(s): State<Arc<Orders>>,
    Path(id): Path<String>,
    Query(p): Query<GetParams>,
) -> Result<Json<OrderView>, ApiError> {
    if p.at.is_none() && p.version.is_none() {
        return s.get(&id).await.map(Json);
    }
    let at = p
        .at
        .map(|t| chrono::DateTime::parse_from_rfc3339(&t).map(|d| d.with_timezone(&chrono::Utc)))
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("`at` is not RFC 3339: {e}")))?;
    match s.fold(&id, p.version, at).await? {
        Some(o) => Ok(Json(view(&o, "event-store", None))),
        None => Err(ApiError::not_found("order at that point", &id)),
    }
}

/// One event of an order's history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EventItem {
    position: u64,
    version: u64,
    event_id: String,
    event_type: String,
    event_version: u32,
    timestamp: String,
    correlation_id: String,
    /// The id of the message that caused it (none for a placement).
    #[serde(skip_serializing_if = "Option::is_none")]
    causation_id: Option<String>,
    /// The event's data (its shape: the event's JSON Schema under `schemas/`).
    #[schema(value_type = Object)]
    data: serde_json::Value,
}

/// The order's events, oldest first: its audit trail.
#[utoipa::path(get, path = "/orders/{id}/events", tag = "orders", operation_id = "listOrderEvents",
    params(("id" = String, Path, description = "The order id (`ord_…`)")),
    responses(
        shopflow_http::responses::Unavailable,
        (status = 200, description = "The events", body = Vec<EventItem>),
        (status = 404, description = "No such order", body = shopflow_http::ErrorBody),
    ))]
pub(crate) async fn events(
    State(s): State<Arc<Orders>>,
    Path(id): Path<String>,
) -> Result<Json<Vec<EventItem>>, ApiError> {
    let history = s.history(&id).await?;
    if history.is_empty() {
        return Err(ApiError::not_found("order", &id));
    }
    Ok(Json(
        history
            .into_iter()
            .map(|(e, env)| EventItem {
                position: e.position,
                version: e.version,
                event_id: e.event_id,
                event_type: e.event_type,
                event_version: env.event_version(),
                timestamp: env
                    .timestamp()
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                correlation_id: env.correlation_id().to_string(),
                causation_id: env.causation_id().map(|c| c.to_string()),
                data: env.data(),
            })
            .collect(),
    ))
}

/// Which orders, and where the page starts.
/// How many orders are in each status, as the read model has them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OrderStats {
    total: u64,
    #[schema(value_type = std::collections::BTreeMap<String, u64>)]
    by_status: std::collections::BTreeMap<String, u64>,
}

#[utoipa::path(get, path = "/admin/orders/stats", tag = "orders", operation_id = "orderStats",
    security(("adminToken" = [])),
    responses(
        shopflow_http::responses::NeedsAdmin,
        shopflow_http::responses::Unavailable,
        (status = 200, description = "Orders by status", body = OrderStats),
    ))]
pub(crate) async fn stats(State(s): State<Arc<Orders>>) -> Result<Json<OrderStats>, ApiError> {
    let by_status = s.counts_by_status().await?;
    Ok(Json(OrderStats {
        total: by_status.values().sum(),
        by_status,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    #[param(value_type = Option<crate::aggregate::Status>)]
    status: Option<String>,
    customer_id: Option<String>,
    /// 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `nextCursor` of the page before.
    cursor: Option<String>,
}

/// Every customer's orders, newest first, from the read model (the operator's).
#[utoipa::path(get, path = "/orders", tag = "orders", operation_id = "listOrders",
    params(ListParams),
    security(("adminToken" = [])),
    responses(
        shopflow_http::responses::NeedsAdmin,
        shopflow_http::responses::Unavailable,
        (status = 200, description = "A page", body = Page),
        (status = 400, description = "A malformed parameter", body = shopflow_http::ErrorBody),
        (status = 422, description = "An unknown status or a bad cursor", body = shopflow_http::ErrorBody),
    ))]
pub(crate) async fn list(
    State(s): State<Arc<Orders>>,
    Query(p): Query<ListParams>,
) -> Result<Json<Page>, ApiError> {
    s.list(p.status, p.customer_id, p.cursor, p.limit.unwrap_or(50))
        .await
        .map(Json)
}

/// What a rebuild did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Rebuilt {
    projection: &'static str,
    replayed_events: u64,
}

/// Rebuild the order read model from the event store while the live one keeps serving.
#[utoipa::path(post, path = "/admin/projections/orders/rebuild", tag = "orders", operation_id = "rebuildOrderProjection",
    security(("adminToken" = [])),
    responses(
        shopflow_http::responses::NeedsAdmin,
        shopflow_http::responses::Unavailable,
        (status = 200, description = "Rebuilt and swapped in", body = Rebuilt),
    ))]
pub(crate) async fn rebuild(State(s): State<Arc<Orders>>) -> Result<Response, ApiError> {
    let replayed = s.rebuild_projection().await?;
    Ok(reply(
        StatusCode::OK,
        Rebuilt {
            projection: "orders",
            replayed_events: replayed,
        },
    ))
}
