#![doc = include_str!("../README.md")]

mod codec;
mod envelope;
mod error;
mod registry;

pub use codec::MAX_ENVELOPE_BYTES;
pub use envelope::{CausationId, CorrelationId, Envelope, EventId, Kind, Meta};
pub use error::{Error, Result};
pub use registry::{Event, Registry, Upcaster, dlq_topic, kebab_case};
