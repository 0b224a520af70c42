//! The very first stage: a record redriven from a dead-letter queue is meant for the one
//! consumer group that dead-lettered it (header `redriven-for`). Every other group of its topic
//! passes it by — it handled the event before, or dead-lettered it on its own account, which is
//! its own dead letter — so a redrive never multiplies a poison record across the groups.

use super::{Ctx, Next, Outcome, Stage, StageResult};
use crate::handler::BoxFuture;
use crate::headers;

/// See the [module](self).
#[derive(Debug, Default)]
pub struct Redrive;

impl Stage for Redrive {
    fn call<'a>(&'a self, ctx: &'a mut Ctx<'_>, next: Next<'a>) -> BoxFuture<'a, StageResult> {
        Box::pin(async move {
            if let Some(group) = ctx.record.header(headers::REDRIVEN_FOR)
                && group != ctx.consumer.as_bytes()
            {
                tracing::debug!(
                    consumer = ctx.consumer,
                    redriven_for = %String::from_utf8_lossy(group),
                    "a redrive for another group: passed by"
                );
                return Ok(Outcome::Duplicate);
            }
            next.run(ctx).await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::HandlerError;
    use crate::handler::BoxHandler;
    use crate::stage::testing::{FnHandler, bench, envelope, record_of, run};
    use crate::stage::{Stage, dead_letter::DeadLetter};

    #[tokio::test]
    async fn a_redrive_reaches_only_the_group_it_names() {
        let b = bench().await;
        let stages = || -> Vec<Arc<dyn Stage>> { vec![Arc::new(Redrive), Arc::new(DeadLetter)] };
        let env = envelope(7);
        let mut rec = record_of(&env, 0);
        // The test handler's group is `probe`.
        rec.headers.push((
            headers::REDRIVEN_FOR.to_owned(),
            Bytes::from_static(b"someone-else"),
        ));
        let out = run(
            &b.db,
            stages(),
            BoxHandler::new(FnHandler(|_| Err(HandlerError::Permanent("poison".into())))),
            &rec,
            Some(env.clone()),
        )
        .await;
        assert!(matches!(out, Outcome::Duplicate), "{out:?}");
        assert_eq!(
            shopflow_store::outbox::backlog(&b.db).await.unwrap(),
            0,
            "another group's redrive is not dead-lettered again here"
        );

        let mut rec = record_of(&env, 1);
        rec.headers.push((
            headers::REDRIVEN_FOR.to_owned(),
            Bytes::from_static(b"probe"),
        ));
        let out = run(
            &b.db,
            stages(),
            BoxHandler::new(FnHandler(|_| Err(HandlerError::Permanent("poison".into())))),
            &rec,
            Some(env),
        )
        .await;
        assert!(matches!(out, Outcome::DeadLettered), "{out:?}");
    }
}
