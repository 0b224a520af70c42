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

/// What `validate_email` accepts, as a JSON Schema pattern (surrounding white space is trimmed,
/// upper case is folded).
pub const EMAIL_PATTERN: &str = concat!(
    "^[",
    shopflow_http::ws_class!(),
    "]*[^@",
    shopflow_http::ws_class!(),
    "]+@[^@.",
    shopflow_http::ws_class!(),
    "][^@",
    shopflow_http::ws_class!(),
    "]*\\.[^@",
    shopflow_http::ws_class!(),
    "]*[^@.",
    shopflow_http::ws_class!(),
    "][",
    shopflow_http::ws_class!(),
    "]*$"
);

fn email_schema() -> utoipa::openapi::Object {
    shopflow_http::pattern_schema(
        EMAIL_PATTERN,
        None,
        Some(254),
        "One `@`, a dot in the domain, no white space inside; kept lower-case",
    )
}

fn phone_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{SchemaType, Type};
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .pattern(Some(PHONE_PATTERN))
        .description(Some(
            "E.164: `+` and 7 to 15 digits (text messages go here), or none",
        ))
        .build()
}

/// What `validate_phone` accepts.
pub const PHONE_PATTERN: &str = r"^\+[0-9]{7,15}$";

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterUser {
    #[schema(schema_with = email_schema)]
    pub email: String,
    #[schema(schema_with = shopflow_http::text200)]
    pub name: String,
    #[serde(default)]
    #[schema(schema_with = phone_schema, required = false)]
    pub phone: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    #[schema(example = "usr_0192d5e0a1b27c3d8e4f5a6b7c8d9e0f")]
    pub user_id: String,
    pub email: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

/// Checks an e-mail address the way a sign-up form should: one `@`, a dot in the domain, no spaces.
pub fn validate_email(email: &str) -> Result<(), ApiError> {
    let ok = email.chars().count() <= 254
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
        // As sent, like the schema's maxLength.
        if req.email.chars().count() > 254 {
            return Err(ApiError::invalid("email must be at most 254 characters"));
        }
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

/// Register a customer: publishes `UserRegistered` (and a welcome message goes out).
#[utoipa::path(post, path = "/users", tag = "users", operation_id = "registerUser",
    request_body = RegisterUser,
    responses(
        shopflow_http::responses::JsonBody,
        shopflow_http::responses::Unavailable,
        (status = 201, description = "Registered", body = UserView),
        (status = 409, description = "A user with this e-mail exists", body = shopflow_http::ErrorBody),
    ))]
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

/// A customer, by id (the id is the capability).
#[utoipa::path(get, path = "/users/{id}", tag = "users", operation_id = "getUser",
    params(("id" = String, Path, description = "The user id (`usr_…`)")),
    responses(
        shopflow_http::responses::Unavailable,
        (status = 200, description = "The user", body = UserView),
        (status = 404, description = "No such user", body = shopflow_http::ErrorBody),
    ))]
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

/// The users service's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(register, get_user),
    components(schemas(RegisterUser, UserView, shopflow_http::ErrorBody))
)]
pub(crate) struct Api;

#[cfg(test)]
mod schema_tests {
    use super::*;

    /// The schema's patterns say what the validators accept.
    #[test]
    fn the_patterns_are_the_rules() {
        let email = regex::Regex::new(EMAIL_PATTERN).unwrap();
        for c in [
            "ada@example.com",
            " Ada@Example.COM ",
            "a@b.c",
            "a@b..c",
            "a@.b",
            "a@b.",
            "a@b",
            "@b.c",
            "a b@c.d",
            "a@b@c.d",
            "a@b.c d",
            "a\u{85}b@c.d",
            "\u{85}a@b.c",
            "a\u{1C}@b.c",
            "a\u{FEFF}@b.c",
            "\u{3000}a@b.c\u{A0}",
        ] {
            let rule = validate_email(&c.trim().to_ascii_lowercase()).is_ok();
            assert_eq!(email.is_match(c), rule, "{c:?}");
        }
        let phone = regex::Regex::new(PHONE_PATTERN).unwrap();
        for c in [
            "+4915112345678",
            "+1234567",
            "+123456",
            "+1234567890123456",
            "4915112345678",
            "+49 151",
            "+１２３４５６７",
        ] {
            assert_eq!(phone.is_match(c), validate_phone(c).is_ok(), "{c:?}");
        }
        // The attributes carry the same patterns as the constants.
        let doc = serde_json::to_value(<Api as utoipa::OpenApi>::openapi()).unwrap();
        let props = &doc["components"]["schemas"]["RegisterUser"]["properties"];
        assert_eq!(props["email"]["pattern"], EMAIL_PATTERN);
        assert_eq!(props["phone"]["pattern"], PHONE_PATTERN);
        assert_eq!(props["name"]["pattern"], shopflow_http::TEXT_PATTERN);
    }
}
