#![doc = include_str!("../README.md")]

mod service;
pub use service::SERVICE;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use shopflow_contracts::{UserId, UserRegistered};
use shopflow_envelope::{CorrelationId, Meta};
use shopflow_http::{ApiError, Json, reply};
use shopflow_store::{Db, Migration, params};
use shopflow_store::{Outgoing, emit};

pub const NAME: &str = "users";

pub const MIGRATIONS: &[Migration] = &[Migration::portable(
    1,
    "users",
    include_str!("../migrations/001_users.sql"),
)];

#[derive(Clone, Debug)]
pub struct Users {
    db: Db,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterUser {
    pub email: String,
    pub name: String,
    #[serde(default)]
    pub phone: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub user_id: String,
    pub email: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

/// Checks an e-mail address the way a sign-up form should: one `@`, a dot in the domain, no spaces.
pub fn validate_email(email: &str) -> Result<(), ApiError> {
    let ok = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "`{email}` is not an e-mail address"
        )))
    }
}

/// E.164: `+` then 7 to 15 digits.
pub fn validate_phone(phone: &str) -> Result<(), ApiError> {
    let digits = phone.strip_prefix('+').unwrap_or("");
    if (7..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "`{phone}` is not an E.164 phone number (+ and 7-15 digits)"
        )))
    }
}

impl Users {
    pub async fn open(db: Db) -> shopflow_store::Result<Self> {
        SERVICE.migrate(&db).await?;
        Ok(Self { db })
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/users", post(register))
            .route("/users/{id}", get(get_user))
            .with_state(Arc::new(self.clone()))
    }

    pub async fn register(
        &self,
        req: RegisterUser,
        correlation: CorrelationId,
    ) -> Result<UserView, ApiError> {
        let email = req.email.trim().to_ascii_lowercase();
        validate_email(&email)?;
        let name = shopflow_http::text("name", &req.name, 200)?;
        if let Some(p) = &req.phone {
            validate_phone(p)?;
        }
        let user_id = UserId::generate();
        let mut tx = self.db.begin().await?;
        let inserted = tx
            .execute(
                "INSERT INTO users (user_id, email, name, phone, created_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (email) DO NOTHING",
                params![user_id.as_str(), email.as_str(), name.as_str(), req.phone.clone(), chrono::Utc::now().timestamp_millis()],
            )
            .await?;
        if inserted == 0 {
            return Err(ApiError::conflict(format!(
                "a user with e-mail `{email}` already exists"
            )));
        }
        let event = UserRegistered {
            user_id: user_id.clone(),
            email: email.clone(),
            name: name.clone(),
            phone: req.phone.clone(),
        };
        let meta = Meta::new("user-service", user_id.as_str(), 1).with_correlation(correlation);
        emit(&mut tx, vec![Outgoing::event(&event, meta)?]).await?;
        tx.commit().await?;
        Ok(UserView {
            user_id: user_id.to_string(),
            email,
            name,
            phone: req.phone,
        })
    }

    pub async fn get(&self, id: &str) -> Result<UserView, ApiError> {
        let rows = self
            .db
            .query(
                "SELECT user_id, email, name, phone FROM users WHERE user_id = $1",
                params![id],
            )
            .await?;
        let r = rows
            .first()
            .ok_or_else(|| ApiError::not_found("user", id))?;
        Ok(UserView {
            user_id: r.str(0)?.to_owned(),
            email: r.str(1)?.to_owned(),
            name: r.str(2)?.to_owned(),
            phone: r.opt_str(3)?.map(str::to_owned),
        })
    }
}

async fn register(
    State(s): State<Arc<Users>>,
    headers: axum::http::HeaderMap,
    Json(req): Json<RegisterUser>,
) -> Result<Response, ApiError> {
    let user = s
        .register(req, shopflow_http::correlation(&headers))
        .await?;
    Ok(reply(StatusCode::CREATED, user))
}

async fn get_user(
    State(s): State<Arc<Users>>,
    Path(id): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    s.get(&id).await.map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_and_phones() {
        assert!(validate_email("a@example.com").is_ok());
        for bad in ["", "a", "a@b", "@b.c", "a b@c.d", "a@.c", "a@c."] {
            assert!(validate_email(bad).is_err(), "{bad}");
        }
        assert!(validate_phone("+4915112345678").is_ok());
        for bad in ["", "12345678", "+12", "+49 151", "+1234567890123456"] {
            assert!(validate_phone(bad).is_err(), "{bad}");
        }
    }
}
