//! The users service as the deployment knows it.

use shopflow_contracts::audit::Facts;
use shopflow_service::{Context, Result, Service, Started};
use shopflow_store::Db;

use crate::{MIGRATIONS, NAME, Users};

/// The users service: `POST /users` registers a customer (publishes `UserRegistered`).
pub static SERVICE: Service<Facts> = Service {
    about: "registers customers (UserRegistered)",
    migrations: &[(NAME, MIGRATIONS)],
    groups: &[],
    start: |ctx| Box::pin(start(ctx)),
    audit: |db, facts| Box::pin(audit(db, facts)),
    openapi,
    ..Service::named(NAME)
};

async fn start(ctx: Context) -> Result<Started> {
    let users = Users::open(ctx.db).await?;
    Ok(Started::new(users.router()))
}

async fn audit(db: &Db, facts: &mut Facts) -> Result<()> {
    for row in db.query("SELECT user_id FROM users", &[]).await? {
        facts.users.insert(row.str(0)?.to_owned());
    }
    Ok(())
}

fn openapi() -> serde_json::Value {
    shopflow_service::openapi::generated(<crate::Api as utoipa::OpenApi>::openapi())
}
