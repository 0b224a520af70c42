//! The OpenAPI document served at `/openapi.json`: the operations API's paths, and every
//! service's part (`Service::openapi`).

use serde_json::{Value, json};
use shopflow_service::openapi::merge;

use crate::services::SERVICES;

/// The operations side's part: health, dead letters, lag, breakers, the event tail, metrics.
fn operations() -> Value {
    shopflow_service::openapi::generated(<crate::ops::Api as utoipa::OpenApi>::openapi())
}

/// Every endpoint of the shop.
pub fn document() -> Value {
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
    doc
}
