#![doc = include_str!("../README.md")]

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub mod auth;
pub mod responses;
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
    /// 413: a body over [`MAX_BODY_BYTES`] (or one that was cut off before its end).
    pub fn body_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than {MAX_BODY_BYTES} bytes (or was cut off)"),
        )
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

/// The body of every error answer, as the OpenAPI document describes it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable code: `invalid_request`, `not_found`, `conflict`, `unauthorized`, `overloaded`, …
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
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

/// The characters Rust's `char::is_whitespace` (and so `str::trim`) takes for white space, as a
/// regex class body. Written out: `\s` means other things in other regex dialects (ECMA-262
/// adds U+FEFF and leaves out U+0085; Python adds U+001C–U+001F).
#[macro_export]
macro_rules! ws_class {
    () => {
        "\\t-\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
    };
}

/// Control characters (`char::is_control`: C0, DEL, C1) and bidi controls, as a class body.
macro_rules! forbidden_class {
    () => {
        "\\x00-\\x1f\\x7f-\\x9f\\u061c\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069"
    };
}

/// The JSON Schema `pattern` that says what [`text`] accepts: no control character or bidi
/// control anywhere, and at least one character that is neither white space nor invisible.
pub const TEXT_PATTERN: &str = concat!(
    "^[^",
    forbidden_class!(),
    "]*[^",
    ws_class!(),
    forbidden_class!(),
    "\\u00ad\\u200b-\\u200d\\u2060\\ufeff",
    "][^",
    forbidden_class!(),
    "]*$"
);

/// A string schema with a pattern and length limits (for `#[schema(schema_with)]` helpers:
/// utoipa takes only literal patterns in its attributes).
pub fn pattern_schema(
    pattern: &str,
    min: Option<usize>,
    max: Option<usize>,
    description: &str,
) -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .min_length(min)
        .max_length(max)
        .pattern(Some(pattern))
        .description(Some(description))
        .build()
}

/// The schema of a [`text`] field of at most `max` characters (for `#[schema(schema_with)]`).
pub fn text_schema(max: usize) -> utoipa::openapi::Object {
    pattern_schema(
        TEXT_PATTERN,
        Some(1),
        Some(max),
        "Visible text: no control or bidi-control characters",
    )
}

/// [`text_schema`] of 200 characters: names, address lines.
pub fn text200() -> utoipa::openapi::Object {
    text_schema(200)
}

/// A line of human text from a request (a name, an address line): at most `max` characters as
/// sent, kept trimmed, not only invisible characters, and no control characters (NUL, newlines, C1) or
/// bidi overrides. 422 naming the field otherwise.
pub fn text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    // The length is of the text as sent (what the schema's maxLength says), the text kept is
    // trimmed.
    if value.chars().count() > max {
        return Err(ApiError::invalid(format!(
            "{field} must be at most {max} characters"
        )));
    }
    let v = value.trim();
    if v.chars().all(is_invisible) {
        return Err(ApiError::invalid(format!("{field} must not be empty")));
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
        assert!(
            text("name", &format!(" {}", "a".repeat(200)), 200).is_err(),
            "the length is of the text as sent"
        );
    }

    /// The schema's pattern accepts exactly what `text` accepts (within the length limit).
    #[test]
    fn the_pattern_is_the_rule() {
        let re = regex::Regex::new(super::TEXT_PATTERN).unwrap();
        let cases = [
            "Ada",
            " Ada ",
            "Zoë 👩\u{200D}💻",
            "محمد",
            "a\u{200B}b",
            "",
            " ",
            "\u{200B}",
            "\u{FEFF}\u{00AD}",
            "Ada\0",
            "a\tb",
            "a\nb",
            "a\u{7F}",
            "a\u{85}b",
            "a\u{9F}",
            "x\u{202E}y",
            "\u{2066}",
            "a\u{2069}",
            "\u{200E}a",
            "a\u{061C}",
            "\u{3000}",
            "\u{3000}x",
            "\u{2060}",
            "a\u{2060}b",
        ];
        for c in cases {
            assert_eq!(
                re.is_match(c),
                text("f", c, 200).is_ok(),
                "{c:?}: pattern and rule disagree"
            );
        }
    }
}

/// Integers in JSON bodies the way JSON Schema counts them: `2`, and also `2.0` (a number with
/// no fraction is an integer there, and clients such as JavaScript's may send it so). For
/// `#[serde(deserialize_with = "shopflow_http::int::…")]`.
pub mod int {
    use serde::de::{self, Deserializer, Visitor};

    struct Integral;

    impl Visitor<'_> for Integral {
        type Value = i128;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an integer")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i128, E> {
            Ok(i128::from(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i128, E> {
            Ok(i128::from(v))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<i128, E> {
            // Beyond ±2^63 a float has no exact integer of ours anyway.
            if v.fract() == 0.0 && v.abs() < 9.2e18 {
                Ok(v as i128)
            } else {
                Err(E::invalid_value(de::Unexpected::Float(v), &self))
            }
        }
    }

    fn integral<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<T, D::Error> {
        let v = d.deserialize_any(Integral)?;
        T::try_from(v).map_err(|_| {
            de::Error::invalid_value(
                de::Unexpected::Other("an integer out of range"),
                &"an integer in range",
            )
        })
    }

    pub fn i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        integral(d)
    }

    pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        integral(d)
    }

    /// An optional one (`null` or absent is `None`; use with `#[serde(default)]`).
    pub fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        struct Opt;
        impl<'de> Visitor<'de> for Opt {
            type Value = Option<u32>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an integer or null")
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                super::int::u32(d).map(Some)
            }
        }
        d.deserialize_option(Opt)
    }

    #[cfg(test)]
    mod tests {
        #[derive(serde::Deserialize, Debug)]
        struct T {
            #[serde(deserialize_with = "super::i64")]
            n: i64,
            #[serde(default, deserialize_with = "super::opt_u32")]
            m: Option<u32>,
        }

        #[test]
        fn integral_floats_are_integers() {
            let t: T = serde_json::from_str(r#"{"n": 2735017.0, "m": 3.0}"#).unwrap();
            assert_eq!((t.n, t.m), (2735017, Some(3)));
            let t: T = serde_json::from_str(r#"{"n": -5, "m": null}"#).unwrap();
            assert_eq!((t.n, t.m), (-5, None));
            let t: T = serde_json::from_str(r#"{"n": 1}"#).unwrap();
            assert_eq!(t.m, None);
            for bad in [
                r#"{"n": 1.5}"#,
                r#"{"n": "1"}"#,
                r#"{"n": 1e30}"#,
                r#"{"n": 1, "m": -1}"#,
                r#"{"n": 1, "m": 4294967296}"#,
            ] {
                assert!(serde_json::from_str::<T>(bad).is_err(), "{bad}");
            }
        }
    }
}
