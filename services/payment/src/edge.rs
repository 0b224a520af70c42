//! Tokenisation at the edge: the card number a client sends with `POST /orders` is swapped for
//! the vault's token before the order service (or any event) sees it, the way a payment
//! provider's tokenisation works. Also the vault's own routes: `POST /payments/tokens` (a card →
//! its token and last four digits), `GET /payments/tokens/{token}`, `POST /admin/vault/rekey`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use shopflow_http::{ApiError, Json, reply};
use shopflow_store::Db;

use crate::vault::{Tokenized, Vault, VaultError};

/// Where the edge gets tokens from: the vault in this process, or the payment service's API.
#[derive(Clone, Debug)]
pub enum CardVault {
    Local {
        vault: Vault,
        db: Db,
    },
    /// Base URLs of processes that run the payment service (`http://payment-1:8083`), tried in
    /// turn.
    Remote {
        bases: Vec<String>,
    },
}

fn not_a_card() -> ApiError {
    ApiError::invalid("payment.cardNumber is not a valid card number")
}

fn vault_error(e: VaultError) -> ApiError {
    match e {
        VaultError::NotACard => not_a_card(),
        VaultError::Store(e) => ApiError::from(e),
        other => {
            tracing::error!(error = %other, "card vault failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the card vault cannot answer now",
            )
        }
    }
}

/// A blocking call to the payment service's API (the edge of a process without it).
fn remote(method: &str, url: String, body: Option<Value>) -> Result<(u16, Value), ApiError> {
    // One agent for the process: its connections to the payment processes are kept and reused
    // (a new agent per call opened a connection for every order placed).
    static AGENT: std::sync::LazyLock<ureq::Agent> = std::sync::LazyLock::new(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(10)))
            .build()
            .into()
    });
    let agent = &*AGENT;
    let unavailable = |e: String| {
        tracing::warn!(error = %e, "the payment service's vault is unreachable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the card vault is unreachable; try again",
        )
    };
    let mut resp = match body {
        Some(b) => agent.post(&url).send_json(b),
        None if method == "GET" => agent.get(&url).call(),
        None => agent.post(&url).send_empty(),
    }
    .map_err(|e| unavailable(e.to_string()))?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| unavailable(e.to_string()))?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// The answer of the first of `bases` that answers at all.
async fn first_answer(
    bases: &[String],
    method: &'static str,
    path: String,
    body: Option<Value>,
) -> Result<(u16, Value), ApiError> {
    let bases = bases.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut last = None;
        for base in &bases {
            let url = format!("{}{path}", base.trim_end_matches('/'));
            match remote(method, url, body.clone()) {
                Ok(answer) => return Ok(answer),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "no card vault is configured",
            )
        }))
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    })?
}

impl CardVault {
    async fn tokenize(&self, card: &str) -> Result<Tokenized, ApiError> {
        match self {
            CardVault::Local { vault, db } => vault.tokenize(db, card).await.map_err(vault_error),
            CardVault::Remote { bases } => {
                let body = json!({ "cardNumber": card });
                let (status, v) =
                    first_answer(bases, "POST", "/payments/tokens".into(), Some(body)).await?;
                match status {
                    201 => parse_tokenized(&v),
                    422 => Err(not_a_card()),
                    _ => Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        format!("the card vault answered {status}"),
                    )),
                }
            }
        }
    }

    /// The token's last four digits, if it is a token of this vault.
    async fn lookup(&self, token: &str) -> Result<Option<Tokenized>, ApiError> {
        if !is_token(token) {
            return Ok(None);
        }
        match self {
            CardVault::Local { vault, db } => vault.lookup(db, token).await.map_err(vault_error),
            CardVault::Remote { bases } => {
                let (status, v) =
                    first_answer(bases, "GET", format!("/payments/tokens/{token}"), None).await?;
                match status {
                    200 => parse_tokenized(&v).map(Some),
                    404 => Ok(None),
                    _ => Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        format!("the card vault answered {status}"),
                    )),
                }
            }
        }
    }
}

fn parse_tokenized(v: &Value) -> Result<Tokenized, ApiError> {
    match (v["token"].as_str(), v["last4"].as_str()) {
        (Some(t), Some(l)) if is_token(t) => Ok(Tokenized {
            token: t.to_owned(),
            last4: l.to_owned(),
        }),
        _ => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the card vault answered something else than a token",
        )),
    }
}

/// `tok_` and 32 lowercase hex digits: the shape of the vault's tokens.
pub fn is_token(t: &str) -> bool {
    shopflow_contracts::is_payment_token(t)
}

/// The middleware: on `POST /orders`, `payment.cardNumber` becomes `payment.token` and
/// `payment.last4`; a `payment.token` the client sends must be one of the vault's. Anything
/// that is not JSON goes on unchanged, for the order service to refuse.
pub async fn tokenize_cards(State(vault): State<CardVault>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST || req.uri().path() != "/orders" {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, shopflow_http::MAX_BODY_BYTES).await else {
        return ApiError::body_too_large().into_response();
    };
    match rewrite(&vault, &bytes).await {
        Ok(body) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            next.run(Request::from_parts(parts, Body::from(body))).await
        }
        Err(Unchanged::Refuse(answer)) => answer,
        Err(Unchanged::Pass) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
    }
}

/// Why a body is not rewritten.
enum Unchanged {
    /// Answer the client with this (not a card, not a token of this vault, the vault is down).
    Refuse(Response),
    /// No card number or token in it: it goes on as it is, for the order service to judge.
    Pass,
}

/// The body with its `payment` object swapped for the vault's token and last four digits.
async fn rewrite(vault: &CardVault, bytes: &[u8]) -> Result<Vec<u8>, Unchanged> {
    // The usual body: find `payment` without building the rest of it, and swap that object in
    // place (the order service parses the body anyway; this edge used to parse all of it into a
    // JSON value and write it back, 3 % of the shop's CPU).
    if let Ok(outer) = serde_json::from_slice::<PaymentOf<'_>>(bytes) {
        let raw = outer.payment.ok_or(Unchanged::Pass)?;
        let payment = serde_json::from_str::<serde_json::Map<String, Value>>(raw.get())
            .map_err(|_| Unchanged::Pass)?;
        let t = swap(vault, &payment).await?;
        // `raw` borrows from `bytes`: its place in them is where the new object goes.
        let at = raw.get().as_ptr() as usize - bytes.as_ptr() as usize;
        let replaced = json!({ "token": t.token, "last4": t.last4 }).to_string();
        let mut body = Vec::with_capacity(bytes.len() + replaced.len());
        body.extend_from_slice(&bytes[..at]);
        body.extend_from_slice(replaced.as_bytes());
        body.extend_from_slice(&bytes[at + raw.get().len()..]);
        return Ok(body);
    }
    // Anything else (not an object, a repeated `payment`): the whole value, so that no card
    // number goes on whatever shape it came in.
    let mut json: Value = serde_json::from_slice(bytes).map_err(|_| Unchanged::Pass)?;
    let Some(Value::Object(payment)) = json.pointer_mut("/payment") else {
        return Err(Unchanged::Pass);
    };
    let t = swap(vault, payment).await?;
    payment.clear();
    payment.insert("token".into(), Value::String(t.token));
    payment.insert("last4".into(), Value::String(t.last4));
    Ok(serde_json::to_vec(&json).unwrap_or_default())
}

/// The `payment` member of a body, as the text it came in (everything else is skipped).
#[derive(serde::Deserialize)]
struct PaymentOf<'a> {
    #[serde(borrow, default)]
    payment: Option<&'a serde_json::value::RawValue>,
}

/// The token for a `payment` object's card number (or the token it carries, if the vault's).
async fn swap(
    vault: &CardVault,
    payment: &serde_json::Map<String, Value>,
) -> Result<Tokenized, Unchanged> {
    let refuse = |e: ApiError| Unchanged::Refuse(e.into_response());
    if let Some(card) = payment.get("cardNumber") {
        let card = card.as_str().ok_or_else(|| refuse(not_a_card()))?;
        if payment.len() != 1 {
            return Err(refuse(ApiError::invalid(
                "payment has either a cardNumber or a token, and nothing else",
            )));
        }
        vault.tokenize(card).await.map_err(refuse)
    } else if let Some(token) = payment.get("token").and_then(Value::as_str) {
        vault.lookup(token).await.map_err(refuse)?.ok_or_else(|| {
            refuse(ApiError::invalid(
                "payment.token is not a token of this shop's card vault",
            ))
        })
    } else {
        Err(Unchanged::Pass)
    }
}

/// A card number to tokenise.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TokenizeBody {
    /// 12 to 19 digits (spaces and dashes between them are ignored) passing the Luhn check.
    #[schema(pattern = "^[ -]*([0-9][ -]*){12,19}$", example = "4242424242424242")]
    card_number: String,
}

/// What a rekey did.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Rekeyed {
    /// Cards re-encrypted under the current key.
    rekeyed: u64,
}

/// Tokenise a card: its vault token and last four digits (the same card, the same token).
#[utoipa::path(post, path = "/payments/tokens", tag = "payment", operation_id = "tokenizeCard",
    request_body = TokenizeBody,
    responses(
        shopflow_http::responses::JsonBody,
        shopflow_http::responses::Unavailable,
        (status = 201, description = "The token", body = Tokenized),
        (status = 422, description = "Not a card number (the Luhn check fails)", body = shopflow_http::ErrorBody),
    ))]
pub(crate) async fn tokenize(
    State(v): State<Arc<(Vault, Db)>>,
    Json(b): Json<TokenizeBody>,
) -> Result<Response, ApiError> {
    let t =
        v.0.tokenize(&v.1, &b.card_number)
            .await
            .map_err(vault_error)?;
    Ok(reply(StatusCode::CREATED, t))
}

/// A token of the card vault, with its card's last four digits.
#[utoipa::path(get, path = "/payments/tokens/{token}", tag = "payment", operation_id = "getCardToken",
    params(("token" = String, Path, description = "A vault token (`tok_` + 32 hex digits)")),
    responses(
        shopflow_http::responses::Unavailable,
        (status = 200, description = "The token", body = Tokenized),
        (status = 404, description = "Not a token of this vault", body = shopflow_http::ErrorBody),
    ))]
pub(crate) async fn token(
    State(v): State<Arc<(Vault, Db)>>,
    Path(token): Path<String>,
) -> Result<Json<Tokenized>, ApiError> {
    v.0.lookup(&v.1, &token)
        .await
        .map_err(vault_error)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("token", &token))
}

/// Re-encrypt every card held under an older vault key with the current one.
#[utoipa::path(post, path = "/admin/vault/rekey", tag = "payment", operation_id = "rekeyVault",
    security(("adminToken" = [])),
    responses(
        shopflow_http::responses::NeedsAdmin,
        shopflow_http::responses::Unavailable,
        (status = 200, description = "Done", body = Rekeyed),
    ))]
pub(crate) async fn rekey(State(v): State<Arc<(Vault, Db)>>) -> Result<Json<Rekeyed>, ApiError> {
    let n = v.0.rekey(&v.1).await.map_err(vault_error)?;
    Ok(Json(Rekeyed { rekeyed: n as u64 }))
}

/// The vault's routes.
pub(crate) fn router(vault: Vault, db: Db) -> Router {
    Router::new()
        .route("/payments/tokens", post(tokenize))
        .route("/payments/tokens/{token}", get(token))
        .route("/admin/vault/rekey", post(rekey))
        .with_state(Arc::new((vault, db)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    /// The edge in front of a handler that answers with the body it got.
    async fn edge() -> (Router, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::vault::migrated(dir.path()).await;
        let vault = CardVault::Local {
            vault: Vault::new(crate::VaultKeys::parse(&crate::VaultKeys::generate()).unwrap()),
            db,
        };
        let app = Router::new()
            .route("/orders", post(|body: String| async move { body }))
            .layer(axum::middleware::from_fn_with_state(vault, tokenize_cards));
        (app, dir)
    }

    async fn through(app: &Router, body: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/orders")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn the_card_becomes_a_token_in_place_and_the_rest_stays_as_sent() {
        let (app, _dir) = edge().await;
        let body = r#"{"customerId":"usr_1","items":[{"sku":"MUG","quantity":2}],"payment": {"cardNumber":"4242 4242 4242 4242"},"shippingAddress":{"name":"Zoë \"Z\" Ürün","line1":"1 St","city":"Köln","postalCode":"50667","country":"DE"}}"#;
        let (status, got) = through(&app, body).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!got.contains("4242 4242"), "{got}");
        let v: Value = serde_json::from_str(&got).unwrap();
        let sent: Value = serde_json::from_str(body).unwrap();
        assert!(is_token(v["payment"]["token"].as_str().unwrap()), "{got}");
        assert_eq!(v["payment"]["last4"], "4242");
        assert_eq!(v["payment"].as_object().unwrap().len(), 2);
        for field in ["customerId", "items", "shippingAddress"] {
            assert_eq!(v[field], sent[field], "{field}");
        }
        // What came before and after `payment` is byte for byte what was sent.
        let (before, after) = body
            .split_once(r#"{"cardNumber":"4242 4242 4242 4242"}"#)
            .unwrap();
        assert!(got.starts_with(before) && got.ends_with(after), "{got}");

        // A token of the vault goes through; one it does not know is refused.
        let token = v["payment"]["token"].as_str().unwrap();
        let (status, again) =
            through(&app, &format!(r#"{{"payment":{{"token":"{token}"}}}}"#)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(again.contains(r#""last4":"4242""#), "{again}");
        let (status, _) = through(
            &app,
            r#"{"payment":{"token":"tok_0123456789abcdef0123456789abcdef"}}"#,
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let (status, _) = through(&app, r#"{"payment":{"cardNumber":"4242424242424241"}}"#).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[tokio::test]
    async fn no_card_number_goes_on_in_a_body_of_another_shape() {
        let (app, _dir) = edge().await;
        // `payment` twice: the whole-value path keeps the last one, tokenised.
        let (status, got) = through(
            &app,
            r#"{"payment":{"cardNumber":"4000000000000002"},"payment":{"cardNumber":"4242424242424242"}}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            !got.contains("4000000000000002") && !got.contains("4242424242424242"),
            "{got}"
        );
        // Not an object, no payment, a payment that is not an object: passed on as they are.
        for body in [
            r#"[1,2]"#,
            r#"{"items":[]}"#,
            r#"{"payment":null}"#,
            "not json",
        ] {
            assert_eq!(through(&app, body).await, (StatusCode::OK, body.to_owned()));
        }
    }

    #[test]
    fn tokens_have_one_shape() {
        assert!(super::is_token("tok_0123456789abcdef0123456789abcdef"));
        for bad in [
            "tok_4242424242424242",
            "tok_0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcdef",
            "tok_0123456789abcdef0123456789abcde",
        ] {
            assert!(!super::is_token(bad), "{bad}");
        }
    }
}
