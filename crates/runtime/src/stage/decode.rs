//! Decodes the record's value through the registry (upcasting old versions) into the envelope the
//! inner stages and the handler see. A record that is not a valid, known event is given up at
//! once: retrying cannot make it decodable.

use std::sync::Arc;

use shopflow_envelope::Registry;

use super::{Ctx, Failures, Next, Outcome, Stage, StageResult};
use crate::handler::BoxFuture;

/// See the [module](self).
#[derive(Debug)]
pub struct Decode {
    registry: Arc<Registry>,
}

impl Decode {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }
}

impl Stage for Decode {
    fn call<'a>(&'a self, ctx: &'a mut Ctx<'_>, next: Next<'a>) -> BoxFuture<'a, StageResult> {
        Box::pin(async move {
            if ctx.envelope.is_some() {
                // Decoded ahead with the rest of the batch.
                return next.run(ctx).await;
            }
            match self.registry.decode(&ctx.record.value) {
                Ok(env) => {
                    ctx.envelope = Some(env);
                    next.run(ctx).await
                }
                Err(e) => Ok(Outcome::GiveUp {
                    reason: e.to_string(),
                    failures: Failures::first(shopflow_envelope::sim::now()),
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::handler::BoxHandler;
    use crate::stage::testing::{FnHandler, bench, envelope, once, record_of, run, seen};

    fn registry() -> Arc<Registry> {
        let mut r = Registry::new();
        r.register_type("Probed", 1, shopflow_envelope::Kind::Domain);
        Arc::new(r)
    }

    #[tokio::test]
    async fn a_known_event_reaches_the_handler_decoded() {
        let stage: Arc<dyn Stage> = Arc::new(Decode::new(registry()));
        let (out, seen) = once(vec![stage], 4, 0, false, |_| Ok(())).await;
        assert!(matches!(out, Outcome::Handled), "{out:?}");
        assert_eq!(seen, vec![4]);
    }

    #[tokio::test]
    async fn garbage_and_unknown_types_are_given_up_without_calling_the_handler() {
        let b = bench().await;
        let mut garbage = record_of(&envelope(1), 0);
        garbage.value = Bytes::from_static(b"{not json");
        let unknown = record_of(&envelope(2), 1);
        for (rec, reg) in [(garbage, registry()), (unknown, Arc::new(Registry::new()))] {
            let out = run(
                &b.db,
                vec![Arc::new(Decode::new(reg))],
                BoxHandler::new(FnHandler(|_| Ok(()))),
                &rec,
                None,
            )
            .await;
            assert!(matches!(out, Outcome::GiveUp { .. }), "{out:?}");
        }
        assert!(seen(&b.db).await.is_empty());
    }
}
