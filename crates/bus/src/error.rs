use std::path::PathBuf;

/// Errors of the bus contract, shared by every backend.
///
/// [`Error::is_transient`] tells a caller whether trying again later can help.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown topic `{topic}`")]
    UnknownTopic { topic: String },
    #[error("invalid topic name `{topic}`: {reason}")]
    InvalidTopic { topic: String, reason: &'static str },
    #[error("topic `{topic}` has {existing} partitions, {requested} were requested")]
    PartitionMismatch {
        topic: String,
        existing: u32,
        requested: u32,
    },
    #[error("unknown partition {partition} of topic `{topic}` ({partitions} partitions)")]
    UnknownPartition {
        topic: String,
        partition: u32,
        partitions: u32,
    },
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge { size: usize, limit: usize },
    #[error("partition {topic}/{partition} is not assigned to this consumer")]
    NotAssigned { topic: String, partition: u32 },
    #[error("offset {offset} is outside {topic}/{partition} (start {start}, end {end})")]
    OffsetOutOfRange {
        topic: String,
        partition: u32,
        offset: u64,
        start: u64,
        end: u64,
    },
    #[error("corrupt record in {topic}/{partition} at offset {offset}: {reason}")]
    Corrupt {
        topic: String,
        partition: u32,
        offset: u64,
        reason: String,
    },
    #[error("log directory {path} is in use by another process")]
    Locked { path: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bus unavailable: {reason}")]
    Unavailable { reason: String },
    #[error("bus backend error: {reason}")]
    Backend { reason: String, transient: bool },
    #[error("the bus is closed")]
    Closed,
}

impl Error {
    /// True when the same call may succeed later (an outage, a broker hiccup); false for errors
    /// of the request itself (unknown topic, too large, not assigned, corrupt data).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unavailable { .. } | Error::Io { .. } => true,
            Error::Backend { transient, .. } => *transient,
            _ => false,
        }
    }
}

/// `Result` with the bus [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
