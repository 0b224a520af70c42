//! The OpenAPI document served at `/openapi.json`.

use serde_json::{Value, json};

fn error_responses() -> Value {
    json!({
        "400": {"$ref": "#/components/responses/Error"},
        "404": {"$ref": "#/components/responses/Error"},
        "413": {"$ref": "#/components/responses/Error"},
        "415": {"$ref": "#/components/responses/Error"},
        "422": {"$ref": "#/components/responses/Error"},
        "503": {"$ref": "#/components/responses/Error"}
    })
}

fn op(summary: &str, ok: &str, schema: &str) -> Value {
    let mut responses = error_responses();
    responses[ok] = json!({"description": summary, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    json!({"summary": summary, "responses": responses})
}

fn with_body(mut v: Value, schema: &str) -> Value {
    v["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    v
}

fn with_params(mut v: Value, params: &[(&str, &str, bool)]) -> Value {
    v["parameters"] = params
        .iter()
        .map(|(name, place, required)| json!({"name": name, "in": place, "required": required, "schema": {"type": "string"}}))
        .collect();
    v
}

/// Every endpoint of the embedded shop.
pub fn document() -> Value {
    let id = [("id", "path", true)];
    json!({
        "openapi": "3.0.3",
        "info": {"title": "shopflow", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Event-driven shop. Money is integer minor units. Errors are {code, message}."},
        "paths": {
            "/health": {"get": op("Liveness", "200", "Health")},
            "/users": {"post": with_body(op("Register a user (publishes UserRegistered)", "201", "User"), "RegisterUser")},
            "/users/{id}": {"get": with_params(op("A user", "200", "User"), &id)},
            "/products": {"get": op("All products", "200", "Products")},
            "/products/{sku}": {
                "get": with_params(op("A product and its stock", "200", "Product"), &[("sku", "path", true)]),
                "put": with_params(with_body(op("Create (201) or update (200) a product and set its stock", "200", "Product"), "PutProduct"), &[("sku", "path", true)])
            },
            "/orders": {
                "post": with_params(with_body(op("Place an order (202); same Idempotency-Key, same order", "202", "Placed"), "PlaceOrder"), &[("Idempotency-Key", "header", false), ("X-Correlation-Id", "header", false)]),
                "get": with_params(op("Orders from the read model, newest first", "200", "OrderPage"), &[("status", "query", false), ("customerId", "query", false), ("limit", "query", false), ("cursor", "query", false)])
            },
            "/orders/{id}": {"get": with_params(op("An order; with at= (RFC 3339) or version= it is folded from its events as it was then", "200", "Order"), &[("id", "path", true), ("at", "query", false), ("version", "query", false)])},
            "/orders/{id}/events": {"get": with_params(op("The order's events: its audit trail", "200", "Events"), &id)},
            "/orders/{id}/payment": {"get": with_params(op("The order's payment", "200", "Payment"), &id)},
            "/orders/{id}/shipment": {"get": with_params(op("The order's shipment", "200", "Shipment"), &id)},
            "/orders/{id}/notifications": {"get": with_params(op("Notifications sent for the order", "200", "Notifications"), &id)},
            "/admin/projections/orders/rebuild": {"post": op("Rebuild the order read model from the event store while serving", "200", "Rebuilt")},
            "/admin/payment-gateway": {"put": with_body(op("Take the simulated payment gateway down ({\"outage\": true}) or bring it back", "200", "GatewayMode"), "GatewayMode")},
            "/admin/dlq": {"get": with_params(op("Dead letters (open ones unless status= says otherwise), oldest first, and counts by status", "200", "DeadLetters"), &[("topic", "query", false), ("eventType", "query", false), ("consumer", "query", false), ("error", "query", false), ("status", "query", false), ("limit", "query", false)])},
            "/admin/dlq/{id}": {"get": with_params(op("One dead letter with its record, headers and payload", "200", "DeadLetterDetail"), &id)},
            "/admin/dlq/{id}/redrive": {"post": with_params(op("Send an open dead letter back to its original topic", "200", "Redriven"), &id)},
            "/admin/dlq/redrive": {"post": with_body(op("Send every open dead letter matching the filter back to its topic", "200", "Redriven"), "DlqFilter")},
            "/admin/dlq/{id}/discard": {"post": with_body(with_params(op("Close an open dead letter without redriving it", "200", "DeadLetter"), &id), "Discard")},
            "/admin/lag": {"get": op("Consumer lag per group and partition, and outbox backlogs", "200", "Lag")},
            "/admin/breakers": {"get": op("Circuit breakers and their states", "200", "Breakers")},
            "/sagas": {"get": with_params(op("Order-fulfilment sagas (orchestration), most recently changed first, with counts by state", "200", "Sagas"), &[("state", "query", false), ("limit", "query", false)])},
            "/sagas/{id}": {"get": with_params(op("One saga with its steps: command, start, end, outcome", "200", "Saga"), &id)},
            "/sagas/{id}/cancel": {"post": with_body(with_params(op("Give up on a running saga: its current and completed steps are compensated", "200", "Saga"), &id), "Discard")},
            "/metrics": {"get": {"summary": "Prometheus metrics (text format 0.0.4)", "responses": {"200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}}
        },
        "components": {
            "responses": {"Error": {"description": "An error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
            "schemas": {
                "Error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}},
                "Health": {"type": "object", "properties": {"status": {"type": "string"}}},
                "RegisterUser": {"type": "object", "required": ["email", "name"], "properties": {"email": {"type": "string"}, "name": {"type": "string"}, "phone": {"type": "string", "description": "E.164"}}},
                "User": {"type": "object", "properties": {"userId": {"type": "string"}, "email": {"type": "string"}, "name": {"type": "string"}, "phone": {"type": "string"}}},
                "PutProduct": {"type": "object", "required": ["name", "priceMinor", "currency", "stock"], "properties": {"name": {"type": "string"}, "priceMinor": {"type": "integer"}, "currency": {"type": "string", "example": "EUR"}, "stock": {"type": "integer"}}},
                "Product": {"type": "object", "properties": {"sku": {"type": "string"}, "name": {"type": "string"}, "priceMinor": {"type": "integer"}, "currency": {"type": "string"}, "available": {"type": "integer"}, "reserved": {"type": "integer"}, "shipped": {"type": "integer"}}},
                "Products": {"type": "array", "items": {"$ref": "#/components/schemas/Product"}},
                "Address": {"type": "object", "required": ["name", "line1", "city", "postalCode", "country"], "properties": {"name": {"type": "string"}, "line1": {"type": "string"}, "city": {"type": "string"}, "postalCode": {"type": "string"}, "country": {"type": "string", "example": "DE"}}},
                "PlaceOrder": {"type": "object", "required": ["customerId", "items", "payment", "shippingAddress"], "properties": {
                    "customerId": {"type": "string"},
                    "items": {"type": "array", "items": {"type": "object", "required": ["sku", "quantity"], "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}}}},
                    "payment": {"type": "object", "required": ["cardNumber"], "properties": {"cardNumber": {"type": "string", "example": "4242424242424242"}}},
                    "shippingAddress": {"$ref": "#/components/schemas/Address"}}},
                "Placed": {"type": "object", "properties": {"orderId": {"type": "string"}, "status": {"type": "string"}}},
                "Order": {"type": "object", "properties": {"orderId": {"type": "string"}, "status": {"type": "string", "enum": ["PENDING", "PAID", "RESERVED", "SHIPPED", "CANCELLED"]}, "customerId": {"type": "string"}, "items": {"type": "array", "items": {"type": "object"}}, "totalMinor": {"type": "integer"}, "currency": {"type": "string"}, "cancelReason": {"type": "string"}, "version": {"type": "integer"}, "source": {"type": "string"}, "projection": {"type": "object"}}},
                "OrderPage": {"type": "object", "properties": {"orders": {"type": "array", "items": {"$ref": "#/components/schemas/Order"}}, "nextCursor": {"type": "string"}, "projection": {"type": "object"}}},
                "Events": {"type": "array", "items": {"type": "object"}},
                "Payment": {"type": "object"},
                "Shipment": {"type": "object"},
                "Notifications": {"type": "array", "items": {"type": "object"}},
                "GatewayMode": {"type": "object", "required": ["outage"], "properties": {"outage": {"type": "boolean"}}},
                "DeadLetter": {"type": "object", "properties": {"id": {"type": "string", "example": "orders.order-created.dlq:1:0"}, "dlqTopic": {"type": "string"}, "originalTopic": {"type": "string"}, "originalPartition": {"type": "integer"}, "originalOffset": {"type": "integer"}, "consumer": {"type": "string"}, "eventType": {"type": "string"}, "eventId": {"type": "string"}, "correlationId": {"type": "string"}, "error": {"type": "string"}, "attempts": {"type": "integer"}, "firstFailedAt": {"type": "string"}, "lastFailedAt": {"type": "string"}, "status": {"type": "string", "enum": ["open", "redriven", "discarded"]}, "statusReason": {"type": "string"}}},
                "DeadLetters": {"type": "object", "properties": {"deadLetters": {"type": "array", "items": {"$ref": "#/components/schemas/DeadLetter"}}, "counts": {"type": "object", "additionalProperties": {"type": "integer"}}}},
                "DeadLetterDetail": {"allOf": [{"$ref": "#/components/schemas/DeadLetter"}, {"type": "object", "properties": {"key": {"type": "string"}, "payload": {}, "payloadIsJson": {"type": "boolean"}, "headers": {"type": "object", "additionalProperties": {"type": "string"}}}}]},
                "DlqFilter": {"type": "object", "properties": {"topic": {"type": "string"}, "eventType": {"type": "string"}, "consumer": {"type": "string"}, "error": {"type": "string"}, "status": {"type": "string"}, "limit": {"type": "integer"}}},
                "Redriven": {"type": "object", "properties": {"redriven": {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "string"}, "topic": {"type": "string"}}}}}},
                "Discard": {"type": "object", "required": ["reason"], "properties": {"reason": {"type": "string"}}},
                "Lag": {"type": "object", "properties": {"groups": {"type": "object", "additionalProperties": {"type": "integer"}}, "outboxBacklog": {"type": "object", "additionalProperties": {"type": "integer"}}, "partitions": {"type": "array", "items": {"type": "object", "properties": {"group": {"type": "string"}, "topic": {"type": "string"}, "partition": {"type": "integer"}, "committed": {"type": "integer", "nullable": true}, "endOffset": {"type": "integer"}, "lag": {"type": "integer"}}}}}},
                "Breakers": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "state": {"type": "string", "enum": ["closed", "open", "half-open"]}, "failureThreshold": {"type": "integer"}, "openForMs": {"type": "integer"}}}},
                "Saga": {"type": "object", "properties": {"sagaType": {"type": "string"}, "sagaId": {"type": "string"}, "state": {"type": "string", "enum": ["running", "compensating", "completed", "compensated"]}, "currentStep": {"type": "string", "nullable": true}, "correlationId": {"type": "string"}, "failure": {"type": "object", "nullable": true, "properties": {"step": {"type": "string"}, "kind": {"type": "string", "enum": ["reply", "timeout", "cancelled"]}, "eventType": {"type": "string"}, "reason": {"type": "string"}}}, "deadline": {"type": "string", "nullable": true}, "createdAt": {"type": "string"}, "updatedAt": {"type": "string"}, "steps": {"type": "array", "items": {"type": "object", "properties": {"seq": {"type": "integer"}, "step": {"type": "string"}, "kind": {"type": "string", "enum": ["action", "compensation", "notify"]}, "command": {"type": "string"}, "startedAt": {"type": "string"}, "endedAt": {"type": "string", "nullable": true}, "durationMs": {"type": "integer", "nullable": true}, "outcome": {"type": "string", "nullable": true}, "detail": {"type": "string", "nullable": true}, "sends": {"type": "integer"}}}}}},
                "Sagas": {"type": "object", "properties": {"style": {"type": "string", "enum": ["choreography", "orchestration"]}, "sagas": {"type": "array", "items": {"$ref": "#/components/schemas/Saga"}}, "counts": {"type": "object", "additionalProperties": {"type": "integer"}}}},
                "Rebuilt": {"type": "object", "properties": {"projection": {"type": "string"}, "replayedEvents": {"type": "integer"}}}
            }
        }
    })
}
