//! What a typed event is: its type name, version, kind and topic.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// What an envelope carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A business fact inside one service's domain (`OrderCreated` in the order stream).
    Domain,
    /// A fact published for other services (`PaymentCompleted`).
    Integration,
    /// A fact about the system itself (`ServiceStarted`).
    System,
    /// An instruction (`ProcessPayment`): imperative, handled by exactly one service.
    Command,
}

impl Kind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Domain => "domain",
            Kind::Integration => "integration",
            Kind::System => "system",
            Kind::Command => "command",
        }
    }
}

/// A typed event or command.
///
/// `TYPE` is the past-tense name of an event (`OrderCreated`) or the imperative name of a command
/// (`ProcessPayment`); `VERSION` is the version this Rust type reads and writes. Its JSON Schema
/// (derived with `schemars`) is what `schemas/<TYPE>.v<VERSION>.json` records.
pub trait Event: Serialize + DeserializeOwned + JsonSchema {
    const TYPE: &'static str;
    const VERSION: u32;
    const KIND: Kind;
    /// The owning domain, the first part of the topic name (`orders`).
    const DOMAIN: &'static str;

    /// The topic this event travels on: one topic per type, `<domain>.<kebab-type>`.
    fn topic() -> String {
        format!("{}.{}", Self::DOMAIN, kebab_case(Self::TYPE))
    }
}

/// `OrderCreated` → `order-created`.
pub fn kebab_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The dead-letter topic of a topic.
pub fn dlq_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}
