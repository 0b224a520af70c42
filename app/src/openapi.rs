//! The OpenAPI document served at `/openapi.json`: the operations API's paths, and every
//! service's part (`Service::openapi`).

use serde_json::{Value, json};
use shopflow_service::openapi::{merge, op, part, with_body, with_params};

use crate::services::SERVICES;

/// The operations side's part: health, dead letters, lag, breakers, metrics.
fn operations() -> Value {
    let id = [("id", "path", true)];
    part(
        json!({
            "/health": {"get": op("Liveness", "200", "Health")},
            "/admin/dlq": {"get": with_params(op("Dead letters (open ones unless status= says otherwise), oldest first, and counts by status", "200", "DeadLetters"), &[("topic", "query", false), ("eventType", "query", false), ("consumer", "query", false), ("error", "query", false), ("status", "query", false), ("limit", "query", false)])},
            "/admin/dlq/{id}": {"get": with_params(op("One dead letter with its record, headers and payload", "200", "DeadLetterDetail"), &id)},
            "/admin/dlq/{id}/redrive": {"post": with_params(op("Send an open dead letter back to its original topic", "200", "Redriven"), &id)},
            "/admin/dlq/redrive": {"post": with_body(op("Send every open dead letter matching the filter back to its topic", "200", "Redriven"), "DlqFilter")},
            "/admin/dlq/{id}/discard": {"post": with_body(with_params(op("Close an open dead letter without redriving it", "200", "DeadLetter"), &id), "Discard")},
            "/admin/lag": {"get": op("Consumer lag per group and partition, and outbox backlogs", "200", "Lag")},
            "/admin/events": {"get": with_params(op("The latest records of the shop's topics (or of one), decoded, newest last; pass the cursor back for what came after", "200", "Tail"), &[("topic", "query", false), ("limit", "query", false), ("cursor", "query", false)])},
            "/admin/breakers": {"get": op("Circuit breakers and their states", "200", "Breakers")},
            "/metrics": {"get": {"summary": "Prometheus metrics (text format 0.0.4)", "responses": {"200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}}
        }),
        json!({
            "Error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}},
            "Health": {"type": "object", "properties": {"status": {"type": "string"}}},
            "DeadLetter": {"type": "object", "properties": {"id": {"type": "string", "example": "orders.order-created.dlq:1:0"}, "dlqTopic": {"type": "string"}, "originalTopic": {"type": "string"}, "originalPartition": {"type": "integer"}, "originalOffset": {"type": "integer"}, "consumer": {"type": "string"}, "eventType": {"type": "string"}, "eventId": {"type": "string"}, "correlationId": {"type": "string"}, "error": {"type": "string"}, "attempts": {"type": "integer"}, "firstFailedAt": {"type": "string"}, "lastFailedAt": {"type": "string"}, "status": {"type": "string", "enum": ["open", "redriven", "discarded"]}, "statusReason": {"type": "string"}}},
            "DeadLetters": {"type": "object", "properties": {"deadLetters": {"type": "array", "items": {"$ref": "#/components/schemas/DeadLetter"}}, "counts": {"type": "object", "additionalProperties": {"type": "integer"}}}},
            "DeadLetterDetail": {"allOf": [{"$ref": "#/components/schemas/DeadLetter"}, {"type": "object", "properties": {"key": {"type": "string"}, "payload": {}, "payloadIsJson": {"type": "boolean"}, "headers": {"type": "object", "additionalProperties": {"type": "string"}}}}]},
            "DlqFilter": {"type": "object", "properties": {"topic": {"type": "string"}, "eventType": {"type": "string"}, "consumer": {"type": "string"}, "error": {"type": "string"}, "status": {"type": "string"}, "limit": {"type": "integer"}}},
            "Redriven": {"type": "object", "properties": {"redriven": {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "string"}, "topic": {"type": "string"}}}}}},
            "Discard": {"type": "object", "required": ["reason"], "properties": {"reason": {"type": "string"}}},
            "Lag": {"type": "object", "properties": {"groups": {"type": "object", "additionalProperties": {"type": "integer"}}, "outboxBacklog": {"type": "object", "additionalProperties": {"type": "integer"}}, "partitions": {"type": "array", "items": {"type": "object", "properties": {"group": {"type": "string"}, "topic": {"type": "string"}, "partition": {"type": "integer"}, "committed": {"type": "integer", "nullable": true}, "endOffset": {"type": "integer"}, "lag": {"type": "integer"}}}}}},
            "Tail": {"type": "object", "properties": {"events": {"type": "array", "items": {"type": "object", "properties": {"topic": {"type": "string"}, "partition": {"type": "integer"}, "offset": {"type": "integer"}, "timestampMs": {"type": "integer"}, "key": {"type": "string", "nullable": true}, "eventType": {"type": "string", "nullable": true}, "eventId": {"type": "string", "nullable": true}, "aggregateId": {"type": "string", "nullable": true}, "sequence": {"type": "integer", "nullable": true}, "source": {"type": "string", "nullable": true}, "kind": {"type": "string", "nullable": true}, "correlationId": {"type": "string", "nullable": true}, "data": {}, "error": {"type": "string"}}}}, "cursor": {"type": "string"}}},
            "Breakers": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "state": {"type": "string", "enum": ["closed", "open", "half-open"]}, "failureThreshold": {"type": "integer"}, "openForMs": {"type": "integer"}}}}
        }),
    )
}

/// Every endpoint of the shop.
pub fn document() -> Value {
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {"title": "shopflow", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Event-driven shop. Money is integer minor units. Errors are {code, message}."},
        "paths": {},
        "components": {
            "responses": {"Error": {"description": "An error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
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
