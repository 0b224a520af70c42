//! Inbox retention: the ids of handled events are kept as long as an event can come again, and
//! then purged in the background, so the inbox does not grow with the shop's whole history.
//!
//! The window must be longer than any redelivery: a redelivery comes from the bus, so the bus's
//! retention is the bound — a consumer group reset to the earliest offset gets back everything
//! the bus still holds, and an event whose id was purged would be handled again. Keep the window
//! at least as long as the topics' retention (Kafka's default is 7 days; the embedded log keeps
//! everything unless a topic has a retention). Dead-letter markers are purged with the rest: a
//! redrive older than the window is handled like a new event.

use std::time::Duration;

use shopflow_store::{Db, inbox};

use crate::Shutdown;

/// How long handled ids are kept, and how often the purge runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboxRetention {
    pub window: Duration,
    pub every: Duration,
}

impl Default for InboxRetention {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(7 * 24 * 3600),
            every: Duration::from_secs(3600),
        }
    }
}

/// Purges ids handled more than `window` ago; returns how many went.
pub async fn purge_once(db: &Db, window: Duration) -> shopflow_store::Result<u64> {
    let cutoff = shopflow_envelope::sim::now().timestamp_millis()
        - i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    inbox::purge_before(db, cutoff).await
}

/// Purges every `retention.every` until shutdown (the first purge right away).
pub async fn run(db: Db, retention: InboxRetention, shutdown: Shutdown) {
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        match purge_once(&db, retention.window).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, window = ?retention.window, "inbox retention"),
            Err(e) => tracing::warn!(error = %e, "inbox purge failed; trying again later"),
        }
        tokio::select! {
            _ = tokio::time::sleep(retention.every) => {}
            _ = &mut stop => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::handler::BoxHandler;
    use crate::stage::inbox::Inbox;
    use crate::stage::testing::{FnHandler, bench, envelope, record_of, run, seen};
    use crate::stage::{Outcome, Stage};

    #[tokio::test]
    async fn a_redelivery_inside_the_window_is_a_no_op_and_the_purge_only_takes_older_ids() {
        let b = bench().await;
        let env = envelope(7);
        let deliver = |offset| {
            let db = b.db.clone();
            let env = env.clone();
            async move {
                let stages: Vec<Arc<dyn Stage>> = vec![Arc::new(Inbox)];
                run(
                    &db,
                    stages,
                    BoxHandler::new(FnHandler(|_| Ok(()))),
                    &record_of(&env, offset),
                    Some(env),
                )
                .await
            }
        };
        assert!(matches!(deliver(0).await, Outcome::Handled));
        assert_eq!(
            purge_once(&b.db, Duration::from_secs(3600)).await.unwrap(),
            0
        );
        assert!(
            matches!(deliver(1).await, Outcome::Duplicate),
            "inside the window a redelivery changes nothing"
        );
        assert_eq!(seen(&b.db).await, vec![7]);
        // Past the window the id is gone — which is why the window must outlast the bus's
        // retention: a redelivery now would be handled again.
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(purge_once(&b.db, Duration::ZERO).await.unwrap(), 1);
        assert!(matches!(deliver(2).await, Outcome::Handled));
    }
}
