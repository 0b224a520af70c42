//! Crash loop: `shopflow up` runs as a child process under continuous load from `shopflow load`
//! and is killed with SIGKILL at random moments, again and again, and restarted each time. Then it
//! drains, `shopflow load` confirms that every order it placed reached a final state, and
//! `shopflow verify --settled` finds no violation over every service's data.
//!
//! `SHOPFLOW_CRASH_KILLS` sets the number of kills (default 10); `SHOPFLOW_CRASH_SEED` replays a
//! run's kill timings.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, stop_gracefully, wait_healthy};

fn shopflow() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shopflow"));
    c.env("SHOPFLOW_ADMIN_TOKEN", common::TEST_ADMIN_TOKEN);
    c
}

/// A tiny deterministic generator for the kill timings (xorshift64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn sigkill_loop_under_load_loses_nothing_and_verifies_clean() {
    crash_loop("choreography");
}

/// The same with the orchestrated saga: sagas are killed mid-step; after the restarts every saga
/// completes or compensates, and nothing is done twice.
#[test]
fn sigkill_loop_with_orchestrated_sagas() {
    crash_loop("orchestration");
}

fn crash_loop(saga: &str) {
    let kills: u32 = std::env::var("SHOPFLOW_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("SHOPFLOW_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
        | 1;
    eprintln!("crash loop ({saga}): {kills} kills, SHOPFLOW_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = common::up_process(dir.path(), port, &["--saga", saga]);
    wait_healthy(port);

    // Enough orders that the load outlasts the kills.
    let orders = 300 * u64::from(kills.max(1));
    let load = shopflow()
        .args([
            "load",
            "--orders",
            &orders.to_string(),
            "--rate",
            "200",
            "--concurrency",
            "16",
            "--decline-every",
            "7",
            "--bad-country-every",
            "11",
            "--retry-for-secs",
            "120",
            "--json",
            "--target",
            &format!("http://127.0.0.1:{port}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shopflow load");

    let mut restarts = Vec::new();
    for k in 0..kills {
        std::thread::sleep(Duration::from_millis(300 + rng.below(1200)));
        server.kill().unwrap(); // SIGKILL
        server.wait().unwrap();
        server = common::up_process(dir.path(), port, &["--saga", saga]);
        restarts.push(wait_healthy(port));
        eprintln!(
            "kill {} of {kills}: back in {:?}",
            k + 1,
            restarts[k as usize]
        );
    }

    let out = load.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "shopflow load failed (an accepted order never reached a final state?)\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    eprintln!("load report: {report}");
    assert_eq!(
        report["placed"], orders,
        "every order was accepted in the end"
    );
    assert_eq!(report["rejected"], 0);
    let outcomes = &report["outcomes"];
    let finals =
        outcomes["SHIPPED"].as_u64().unwrap_or(0) + outcomes["CANCELLED"].as_u64().unwrap_or(0);
    assert_eq!(finals, orders, "{outcomes}");
    assert!(
        outcomes["CANCELLED"].as_u64().unwrap_or(0) > 0,
        "{outcomes}"
    );

    stop_gracefully(&mut server);
    let verify = common::verify_settled(dir.path());
    let text = String::from_utf8_lossy(&verify.stdout);
    eprintln!("{text}");
    if saga == "orchestration" {
        assert!(
            text.contains(&format!(
                "sagas         compensated {}",
                outcomes["CANCELLED"]
            )),
            "every cancelled order's saga compensated:\n{text}"
        );
    }
    assert!(
        verify.status.success(),
        "verify found violations after {kills} kills:\n{text}\n{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}
