//! Everything the inner stages and the handler write for one record commits or rolls back as
//! one, inside the batch's transaction: a record that is not handled (a retry, a pause, a
//! failure that is given up) leaves no trace of its attempt — neither effects nor inbox row.

use super::{Ctx, Next, Outcome, Stage, StageResult};
use crate::handler::BoxFuture;

/// See the [module](self).
#[derive(Debug, Default)]
pub struct Savepoint;

impl Stage for Savepoint {
    fn call<'a>(&'a self, ctx: &'a mut Ctx<'_>, next: Next<'a>) -> BoxFuture<'a, StageResult> {
        Box::pin(async move {
            // Deferred: on PostgreSQL each travels with the next statement instead of costing a
            // round trip of its own (a failure of one fails that statement, and the batch).
            ctx.tx.execute_deferred("SAVEPOINT handler", &[]).await?;
            let outcome = next.run(ctx).await?;
            if !matches!(outcome, Outcome::Handled | Outcome::Duplicate) {
                ctx.tx
                    .execute_deferred("ROLLBACK TO SAVEPOINT handler", &[])
                    .await?;
            }
            ctx.tx
                .execute_deferred("RELEASE SAVEPOINT handler", &[])
                .await?;
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
