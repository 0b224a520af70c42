//! Everything the inner stages and the handler write for one record commits or rolls back as
//! one, inside the batch's transaction: a record that is not handled (a retry, a pause, a
//! failure that is given up) leaves no trace of its attempt — neither effects nor inbox row.
//!
//! A savepoint costs two statements per record (and on SQLite a copy of every page the record
//! changes), so a lane whose handler has only database effects first runs its batch without
//! (`Ctx::careful` off): there a record that is not handled answers [`Outcome::Replay`], before
//! the retry stage counts anything, and the lane runs the batch again with savepoints.

use super::{Ctx, Next, Outcome, Stage, StageResult};
use crate::handler::BoxFuture;

/// See the [module](self).
#[derive(Debug, Default)]
pub struct Savepoint;

impl Stage for Savepoint {
    fn call<'a>(&'a self, ctx: &'a mut Ctx<'_>, next: Next<'a>) -> BoxFuture<'a, StageResult> {
        Box::pin(async move {
            if !ctx.careful {
                // No savepoint: what the inner stages wrote cannot be taken back alone, so a
                // record that is not handled has the whole run dropped and redone with them.
                let outcome = next.run(ctx).await?;
                return Ok(match outcome {
                    Outcome::Handled | Outcome::Duplicate => outcome,
                    _ => Outcome::Replay,
                });
            }
            // Deferred: on PostgreSQL each travels with the next statement instead of costing a
            // round trip of its own (a failure of one fails that statement, and the batch).
            ctx.tx.savepoint("handler").await?;
            let outcome = next.run(ctx).await?;
            if !matches!(outcome, Outcome::Handled | Outcome::Duplicate) {
                ctx.tx.rollback_to_savepoint("handler").await?;
            }
            ctx.tx.release_savepoint("handler").await?;
            Ok(outcome)
        })
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn without_a_savepoint_a_failure_asks_for_a_rerun_and_a_success_stays() {
        use crate::stage::{Batch, Ctx, Stack};
        let b = bench().await;
        let stack = Stack::new(
            vec![Arc::new(Savepoint)],
            BoxHandler::new(FnHandler(|n| {
                if n == 2 {
                    Err(HandlerError::Permanent("bad".into()))
                } else {
                    Ok(())
                }
            })),
        );
        let batch = Batch::new(false);
        let mut tx = b.db.begin().await.unwrap();
        let mut outcomes = Vec::new();
        for (n, offset) in [(1, 0), (2, 1)] {
            let env = envelope(n);
            let rec = record_of(&env, offset);
            let mut ctx = Ctx {
                consumer: "probe",
                tx: &mut tx,
                record: &rec,
                envelope: Some(env),
                failure: None,
                batch: &batch,
                careful: false,
            };
            outcomes.push(stack.handle(&mut ctx).await.unwrap());
        }
        assert!(matches!(outcomes[0], Outcome::Handled), "{outcomes:?}");
        assert!(matches!(outcomes[1], Outcome::Replay), "{outcomes:?}");
        tx.commit().await.unwrap();
        assert_eq!(
            seen(&b.db).await,
            vec![1, 2],
            "nothing was taken back: the runner drops such a run"
        );
    }

    use std::sync::Arc;

    use super::*;
    use crate::HandlerError;
    use crate::handler::BoxHandler;
    use crate::stage::testing::{FnHandler, bench, envelope, record_of, run, seen};

    #[tokio::test]
    async fn a_failed_attempt_leaves_nothing_and_a_handled_one_stays() {
        let b = bench().await;
        let (ok, bad) = (envelope(1), envelope(2));
        let out = run(
            &b.db,
            vec![Arc::new(Savepoint)],
            BoxHandler::new(FnHandler(|n| {
                if n == 2 {
                    Err(HandlerError::Transient("later".into()))
                } else {
                    Ok(())
                }
            })),
            &record_of(&bad, 1),
            Some(bad),
        )
        .await;
        assert!(matches!(out, Outcome::Failed(_)), "{out:?}");
        let out = run(
            &b.db,
            vec![Arc::new(Savepoint)],
            BoxHandler::new(FnHandler(|_| Ok(()))),
            &record_of(&ok, 0),
            Some(ok),
        )
        .await;
        assert!(matches!(out, Outcome::Handled));
        assert_eq!(
            seen(&b.db).await,
            vec![1],
            "the failed attempt's write is gone"
        );
    }
}
