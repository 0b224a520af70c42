//! Circuit breaker around calls to an external system (a payment provider, a mail server).
//!
//! Closed: calls go through; `failure_threshold` failures in a row open it. Open: calls are
//! rejected at once for `open_for`, with the time left, so a consumer can pause instead of
//! burning retries. Half-open: after `open_for`, one call at a time probes; `success_threshold`
//! successes close the breaker, a failure opens it again.
//!
//! Time is [`tokio::time::Instant`], so tests run it on a paused clock.

use std::fmt;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Thresholds of a breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed breaker.
    pub failure_threshold: u32,
    /// How long an open breaker rejects calls before it lets a probe through.
    pub open_for: Duration,
    /// Consecutive successful probes that close a half-open breaker.
    pub success_threshold: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(2),
            success_threshold: 1,
        }
    }
}

/// The state a breaker is in, as reported to metrics and operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// 0 closed, 1 half-open, 2 open: the value of the `shopflow_breaker_state` gauge.
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        })
    }
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool, successes: u32 },
}

/// Why a call through the breaker failed.
#[derive(Debug, thiserror::Error)]
pub enum BreakerError<E> {
    /// The breaker is open: the call was not made.
    #[error("circuit breaker `{breaker}` is open; retry in {retry_after:?}")]
    Open {
        breaker: String,
        retry_after: Duration,
    },
    /// The call was made and failed; `opened` says whether this failure opened the breaker.
    #[error("{error}")]
    Failed { error: E, opened: bool },
}

/// A circuit breaker; share it (in an `Arc`) between every caller of one external system.
#[derive(Debug)]
pub struct CircuitBreaker {
    name: String,
    config: BreakerConfig,
    inner: Mutex<Inner>,
    /// The last state published (an open breaker whose time ran out shows as half-open only
    /// when a probe is let through).
    changes: tokio::sync::watch::Sender<BreakerState>,
}

impl CircuitBreaker {
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> Self {
        let b = Self {
            name: name.into(),
            config,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
            changes: tokio::sync::watch::Sender::new(BreakerState::Closed),
        };
        b.publish(BreakerState::Closed);
        b
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the state half-written (every update is
        // one assignment), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current state (an open breaker whose time is up reports half-open).
    pub fn state(&self) -> BreakerState {
        match &*self.lock() {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { until } if Instant::now() >= *until => BreakerState::HalfOpen,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Asks to make a call. `Err(retry_after)` when the breaker rejects it.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        let mut inner = self.lock();
        let now = Instant::now();
        let (result, changed) = match &mut *inner {
            Inner::Closed { .. } => (Ok(()), None),
            Inner::Open { until } if now < *until => (Err(*until - now), None),
            Inner::Open { .. } => {
                *inner = Inner::HalfOpen {
                    probing: true,
                    successes: 0,
                };
                (Ok(()), Some(BreakerState::HalfOpen))
            }
            Inner::HalfOpen { probing: true, .. } => {
                // One probe at a time; the others wait a fraction of the open time.
                (Err(self.config.open_for / 10), None)
            }
            Inner::HalfOpen { probing, .. } => {
                *probing = true;
                (Ok(()), None)
            }
        };
        drop(inner);
        if let Some(s) = changed {
            self.publish(s);
        }
        result
    }

    /// Reports a successful call.
    pub fn on_success(&self) {
        let mut inner = self.lock();
        let changed = match &mut *inner {
            Inner::Closed { failures } => {
                *failures = 0;
                None
            }
            Inner::HalfOpen { successes, probing } => {
                *successes += 1;
                *probing = false;
                if *successes >= self.config.success_threshold.max(1) {
                    *inner = Inner::Closed { failures: 0 };
                    Some(BreakerState::Closed)
                } else {
                    None
                }
            }
            // A call admitted before the breaker opened: it says nothing about now.
            Inner::Open { .. } => None,
        };
        drop(inner);
        if let Some(s) = changed {
            self.publish(s);
        }
    }

    /// Reports a failed call; returns whether the breaker is open now because of it.
    pub fn on_failure(&self) -> bool {
        let mut inner = self.lock();
        let until = Instant::now() + self.config.open_for;
        let opened = match &mut *inner {
            Inner::Closed { failures } => {
                *failures += 1;
                if *failures >= self.config.failure_threshold.max(1) {
                    *inner = Inner::Open { until };
                    true
                } else {
                    false
                }
            }
            Inner::HalfOpen { .. } => {
                *inner = Inner::Open { until };
                true
            }
            Inner::Open { .. } => true,
        };
        drop(inner);
        if opened {
            self.publish(BreakerState::Open);
        }
        opened
    }

    /// Gives back a call admitted by [`CircuitBreaker::try_acquire`] that was never made (or
    /// whose outcome says nothing about the dependency): a half-open breaker lets the next probe
    /// through; nothing is counted.
    pub fn abandon(&self) {
        if let Inner::HalfOpen { probing, .. } = &mut *self.lock() {
            *probing = false;
        }
    }

    /// Makes `call` through the breaker; every `Err` counts as a failure.
    pub async fn call<T, E, F>(&self, call: F) -> Result<T, BreakerError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        self.admit()?;
        self.record(call.await)
    }

    /// Makes a blocking `call` through the breaker; every `Err` counts as a failure.
    pub fn call_sync<T, E>(
        &self,
        call: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, BreakerError<E>> {
        self.admit()?;
        self.record(call())
    }

    /// Lets a call through, or says for how long the breaker stays open.
    fn admit<E>(&self) -> Result<(), BreakerError<E>> {
        self.try_acquire()
            .map_err(|retry_after| BreakerError::Open {
                breaker: self.name.clone(),
                retry_after,
            })
    }

    /// Counts a call's outcome.
    fn record<T, E>(&self, outcome: Result<T, E>) -> Result<T, BreakerError<E>> {
        match outcome {
            Ok(v) => {
                self.on_success();
                Ok(v)
            }
            Err(error) => {
                let opened = self.on_failure();
                Err(BreakerError::Failed { error, opened })
            }
        }
    }

    /// Its state changes as they happen (closed → open → half-open → closed).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<BreakerState> {
        self.changes.subscribe()
    }

    fn publish(&self, state: BreakerState) {
        self.changes.send_replace(state);
        metrics::gauge!("shopflow_breaker_state", "breaker" => self.name.clone())
            .set(state.gauge());
        match state {
            BreakerState::Open => tracing::warn!(breaker = %self.name, %state, "circuit breaker"),
            _ => tracing::info!(breaker = %self.name, %state, "circuit breaker"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(
            "test",
            BreakerConfig {
                failure_threshold: 3,
                open_for: Duration::from_secs(10),
                success_threshold: 2,
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn closed_open_half_open_closed() {
        let b = breaker();
        assert_eq!(b.state(), BreakerState::Closed);
        for i in 0..3 {
            let r: Result<(), _> = b.call(async { Err::<(), _>("down") }).await;
            match r {
                Err(BreakerError::Failed { opened, .. }) => assert_eq!(opened, i == 2),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(b.state(), BreakerState::Open);
        // Open: the call is not made at all.
        let made = std::sync::atomic::AtomicBool::new(false);
        let r = b
            .call(async {
                made.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok::<(), &str>(())
            })
            .await;
        assert!(
            matches!(r, Err(BreakerError::Open { retry_after, .. }) if retry_after == Duration::from_secs(10))
        );
        assert!(!made.load(std::sync::atomic::Ordering::SeqCst));

        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(matches!(b.try_acquire(), Err(d) if d == Duration::from_secs(6)));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);

        // Half-open: one probe at a time.
        assert!(b.try_acquire().is_ok());
        assert!(b.try_acquire().is_err(), "a second probe waits");
        b.on_success();
        assert_eq!(b.state(), BreakerState::HalfOpen, "two successes needed");
        assert!(b.try_acquire().is_ok());
        b.on_success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens() {
        let b = breaker();
        for _ in 0..3 {
            b.on_failure();
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(b.try_acquire().is_ok());
        assert!(b.on_failure(), "the failed probe opens it again");
        assert_eq!(b.state(), BreakerState::Open);
        assert!(matches!(b.try_acquire(), Err(d) if d == Duration::from_secs(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_failure_count() {
        let b = breaker();
        b.on_failure();
        b.on_failure();
        b.on_success();
        b.on_failure();
        b.on_failure();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.on_failure());
    }
}
