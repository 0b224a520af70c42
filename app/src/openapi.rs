//! The OpenAPI document served at `/openapi.json`: the operations API's paths, and every
//! service's part (`Service::openapi`).

use std::sync::LazyLock;

use serde_json::{Value, json};
use shopflow_service::openapi::merge;

use crate::services::SERVICES;

/// The operations side's part: health, dead letters, lag, breakers, the event tail, metrics.
fn operations() -> Value {
    shopflow_service::openapi::generated(<crate::ops::Api as utoipa::OpenApi>::openapi())
}

/// Every endpoint of the shop: built once (it depends only on the code), then served as it is.
pub fn document() -> &'static Value {
    static DOCUMENT: LazyLock<Value> = LazyLock::new(build);
    &DOCUMENT
}

fn build() -> Value {
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {"title": "shopflow", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Event-driven shop. Money is integer minor units. Errors are {code, message}."},
        "paths": {},
        "components": {
            "schemas": {},
            "securitySchemes": {
                shopflow_service::openapi::ADMIN_SECURITY: {
                    "type": "http", "scheme": "bearer",
                    "description": "The operator's admin token (docs/SECURITY.md): --admin-token, SHOPFLOW_ADMIN_TOKEN, or <data-dir>/admin.token"
                }
            }
        }
    });
    merge(&mut doc, &operations());
    for s in SERVICES {
        merge(&mut doc, &(s.openapi)());
    }
    add_links(&mut doc);
    doc
}

/// What a client can do next with what an operation answered (OpenAPI links: they let clients,
/// and schemathesis's stateful runs, follow an order from its placement to its payment).
/// `(path, method, status, link name, target operationId, [(parameter, runtime expression)])`.
type LinkRow = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

const LINKS: &[LinkRow] = &[
    (
        "/orders",
        "post",
        "202",
        "order",
        "getOrder",
        &[("id", "$response.body#/orderId")],
    ),
    (
        "/orders",
        "post",
        "202",
        "events",
        "listOrderEvents",
        &[("id", "$response.body#/orderId")],
    ),
    (
        "/orders",
        "post",
        "202",
        "payment",
        "getPayment",
        &[("id", "$response.body#/orderId")],
    ),
    (
        "/orders",
        "post",
        "202",
        "shipment",
        "getShipment",
        &[("id", "$response.body#/orderId")],
    ),
    (
        "/orders",
        "post",
        "202",
        "notifications",
        "listNotifications",
        &[("id", "$response.body#/orderId")],
    ),
    (
        "/orders",
        "post",
        "202",
        "saga",
        "getSaga",
        &[("id", "$response.body#/orderId")],
    ),
    (
        "/users",
        "post",
        "201",
        "user",
        "getUser",
        &[("id", "$response.body#/userId")],
    ),
    (
        "/products/{sku}",
        "put",
        "200",
        "product",
        "getProduct",
        &[("sku", "$response.body#/sku")],
    ),
    (
        "/products/{sku}",
        "put",
        "201",
        "product",
        "getProduct",
        &[("sku", "$response.body#/sku")],
    ),
    (
        "/payments/tokens",
        "post",
        "201",
        "token",
        "getCardToken",
        &[("token", "$response.body#/token")],
    ),
    (
        "/admin/dlq",
        "get",
        "200",
        "deadLetter",
        "getDeadLetter",
        &[("id", "$response.body#/deadLetters/0/id")],
    ),
];

/// Adds [`LINKS`] (the document holds every service's operations, so both ends are there;
/// `app/tests/openapi.rs` checks that each link lands on a documented response and operation).
fn add_links(doc: &mut Value) {
    for (path, method, status, name, target, params) in LINKS {
        let parameters: serde_json::Map<String, Value> = params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        doc["paths"][*path][*method]["responses"][*status]["links"][*name] =
            json!({"operationId": target, "parameters": parameters});
    }
}
