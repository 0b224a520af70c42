#![doc = include_str!("../README.md")]

mod aggregate;
mod error;
mod projector;
mod repository;
pub mod testing;

pub use aggregate::{Aggregate, Applied, DomainEvent, fold_envelope};
pub use error::{Error, Result};
pub use projector::{Freshness, PROJECTOR_LOCK_CLASS, Projector, View, ViewTable};
pub use repository::{Repository, SnapshotPolicy, Until, Versioned};
