//! The order-fulfilment sagas for operators: `GET /sagas`, `GET /sagas/{id}`,
//! `POST /sagas/{id}/cancel` (orchestration; under choreography the list is empty).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use shopflow_http::{ApiError, Json, Query};
use shopflow_saga::{Orchestrator, SagaError, SagaState, SagaView};
use shopflow_service::SagaStyle;
use shopflow_store::Db;

/// The saga instances (in the order service's database) and how the deployment coordinates.
#[derive(Debug, Clone)]
pub(crate) struct Sagas {
    pub(crate) style: SagaStyle,
    pub(crate) orchestrator: Arc<Orchestrator>,
    pub(crate) db: Db,
}

pub(crate) fn router(sagas: Sagas) -> Router {
    Router::new()
        .route("/sagas", get(list))
        .route("/sagas/{id}", get(show))
        .route("/sagas/{id}/cancel", post(cancel))
        .with_state(Arc::new(sagas))
}

impl Sagas {
    /// Sets the `shopflow_sagas{saga,state}` gauges.
    pub(crate) async fn publish_gauges(&self) {
        match self.orchestrator.counts(&self.db).await {
            Ok(by_state) => {
                for (state, n) in by_state {
                    metrics::gauge!("shopflow_sagas", "saga" => self.orchestrator.def().name, "state" => state)
                        .set(n as f64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "counting sagas for the metrics failed"),
        }
    }
}

/// Which sagas.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct SagaQuery {
    #[param(value_type = Option<SagaState>)]
    state: Option<String>,
    /// 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// Why an operator gives up on a saga.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CancelBody {
    #[schema(schema_with = shopflow_http::text200)]
    reason: String,
}

/// The sagas, with counts by state.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct SagaList {
    /// `choreography` (no sagas: the list is empty) or `orchestration`.
    style: String,
    sagas: Vec<SagaView>,
    counts: std::collections::BTreeMap<String, i64>,
}

fn saga_error(e: SagaError) -> ApiError {
    match e {
        SagaError::NotFound(id) => ApiError::not_found("saga", &id),
        e @ SagaError::NotRunning { .. } => ApiError::conflict(e.to_string()),
        SagaError::Store(e) => ApiError::from(e),
        SagaError::Failed(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "saga_failed", m),
    }
}

/// Order-fulfilment sagas (orchestration), most recently changed first, with counts by state.
#[utoipa::path(get, path = "/sagas", tag = "sagas", operation_id = "listSagas",
    params(SagaQuery),
    security(("adminToken" = [])),
    responses(
        shopflow_http::responses::NeedsAdmin,
        shopflow_http::responses::Unavailable,
        (status = 200, description = "The sagas", body = SagaList),
        (status = 400, description = "An unknown state", body = shopflow_http::ErrorBody),
    ))]
pub(crate) async fn list(
    State(s): State<Arc<Sagas>>,
    Query(q): Query<SagaQuery>,
) -> Result<Json<SagaList>, ApiError> {
    let state = q
        .state
        .as_deref()
        .map(SagaState::parse)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let list = s
        .orchestrator
        .list(&s.db, state, limit)
        .await
        .map_err(saga_error)?;
    let counts = s.orchestrator.counts(&s.db).await.map_err(saga_error)?;
    Ok(Json(SagaList {
        style: s.style.to_string(),
        sagas: list,
        counts: counts.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    }))
}

/// One saga with its steps: command, start, end, outcome.
#[utoipa::path(get, path = "/sagas/{id}", tag = "sagas", operation_id = "getSaga",
    params(("id" = String, Path, description = "The order id (`ord_…`)")),
    security(("adminToken" = [])),
    responses(
        shopflow_http::responses::NeedsAdmin,
        shopflow_http::responses::Unavailable,
        (status = 200, description = "The saga", body = SagaView),
        (status = 404, description = "No such saga", body = shopflow_http::ErrorBody),
    ))]
pub(crate) async fn show(
    State(s): State<Arc<Sagas>>,
    Path(id): Path<String>,
) -> Result<Json<SagaView>, ApiError> {
    s.orchestrator
        .get(&s.db, &id)
        .await
        .map_err(saga_error)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("saga", &id))
}

/// Give up on a running saga: its current and completed steps are compensated.
#[utoipa::path(post, path = "/sagas/{id}/cancel", tag = "sagas", operation_id = "cancelSaga",
    params(("id" = String, Path, description = "The order id (`ord_…`)")),
    request_body = CancelBody,
    security(("adminToken" = [])),
    responses(
        shopflow_http::responses::JsonBody,
        shopflow_http::responses::NeedsAdmin,
        shopflow_http::responses::Unavailable,
        (status = 200, description = "Compensating", body = SagaView),
        (status = 400, description = "Not JSON, or no reason", body = shopflow_http::ErrorBody),
        (status = 404, description = "No such saga", body = shopflow_http::ErrorBody),
        (status = 409, description = "The saga is not running", body = shopflow_http::ErrorBody),
    ))]
pub(crate) async fn cancel(
    State(s): State<Arc<Sagas>>,
    Path(id): Path<String>,
    Json(body): Json<CancelBody>,
) -> Result<Json<SagaView>, ApiError> {
    if body.reason.trim().is_empty() {
        return Err(ApiError::bad_request("a cancellation needs a reason"));
    }
    // What the document says of it: visible text of at most 200 characters.
    let reason = shopflow_http::text("reason", &body.reason, 200)?;
    Ok(Json(
        s.orchestrator
            .cancel(&s.db, &id, &reason)
            .await
            .map_err(saga_error)?,
    ))
}
