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
        shopflow_bus::conformance::test_server(ENV, "127.0.0.1:9092", "the Kafka bus tests")
            .map(|brokers| Self { brokers })
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
