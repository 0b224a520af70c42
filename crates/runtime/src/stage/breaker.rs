//! Circuit breakers around the external systems a handler declared
//! ([`Handler::breakers`](crate::Handler::breakers)). A record is admitted only while every one
//! of them lets calls through; while one is open the consumer pauses for the time it has left
//! instead of burning the record's attempts. After the handler ran, a
//! [`HandlerError::Dependency`] naming a breaker counts as that breaker's failure (retried while
//! the breaker stays closed, a pause once this failure opened it); any other outcome means the
//! dependencies did not fail and counts as their success.

use std::sync::Arc;

use super::{Ctx, Next, Outcome, Stage, StageResult};
use crate::handler::BoxFuture;
use crate::{CircuitBreaker, HandlerError};

/// See the [module](self).
#[derive(Debug)]
pub struct Breakers {
    breakers: Vec<Arc<CircuitBreaker>>,
}

impl Breakers {
    pub fn new(breakers: Vec<Arc<CircuitBreaker>>) -> Self {
        Self { breakers }
    }
}

/// Breakers that admitted a call; dropped without [`Admitted::settle`] (the batch failed on the
/// way) they give their probe back without counting it.
struct Admitted<'a>(Vec<&'a CircuitBreaker>);

impl Admitted<'_> {
    fn settle(mut self, failed: Option<&str>) -> Option<bool> {
        let mut opened = None;
        for b in self.0.drain(..) {
            if Some(b.name()) == failed {
                opened = Some(b.on_failure());
            } else {
                b.on_success();
            }
        }
        opened
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        for b in &self.0 {
            b.abandon();
        }
    }
}

impl Stage for Breakers {
    fn call<'a>(&'a self, ctx: &'a mut Ctx<'_>, next: Next<'a>) -> BoxFuture<'a, StageResult> {
        Box::pin(async move {
            let mut admitted = Admitted(Vec::with_capacity(self.breakers.len()));
            for b in &self.breakers {
                if let Err(retry_after) = b.try_acquire() {
                    return Ok(Outcome::Pause {
                        retry_after,
                        reason: format!("circuit breaker `{}` is open", b.name()),
                    });
                }
                admitted.0.push(b);
            }
            let outcome = next.run(ctx).await?;
            let failed = match &outcome {
                Outcome::Failed(HandlerError::Dependency { breaker, .. }) => Some(breaker.clone()),
                _ => None,
            };
            let opened = admitted.settle(failed.as_deref());
            Ok(match (outcome, opened) {
                (Outcome::Failed(HandlerError::Dependency { breaker, reason }), Some(true)) => {
                    let open_for = self
                        .breakers
                        .iter()
                        .find(|b| b.name() == breaker)
                        .map(|b| b.config().open_for)
                        .unwrap_or_default();
                    Outcome::Pause {
                        retry_after: open_for,
                        reason,
                    }
                }
                (Outcome::Failed(HandlerError::Dependency { reason, .. }), _) => {
                    Outcome::Failed(HandlerError::Transient(reason))
                }
                (other, _) => other,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::handler::BoxHandler;
    use crate::stage::testing::{FnHandler, bench, envelope, record_of, run, seen};
    use crate::{BreakerConfig, BreakerState};

    fn gateway() -> Arc<CircuitBreaker> {
        Arc::new(CircuitBreaker::new(
            "gw",
            BreakerConfig {
                failure_threshold: 2,
                open_for: Duration::from_secs(30),
                success_threshold: 1,
            },
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn dependency_failures_open_the_breaker_and_an_open_breaker_pauses_unhandled() {
        let b = bench().await;
        let gw = gateway();
        let stage = || -> Vec<Arc<dyn Stage>> { vec![Arc::new(Breakers::new(vec![gw.clone()]))] };
        let failing = || {
            let gw = gw.clone();
            BoxHandler::new(FnHandler(move |_| {
                Err(HandlerError::dependency(&gw, "timeout"))
            }))
        };
        let env = envelope(1);
        let rec = record_of(&env, 0);
        let first = run(&b.db, stage(), failing(), &rec, Some(env.clone())).await;
        assert!(
            matches!(first, Outcome::Failed(HandlerError::Transient(ref r)) if r == "timeout"),
            "below the threshold a dependency failure is an ordinary retry: {first:?}"
        );
        let second = run(&b.db, stage(), failing(), &rec, Some(env.clone())).await;
        assert!(
            matches!(second, Outcome::Pause { retry_after, .. } if retry_after == Duration::from_secs(30)),
            "{second:?}"
        );
        assert_eq!(gw.state(), BreakerState::Open);
        let before = seen(&b.db).await.len();
        let third = run(
            &b.db,
            stage(),
            BoxHandler::new(FnHandler(|_| Ok(()))),
            &rec,
            Some(env.clone()),
        )
        .await;
        assert!(matches!(third, Outcome::Pause { .. }), "{third:?}");
        assert_eq!(
            seen(&b.db).await.len(),
            before,
            "not admitted: the handler never ran"
        );
        // After the open time one probe goes through; its success closes the breaker.
        tokio::time::advance(Duration::from_secs(30)).await;
        let probe = run(
            &b.db,
            stage(),
            BoxHandler::new(FnHandler(|_| Ok(()))),
            &rec,
            Some(env),
        )
        .await;
        assert!(matches!(probe, Outcome::Handled), "{probe:?}");
        assert_eq!(gw.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_of_something_else_is_not_the_dependencys() {
        let b = bench().await;
        let gw = gateway();
        for _ in 0..3 {
            let out = run(
                &b.db,
                vec![Arc::new(Breakers::new(vec![gw.clone()]))],
                BoxHandler::new(FnHandler(|_| {
                    Err(HandlerError::Permanent("bad data".into()))
                })),
                &record_of(&envelope(1), 0),
                Some(envelope(1)),
            )
            .await;
            assert!(matches!(out, Outcome::Failed(HandlerError::Permanent(_))));
        }
        assert_eq!(gw.state(), BreakerState::Closed);
    }
}
