//! `GET /admin/events`: the latest records of the shop's topics, decoded, newest last, with a
//! cursor to follow them (`shopflow events tail [--topic T] [--follow]`). Reads partitions
//! outside any consumer group, so tailing never moves anybody's offsets.

use std::collections::BTreeMap;

use axum::extract::State;
use serde::{Deserialize, Serialize};
use shopflow_anybus::AnyBus;
use shopflow_bus::{Bus, Record, TopicPartition};
use shopflow_envelope::Envelope;
use shopflow_http::{ApiError, Json, Query};

use crate::ops::{Ops, unavailable};

/// Most records one call returns.
pub const MAX_LIMIT: u32 = 1000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct TailQuery {
    /// One topic (default: every topic of the shop, dead-letter topics included).
    topic: Option<String>,
    /// At most this many records (default 50, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Where the previous call ended: only newer records come back.
    #[param(pattern = "^(,*[^,]*@[0-9]{1,9}=[0-9]{1,19})*,*$")]
    cursor: Option<String>,
}

/// One record, with its envelope decoded when it is one.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TailedEvent {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<String>,
    pub event_type: Option<String>,
    pub event_id: Option<String>,
    pub aggregate_id: Option<String>,
    pub sequence: Option<u64>,
    pub source: Option<String>,
    #[schema(value_type = Option<String>)]
    pub kind: Option<&'static str>,
    pub correlation_id: Option<String>,
    /// The envelope's data, or the raw value as text when it is not an envelope.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    /// Why the value is not a valid envelope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The latest records, and where they end.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Tail {
    events: Vec<TailedEvent>,
    /// Pass it back to get only what came after.
    cursor: String,
}

pub(crate) fn decoded(r: Record) -> TailedEvent {
    let mut e = TailedEvent {
        topic: r.topic.to_string(),
        partition: r.partition,
        offset: r.offset,
        timestamp_ms: r.timestamp_ms,
        key: r
            .key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        event_type: None,
        event_id: None,
        aggregate_id: None,
        sequence: None,
        source: None,
        kind: None,
        correlation_id: None,
        data: serde_json::Value::Null,
        error: None,
    };
    match Envelope::decode(&r.value) {
        Ok(env) => {
            e.event_type = Some(env.event_type().to_owned());
            e.event_id = Some(env.event_id().to_string());
            e.aggregate_id = Some(env.aggregate_id().to_owned());
            e.sequence = Some(env.sequence());
            e.source = Some(env.source().to_owned());
            e.kind = Some(env.kind().as_str());
            e.correlation_id = Some(env.correlation_id().to_string());
            e.data = env.data();
        }
        Err(err) => {
            e.data = serde_json::Value::String(String::from_utf8_lossy(&r.value).into_owned());
            e.error = Some(err.to_string());
        }
    }
    e
}

/// What [`parse_cursor`] takes, as the OpenAPI document's pattern (written out in
/// `TailQuery`'s attribute, which takes only a literal; the test checks the two agree).
#[cfg(test)]
pub(crate) const CURSOR_PATTERN: &str = "^(,*[^,]*@[0-9]{1,9}=[0-9]{1,19})*,*$";

/// `topic@partition=next offset`, comma-separated.
fn parse_cursor(c: &str) -> Result<BTreeMap<TopicPartition, u64>, ApiError> {
    let bad = || ApiError::bad_request("cursor is not one this endpoint returned");
    let mut out = BTreeMap::new();
    for part in c.split(',').filter(|p| !p.is_empty()) {
        let (tp, offset) = part.rsplit_once('=').ok_or_else(bad)?;
        let (topic, partition) = tp.rsplit_once('@').ok_or_else(bad)?;
        // Digits only, and few enough that they always fit (what CURSOR_PATTERN says).
        let digits = |s: &str, max: usize| {
            !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
        };
        if !digits(partition, 9) || !digits(offset, 19) {
            return Err(bad());
        }
        out.insert(
            TopicPartition::new(topic, partition.parse().map_err(|_| bad())?),
            offset.parse().map_err(|_| bad())?,
        );
    }
    Ok(out)
}

fn cursor_of(next: &BTreeMap<TopicPartition, u64>) -> String {
    next.iter()
        .map(|(tp, o)| format!("{}@{}={o}", tp.topic, tp.partition))
        .collect::<Vec<_>>()
        .join(",")
}

/// The latest `limit` records (newest last), or those after `cursor`.
pub async fn tail(
    bus: &AnyBus,
    topic: Option<&str>,
    limit: u32,
    cursor: Option<&str>,
) -> Result<(Vec<TailedEvent>, String), ApiError> {
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let limit = limit as usize;
    let after = cursor.map(parse_cursor).transpose()?;
    let topics = bus.topics().await.map_err(unavailable)?;
    let mut next = BTreeMap::new();
    let mut records = Vec::new();
    for t in topics
        .iter()
        .filter(|t| topic.is_none_or(|want| want == t.name))
    {
        for p in 0..t.partitions {
            let tp = TopicPartition::new(t.name.as_str(), p);
            let (_, end) = bus.watermarks(&tp).await.map_err(unavailable)?;
            let from = match &after {
                Some(a) => a.get(&tp).copied().unwrap_or(0),
                None => end.saturating_sub(limit as u64),
            };
            next.insert(tp.clone(), end.max(from));
            if from < end {
                records.extend(bus.read(&tp, from, limit).await.map_err(unavailable)?);
            }
        }
    }
    if topic.is_some() && next.is_empty() {
        return Err(ApiError::not_found("topic", topic.unwrap_or_default()));
    }
    records.sort_by_key(|r| (r.timestamp_ms, r.topic.clone(), r.partition, r.offset));
    let skip = records.len().saturating_sub(limit);
    if after.is_some() && skip > 0 {
        // More arrived than one call returns: resume right after the last one returned, per
        // partition, so that a follower misses nothing.
        for r in &records[..records.len() - skip] {
            next.insert(r.topic_partition(), r.offset + 1);
        }
        for r in &records[records.len() - skip..] {
            let tp = r.topic_partition();
            let e = next.entry(tp).or_insert(r.offset);
            *e = (*e).min(r.offset);
        }
        records.truncate(records.len() - skip);
    } else {
        records.drain(..skip);
    }
    Ok((records.into_iter().map(decoded).collect(), cursor_of(&next)))
}

/// The latest records of the shop's topics (or of one), decoded, newest last; pass the cursor
/// back for what came after.
#[utoipa::path(get, path = "/admin/events", tag = "operations", operation_id = "tailEvents",
    params(TailQuery),
    security(("adminToken" = [])),
    responses(
        shopflow_http::responses::NeedsAdmin,
        shopflow_http::responses::Unavailable,
        (status = 200, description = "Records", body = Tail),
        (status = 400, description = "A malformed parameter", body = shopflow_http::ErrorBody),
        (status = 404, description = "No such topic", body = shopflow_http::ErrorBody),
    ))]
pub(crate) async fn handler(
    State(ops): State<std::sync::Arc<Ops>>,
    Query(q): Query<TailQuery>,
) -> Result<Json<Tail>, ApiError> {
    let (events, cursor) = tail(
        &ops.log,
        q.topic.as_deref(),
        q.limit.unwrap_or(50),
        q.cursor.as_deref(),
    )
    .await?;
    Ok(Json(Tail { events, cursor }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let mut m = BTreeMap::new();
        m.insert(TopicPartition::new("orders.order-created", 3), 17);
        m.insert(TopicPartition::new("a.b.dlq", 0), 0);
        assert_eq!(parse_cursor(&cursor_of(&m)).unwrap(), m);
        assert!(parse_cursor("x").is_err());
        assert!(parse_cursor("t@p=1").is_err());
        assert!(parse_cursor("").unwrap().is_empty());
        // The pattern in the document is the rule.
        let doc = serde_json::to_value(<crate::ops::Api as utoipa::OpenApi>::openapi()).unwrap();
        let params = doc["paths"]["/admin/events"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let cursor = params.iter().find(|p| p["name"] == "cursor").unwrap();
        assert_eq!(cursor["schema"]["pattern"], CURSOR_PATTERN);
        let re = regex::Regex::new(CURSOR_PATTERN).unwrap();
        for c in [
            "",
            "a@0=1",
            "a.b@1=2,c@0=0",
            ",,a@0=1,",
            "a@b@0=1",
            "a@+1=2",
            "a@1=+2",
            "a@0=12345678901234567890",
            "a@1234567890=1",
            "x",
            "a@0=",
            "@0=1",
            "a@0=1,b",
        ] {
            assert_eq!(re.is_match(c), parse_cursor(c).is_ok(), "{c:?}");
        }
    }
}
