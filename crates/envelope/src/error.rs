/// Errors of decoding, validating and upcasting envelopes.
///
/// Every variant is a property of the bytes or of the registry, never of the environment: a
/// consumer that gets one of these should dead-letter the record at once, since retrying cannot
/// help.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// The record is larger than [`crate::MAX_ENVELOPE_BYTES`].
    #[error("envelope of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// The bytes are not a JSON envelope (not JSON, not an object, a missing or mistyped field).
    #[error("malformed envelope: {reason}")]
    Malformed { reason: String },
    /// The JSON is an envelope but a field breaks a rule (empty type, version 0, …).
    #[error("invalid envelope field `{field}`: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    /// The registry does not know this event type.
    #[error("unknown event type `{event_type}`")]
    UnknownEventType { event_type: String },
    /// The version is newer than the registry's current version, or no upcaster chain leads from it.
    #[error("unsupported version v{version} of `{event_type}` (current is v{current})")]
    UnsupportedVersion {
        event_type: String,
        version: u32,
        current: u32,
    },
    /// An upcaster rejected the data of an old version.
    #[error("upcasting `{event_type}` from v{from} failed: {reason}")]
    Upcast {
        event_type: String,
        from: u32,
        reason: String,
    },
    /// The data does not match the typed event it was read as.
    #[error("data of `{event_type}` v{version} does not match its type: {reason}")]
    Data {
        event_type: String,
        version: u32,
        reason: String,
    },
    /// Asked for one event type, got another.
    #[error("expected event `{expected}`, found `{found}`")]
    WrongType {
        expected: &'static str,
        found: String,
    },
    /// Some version of a registered type cannot reach the current one: the registry is wrong.
    #[error("the event registry has broken upcaster chains: {}", missing.join("; "))]
    BrokenUpcasterChain { missing: Vec<String> },
    /// Serializing a value failed (a map with non-string keys, a failing `Serialize` impl).
    #[error("encoding failed: {reason}")]
    Encode { reason: String },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
