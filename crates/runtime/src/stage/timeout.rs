//! A limit on how long one handler call may take: beyond it the call is abandoned (its writes are
//! rolled back by the savepoint stage outside) and the record fails transiently, to be retried
//! with backoff like any other transient failure. Blocking work inside a handler (a file sync)
//! is not interrupted; the limit applies at the handler's next await.

use std::time::Duration;

use super::{Ctx, Next, Outcome, Stage, StageResult};
use crate::HandlerError;
use crate::handler::BoxFuture;

/// See the [module](self).
#[derive(Debug)]
pub struct Timeout {
    limit: Duration,
}

impl Timeout {
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl Stage for Timeout {
    fn call<'a>(&'a self, ctx: &'a mut Ctx<'_>, next: Next<'a>) -> BoxFuture<'a, StageResult> {
        Box::pin(async move {
            match tokio::time::timeout(self.limit, next.run(ctx)).await {
                Ok(result) => result,
                Err(_) => Ok(Outcome::Failed(HandlerError::Transient(format!(
                    "the handler took longer than {:?}",
                    self.limit
                )))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::Handler;
    use crate::handler::BoxHandler;
    use crate::stage::testing::{bench, envelope, record_of, run};
    use shopflow_envelope::Envelope;
    use shopflow_store::{Outgoing, Tx};

    struct Slow(Duration);

    impl Handler for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn topics(&self) -> Vec<String> {
            vec!["in".into()]
        }
        async fn handle(&self, _: &mut Tx, _: &Envelope) -> Result<Vec<Outgoing>, HandlerError> {
            tokio::time::sleep(self.0).await;
            Ok(vec![])
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_handler_fails_transiently_a_quick_one_passes() {
        let b = bench().await;
        let env = envelope(1);
        let rec = record_of(&env, 0);
        let stage =
            || -> Vec<Arc<dyn Stage>> { vec![Arc::new(Timeout::new(Duration::from_secs(1)))] };
        let slow = run(
            &b.db,
            stage(),
            BoxHandler::new(Slow(Duration::from_secs(5))),
            &rec,
            Some(env.clone()),
        )
        .await;
        assert!(
            matches!(slow, Outcome::Failed(HandlerError::Transient(ref m)) if m.contains("longer than 1s")),
            "{slow:?}"
        );
        let quick = run(
            &b.db,
            stage(),
            BoxHandler::new(Slow(Duration::from_millis(10))),
            &rec,
            Some(env),
        )
        .await;
        assert!(matches!(quick, Outcome::Handled), "{quick:?}");
    }
}
