//! librdkafka's errors as bus errors, and the topic names Kafka accepts.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use shopflow_bus::{Error, INTERNAL_TOPIC_PREFIX, Result};

pub(crate) fn code_transient(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::MessageTimedOut
            | C::RequestTimedOut
            | C::OperationTimedOut
            | C::NetworkException
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::QueueFull
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::CoordinatorNotAvailable
            | C::NotCoordinator
            | C::CoordinatorLoadInProgress
            | C::RebalanceInProgress
            | C::TimedOutQueue
    )
}

/// A librdkafka error as a bus error.
pub(crate) fn kerr(e: KafkaError) -> Error {
    match e.rdkafka_error_code() {
        Some(c) if code_transient(c) => Error::Unavailable {
            reason: e.to_string(),
        },
        _ => Error::Backend {
            reason: e.to_string(),
            transient: false,
        },
    }
}

pub(crate) fn join_err(e: tokio::task::JoinError) -> Error {
    Error::Backend {
        reason: format!("a Kafka client call failed: {e}"),
        transient: false,
    }
}

/// Topic names: Kafka's rules, and no internal (`__`) topics.
pub(crate) fn validate_topic(name: &str) -> Result<()> {
    shopflow_bus::validate_topic_name(name)?;
    if name.starts_with(INTERNAL_TOPIC_PREFIX) {
        return Err(Error::InvalidTopic {
            topic: name.to_owned(),
            reason: "names starting with `__` are internal",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(validate_topic("orders.order-created").is_ok());
        assert!(validate_topic("__consumer_offsets").is_err());
        assert!(validate_topic("bad name!").is_err());
        assert!(validate_topic("").is_err());
    }
}
