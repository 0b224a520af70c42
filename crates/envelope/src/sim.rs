//! The seams of deterministic simulation: the clock, new ids, crash points and planted bugs.
//!
//! Outside a simulation every function here is what production uses — `now` is the system
//! clock, `uuid_v7` a random time-ordered id, `crash_point` never crashes, `planted` is false.
//! The simulator (`shopflow-sim`) installs a [`World`] on its thread; then time is the world's,
//! ids come from its seeded generator (so keys, partitions and everything derived from them
//! repeat exactly for a seed), and the crash points it arms fail where a process could die.
//! The simulator runs the shop on a single-threaded runtime, so a thread-local is the world.

use std::cell::RefCell;

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A bug the simulator plants to prove it finds that class of bug. Only builds with the
/// `planted-bugs` feature (the simulator's) can switch one on; elsewhere [`planted`] is `false`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bug {
    /// A consumer commits a handler's effects without recording the event in its inbox.
    EffectWithoutInbox,
    /// The outbox relay deletes rows before it publishes them.
    RelayDeletesFirst,
    /// The order aggregate drops a fact that arrives after the order went final.
    OrderDropsLateFact,
}

/// What a simulation decides for the code under test, on this thread.
pub trait World {
    /// Milliseconds since the Unix epoch, UTC.
    fn now_ms(&self) -> i64;
    /// 64 random bits from the world's seeded generator.
    fn next_u64(&mut self) -> u64;
    /// Whether the process dies at the crash point `name`.
    fn crash(&mut self, name: &'static str) -> bool;
    /// Whether `bug` is planted.
    fn planted(&self, bug: Bug) -> bool;
}

thread_local! {
    static WORLD: RefCell<Option<Box<dyn World>>> = const { RefCell::new(None) };
}

/// Makes `world` decide for this thread until the guard drops.
pub fn install(world: Box<dyn World>) -> Installed {
    WORLD.with(|w| *w.borrow_mut() = Some(world));
    Installed(())
}

/// Runs `f` on the installed world, if any.
pub fn with_world<T>(f: impl FnOnce(&mut dyn World) -> T) -> Option<T> {
    WORLD.with(|w| w.borrow_mut().as_mut().map(|w| f(w.as_mut())))
}

/// Removes the world when dropped.
#[derive(Debug)]
pub struct Installed(());

impl Drop for Installed {
    fn drop(&mut self) {
        WORLD.with(|w| *w.borrow_mut() = None);
    }
}

/// The current time: the world's in a simulation, the system's otherwise.
pub fn now() -> DateTime<Utc> {
    with_world(|w| w.now_ms())
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or_else(Utc::now)
}

/// A new UUIDv7: time-ordered, from the world's clock and generator in a simulation.
pub fn uuid_v7() -> Uuid {
    match with_world(|w| (w.now_ms(), w.next_u64(), w.next_u64())) {
        Some((ms, a, b)) => {
            let random = (u128::from(a) << 64) | u128::from(b);
            let ms = ms.max(0) as u128 & ((1 << 48) - 1);
            // 48 bits of milliseconds, version 7, 12 random bits, variant 0b10, 62 random bits.
            let bits =
                (ms << 80) | (0x7 << 76) | ((random & 0xfff) << 64) | (0b10 << 62) | (random >> 66);
            Uuid::from_u128(bits)
        }
        None => Uuid::now_v7(),
    }
}

/// Whether the process dies here. Production code calls it where a crash would leave the most
/// to recover (after a publish, before the delete that follows it, …): never true outside a
/// simulation.
pub fn crash_point(name: &'static str) -> bool {
    with_world(|w| w.crash(name)).unwrap_or(false)
}

/// Whether `bug` is planted (only ever in the simulator's builds and runs).
#[inline]
pub fn planted(bug: Bug) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        with_world(|w| w.planted(bug)).unwrap_or(false)
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        let _ = bug;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(i64, u64);
    impl World for Fixed {
        fn now_ms(&self) -> i64 {
            self.0
        }
        fn next_u64(&mut self) -> u64 {
            self.1 = self.1.wrapping_mul(6364136223846793005).wrapping_add(1);
            self.1
        }
        fn crash(&mut self, _: &'static str) -> bool {
            true
        }
        fn planted(&self, _: Bug) -> bool {
            true
        }
    }

    #[test]
    fn a_world_decides_time_ids_and_crashes_and_nothing_does_without_one() {
        assert!(!crash_point("x"));
        let a = uuid_v7();
        assert_eq!(a.get_version_num(), 7);
        {
            let _w = install(Box::new(Fixed(1_700_000_000_000, 1)));
            assert_eq!(now().timestamp_millis(), 1_700_000_000_000);
            let (x, y) = (uuid_v7(), uuid_v7());
            assert_ne!(x, y);
            assert_eq!(x.get_version_num(), 7);
            assert_eq!(x.get_variant(), uuid::Variant::RFC4122);
            let (ms, _) = x.get_timestamp().expect("v7 has a time").to_unix();
            assert_eq!(ms, 1_700_000_000);
            assert!(crash_point("x"));
        }
        {
            let _w = install(Box::new(Fixed(1_700_000_000_000, 1)));
            let again = uuid_v7();
            let _ = uuid_v7();
            drop(_w);
            let _w = install(Box::new(Fixed(1_700_000_000_000, 1)));
            assert_eq!(uuid_v7(), again, "one seed, one sequence of ids");
        }
        assert!(!crash_point("x"));
        assert_ne!(now().timestamp_millis(), 1_700_000_000_000);
    }
}
