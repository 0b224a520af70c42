//! The idempotent consumer: the event id is recorded in the consumer's inbox in the same
//! transaction as the handler's effects. A redelivered event finds it there and stops here as a
//! duplicate; effects happen exactly once though delivery is at least once.
//!
//! A record of the lane's batch is looked up in what the lane read of the inbox for the whole
//! batch ([`super::Batch`]), not one statement each, and its row is written with the batch's
//! other new rows when the batch settles.

use shopflow_store::inbox;

use super::{Ctx, Next, Outcome, Seen, Stage, StageResult};
use crate::HandlerError;
use crate::handler::BoxFuture;

/// See the [module](self).
#[derive(Debug, Default)]
pub struct Inbox;

impl Stage for Inbox {
    fn call<'a>(&'a self, ctx: &'a mut Ctx<'_>, next: Next<'a>) -> BoxFuture<'a, StageResult> {
        Box::pin(async move {
            let Some(id) = ctx.envelope.as_ref().map(|e| e.event_id().to_string()) else {
                return Ok(Outcome::Failed(HandlerError::Permanent(
                    "no envelope: the inbox stage needs the decode stage outside it".into(),
                )));
            };
            if shopflow_envelope::sim::planted(shopflow_envelope::sim::Bug::EffectWithoutInbox) {
                return next.run(ctx).await;
            }
            match ctx.batch.inbox(&id) {
                Seen::Handled => Ok(Outcome::Duplicate),
                Seen::New => {
                    // Written with the rest of the batch's when it settles.
                    let outcome = next.run(ctx).await?;
                    if !matches!(outcome, Outcome::Handled | Outcome::Duplicate) {
                        ctx.batch.unrecord(&id);
                    }
                    Ok(outcome)
                }
                Seen::Unknown => {
                    if !inbox::record(ctx.tx, ctx.consumer, &id).await? {
                        return Ok(Outcome::Duplicate);
                    }
                    next.run(ctx).await
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::handler::BoxHandler;
    use crate::stage::testing::{FnHandler, bench, envelope, record_of, run, seen};

    #[tokio::test]
    async fn a_redelivered_event_is_a_duplicate_and_changes_nothing() {
        let b = bench().await;
        let env = envelope(8);
        for (i, want_handled) in [(0, true), (1, false), (2, false)] {
            let out = run(
                &b.db,
                vec![Arc::new(Inbox)],
                BoxHandler::new(FnHandler(|_| Ok(()))),
                &record_of(&env, i),
                Some(env.clone()),
            )
            .await;
            assert_eq!(matches!(out, Outcome::Handled), want_handled, "{out:?}");
            assert_eq!(matches!(out, Outcome::Duplicate), !want_handled, "{out:?}");
        }
        assert_eq!(seen(&b.db).await, vec![8]);
    }
}
