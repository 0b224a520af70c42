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

/// The log tells a topic's retention (as created) and its size on disk.
#[tokio::test]
async fn topic_details_say_retention_and_size() {
    use shopflow_bus::{Bus, Message, TopicSpec};
    use std::time::Duration;
    let h = LogHarness::new();
    let log = h.open().await;
    log.create_topic(
        "kept",
        &TopicSpec::new(2)
            .retention(Duration::from_secs(3600))
            .retention_bytes(1 << 20),
    )
    .await
    .unwrap();
    let before = log.topic_details("kept").await.unwrap();
    assert_eq!(before.retention, Some(Duration::from_secs(3600)));
    assert_eq!(before.retention_bytes, Some(1 << 20));
    log.publish(vec![Message::new("kept", "k", vec![7u8; 1000])])
        .await
        .unwrap();
    let after = log.topic_details("kept").await.unwrap();
    assert!(
        after.size_bytes.unwrap() >= before.size_bytes.unwrap() + 1000,
        "{before:?} → {after:?}"
    );
    assert!(matches!(
        log.topic_details("nope").await,
        Err(shopflow_bus::Error::UnknownTopic { .. })
    ));
}
