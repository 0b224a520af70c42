//! Sequenced dead letters (Axon's sequenced dead-letter queue): when this consumer group
//! dead-letters a record of key K, K is *parked* in the group with that dead letter as its head,
//! and the group's later records of K wait behind it (in the group's database, in arrival order)
//! instead of being handled out of order. Other keys flow on.
//!
//! - The head redriven (`redriven-origin` names its position) and handled: the parked records
//!   are handled now, in order, in the same transaction; the key is released. Handled and
//!   dead-lettered again: it stays the head.
//! - The head discarded: the operator's discard sends a marker (`discarded-from`, same key) to
//!   the group, which releases the parked records the same way.
//! - A parked record that fails for good while it is released becomes the new head; the rest
//!   stay behind it. One that must be retried (or waits for a dependency) undoes the release:
//!   the head's record is retried, and with it the release.
//!
//! A handler whose effects do not depend on the order of its key's events opts out
//! ([`Handler::sequenced_dead_letters`](crate::Handler::sequenced_dead_letters)); then this stage
//! only keeps discard markers from reaching it.

use shopflow_bus::Record;
use shopflow_store::parked::{self, Head};

use super::{Ctx, Next, Outcome, Stage, StageResult};
use crate::handler::BoxFuture;
use crate::headers;

/// See the [module](self).
#[derive(Debug)]
pub struct Park {
    enabled: bool,
}

impl Park {
    pub fn new(enabled: bool) -> Self {
        Self { enabled }
    }
}

/// `<topic>/<partition>/<offset>` of a record: how a redrive and a discard name the head.
pub fn position(r: &Record) -> String {
    format!("{}/{}/{}", r.topic, r.partition, r.offset)
}

/// The event id of a record, read without decoding the event (the parking path only).
fn event_id(r: &Record) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        #[serde(rename = "eventId")]
        event_id: String,
    }
    serde_json::from_slice::<Id>(&r.value)
        .ok()
        .map(|i| i.event_id)
}

fn head_position(h: &Head) -> String {
    format!("{}/{}/{}", h.topic, h.partition, h.offset)
}

fn head_of(ctx: &Ctx<'_>) -> Head {
    Head {
        event_id: ctx.envelope.as_ref().map(|e| e.event_id().to_string()),
        topic: ctx.record.topic.to_string(),
        partition: ctx.record.partition,
        offset: ctx.record.offset,
        error: ctx
            .failure
            .clone()
            .unwrap_or_else(|| "dead-lettered".to_owned()),
    }
}

impl Stage for Park {
    fn call<'a>(&'a self, ctx: &'a mut Ctx<'_>, next: Next<'a>) -> BoxFuture<'a, StageResult> {
        Box::pin(async move {
            let marker = ctx.record.header(headers::DISCARDED_FROM).is_some();
            let key = parked::key_of(ctx.record);
            let (true, Some(key)) = (self.enabled, key) else {
                // A discard marker is no event: it never reaches a handler.
                return if marker {
                    Ok(Outcome::Duplicate)
                } else {
                    next.run(ctx).await
                };
            };
            let redriven = ctx.record.header(headers::REDRIVEN_ORIGIN).is_some();
            // While no key of the group is parked, an ordinary record has nothing to look up.
            let may_be_parked =
                marker || redriven || ctx.batch.parked.load(std::sync::atomic::Ordering::Relaxed);
            let head = if may_be_parked {
                parked::head(ctx.tx, ctx.consumer, &key).await?
            } else {
                None
            };
            let Some(head) = head else {
                if marker {
                    return Ok(Outcome::Duplicate);
                }
                let out = next.run(ctx).await?;
                if matches!(out, Outcome::DeadLettered) {
                    park(ctx, &key).await?;
                }
                return Ok(out);
            };
            let origin = ctx
                .record
                .header(headers::REDRIVEN_ORIGIN)
                .map(|o| String::from_utf8_lossy(o).into_owned());
            let at_head = origin.as_deref() == Some(head_position(&head).as_str());
            if marker {
                if !at_head {
                    // A discard of an older head, or of one released already.
                    return Ok(Outcome::Duplicate);
                }
                tracing::info!(consumer = ctx.consumer, key, "head discarded: releasing");
                return release(ctx, next, &key)
                    .await
                    .map(|o| o.unwrap_or(Outcome::Handled));
            }
            if at_head {
                let out = next.run(ctx).await?;
                return match out {
                    Outcome::Handled | Outcome::Duplicate => {
                        tracing::info!(consumer = ctx.consumer, key, "head handled: releasing");
                        Ok(release(ctx, next, &key).await?.unwrap_or(out))
                    }
                    Outcome::DeadLettered => {
                        // Failed again: this dead letter is the head now.
                        parked::park_key(ctx.tx, ctx.consumer, &key, &head_of(ctx)).await?;
                        Ok(out)
                    }
                    other => Ok(other),
                };
            }
            if position(ctx.record) == head_position(&head) {
                // The head itself delivered again: the dead-letter stage knows it.
                return next.run(ctx).await;
            }
            // A redelivery of a record handled before the key was parked: nothing to keep. (What
            // the batch handled so far is written first, so that the lookup sees it.)
            ctx.batch.settle(ctx.tx, ctx.consumer).await?;
            if let Some(id) = event_id(ctx.record)
                && shopflow_store::inbox::contains_in(ctx.tx, ctx.consumer, &id).await?
            {
                return Ok(Outcome::Duplicate);
            }
            parked::park_record(ctx.tx, ctx.consumer, &key, ctx.record).await?;
            tracing::info!(
                consumer = ctx.consumer,
                key,
                position = position(ctx.record),
                "parked behind a dead letter"
            );
            Ok(Outcome::Parked)
        })
    }
}

/// Parks `key` behind the record just dead-lettered; later records of the batch look keys up.
async fn park(ctx: &mut Ctx<'_>, key: &str) -> Result<(), shopflow_store::Error> {
    let head = head_of(ctx);
    tracing::warn!(
        consumer = ctx.consumer,
        key,
        head = head_position(&head),
        "key parked behind its dead letter: its later records wait"
    );
    parked::park_key(ctx.tx, ctx.consumer, key, &head).await?;
    ctx.batch
        .parked
        .store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Handles the records parked behind `key`, in order, and releases the key. `Some(outcome)`
/// when the release was undone (a parked record must be retried: the caller's record is
/// retried with it) — then nothing of the release stays.
async fn release(
    ctx: &mut Ctx<'_>,
    next: Next<'_>,
    key: &str,
) -> Result<Option<Outcome>, shopflow_store::Error> {
    // What the batch handled so far is written first: the release may be rolled back, and
    // must not take those records' inbox rows with it.
    ctx.batch.settle(ctx.tx, ctx.consumer).await?;
    ctx.tx.savepoint("park_release").await?;
    let waiting = parked::records(ctx.tx, ctx.consumer, key).await?;
    for (seq, record) in &waiting {
        let out = {
            let mut c = Ctx {
                consumer: ctx.consumer,
                tx: &mut *ctx.tx,
                record,
                envelope: None,
                failure: None,
                batch: ctx.batch,
                careful: ctx.careful,
            };
            let out = next.run(&mut c).await?;
            if matches!(out, Outcome::DeadLettered) {
                // The rest wait behind this one now.
                parked::unpark_record(c.tx, *seq).await?;
                let head = head_of(&c);
                parked::park_key(c.tx, c.consumer, key, &head).await?;
                c.tx.release_savepoint("park_release").await?;
                return Ok(None);
            }
            out
        };
        match out {
            Outcome::Handled | Outcome::Duplicate => parked::unpark_record(ctx.tx, *seq).await?,
            other => {
                ctx.tx.rollback_to_savepoint("park_release").await?;
                ctx.tx.release_savepoint("park_release").await?;
                return Ok(Some(other));
            }
        }
    }
    parked::release_key(ctx.tx, ctx.consumer, key).await?;
    ctx.tx.release_savepoint("park_release").await?;
    Ok(None)
}
