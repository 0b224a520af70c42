use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::{Error, Event, Kind, Result};

/// The id of one event or command: a UUIDv7, so ids sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    /// A new time-ordered id.
    pub fn new() -> Self {
        Self(crate::sim::uuid_v7())
    }
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.0)
    }
}

impl std::str::FromStr for EventId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

string_id!(
    /// Ties together everything that one request set off: the HTTP request, every event and command
    /// that followed from it, and every log line about them.
    CorrelationId
);
string_id!(
    /// The id of the message (event, command or request) that directly caused this one.
    CausationId
);

impl CorrelationId {
    /// A fresh correlation id for a request that did not bring one.
    pub fn generate() -> Self {
        Self(crate::sim::uuid_v7().to_string())
    }
}

impl From<EventId> for CausationId {
    fn from(id: EventId) -> Self {
        Self(id.to_string())
    }
}

/// The envelope of every event and command. Immutable once built: there are no setters.
///
/// Serialized as camelCase JSON (see the crate docs for an example).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Envelope {
    event_id: EventId,
    event_type: String,
    #[serde(with = "version_format")]
    event_version: u32,
    #[serde(with = "timestamp_format")]
    timestamp: DateTime<Utc>,
    kind: Kind,
    source: String,
    aggregate_id: String,
    sequence: u64,
    correlation_id: CorrelationId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    causation_id: Option<CausationId>,
    data: serde_json::Value,
}

/// Who produced an envelope and where it belongs: everything but the payload.
#[derive(Clone, Debug, PartialEq)]
pub struct Meta {
    pub source: String,
    pub aggregate_id: String,
    pub sequence: u64,
    pub correlation_id: CorrelationId,
    pub causation_id: Option<CausationId>,
    /// When the fact happened; `None` means now.
    pub timestamp: Option<DateTime<Utc>>,
}

impl Meta {
    /// Metadata for the first message of a new correlation.
    pub fn new(source: impl Into<String>, aggregate_id: impl Into<String>, sequence: u64) -> Self {
        Self {
            source: source.into(),
            aggregate_id: aggregate_id.into(),
            sequence,
            correlation_id: CorrelationId::generate(),
            causation_id: None,
            timestamp: None,
        }
    }

    /// Metadata for a message caused by `cause`: same correlation, causation = the cause's id.
    pub fn caused_by(
        cause: &Envelope,
        source: impl Into<String>,
        aggregate_id: impl Into<String>,
        sequence: u64,
    ) -> Self {
        Self {
            source: source.into(),
            aggregate_id: aggregate_id.into(),
            sequence,
            correlation_id: cause.correlation_id.clone(),
            causation_id: Some(cause.event_id.into()),
            timestamp: None,
        }
    }

    pub fn with_correlation(mut self, id: CorrelationId) -> Self {
        self.correlation_id = id;
        self
    }

    pub fn with_causation(mut self, id: CausationId) -> Self {
        self.causation_id = Some(id);
        self
    }

    pub fn at(mut self, timestamp: DateTime<Utc>) -> Self {
        self.timestamp = Some(timestamp);
        self
    }
}

impl Envelope {
    /// Wraps a typed event (or command) in a new envelope with a fresh id.
    pub fn new<E: Event>(event: &E, meta: Meta) -> Result<Self> {
        let data = serde_json::to_value(event).map_err(|e| Error::Encode {
            reason: e.to_string(),
        })?;
        Self::from_parts(E::TYPE, E::VERSION, E::KIND, data, meta)
    }

    /// Builds an envelope from untyped parts, validating them as [`crate::Registry::decode`] would.
    pub fn from_parts(
        event_type: impl Into<String>,
        event_version: u32,
        kind: Kind,
        data: serde_json::Value,
        meta: Meta,
    ) -> Result<Self> {
        let envelope = Self {
            event_id: EventId::new(),
            event_type: event_type.into(),
            event_version,
            timestamp: meta.timestamp.unwrap_or_else(crate::sim::now),
            kind,
            source: meta.source,
            aggregate_id: meta.aggregate_id,
            sequence: meta.sequence,
            correlation_id: meta.correlation_id,
            causation_id: meta.causation_id,
            data,
        };
        envelope.validate()?;
        Ok(envelope)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let invalid = |field, reason| Err(Error::Invalid { field, reason });
        if self.event_type.is_empty() {
            return invalid("eventType", "must not be empty");
        }
        if self.event_type.len() > 128 {
            return invalid("eventType", "must be at most 128 bytes");
        }
        if self.event_version == 0 {
            return invalid("eventVersion", "versions start at v1");
        }
        if self.source.is_empty() {
            return invalid("source", "must not be empty");
        }
        if self.aggregate_id.is_empty() {
            return invalid("aggregateId", "must not be empty");
        }
        if self.aggregate_id.len() > 256 {
            return invalid("aggregateId", "must be at most 256 bytes");
        }
        if self.correlation_id.as_str().is_empty() {
            return invalid("correlationId", "must not be empty");
        }
        Ok(())
    }

    pub fn event_id(&self) -> EventId {
        self.event_id
    }
    pub fn event_type(&self) -> &str {
        &self.event_type
    }
    pub fn event_version(&self) -> u32 {
        self.event_version
    }
    pub fn timestamp(&self) -> DateTime<Utc> {
        self.timestamp
    }
    pub fn kind(&self) -> Kind {
        self.kind
    }
    pub fn source(&self) -> &str {
        &self.source
    }
    pub fn aggregate_id(&self) -> &str {
        &self.aggregate_id
    }
    /// The same event, numbered `sequence` in its producer's sequence for the aggregate: the
    /// outbox numbers what a producer publishes (the event id stays).
    pub fn renumbered(mut self, sequence: u64) -> Self {
        self.sequence = sequence;
        self
    }

    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The same event under a given id. For producers whose ids must be the same every time
    /// they produce the same fact (change data capture derives them from the WAL position), so
    /// that a repeat after a restart is dropped by every consumer's inbox.
    pub fn with_event_id(mut self, id: EventId) -> Self {
        self.event_id = id;
        self
    }
    pub fn correlation_id(&self) -> &CorrelationId {
        &self.correlation_id
    }
    pub fn causation_id(&self) -> Option<&CausationId> {
        self.causation_id.as_ref()
    }
    pub fn data(&self) -> &serde_json::Value {
        &self.data
    }

    /// True when this envelope carries `E` (any version; upcast first to read it).
    pub fn is<E: Event>(&self) -> bool {
        self.event_type == E::TYPE
    }

    /// Reads the data as `E`. The envelope must be of `E`'s type and current version: decode
    /// through [`crate::Registry::decode`] so that old versions are upcast first.
    pub fn data_as<E: Event>(&self) -> Result<E> {
        if self.event_type != E::TYPE {
            return Err(Error::WrongType {
                expected: E::TYPE,
                found: self.event_type.clone(),
            });
        }
        if self.event_version != E::VERSION {
            return Err(Error::UnsupportedVersion {
                event_type: self.event_type.clone(),
                version: self.event_version,
                current: E::VERSION,
            });
        }
        E::deserialize(&self.data).map_err(|e| Error::Data {
            event_type: self.event_type.clone(),
            version: self.event_version,
            reason: e.to_string(),
        })
    }

    /// The same event moved to another version with new data (used by upcasters only).
    pub(crate) fn upcast_to(mut self, version: u32, data: serde_json::Value) -> Self {
        self.event_version = version;
        self.data = data;
        self
    }

    /// JSON bytes of this envelope.
    pub fn encode(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::Encode {
            reason: e.to_string(),
        })
    }
}

mod version_format {
    use super::*;

    pub(super) fn serialize<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("v{v}"))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr<'a> {
        Number(u32),
        #[serde(borrow)]
        Text(std::borrow::Cow<'a, str>),
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Number(n) => Ok(n),
            Repr::Text(t) => t
                .strip_prefix('v')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| serde::de::Error::custom("eventVersion must look like \"v1\"")),
        }
    }
}

mod timestamp_format {
    use super::*;

    pub(super) fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| serde::de::Error::custom(format!("timestamp is not RFC 3339: {e}")))
    }
}
