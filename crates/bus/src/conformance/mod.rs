//! The conformance suite of the bus contract. Every backend runs it:
//!
//! ```ignore
//! struct MyHarness { /* … */ }
//! impl shopflow_bus::conformance::Harness for MyHarness { /* open / reopen the backend */ }
//! shopflow_bus::bus_conformance_tests!(MyHarness::new());
//! ```
//!
//! Each check uses topics and groups with a fresh random suffix, so the suite can run against a
//! shared broker. Checks of promises a backend does not make (see [`Capabilities`]) are skipped.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::{Bus, Consumer, Message, Record};

/// Opens the backend under test.
pub trait Harness: Send + Sync {
    type Bus: Bus;
    /// Opens the backend on its persistent state (the same state every time for one harness).
    fn open(&self) -> impl Future<Output = Self::Bus> + Send;
    /// How long a rebalance may take to be seen by members.
    fn rebalance_timeout(&self) -> Duration {
        Duration::from_secs(30)
    }
}

/// For server-backed tests: the server's address from the environment variable `env`, or `None`
/// after printing why `what` is skipped (with an `example` address). Under `CI=true` a missing
/// address panics: CI must run them. An empty value counts as missing.
pub fn test_server(env: &str, example: &str, what: &str) -> Option<String> {
    match std::env::var(env) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but {env} is not set: {what} must run in CI")
        }
        _ => {
            eprintln!("skipping {what}: set {env} (e.g. {example})");
            None
        }
    }
}

/// A name no other check uses.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{:x}-{}-{}",
        nanos & 0xffff_ffff_ffff,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) fn msg(topic: &str, key: &str, value: String) -> Message {
    Message::new(topic, Bytes::copy_from_slice(key.as_bytes()), value)
}

/// Polls until `n` records arrived or `deadline` passed.
pub async fn poll_n<C: Consumer>(c: &mut C, n: usize, deadline: Duration) -> Vec<Record> {
    let end = Instant::now() + deadline;
    let mut out = Vec::new();
    while out.len() < n {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        out.extend(
            c.poll(n - out.len(), left.min(Duration::from_millis(500)))
                .await
                .expect("poll"),
        );
    }
    out
}

pub(crate) fn value_str(r: &Record) -> String {
    String::from_utf8_lossy(&r.value).into_owned()
}

mod checks;

pub use checks::*;

/// Generates one `#[tokio::test]` per conformance check for a harness expression. With
/// `optional`, the expression is an `Option` of a harness (a server-backed backend whose address
/// may be missing); a `None` makes every check return at once.
#[macro_export]
macro_rules! bus_conformance_tests {
    (optional $harness:expr) => {
        $crate::bus_conformance_tests!(@all $harness);
    };
    ($harness:expr) => {
        $crate::bus_conformance_tests!(@all Some($harness));
    };
    (@all $harness:expr) => {
        $crate::bus_conformance_tests!(@each $harness;
            publish_acks_and_reads_back,
            ordering_per_partition,
            committed_offsets_survive_reopen,
            group_members_split_partitions,
            lag_is_exact,
            tail_wakes_waiting_consumer,
            commit_is_checked,
            uncommitted_records_are_redelivered,
            bad_requests_get_typed_errors,
            reads_a_partition_from_an_offset,
        );
    };
    (@each $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(harness) = $harness {
                    $crate::conformance::$name(&harness).await;
                }
            }
        )*
    };
}
