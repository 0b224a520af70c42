//! Catches a handler's panic, so that it dead-letters the event instead of killing the consumer.
//! The handler's state is dropped after a panic and never polled again, and what it wrote is
//! rolled back by the savepoint stage outside.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use super::{Ctx, Next, Outcome, Stage, StageResult};
use crate::HandlerError;
use crate::handler::BoxFuture;

/// See the [module](self).
#[derive(Debug, Default)]
pub struct Catch;

impl Stage for Catch {
    fn call<'a>(&'a self, ctx: &'a mut Ctx<'_>, next: Next<'a>) -> BoxFuture<'a, StageResult> {
        Box::pin(async move {
            match CatchUnwind::new(next.run(ctx)).await {
                Ok(result) => result,
                Err(panic) => Ok(Outcome::Failed(HandlerError::Permanent(format!(
                    "handler panicked: {panic}"
                )))),
            }
        })
    }
}

/// A future that turns a panic while polling `F` into `Err(message)`.
pub(crate) struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> CatchUnwind<F> {
    pub(crate) fn new(f: F) -> Self {
        Self(Box::pin(f))
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.get_mut().0.as_mut();
        // The handler's state is dropped after a panic and never polled again, and the
        // transaction it wrote through is rolled back to its savepoint by the caller.
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(panic_message(payload.as_ref()))),
        }
    }
}

pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_an_error_with_its_message() {
        let r = CatchUnwind::new(async {
            tokio::task::yield_now().await;
            if std::hint::black_box(true) {
                panic!("boom {}", 42);
            }
            1
        })
        .await;
        assert_eq!(r, Err("boom 42".to_owned()));
        assert_eq!(CatchUnwind::new(async { 7 }).await, Ok(7));
    }

    #[tokio::test]
    async fn a_panicking_handler_fails_permanently_with_its_message() {
        let (out, _) =
            crate::stage::testing::once(vec![std::sync::Arc::new(Catch)], 5, 0, true, |n| {
                if n == 5 {
                    panic!("index out of bounds for order {n}");
                }
                Ok(())
            })
            .await;
        assert!(
            matches!(out, Outcome::Failed(HandlerError::Permanent(ref m)) if m == "handler panicked: index out of bounds for order 5"),
            "{out:?}"
        );
    }
}
