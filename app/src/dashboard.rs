//! The dashboard: one page at `/` (HTML, CSS and JavaScript compiled into the binary; no CDN,
//! nothing to build) that shows and operates the whole shop through the same APIs as the CLI,
//! and the two endpoints it adds for the bus itself: the topics with their partitions, and the
//! records of one partition.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use shopflow_bus::{Bus, TopicPartition};
use shopflow_http::{ApiError, Json, Query};

use crate::ops::Ops;
use crate::tail::TailedEvent;

const INDEX: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const APP_CSS: &str = include_str!("../ui/app.css");

/// The page and its assets (public: what they show comes from the admin API, with the token).
pub(crate) fn router() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/ui/{asset}", get(asset))
}

/// The bus's routes of the dashboard (under the admin token).
pub(crate) fn admin_routes() -> Router<Arc<Ops>> {
    Router::new()
        .route("/admin/topics", get(topics))
        .route("/admin/topics/{topic}/{partition}", get(records))
}

/// The dashboard.
#[utoipa::path(get, path = "/", tag = "dashboard", operation_id = "dashboard",
    responses((status = 200, description = "The dashboard", body = String, content_type = "text/html")))]
pub(crate) async fn index() -> Response {
    page(INDEX, "text/html; charset=utf-8")
}

/// A file of the dashboard (`app.js`, `app.css`).
#[utoipa::path(get, path = "/ui/{asset}", tag = "dashboard", operation_id = "dashboardAsset",
    params(("asset" = String, Path, description = "`app.js` or `app.css`")),
    responses(
        (status = 200, description = "The file", body = String, content_type = "text/plain"),
        (status = 404, description = "No such file", body = shopflow_http::ErrorBody),
    ))]
pub(crate) async fn asset(Path(asset): Path<String>) -> Response {
    match asset.as_str() {
        "app.js" => page(APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => page(APP_CSS, "text/css; charset=utf-8"),
        _ => ApiError::not_found("dashboard file", &asset).into_response(),
    }
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            // Everything is served from here: no other origin, no inline script.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'",
            ),
        ],
        body,
    )
        .into_response()
}

/// One partition of a topic.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PartitionView {
    partition: u32,
    /// The first readable offset.
    start: u64,
    /// The next offset to be written.
    end: u64,
}

/// A topic with its partitions.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TopicView {
    name: String,
    /// Records readable now (sum over partitions of end − start).
    records: u64,
    /// Bytes on disk, when the backend can tell (the embedded log can, Kafka's client cannot).
    size_bytes: Option<u64>,
    /// Retention by size per partition, and by age (none: kept until deleted by hand).
    retention_bytes: Option<u64>,
    retention_ms: Option<u64>,
    partitions: Vec<PartitionView>,
}

/// Every topic of the bus, with partitions and their offsets.
#[utoipa::path(get, path = "/admin/topics", tag = "operations", operation_id = "listTopics",
    security(("adminToken" = [])),
    responses(
        shopflow_http::responses::NeedsAdmin,
        shopflow_http::responses::Unavailable,
        (status = 200, description = "Topics", body = Vec<TopicView>),
    ))]
pub(crate) async fn topics(State(ops): State<Arc<Ops>>) -> Result<Json<Vec<TopicView>>, ApiError> {
    let mut out = Vec::new();
    for t in ops.log.topics().await.map_err(crate::ops::unavailable)? {
        let mut partitions = Vec::with_capacity(t.partitions as usize);
        for p in 0..t.partitions {
            let (start, end) = ops
                .log
                .watermarks(&TopicPartition::new(t.name.as_str(), p))
                .await
                .map_err(crate::ops::unavailable)?;
            partitions.push(PartitionView {
                partition: p,
                start,
                end,
            });
        }
        // What a backend cannot tell (or a broker does not answer) stays unknown; the topic is
        // listed anyway.
        let details = ops.log.topic_details(&t.name).await.unwrap_or_default();
        out.push(TopicView {
            records: partitions.iter().map(|p| p.end - p.start).sum(),
            size_bytes: details.size_bytes,
            retention_bytes: details.retention_bytes,
            retention_ms: details.retention.map(|d| d.as_millis() as u64),
            name: t.name,
            partitions,
        });
    }
    Ok(Json(out))
}

/// Which records of a partition.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct RecordsQuery {
    /// The first offset (default: the last `limit` records).
    #[param(minimum = 0)]
    from: Option<u64>,
    /// At most this many (default 50, at most 500).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
}

/// Records of one partition, decoded.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PartitionRecords {
    topic: String,
    partition: u32,
    start: u64,
    end: u64,
    records: Vec<TailedEvent>,
    /// Headers of each record, by its offset (as a string: JSON object keys are strings).
    headers: BTreeMap<String, BTreeMap<String, String>>,
}

/// Records of one partition from an offset, decoded (outside any consumer group).
#[utoipa::path(get, path = "/admin/topics/{topic}/{partition}", tag = "operations", operation_id = "readPartition",
    params(
        ("topic" = String, Path, description = "The topic"),
        ("partition" = u32, Path, description = "The partition", minimum = 0),
        RecordsQuery
    ),
    security(("adminToken" = [])),
    responses(
        shopflow_http::responses::NeedsAdmin,
        shopflow_http::responses::Unavailable,
        (status = 200, description = "Records", body = PartitionRecords),
        (status = 400, description = "A malformed parameter", body = shopflow_http::ErrorBody),
        (status = 404, description = "No such topic or partition", body = shopflow_http::ErrorBody),
    ))]
pub(crate) async fn records(
    State(ops): State<Arc<Ops>>,
    Path((topic, partition)): Path<(String, String)>,
    Query(q): Query<RecordsQuery>,
) -> Result<Json<PartitionRecords>, ApiError> {
    // Parsed here, so that a partition that is no number gets the JSON error shape.
    let partition: u32 = partition
        .parse()
        .map_err(|_| ApiError::bad_request(format!("partition `{partition}` is not a number")))?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 500"));
    }
    let tp = TopicPartition::new(topic.as_str(), partition);
    let (start, end) = ops.log.watermarks(&tp).await.map_err(|e| match e {
        shopflow_bus::Error::UnknownTopic { .. } | shopflow_bus::Error::UnknownPartition { .. } => {
            ApiError::not_found("topic partition", &format!("{topic}/{partition}"))
        }
        e => crate::ops::unavailable(e),
    })?;
    let from = q
        .from
        .unwrap_or_else(|| end.saturating_sub(u64::from(limit)))
        .max(start);
    let raw = ops
        .log
        .read(&tp, from, limit as usize)
        .await
        .map_err(crate::ops::unavailable)?;
    let mut headers = BTreeMap::new();
    let mut records = Vec::with_capacity(raw.len());
    for r in raw {
        headers.insert(
            r.offset.to_string(),
            r.headers
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
        );
        records.push(crate::tail::decoded(r));
    }
    Ok(Json(PartitionRecords {
        topic,
        partition,
        start,
        end,
        records,
        headers,
    }))
}
