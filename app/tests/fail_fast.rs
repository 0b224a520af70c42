//! A start against a bus or a database that is not there fails within 30 s, naming the
//! address — instead of retrying forever.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::free_port;

/// Runs `shopflow up` with `args`; returns (exit status success, stderr, how long it took).
fn up(args: &[&str]) -> (bool, String, Duration) {
    let dir = tempfile::tempdir().unwrap();
    // A file, not a pipe: librdkafka logs every failed attempt, enough to fill a pipe.
    let log = dir.path().join("stderr");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .args(["up", "--data-dir", dir.path().to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Give up on it (and fail) well after the promise of 30 s.
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(45) {
            let _ = child.kill();
            panic!("shopflow up {args:?} still running after 45 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = child.wait().unwrap();
    (
        status.success(),
        std::fs::read_to_string(&log).unwrap(),
        started.elapsed(),
    )
}

#[test]
fn no_broker_fails_the_start_naming_it() {
    let addr = format!("127.0.0.1:{}", free_port());
    let (ok, err, took) = up(&["--bus", &format!("kafka://{addr}")]);
    assert!(!ok, "{err}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error:") && last.contains(&addr),
        "the last line names the broker: {last}"
    );
}

#[test]
fn no_database_fails_the_start_naming_it() {
    let addr = format!("127.0.0.1:{}", free_port());
    let (ok, err, took) = up(&["--db", &format!("postgres://shop@{addr}/shop")]);
    assert!(!ok, "{err}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error:") && last.contains(&addr) && last.contains("PostgreSQL"),
        "the last line names the database: {last}"
    );
}
