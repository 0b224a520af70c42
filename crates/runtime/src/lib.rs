#![doc = include_str!("../README.md")]

pub mod breaker;
pub mod dlq;
mod handler;
pub mod retention;
mod runner;
pub mod stage;
pub mod system;

use tokio::sync::watch;

pub use breaker::{BreakerConfig, BreakerError, BreakerState, CircuitBreaker};
pub use handler::{BoxFuture, BoxHandler, Handler, HandlerError};
pub use runner::{Delivery, Runner, RunnerConfig, RunnerStats, Waiting};
pub use shopflow_store::Outgoing;
pub use stage::dead_letter::dead_letter_message;
pub use stage::retry::{self as retry, RetryPolicy};

/// Header names the runtime writes.
pub mod headers {
    pub use shopflow_envelope::headers::{CORRELATION_ID, EVENT_TYPE};
    pub const DLQ_ERROR: &str = "dlq-error";
    pub const DLQ_TOPIC: &str = "dlq-original-topic";
    pub const DLQ_PARTITION: &str = "dlq-original-partition";
    pub const DLQ_OFFSET: &str = "dlq-original-offset";
    pub const DLQ_CONSUMER: &str = "dlq-consumer";
    /// The last failure time (RFC 3339).
    pub const DLQ_FAILED_AT: &str = "dlq-failed-at";
    pub const DLQ_FIRST_FAILED_AT: &str = "dlq-first-failed-at";
    pub const DLQ_ATTEMPTS: &str = "dlq-attempts";
    /// Set on a record that an operator redrove from a dead-letter queue: the dead letter's id.
    pub const REDRIVEN_FROM: &str = "redriven-from";
    /// Set on a redriven record: the one consumer group it is for (the one that dead-lettered
    /// it); the other groups of the topic pass it by.
    pub const REDRIVEN_FOR: &str = "redriven-for";
    /// Set on a redriven record and on a discard marker: where the dead letter's record was
    /// read (`<topic>/<partition>/<offset>`), so the group that parked its key behind it
    /// recognises its head.
    pub const REDRIVEN_ORIGIN: &str = "redriven-origin";
    /// A discard marker (no event): the id of the dead letter an operator discarded, sent to
    /// the group that dead-lettered it so that it releases the records parked behind it.
    pub const DISCARDED_FROM: &str = "discarded-from";
}

/// A signal that tells long-running tasks to stop.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// The sending side of [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

impl Shutdown {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    /// Completes once shutdown was triggered (or the trigger was dropped).
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}
