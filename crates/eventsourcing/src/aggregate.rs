//! An aggregate splits decision from state: [`Aggregate::handle`] holds every business rule and
//! answers a command with the events it decides; [`Aggregate::apply`] only moves state, so a
//! replay of the same events always reaches the same state.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use shopflow_envelope::{Envelope, Meta};

/// The events of one aggregate type, as stored in its streams.
pub trait DomainEvent: Clone + std::fmt::Debug + PartialEq + Send + Sync + 'static {
    /// Reads a stored (and upcast) envelope.
    fn from_envelope(envelope: &Envelope) -> shopflow_envelope::Result<Self>;
    /// Writes the event into an envelope with the given metadata.
    fn to_envelope(&self, meta: Meta) -> shopflow_envelope::Result<Envelope>;
    /// The topic other services hear of it on; `None` keeps it in the stream only.
    fn topic(&self) -> Option<String>;
}

/// Where an event sits in its stream, handed to [`Aggregate::apply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The event's version in its stream (1 for the first).
    pub version: u64,
    /// When it was recorded (the envelope's timestamp).
    pub at: DateTime<Utc>,
}

/// An event-sourced aggregate: its state is the fold of its events.
///
/// State must serialize (snapshots and read models hold it) and `Default` is the state before
/// the first event.
pub trait Aggregate:
    Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
    type Command: Send;
    type Event: DomainEvent;
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides what `command` means for the aggregate as it is: every rule lives here.
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Moves state by one event; no rules here.
    fn apply(&mut self, event: &Self::Event, applied: Applied);
}

/// Folds one stored envelope into `state`.
pub fn fold_envelope<A: Aggregate>(
    state: &mut A,
    envelope: &Envelope,
) -> shopflow_envelope::Result<()> {
    let event = A::Event::from_envelope(envelope)?;
    state.apply(
        &event,
        Applied {
            version: envelope.sequence(),
            at: envelope.timestamp(),
        },
    );
    Ok(())
}
