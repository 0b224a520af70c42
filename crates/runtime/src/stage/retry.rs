//! Retries transient failures: the record's partition stops at it and resumes after an
//! exponential backoff with jitter; after the policy's attempt limit (or at once, for a permanent
//! failure) the record is given up to the dead-letter stage, with its failure count and times.
//! Failures are counted per record in memory: a restart starts counting again.

use std::sync::Mutex;
use std::time::Duration;

use foldhash::{HashMap, HashMapExt};
use shopflow_bus::TopicPartition;

use super::{Ctx, Failures, Next, Outcome, Stage, StageResult};
use crate::HandlerError;
use crate::handler::BoxFuture;

/// How often and how patiently a transient failure is retried.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// The delay before the first retry.
    pub initial: Duration,
    /// The largest delay between two attempts.
    pub max_delay: Duration,
    /// Growth of the delay per attempt.
    pub multiplier: f64,
    /// Attempts in all (the first one included); when the last one fails transiently the event
    /// is dead-lettered. `0` or `1` means: no retry.
    pub max_attempts: u32,
    /// Spread each delay uniformly over `[delay/2, delay]` so that consumers failing together do
    /// not retry together.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(50),
            max_delay: Duration::from_secs(10),
            multiplier: 2.0,
            max_attempts: 10,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The backoff before attempt `failed + 1`, after `failed` failed attempts (1-based), given
    /// a uniform random number in `[0, 1)`.
    pub fn delay(&self, failed: u32, unit_random: f64) -> Duration {
        let exp = failed.saturating_sub(1).min(64) as i32;
        let base = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exp);
        let capped = base.min(self.max_delay.as_secs_f64());
        let secs = if self.jitter {
            let r = unit_random.clamp(0.0, 1.0);
            capped / 2.0 + capped / 2.0 * r
        } else {
            capped
        };
        Duration::from_secs_f64(secs)
    }

    /// Whether an event that failed `failed` times is given up (dead-lettered).
    pub fn exhausted(&self, failed: u32) -> bool {
        failed >= self.max_attempts.max(1)
    }
}

/// A small, fast pseudo-random source for jitter (xorshift64*); not for anything secret.
#[derive(Clone, Debug)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// Seeded from the clock and a fresh UUID, so that two processes differ.
    pub fn from_entropy() -> Self {
        // In a simulation, the world's seeded generator decides.
        if let Some(seed) = shopflow_envelope::sim::with_world(|w| w.next_u64()) {
            return Self::new(seed);
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let addr = &nanos as *const u64 as u64;
        Self::new(nanos ^ addr.rotate_left(32))
    }

    /// A uniform number in `[0, 1)`.
    pub fn next_unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (v >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// See the [module](self).
#[derive(Debug)]
pub struct Retry {
    policy: RetryPolicy,
    state: Mutex<RetryState>,
}

#[derive(Debug)]
struct RetryState {
    attempts: HashMap<(TopicPartition, u64), Failures>,
    jitter: Jitter,
}

impl Retry {
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            policy,
            state: Mutex::new(RetryState {
                attempts: HashMap::new(),
                jitter: Jitter::from_entropy(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RetryState> {
        // Every update is a single map operation: a poisoned lock still guards whole data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one more failure of the record at `key`.
    fn count(&self, key: &(TopicPartition, u64)) -> Failures {
        let now = shopflow_envelope::sim::now();
        self.state()
            .attempts
            .entry(key.clone())
            .and_modify(|f| {
                f.count += 1;
                f.last = now;
            })
            .or_insert_with(|| Failures::first(now))
            .clone()
    }

    fn forget(&self, key: &(TopicPartition, u64)) -> Option<Failures> {
        self.state().attempts.remove(key)
    }

    fn decide(&self, key: &(TopicPartition, u64), outcome: Outcome) -> Outcome {
        match outcome {
            Outcome::Failed(HandlerError::Transient(reason))
            | Outcome::Failed(HandlerError::Dependency { reason, .. }) => {
                let f = self.count(key);
                if !self.policy.exhausted(f.count) {
                    let unit = self.state().jitter.next_unit();
                    return Outcome::Retry {
                        delay: self.policy.delay(f.count, unit),
                        reason,
                    };
                }
                let f = self.forget(key).unwrap_or(f);
                Outcome::GiveUp {
                    reason: format!("gave up after {} attempts: {reason}", f.count),
                    failures: f,
                }
            }
            Outcome::Failed(HandlerError::Permanent(reason)) => {
                let f = self.count(key);
                let f = self.forget(key).unwrap_or(f);
                Outcome::GiveUp {
                    reason,
                    failures: f,
                }
            }
            // The failures so far were the outage's, not this event's.
            Outcome::Failed(HandlerError::Unavailable {
                reason,
                retry_after,
            }) => {
                self.forget(key);
                Outcome::Pause {
                    retry_after,
                    reason,
                }
            }
            other @ Outcome::Pause { .. } => {
                self.forget(key);
                other
            }
            other if other.is_done() => {
                self.forget(key);
                other
            }
            other => other,
        }
    }
}

impl Stage for Retry {
    fn call<'a>(&'a self, ctx: &'a mut Ctx<'_>, next: Next<'a>) -> BoxFuture<'a, StageResult> {
        Box::pin(async move {
            let key = (ctx.record.topic_partition(), ctx.record.offset);
            let outcome = next.run(ctx).await?;
            Ok(self.decide(&key, outcome))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use crate::handler::BoxHandler;
    use crate::stage::testing::{FnHandler, bench, envelope, record_of, run};

    #[tokio::test]
    async fn transient_failures_retry_with_growing_delays_then_give_up() {
        let b = bench().await;
        let policy = RetryPolicy {
            initial: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            multiplier: 2.0,
            max_attempts: 3,
            jitter: false,
        };
        let stage: Arc<dyn Stage> = Arc::new(Retry::new(policy));
        let env = envelope(1);
        let rec = record_of(&env, 5);
        let h = || BoxHandler::new(FnHandler(|_| Err(HandlerError::Transient("busy".into()))));
        let mut delays = Vec::new();
        loop {
            match run(&b.db, vec![stage.clone()], h(), &rec, Some(env.clone())).await {
                Outcome::Retry { delay, reason } => {
                    assert!(reason.contains("busy"));
                    delays.push(delay.as_millis());
                }
                Outcome::GiveUp { reason, failures } => {
                    assert_eq!(failures.count, 3);
                    assert_eq!(reason, "gave up after 3 attempts: busy");
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(delays, vec![100, 200]);
    }

    #[tokio::test]
    async fn a_permanent_failure_is_given_up_at_once_and_success_forgets_the_count() {
        let b = bench().await;
        let stage: Arc<dyn Stage> = Arc::new(Retry::new(RetryPolicy::default()));
        let env = envelope(2);
        let rec = record_of(&env, 0);
        let out = run(
            &b.db,
            vec![stage.clone()],
            BoxHandler::new(FnHandler(|_| Err(HandlerError::Permanent("bad".into())))),
            &rec,
            Some(env.clone()),
        )
        .await;
        assert!(
            matches!(out, Outcome::GiveUp { ref failures, .. } if failures.count == 1),
            "{out:?}"
        );
        // One transient failure, then success: the next failure counts from 1 again.
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let flaky = move || {
            let c = c.clone();
            BoxHandler::new(FnHandler(move |_| {
                if c.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(HandlerError::Transient("once".into()))
                } else {
                    Ok(())
                }
            }))
        };
        assert!(matches!(
            run(&b.db, vec![stage.clone()], flaky(), &rec, Some(env.clone())).await,
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            run(&b.db, vec![stage.clone()], flaky(), &rec, Some(env.clone())).await,
            Outcome::Handled
        ));
        let out = run(
            &b.db,
            vec![stage],
            BoxHandler::new(FnHandler(|_| Err(HandlerError::Permanent("bad".into())))),
            &rec,
            Some(env),
        )
        .await;
        assert!(
            matches!(out, Outcome::GiveUp { ref failures, .. } if failures.count == 1),
            "{out:?}"
        );
    }

    #[test]
    fn grows_exponentially_and_caps() {
        let p = RetryPolicy {
            initial: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            multiplier: 2.0,
            max_attempts: 5,
            jitter: false,
        };
        let d: Vec<u128> = (1..=6).map(|n| p.delay(n, 0.5).as_millis()).collect();
        assert_eq!(d, vec![100, 200, 400, 800, 1000, 1000]);
        assert!(!p.exhausted(4));
        assert!(p.exhausted(5));
    }

    #[test]
    fn jitter_stays_within_half_to_full_delay() {
        let p = RetryPolicy {
            initial: Duration::from_millis(100),
            ..RetryPolicy::default()
        };
        let mut j = Jitter::new(42);
        let mut seen_low = false;
        let mut seen_high = false;
        for _ in 0..1000 {
            let d = p.delay(3, j.next_unit());
            assert!(d >= Duration::from_millis(200) && d <= Duration::from_millis(400));
            seen_low |= d < Duration::from_millis(250);
            seen_high |= d > Duration::from_millis(350);
        }
        assert!(seen_low && seen_high, "jitter must spread the delays");
    }

    #[test]
    fn jitter_units_are_in_range() {
        let mut j = Jitter::from_entropy();
        for _ in 0..10_000 {
            let u = j.next_unit();
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn no_retry_when_one_attempt() {
        let p = RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        };
        assert!(p.exhausted(1));
        let p0 = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        };
        assert!(p0.exhausted(1));
    }
}
