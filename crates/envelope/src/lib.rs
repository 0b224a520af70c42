#![doc = include_str!("../README.md")]

pub mod catalog;
mod codec;
mod envelope;
mod error;
mod event;
mod registry;
pub mod schema;
pub mod sim;

/// Header names of an envelope's record on the bus (the value carries the envelope itself).
pub mod headers {
    /// The envelope's correlation id, so a broker tool can follow a flow without decoding.
    pub const CORRELATION_ID: &str = "correlation-id";
    /// The envelope's event type.
    pub const EVENT_TYPE: &str = "event-type";
}

pub use codec::MAX_ENVELOPE_BYTES;
pub use envelope::{CausationId, CorrelationId, Envelope, EventId, Meta};
pub use error::{Error, Result};
pub use event::{Event, Kind, dlq_topic, kebab_case};
pub use registry::{Registry, Upcaster};
pub use schemars;
