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
    /// Another delivery behind an outage switch (see [`MailerOutage`]).
    Switched(Box<Delivery>, MailerOutage),
}

/// A switch that takes message delivery down while it is on, for reliability drills and the
/// simulator: every delivery fails as a mail server's outage would (the breaker counts it).
#[derive(Debug, Clone, Default)]
pub struct MailerOutage(pub std::sync::Arc<std::sync::atomic::AtomicBool>);

impl MailerOutage {
    pub fn set(&self, down: bool) {
        self.0.store(down, std::sync::atomic::Ordering::SeqCst);
    }
    pub fn is_down(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Mailer for Delivery {
    fn deliver(&self, m: &Outbound) -> std::io::Result<String> {
        match self {
            Delivery::Spool(s) => s.deliver(m),
            Delivery::Smtp(s) => s.deliver(m),
            Delivery::Switched(_, outage) if outage.is_down() => Err(std::io::Error::other(
                "message delivery is down (outage switch)",
            )),
            Delivery::Switched(d, _) => d.deliver(m),
        }
    }
    fn sync(&self) -> std::io::Result<()> {
        match self {
            Delivery::Spool(s) => s.sync(),
            Delivery::Smtp(s) => s.sync(),
            Delivery::Switched(d, _) => d.sync(),
        }
    }
    fn blocks(&self) -> bool {
        match self {
            Delivery::Spool(s) => s.blocks(),
            Delivery::Smtp(s) => s.blocks(),
            Delivery::Switched(d, _) => d.blocks(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outage_switch_fails_deliveries_only_while_it_is_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let switch = MailerOutage::default();
        let d = Delivery::Switched(
            Box::new(Delivery::Spool(Spool::new(dir.path()))),
            switch.clone(),
        );
        let m = Outbound {
            id: "n1".into(),
            channel: "email",
            to: "ada@example.com".into(),
            subject: "hello".into(),
            body: "body".into(),
        };
        switch.set(true);
        let e = d.deliver(&m).expect_err("down");
        assert!(e.to_string().contains("outage switch"), "{e}");
        switch.set(false);
        let at = d.deliver(&m).expect("up again");
        d.sync().expect("sync");
        assert!(spool::read_spooled(&at).expect("spooled").contains("hello"));
    }
}
