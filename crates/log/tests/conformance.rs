//! The bus conformance suite on the embedded log.

use shopflow_bus::conformance::Harness;
use shopflow_log::{Config, Log};

struct LogHarness {
    dir: tempfile::TempDir,
    config: Config,
}

impl LogHarness {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            config: Config {
                auto_create_topics: false,
                ..Config::default()
            },
        }
    }
}

impl Harness for LogHarness {
    type Bus = Log;
    async fn open(&self) -> Log {
        Log::open(self.dir.path(), self.config.clone()).expect("open log")
    }
}

shopflow_bus::bus_conformance_tests!(LogHarness::new());
