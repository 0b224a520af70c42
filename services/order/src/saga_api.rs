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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SagaQuery {
    state: Option<String>,
    limit: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    reason: String,
}

fn saga_error(e: SagaError) -> ApiError {
    match e {
        SagaError::NotFound(id) => ApiError::not_found("saga", &id),
        e @ SagaError::NotRunning { .. } => ApiError::conflict(e.to_string()),
        SagaError::Store(e) => ApiError::from(e),
        SagaError::Failed(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "saga_failed", m),
    }
}

async fn list(
    State(s): State<Arc<Sagas>>,
    Query(q): Query<SagaQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let state = q
        .state
        .as_deref()
        .map(SagaState::parse)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let list = s
        .orchestrator
        .list(&s.db, state, q.limit.unwrap_or(100))
        .await
        .map_err(saga_error)?;
    let counts = s.orchestrator.counts(&s.db).await.map_err(saga_error)?;
    Ok(Json(serde_json::json!({
        "style": s.style.to_string(),
        "sagas": list,
        "counts": counts,
    })))
}

async fn show(
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

async fn cancel(
    State(s): State<Arc<Sagas>>,
    Path(id): Path<String>,
    Json(body): Json<CancelBody>,
) -> Result<Json<SagaView>, ApiError> {
    if body.reason.trim().is_empty() {
        return Err(ApiError::bad_request("a cancellation needs a reason"));
    }
    Ok(Json(
        s.orchestrator
            .cancel(&s.db, &id, &body.reason)
            .await
            .map_err(saga_error)?,
    ))
}
