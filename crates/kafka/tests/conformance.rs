//! The bus conformance suite on a real Kafka-protocol broker, named by `SHOPFLOW_TEST_KAFKA`
//! (`host:port`). Without it every check is skipped with a printed reason, except under
//! `CI=true`, where that is a failure.

use std::time::Duration;

use shopflow_bus::conformance::Harness;
use shopflow_kafka::{KafkaBus, KafkaConfig};

pub const ENV: &str = "SHOPFLOW_TEST_KAFKA";

struct KafkaHarness {
    brokers: String,
}

impl KafkaHarness {
    fn from_env() -> Option<Self> {
        match std::env::var(ENV) {
            Ok(brokers) if !brokers.is_empty() => Some(Self { brokers }),
            _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("CI=true but {ENV} is not set: the Kafka bus tests must run in CI")
            }
            _ => {
                eprintln!("skipping Kafka conformance check: set {ENV} (e.g. 127.0.0.1:9092)");
                None
            }
        }
    }
}

impl Harness for KafkaHarness {
    type Bus = KafkaBus;
    async fn open(&self) -> KafkaBus {
        // A namespace, so that the suite also checks that every name is mapped both ways.
        let config = KafkaConfig {
            namespace: "conformance.".into(),
            ..KafkaConfig::new(self.brokers.clone())
        };
        KafkaBus::connect(config).expect("connect to Kafka")
    }
    fn rebalance_timeout(&self) -> Duration {
        Duration::from_secs(60)
    }
}

shopflow_bus::bus_conformance_tests!(optional KafkaHarness::from_env());
