//! The outermost stage: a record given up by an inner stage is written to `<topic>.dlq` through
//! the outbox, with headers naming the error, the attempts, the original position and the failure
//! times — once, however often the record is redelivered.
//!
//! A given-up event stays out of the inbox (the savepoint inside rolled its inbox row back), so a
//! redrive of it is handled; the dead letter itself is recorded as an inbox marker
//! (`dead:<event id>:<redrive generation>`, or `<topic>/<partition>/<offset>` for a record that
//! could not be decoded), so a redelivery of the same record does not dead-letter it twice.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use shopflow_bus::{Message, Record};
use shopflow_store::{inbox, outbox};

use super::{Ctx, Failures, Next, Outcome, Stage, StageResult};
use crate::HandlerError;
use crate::handler::BoxFuture;
use crate::headers;
use crate::system::{self, EventDeadLettered};

/// See the [module](self).
#[derive(Debug, Default)]
pub struct DeadLetter;

impl Stage for DeadLetter {
    fn call<'a>(&'a self, ctx: &'a mut Ctx<'_>, next: Next<'a>) -> BoxFuture<'a, StageResult> {
        Box::pin(async move {
            let (reason, failures) = match next.run(ctx).await? {
                Outcome::GiveUp { reason, failures } => (reason, failures),
                // Nothing inside counted attempts: a failure here is the first and the last.
                Outcome::Failed(
                    HandlerError::Permanent(reason)
                    | HandlerError::Transient(reason)
                    | HandlerError::Dependency { reason, .. },
                ) => (reason, Failures::first(shopflow_envelope::sim::now())),
                Outcome::Failed(HandlerError::Unavailable {
                    reason,
                    retry_after,
                }) => {
                    return Ok(Outcome::Pause {
                        retry_after,
                        reason,
                    });
                }
                other => return Ok(other),
            };
            let marker = match &ctx.envelope {
                Some(env) => {
                    let generation = ctx
                        .record
                        .header(headers::REDRIVEN_FROM)
                        .map(|h| String::from_utf8_lossy(h).into_owned())
                        .unwrap_or_default();
                    format!("dead:{}:{generation}", env.event_id())
                }
                None => {
                    let r = ctx.record;
                    format!("{}/{}/{}", r.topic, r.partition, r.offset)
                }
            };
            if !inbox::record(ctx.tx, ctx.consumer, &marker).await? {
                return Ok(Outcome::Duplicate);
            }
            ctx.failure = Some(reason.clone());
            let r = ctx.record;
            match &ctx.envelope {
                Some(env) => tracing::error!(
                    consumer = ctx.consumer,
                    event_id = %env.event_id(),
                    event_type = env.event_type(),
                    correlation_id = %env.correlation_id(),
                    attempts = failures.count,
                    reason,
                    "dead-lettered"
                ),
                None => tracing::error!(
                    consumer = ctx.consumer,
                    topic = %r.topic,
                    partition = r.partition,
                    offset = r.offset,
                    reason,
                    "undecodable record dead-lettered"
                ),
            }
            let msg = dead_letter_message(
                r,
                ctx.consumer,
                &reason,
                failures.count,
                failures.first,
                failures.last,
            );
            outbox::enqueue(ctx.tx, &[msg]).await?;
            let env = ctx.envelope.as_ref();
            let fact = EventDeadLettered {
                consumer: ctx.consumer.to_owned(),
                topic: r.topic.to_string(),
                partition: r.partition,
                offset: r.offset,
                event_id: env.map(|e| e.event_id().to_string()),
                event_type: env.map(|e| e.event_type().to_owned()),
                aggregate_id: env.map(|e| e.aggregate_id().to_owned()),
                correlation_id: env.map(|e| e.correlation_id().to_string()),
                error: reason,
                attempts: failures.count,
            };
            match system::outgoing(&fact, ctx.consumer, ctx.consumer) {
                Ok(o) => shopflow_store::emit(ctx.tx, vec![o]).await?,
                Err(e) => tracing::warn!(error = %e, "EventDeadLettered could not be written"),
            }
            Ok(Outcome::DeadLettered)
        })
    }
}

/// The dead letter of `r`: its key, value and headers, plus headers naming the error, the
/// attempts, the original position and the failure times.
pub fn dead_letter_message(
    r: &Record,
    consumer: &str,
    reason: &str,
    attempts: u32,
    first_failure: DateTime<Utc>,
    last_failure: DateTime<Utc>,
) -> Message {
    let mut headers: Vec<(String, Bytes)> = r
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with("dlq-"))
        .cloned()
        .collect();
    let b = |s: String| Bytes::from(s.into_bytes());
    headers.push((headers::DLQ_ERROR.into(), b(reason.to_owned())));
    headers.push((headers::DLQ_TOPIC.into(), b(r.topic.to_string())));
    headers.push((headers::DLQ_PARTITION.into(), b(r.partition.to_string())));
    headers.push((headers::DLQ_OFFSET.into(), b(r.offset.to_string())));
    headers.push((headers::DLQ_CONSUMER.into(), b(consumer.to_owned())));
    headers.push((headers::DLQ_ATTEMPTS.into(), b(attempts.to_string())));
    headers.push((
        headers::DLQ_FIRST_FAILED_AT.into(),
        b(first_failure.to_rfc3339()),
    ));
    headers.push((headers::DLQ_FAILED_AT.into(), b(last_failure.to_rfc3339())));
    Message {
        topic: shopflow_envelope::dlq_topic(&r.topic),
        key: r.key.clone(),
        value: r.value.clone(),
        headers,
        timestamp_ms: None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::handler::BoxHandler;
    use crate::stage::testing::{FnHandler, bench, envelope, once, record_of, run, seen};

    #[tokio::test]
    async fn a_failure_becomes_one_dead_letter_and_a_redelivery_none() {
        let b = bench().await;
        let env = envelope(3);
        let rec = record_of(&env, 7);
        let h = || {
            BoxHandler::new(FnHandler(|_| {
                Err(HandlerError::Permanent("bad data".into()))
            }))
        };
        let stages = || -> Vec<Arc<dyn Stage>> { vec![Arc::new(DeadLetter)] };
        let first = run(&b.db, stages(), h(), &rec, Some(env.clone())).await;
        assert!(matches!(first, Outcome::DeadLettered), "{first:?}");
        let again = run(&b.db, stages(), h(), &rec, Some(env)).await;
        assert!(matches!(again, Outcome::Duplicate), "{again:?}");
        // No savepoint stage here: the handler's write stays; the dead letter is in the outbox.
        assert_eq!(seen(&b.db).await, vec![3, 3]);
        // The dead letter, and the system event that announces it.
        let pending = shopflow_store::outbox::pending(&b.db, 10).await.unwrap();
        let topics: Vec<&str> = pending.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(topics, vec!["in.dlq", "system.event-dead-lettered"]);
        let fact: serde_json::Value = serde_json::from_slice(&pending[1].value).unwrap();
        assert_eq!(fact["kind"], "system");
        assert_eq!(fact["data"]["consumer"], "probe");
        assert_eq!(fact["data"]["offset"], 7);
        assert_eq!(fact["data"]["error"], "bad data");
    }

    #[tokio::test]
    async fn an_unavailable_dependency_pauses_instead() {
        let (out, _) = once(vec![Arc::new(DeadLetter)], 1, 0, true, |_| {
            Err(HandlerError::Unavailable {
                reason: "down".into(),
                retry_after: std::time::Duration::from_secs(1),
            })
        })
        .await;
        assert!(matches!(out, Outcome::Pause { .. }), "{out:?}");
    }

    #[test]
    fn the_dead_letter_keeps_the_record_and_names_the_failure() {
        let env = envelope(9);
        let mut rec = record_of(&env, 42);
        rec.headers
            .push(("dlq-error".into(), Bytes::from_static(b"old")));
        rec.headers
            .push(("correlation-id".into(), Bytes::from_static(b"c-1")));
        let t = shopflow_envelope::sim::now();
        let m = dead_letter_message(&rec, "payment", "boom", 3, t, t);
        assert_eq!(m.topic, "in.dlq");
        assert_eq!(m.value, rec.value);
        assert_eq!(m.key, rec.key);
        let h = |n: &str| {
            m.headers
                .iter()
                .filter(|(k, _)| k == n)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            h("dlq-error"),
            vec!["boom"],
            "older dlq-* headers are replaced"
        );
        assert_eq!(h("dlq-original-offset"), vec!["42"]);
        assert_eq!(h("dlq-attempts"), vec!["3"]);
        assert_eq!(h("dlq-consumer"), vec!["payment"]);
        assert_eq!(h("correlation-id"), vec!["c-1"]);
    }
}
