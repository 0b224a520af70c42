//! The error answers many operations share, as response sets for `#[utoipa::path]`:
//! `responses(JsonBody, Unavailable, (status = 201, …))`. A tuple listed after a set overrides the
//! set's entry for its status (a more precise description of that operation's 422, say).

use std::collections::BTreeMap;

use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};

/// One error answer: its description, with the `{code, message}` body.
fn error(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
        .into()
}

fn set(entries: &[(&str, &str)]) -> BTreeMap<String, RefOr<Response>> {
    entries
        .iter()
        .map(|(status, description)| ((*status).to_owned(), error(description)))
        .collect()
}

/// What an operation with a JSON request body can answer about the body itself: 400 (not
/// JSON), 413 (too large), 415 (not `application/json`), 422 (a field breaks a rule).
#[derive(Debug)]
pub struct JsonBody;

impl utoipa::IntoResponses for JsonBody {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        set(&[
            ("400", "Not JSON"),
            ("413", "Body too large"),
            ("415", "Not application/json"),
            ("422", "Invalid field"),
        ])
    }
}

/// 503 with `Retry-After`: a database or the bus cannot answer now.
#[derive(Debug)]
pub struct Unavailable;

impl utoipa::IntoResponses for Unavailable {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        set(&[("503", "Try again")])
    }
}

/// 401: an operator's route called without the admin token (see `auth`).
#[derive(Debug)]
pub struct NeedsAdmin;

impl utoipa::IntoResponses for NeedsAdmin {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        set(&[("401", "No admin token")])
    }
}
