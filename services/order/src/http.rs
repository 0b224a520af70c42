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
        .with_state(Arc::new(orders))
}

async fn place(
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetParams {
    at: Option<String>,
    version: Option<u64>,
}

async fn get_order(
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

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EventItem {
    position: u64,
    version: u64,
    event_id: String,
    event_type: String,
    event_version: u32,
    timestamp: String,
    correlation_id: String,
    data: serde_json::Value,
}

async fn events(
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
                data: env.data().clone(),
            })
            .collect(),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListParams {
    status: Option<String>,
    customer_id: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

async fn list(
    State(s): State<Arc<Orders>>,
    Query(p): Query<ListParams>,
) -> Result<Json<Page>, ApiError> {
    s.list(p.status, p.customer_id, p.cursor, p.limit.unwrap_or(50))
        .await
        .map(Json)
}

async fn rebuild(State(s): State<Arc<Orders>>) -> Result<Response, ApiError> {
    let replayed = s.rebuild_projection().await?;
    Ok(reply(
        StatusCode::OK,
        serde_json::json!({"projection": "orders", "replayedEvents": replayed}),
    ))
}
