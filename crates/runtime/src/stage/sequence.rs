//! Checks the producer's sequence number of every event handled: an event of an aggregate that
//! comes after a later one of the same producer is a reordering, a number skipped is a gap (for
//! producers the handler reads completely, [`Handler::complete_sources`](crate::Handler)). Each
//! is counted (`shopflow_sequence_anomalies_total{group,kind}`) and logged; the record of what was
//! seen commits with the handler's effects, so `verify` can tell, once the shop has settled,
//! whether anything is still missing. Nothing is refused: the handlers record facts in whatever
//! order they arrive.

use std::collections::HashMap;

use shopflow_store::sequence::{self, Observed};

use super::{Ctx, Next, Outcome, Stage, StageResult};
use crate::handler::BoxFuture;

/// See the [module](self).
#[derive(Debug)]
pub struct Sequence {
    complete: Vec<&'static str>,
    anomalies: std::sync::Mutex<HashMap<&'static str, metrics::Counter>>,
}

impl Sequence {
    pub fn new(complete: Vec<&'static str>) -> Self {
        Self {
            complete,
            anomalies: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn count(&self, group: &'static str, kind: &'static str) {
        let mut m = self.anomalies.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(kind)
            .or_insert_with(|| {
                metrics::counter!("shopflow_sequence_anomalies_total", "group" => group, "kind" => kind)
            })
            .increment(1);
    }
}

impl Stage for Sequence {
    fn call<'a>(&'a self, ctx: &'a mut Ctx<'_>, next: Next<'a>) -> BoxFuture<'a, StageResult> {
        Box::pin(async move {
            let Some((source, aggregate, seq)) = ctx.envelope.as_ref().map(|e| {
                (
                    e.source().to_owned(),
                    e.aggregate_id().to_owned(),
                    e.sequence(),
                )
            }) else {
                return next.run(ctx).await;
            };
            let outcome = next.run(ctx).await?;
            if !matches!(outcome, Outcome::Handled) || seq == 0 {
                return Ok(outcome);
            }
            let complete = self.complete.iter().any(|s| *s == source);
            let observed = match ctx.batch.last(&source, &aggregate) {
                Some(last) => {
                    // Recorded with the batch's other numbers when it settles.
                    let observed = sequence::classify(seq, last, complete);
                    ctx.batch.observed(
                        &source,
                        &aggregate,
                        seq,
                        complete,
                        observed.kind().is_some(),
                    );
                    observed
                }
                None => {
                    sequence::observe(ctx.tx, ctx.consumer, &source, &aggregate, seq, complete)
                        .await?
                }
            };
            if let Some(kind) = observed.kind() {
                self.count(ctx.consumer, kind);
                match observed {
                    Observed::Gap { expected, got } => tracing::warn!(
                        group = ctx.consumer,
                        source,
                        aggregate,
                        expected,
                        got,
                        "sequence gap: events of this producer have not arrived (yet)"
                    ),
                    _ => tracing::info!(
                        group = ctx.consumer,
                        source,
                        aggregate,
                        seq,
                        "event arrived after a later one of the same producer"
                    ),
                }
            }
            Ok(outcome)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::HandlerError;
    use crate::handler::BoxHandler;
    use crate::stage::testing::{FnHandler, bench, record_of, run};
    use shopflow_envelope::{Envelope, Kind, Meta};

    fn numbered(source: &str, seq: u64) -> Envelope {
        Envelope::from_parts(
            "Probed",
            1,
            Kind::Domain,
            serde_json::json!({ "n": seq }),
            Meta::new(source, "agg-1", seq),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn reorderings_are_counted_for_everyone_gaps_only_for_complete_readers() {
        let b = bench().await;
        let stage = || -> Vec<Arc<dyn Stage>> { vec![Arc::new(Sequence::new(vec!["pay"]))] };
        // `pay` is read completely: 1, 3 (a gap), 2 (late, reordered).
        for (seq, offset) in [(1, 0), (3, 1), (2, 2)] {
            let env = numbered("pay", seq);
            let out = run(
                &b.db,
                stage(),
                BoxHandler::new(FnHandler(|_| Ok(()))),
                &record_of(&env, offset),
                Some(env),
            )
            .await;
            assert!(matches!(out, Outcome::Handled));
        }
        // `inv` only in part: 2 after 5 is still a reordering, 1 → 5 no gap.
        for (seq, offset) in [(1, 3), (5, 4), (2, 5)] {
            let env = numbered("inv", seq);
            run(
                &b.db,
                stage(),
                BoxHandler::new(FnHandler(|_| Ok(()))),
                &record_of(&env, offset),
                Some(env),
            )
            .await;
        }
        // A failed handling observes nothing.
        let env = numbered("pay", 9);
        run(
            &b.db,
            stage(),
            BoxHandler::new(FnHandler(|_| Err(HandlerError::Transient("later".into())))),
            &record_of(&env, 6),
            Some(env),
        )
        .await;
        let counts = sequence::anomalies(&b.db).await.unwrap();
        assert_eq!(
            counts,
            vec![("probe".to_owned(), 3)],
            "gap + reordered on pay, reordered on inv"
        );
        assert!(
            sequence::gaps(&b.db).await.unwrap().is_empty(),
            "pay: 1, 2, 3 all seen"
        );
    }
}
