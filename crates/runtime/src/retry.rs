//! Retry policy for transient handler failures: exponential backoff with jitter and an attempt
//! limit, after which the event is dead-lettered.

use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

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
