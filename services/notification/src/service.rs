//! The notification service as the deployment knows it.

use std::sync::Arc;

use shopflow_contracts::audit::Facts;
use shopflow_runtime::BoxHandler;
use shopflow_service::{Context, Error, Result, Service, Started};
use shopflow_store::Db;

use crate::{Delivery, MIGRATIONS, NAME, Notifications, Smtp, Spool};

/// Where e-mail goes when not to the spool: `smtp://host:port` (a typed setting of the
/// deployment; the spool under the data directory by default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpRelay(pub String);

/// The notification service: e-mail and SMS for registrations, confirmations, shipments and
/// cancellations, once each.
pub static SERVICE: Service<Facts> = Service {
    about: "e-mail and SMS to customers, once per event",
    migrations: &[(NAME, MIGRATIONS)],
    groups: &[NAME],
    start: |ctx| Box::pin(start(ctx)),
    audit: |db, facts| Box::pin(audit(db, facts)),
    openapi,
    ..Service::named(NAME)
};

async fn start(ctx: Context) -> Result<Started> {
    let dir = &ctx.settings.data_dir;
    let delivery = match ctx.settings.get::<SmtpRelay>() {
        Some(SmtpRelay(url)) => {
            Delivery::Smtp(Smtp::new(&url, dir).map_err(|reason| Error::Config {
                what: "--smtp",
                reason,
            })?)
        }
        None => Delivery::Spool(Spool::new(dir)),
    };
    let delivery = match ctx.settings.get::<crate::MailerOutage>() {
        Some(switch) => Delivery::Switched(Box::new(delivery), switch),
        None => delivery,
    };
    let notifications = Notifications::open(ctx.db, Arc::new(delivery))
        .await?
        .with_breaker(ctx.settings.breaker.clone());
    let mut s = Started::new(notifications.router());
    s.breakers.push(notifications.breaker().clone());
    // The same handler in both saga styles: notifications follow events either way.
    s.handlers.push(BoxHandler::new(notifications));
    Ok(s)
}

/// E-mails sent per order and event, and how many notifications wait for their recipient.
async fn audit(db: &Db, facts: &mut Facts) -> Result<()> {
    for row in db
        .query(
            "SELECT order_id, event_type, channel FROM notifications WHERE order_id IS NOT NULL",
            &[],
        )
        .await?
    {
        facts.count("notifications", 1);
        if row.str(2)? == "email" {
            *facts
                .emails
                .entry((row.str(0)?.to_owned(), row.str(1)?.to_owned()))
                .or_default() += 1;
        }
    }
    let deferred = db.query("SELECT COUNT(*) FROM deferred", &[]).await?;
    let n = deferred.first().map(|r| r.u64(0)).transpose()?.unwrap_or(0);
    facts.count("deferred notifications", n as usize);
    Ok(())
}

fn openapi() -> serde_json::Value {
    shopflow_service::openapi::generated(<crate::notify::Api as utoipa::OpenApi>::openapi())
}
