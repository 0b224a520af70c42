#![doc = include_str!("../README.md")]

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub mod auth;
pub mod serve;

/// The largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// An error answer: status, stable code, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    /// 422: the request is well-formed but breaks a rule.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} `{id}` does not exist"),
        )
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"code": self.code, "message": self.message});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<shopflow_store::Error> for ApiError {
    fn from(e: shopflow_store::Error) -> Self {
        use shopflow_store::Error as E;
        match &e {
            E::Conflict { .. } | E::DuplicateEvent { .. } => ApiError::conflict(e.to_string()),
            E::Invalid { .. } => ApiError::invalid(e.to_string()),
            // Two requests creating the same record at once (on PostgreSQL both may pass their
            // existence check): the loser is told to try again, which then finds the record.
            _ if e.is_unique_violation() => {
                ApiError::conflict("a concurrent request changed the same record; try again")
            }
            _ if e.is_transient() => {
                tracing::warn!(error = %e, "store unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is busy or unreachable; try again",
                )
            }
            _ => {
                tracing::error!(error = %e, "internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; it has been logged",
                )
            }
        }
    }
}

impl From<shopflow_envelope::Error> for ApiError {
    fn from(e: shopflow_envelope::Error) -> Self {
        tracing::error!(error = %e, "encoding an event failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; it has been logged",
        )
    }
}

/// A JSON body, rejected as an [`ApiError`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rej) => Err(json_rejection(rej)),
        }
    }
}

fn json_rejection(rej: JsonRejection) -> ApiError {
    let status = rej.status();
    let code = match &rej {
        JsonRejection::JsonDataError(_) => "invalid_body",
        JsonRejection::JsonSyntaxError(_) => "malformed_json",
        JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
        _ if status == StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        _ => "bad_body",
    };
    ApiError::new(status, code, rej.body_text())
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Query parameters, rejected as an [`ApiError`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(rej) => Err(query_rejection(rej)),
        }
    }
}

fn query_rejection(rej: QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", rej.body_text())
}

/// A JSON answer with a status.
pub fn reply<T: Serialize>(status: StatusCode, body: T) -> Response {
    (status, axum::Json(body)).into_response()
}

/// The header carrying a request's correlation id.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// The request's correlation id (`X-Correlation-Id`, if it is a sane one) or a fresh one.
pub fn correlation(headers: &axum::http::HeaderMap) -> shopflow_envelope::CorrelationId {
    headers
        .get(CORRELATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(shopflow_envelope::CorrelationId::new)
        .unwrap_or_else(shopflow_envelope::CorrelationId::generate)
}

/// Middleware: every request gets a correlation id (the caller's `X-Correlation-Id` if sane,
/// else a fresh one), which handlers see in the request headers, every log line of the request
/// carries (a `request` span), and the response echoes.
pub async fn correlate(mut req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument;
    let id = correlation(req.headers());
    let value = HeaderValue::from_str(id.as_str()).ok();
    if let Some(v) = &value {
        req.headers_mut().insert(CORRELATION_HEADER, v.clone());
    }
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        correlation_id = %id.as_str(),
    );
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status();
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(%status, "request failed");
        } else {
            tracing::debug!(%status, "request");
        }
    });
    if let Some(v) = value {
        resp.headers_mut().insert(CORRELATION_HEADER, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unique violation (two requests creating one record) is a 409 to retry, not a 500.
    #[tokio::test]
    async fn a_unique_violation_is_a_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let db = shopflow_store::Db::open_sqlite(dir.path().join("t.db")).unwrap();
        let mut tx = db.begin().await.unwrap();
        tx.batch("CREATE TABLE t (k TEXT PRIMARY KEY)")
            .await
            .unwrap();
        tx.execute("INSERT INTO t (k) VALUES ('a')", &[])
            .await
            .unwrap();
        let e = tx
            .execute("INSERT INTO t (k) VALUES ('a')", &[])
            .await
            .unwrap_err();
        assert!(e.is_unique_violation(), "{e}");
        assert_eq!(ApiError::from(e).status, StatusCode::CONFLICT);
    }
}

/// Characters that change how the text around them is displayed without being seen: the bidi
/// embeddings, overrides and isolates (the "Trojan Source" characters) and the direction marks.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Characters that take no space: allowed inside a name (a zero-width joiner belongs to some
/// scripts and emoji), but a name of nothing else is empty.
fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}'
        )
}

/// A line of human text from a request (a name, an address line): trimmed, 1 to `max`
/// characters, not only invisible characters, and no control characters (NUL, newlines, C1) or
/// bidi overrides. 422 naming the field otherwise.
pub fn text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let v = value.trim();
    if v.chars().all(is_invisible) {
        return Err(ApiError::invalid(format!("{field} must not be empty")));
    }
    if v.chars().count() > max {
        return Err(ApiError::invalid(format!(
            "{field} must be at most {max} characters"
        )));
    }
    if let Some(c) = v.chars().find(|c| c.is_control()) {
        return Err(ApiError::invalid(format!(
            "{field} must not contain control characters (found U+{:04X})",
            c as u32
        )));
    }
    if let Some(c) = v.chars().find(|c| is_bidi_control(*c)) {
        return Err(ApiError::invalid(format!(
            "{field} must not contain bidirectional control characters (found U+{:04X})",
            c as u32
        )));
    }
    Ok(v.to_owned())
}

#[cfg(test)]
mod text_tests {
    use super::text;

    #[test]
    fn names_are_visible_text_without_controls() {
        assert_eq!(
            text("name", "  Ada Lovelace ", 200).unwrap(),
            "Ada Lovelace"
        );
        assert_eq!(text("name", "Zoë 👩‍💻 Ōkubo", 200).unwrap(), "Zoë 👩‍💻 Ōkubo");
        assert_eq!(text("name", "محمد", 200).unwrap(), "محمد");
        for bad in [
            "",
            "   ",
            "\u{200B}\u{200B}",
            "\u{FEFF}",
            "Ada\0",
            "Ada\nLovelace",
            "a\u{85}b",
            "evil\u{202E}gpj.exe",
            "x\u{2066}y",
            "\u{200F}abc",
        ] {
            let e = text("name", bad, 200).unwrap_err();
            assert_eq!(e.status, 422, "{bad:?}");
            assert!(e.message.starts_with("name "), "{}", e.message);
        }
        assert!(
            text("name", &"é".repeat(200), 200).is_ok(),
            "characters, not bytes"
        );
        assert!(text("name", &"é".repeat(201), 200).is_err());
    }
}
