use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
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
/// Serialized as camelCase JSON (see the crate docs for an example). The data is kept as the
/// JSON text it arrived as (checked to be well-formed JSON, not parsed into a tree): a reader
/// parses it once, straight into its typed event ([`Envelope::data_as`]).
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
    data: Data,
}

/// An envelope's data: the JSON text it arrived as (or was written as).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
struct Data(Box<RawValue>);

impl Data {
    fn of<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        serde_json::value::to_raw_value(value)
            .map(Data)
            .map_err(|e| Error::Encode {
                reason: e.to_string(),
            })
    }

    fn text(&self) -> &str {
        self.0.get()
    }

    fn value(&self) -> serde_json::Value {
        // The text was checked when the envelope was built or decoded: well-formed JSON nesting
        // no deeper than a tree parses (see `Envelope::validate`), so this parse does not fail.
        serde_json::from_str(self.text()).unwrap_or(serde_json::Value::Null)
    }
}

impl PartialEq for Data {
    /// Equal data means equal JSON values: the same text, or texts that parse to the same value
    /// (key order and spacing aside).
    fn eq(&self, other: &Self) -> bool {
        self.text() == other.text() || self.value() == other.value()
    }
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
        // Straight to JSON text: no tree in between.
        Self::from_raw_parts(E::TYPE, E::VERSION, E::KIND, Data::of(event)?, meta)
    }

    /// Builds an envelope from untyped parts, validating them as [`crate::Registry::decode`] would.
    pub fn from_parts(
        event_type: impl Into<String>,
        event_version: u32,
        kind: Kind,
        data: serde_json::Value,
        meta: Meta,
    ) -> Result<Self> {
        Self::from_raw_parts(event_type, event_version, kind, Data::of(&data)?, meta)
    }

    fn from_raw_parts(
        event_type: impl Into<String>,
        event_version: u32,
        kind: Kind,
        data: Data,
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
        if !nesting_within(self.data.text(), MAX_DATA_NESTING) {
            return invalid("data", "nests arrays and objects more than 128 deep");
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
    /// The data as a JSON value (parsed on each call: typed readers use [`Envelope::data_as`]).
    pub fn data(&self) -> serde_json::Value {
        self.data.value()
    }

    /// The data as the JSON text it is carried as.
    pub fn data_json(&self) -> &str {
        self.data.text()
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
        serde_json::from_str(self.data.text()).map_err(|e| Error::Data {
            event_type: self.event_type.clone(),
            version: self.event_version,
            reason: e.to_string(),
        })
    }

    /// The same event moved to another version with new data (used by upcasters only).
    pub(crate) fn upcast_to(mut self, version: u32, data: serde_json::Value) -> Result<Self> {
        self.event_version = version;
        self.data = Data::of(&data)?;
        Ok(self)
    }

    /// JSON bytes of this envelope.
    pub fn encode(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::Encode {
            reason: e.to_string(),
        })
    }
}

/// How deep the data may nest: as deep as a JSON tree parses (serde_json's limit), so that
/// [`Envelope::data`] and [`Envelope::data_as`] never meet a text that was accepted here but
/// does not parse there.
const MAX_DATA_NESTING: usize = 128;

/// Whether the arrays and objects of the JSON text `json` nest at most `limit` deep (strings,
/// escapes included, are skipped).
fn nesting_within(json: &str, limit: usize) -> bool {
    // Fewer openings than the limit cannot nest deeper: a count the compiler vectorizes, so
    // the exact walk below runs only for data with many brackets.
    let openings = json
        .as_bytes()
        .iter()
        .map(|&b| usize::from(b == b'[' || b == b'{'))
        .sum::<usize>();
    if openings <= limit {
        return true;
    }
    let b = json.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i = after_string(b, i);
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    true
}

/// The index just past the JSON string whose opening quote is at `open` in `b`: past the next
/// quote not escaped by an odd run of backslashes (the end of `b` for an unterminated string).
pub(crate) fn after_string(b: &[u8], open: usize) -> usize {
    let mut i = open + 1;
    while let Some(at) = b.get(i..).and_then(|r| memchr::memchr(b'"', r)) {
        i += at;
        let backslashes = b[..i].iter().rev().take_while(|&&c| c == b'\\').count();
        if backslashes % 2 == 0 {
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

mod version_format {
    use super::*;

    pub(super) fn serialize<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("v{v}"))
    }

    /// `"v1"` or `1`, read without buffering the value first (as an untagged enum would).
    struct Version;

    impl<'de> serde::de::Visitor<'de> for Version {
        type Value = u32;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an event version like \"v1\"")
        }

        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<u32, E> {
            u32::try_from(n).map_err(|_| E::custom("eventVersion is out of range"))
        }

        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<u32, E> {
            u32::try_from(n).map_err(|_| E::custom("eventVersion is out of range"))
        }

        fn visit_str<E: serde::de::Error>(self, t: &str) -> Result<u32, E> {
            t.strip_prefix('v')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| E::custom("eventVersion must look like \"v1\""))
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        d.deserialize_any(Version)
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
