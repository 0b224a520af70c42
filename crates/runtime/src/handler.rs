//! What a service plugs into the runtime: a [`Handler`] from an envelope to the envelopes it
//! emits, and the [`HandlerError`] that tells the runtime's stages what a failure means.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use shopflow_envelope::Envelope;
use shopflow_store::{Outgoing, Tx};

use crate::{BreakerError, CircuitBreaker};

/// A boxed future that lives as long as the borrows it holds.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a handler could not handle an event.
///
/// What each variant makes the runtime do: `Transient` → retried with backoff, dead-lettered
/// after the attempt limit; `Permanent` → dead-lettered at once; `Unavailable` → the consumer
/// pauses and tries the same event again without counting an attempt; `Dependency` → a call to a
/// dependency the handler declared in [`Handler::breakers`] failed: counted by that breaker,
/// retried like `Transient` while the breaker stays closed, a pause once it opens.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// May succeed later (a database hiccup, an outage): the event is retried.
    #[error("transient: {0}")]
    Transient(String),
    /// Will never succeed (invalid data, a broken invariant): the event is dead-lettered.
    #[error("permanent: {0}")]
    Permanent(String),
    /// A dependency is down: the consumer pauses for `retry_after` and then tries the same event
    /// again, without counting it as an attempt.
    #[error("unavailable: {reason}")]
    Unavailable {
        reason: String,
        retry_after: Duration,
    },
    /// A call to the dependency behind the breaker named `breaker` failed.
    #[error("{breaker}: {reason}")]
    Dependency { breaker: String, reason: String },
}

impl HandlerError {
    /// A failed call to the dependency guarded by `breaker` (one of [`Handler::breakers`]).
    pub fn dependency(breaker: &CircuitBreaker, reason: impl std::fmt::Display) -> Self {
        HandlerError::Dependency {
            breaker: breaker.name().to_owned(),
            reason: reason.to_string(),
        }
    }
}

impl From<shopflow_store::Error> for HandlerError {
    fn from(e: shopflow_store::Error) -> Self {
        if e.is_transient() {
            HandlerError::Transient(e.to_string())
        } else {
            HandlerError::Permanent(e.to_string())
        }
    }
}

impl From<shopflow_envelope::Error> for HandlerError {
    fn from(e: shopflow_envelope::Error) -> Self {
        HandlerError::Permanent(e.to_string())
    }
}

/// An event handler of a service.
pub trait Handler: Send + Sync + 'static {
    /// The consumer group and inbox name (`payment`, `order-outcomes`, …).
    fn name(&self) -> &'static str;
    /// The topics it consumes.
    fn topics(&self) -> Vec<String>;
    /// The circuit breakers of the external systems it calls. The runtime admits an event only
    /// while every one of them lets calls through (else the consumer pauses), and counts a
    /// [`HandlerError::Dependency`] naming one as that breaker's failure.
    fn breakers(&self) -> Vec<Arc<CircuitBreaker>> {
        Vec::new()
    }
    /// The producers (`source` of their envelopes) of which it reads every topic they number
    /// events on: for those, a skipped sequence number is a gap (see `stage::sequence`).
    fn complete_sources(&self) -> Vec<&'static str> {
        Vec::new()
    }
    /// How many transactions of this consumer may be in flight at once (capped by the runner's
    /// configured lanes; see `RunnerConfig::lanes`). Records of one partition always share a
    /// lane, so this is safe wherever the handler's effects for a record touch only rows of that
    /// record's key, or that lock what they share. The default, 1, is for handlers whose effects
    /// touch rows shared between keys unlocked (stock of a sku reserved by many orders), where
    /// concurrent transactions could deadlock or miss each other's writes.
    fn lanes(&self) -> usize {
        1
    }
    /// Whether a dead letter of key K parks K's later records in this group until it is
    /// redriven and handled, or discarded (see `stage::park`). On by default: effects that
    /// depend on the order of a key's events must not see them out of order. A handler whose
    /// effects for each event stand alone opts out, and its later records flow on.
    fn sequenced_dead_letters(&self) -> bool {
        true
    }
    /// Whether everything the handler does is in its transaction: it calls nothing outside
    /// (no gateway, no mailer, no other service), so running it again for a record whose first
    /// run was rolled back changes nothing outside the database. Then the runtime runs a batch
    /// without a savepoint per record and, when a record fails, drops the batch's transaction
    /// and runs it again with savepoints (see `Runner`). Off by default: a handler with an
    /// external effect would repeat it.
    fn only_database_effects(&self) -> bool {
        false
    }
    /// Handles one event inside the runtime's transaction: write state through `tx`, return what
    /// to publish (the runtime puts it in the outbox of the same transaction). Events of types it
    /// does not handle should return `Ok(vec![])`.
    fn handle<'a>(
        &'a self,
        tx: &'a mut Tx,
        envelope: &'a Envelope,
    ) -> impl Future<Output = Result<Vec<Outgoing>, HandlerError>> + Send + 'a;
}

/// A [`Handler`] behind a pointer, for code that holds handlers of different types in one list
/// (a service's descriptor, the runner).
#[derive(Clone)]
pub struct BoxHandler(Arc<dyn ErasedHandler>);

impl std::fmt::Debug for BoxHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BoxHandler").field(&self.0.name()).finish()
    }
}

impl BoxHandler {
    pub fn new<H: Handler>(handler: H) -> Self {
        Self(Arc::new(handler))
    }

    pub(crate) fn from_arc<H: Handler>(handler: Arc<H>) -> Self {
        Self(handler)
    }

    pub(crate) fn call<'a>(
        &'a self,
        tx: &'a mut Tx,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<Vec<Outgoing>, HandlerError>> {
        self.0.call(tx, envelope)
    }
}

impl Handler for BoxHandler {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn topics(&self) -> Vec<String> {
        self.0.topics()
    }
    fn breakers(&self) -> Vec<Arc<CircuitBreaker>> {
        self.0.breakers()
    }
    fn complete_sources(&self) -> Vec<&'static str> {
        self.0.complete_sources()
    }
    fn lanes(&self) -> usize {
        self.0.lanes()
    }
    fn sequenced_dead_letters(&self) -> bool {
        self.0.sequenced_dead_letters()
    }
    fn only_database_effects(&self) -> bool {
        self.0.only_database_effects()
    }
    fn handle<'a>(
        &'a self,
        tx: &'a mut Tx,
        envelope: &'a Envelope,
    ) -> impl Future<Output = Result<Vec<Outgoing>, HandlerError>> + Send + 'a {
        self.0.call(tx, envelope)
    }
}

/// The object-safe face of [`Handler`].
trait ErasedHandler: Send + Sync {
    fn name(&self) -> &'static str;
    fn topics(&self) -> Vec<String>;
    fn breakers(&self) -> Vec<Arc<CircuitBreaker>>;
    fn complete_sources(&self) -> Vec<&'static str>;
    fn lanes(&self) -> usize;
    fn sequenced_dead_letters(&self) -> bool;
    fn only_database_effects(&self) -> bool;
    fn call<'a>(
        &'a self,
        tx: &'a mut Tx,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<Vec<Outgoing>, HandlerError>>;
}

impl<H: Handler> ErasedHandler for H {
    fn name(&self) -> &'static str {
        Handler::name(self)
    }
    fn topics(&self) -> Vec<String> {
        Handler::topics(self)
    }
    fn breakers(&self) -> Vec<Arc<CircuitBreaker>> {
        Handler::breakers(self)
    }
    fn complete_sources(&self) -> Vec<&'static str> {
        Handler::complete_sources(self)
    }
    fn lanes(&self) -> usize {
        Handler::lanes(self)
    }
    fn sequenced_dead_letters(&self) -> bool {
        Handler::sequenced_dead_letters(self)
    }
    fn only_database_effects(&self) -> bool {
        Handler::only_database_effects(self)
    }
    fn call<'a>(
        &'a self,
        tx: &'a mut Tx,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<Vec<Outgoing>, HandlerError>> {
        Box::pin(self.handle(tx, envelope))
    }
}

impl<E: std::fmt::Display> BreakerError<E> {
    /// The handler's view: an open breaker (or a failure that opened it) pauses the consumer
    /// without burning an attempt; any other failure is transient and retried with backoff.
    pub fn into_handler_error(self, open_for: Duration) -> HandlerError {
        match self {
            BreakerError::Open {
                breaker,
                retry_after,
            } => HandlerError::Unavailable {
                reason: format!("circuit breaker `{breaker}` is open"),
                retry_after,
            },
            BreakerError::Failed {
                error,
                opened: true,
            } => HandlerError::Unavailable {
                reason: error.to_string(),
                retry_after: open_for,
            },
            BreakerError::Failed {
                error,
                opened: false,
            } => HandlerError::Transient(error.to_string()),
        }
    }
}

impl CircuitBreaker {
    /// The handler's view of a failed call through this breaker.
    pub fn handler_error<E: std::fmt::Display>(&self, e: BreakerError<E>) -> HandlerError {
        e.into_handler_error(self.config().open_for)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_breaker_pauses_instead_of_burning_retries() {
        let e: BreakerError<&str> = BreakerError::Open {
            breaker: "gw".into(),
            retry_after: Duration::from_secs(3),
        };
        assert!(matches!(
            e.into_handler_error(Duration::from_secs(5)),
            HandlerError::Unavailable { retry_after, .. } if retry_after == Duration::from_secs(3)
        ));
        let tripped: BreakerError<&str> = BreakerError::Failed {
            error: "down",
            opened: true,
        };
        assert!(matches!(
            tripped.into_handler_error(Duration::from_secs(5)),
            HandlerError::Unavailable { .. }
        ));
        let once: BreakerError<&str> = BreakerError::Failed {
            error: "down",
            opened: false,
        };
        assert!(matches!(
            once.into_handler_error(Duration::from_secs(5)),
            HandlerError::Transient(_)
        ));
    }
}
