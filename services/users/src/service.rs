//! The users service as the deployment knows it.

use serde_json::json;
use shopflow_contracts::audit::Facts;
use shopflow_service::openapi::{op, part, with_body, with_params};
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
    part(
        json!({
            "/users": {"post": with_body(op("Register a user (publishes UserRegistered)", "201", "User"), "RegisterUser")},
            "/users/{id}": {"get": with_params(op("A user", "200", "User"), &[("id", "path", true)])}
        }),
        json!({
            "RegisterUser": {"type": "object", "required": ["email", "name"], "properties": {"email": {"type": "string"}, "name": {"type": "string"}, "phone": {"type": "string", "description": "E.164"}}},
            "User": {"type": "object", "properties": {"userId": {"type": "string"}, "email": {"type": "string"}, "name": {"type": "string"}, "phone": {"type": "string"}}}
        }),
    )
}
