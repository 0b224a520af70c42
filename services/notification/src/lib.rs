#![doc = include_str!("../README.md")]

mod notify;
mod service;
mod smtp;
mod spool;

use shopflow_store::Migration;

pub use notify::{NotificationView, Notifications};
pub use service::{SERVICE, SmtpRelay};
pub use smtp::Smtp;
pub use spool::{Spool, read_spooled};

pub const NAME: &str = "notification";

pub const MIGRATIONS: &[Migration] = &[Migration::portable(
    1,
    "notifications",
    include_str!("../migrations/001_notifications.sql"),
)];

/// Applies the service's migrations (those its descriptor lists).
async fn migrate(db: &shopflow_store::Db) -> shopflow_store::Result<()> {
    SERVICE.migrate(db).await
}

/// A message to deliver.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub id: String,
    pub channel: &'static str,
    pub to: String,
    pub subject: String,
    pub body: String,
}

/// Delivers messages; returns where it put one (a file, a message id).
pub trait Mailer: Send + Sync + 'static {
    /// Hands one message over. It may not be durable until [`Mailer::sync`] returns.
    fn deliver(&self, m: &Outbound) -> std::io::Result<String>;
    /// Makes every message delivered so far durable (a spool's fdatasync; nothing for a mail
    /// server that has accepted them). The handler runs it once per transaction, before the
    /// commit that records its messages as sent.
    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }
    /// Whether a delivery may block the thread for long (a network round trip), so that the
    /// runtime should move other tasks off it meanwhile.
    fn blocks(&self) -> bool {
        true
    }
}

/// Where notifications go: the closed set of delivery backends.
#[derive(Debug, Clone)]
pub enum Delivery {
    Spool(Spool),
    Smtp(Smtp),
}

impl Mailer for Delivery {
    fn deliver(&self, m: &Outbound) -> std::io::Result<String> {
        match self {
            Delivery::Spool(s) => s.deliver(m),
            Delivery::Smtp(s) => s.deliver(m),
        }
    }
    fn sync(&self) -> std::io::Result<()> {
        match self {
            Delivery::Spool(s) => s.sync(),
            Delivery::Smtp(s) => s.sync(),
        }
    }
    fn blocks(&self) -> bool {
        match self {
            Delivery::Spool(s) => s.blocks(),
            Delivery::Smtp(s) => s.blocks(),
        }
    }
}
