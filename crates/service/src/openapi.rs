//! Building blocks of the OpenAPI document each service contributes its part to: a part is
//! generated from the service's handlers and types with utoipa ([`generated`]), the parts are
//! merged into one document ([`merge`]).

use serde_json::{Value, json};

/// A service's part: its paths and its schemas.
pub fn part(paths: Value, schemas: Value) -> Value {
    json!({"paths": paths, "schemas": schemas})
}

/// Adds `part`'s paths and schemas to `doc` (an OpenAPI document with `paths` and
/// `components.schemas`). Two parts defining one path merge their methods; a schema defined
/// twice must be defined the same way (the later one wins).
pub fn merge(doc: &mut Value, part: &Value) {
    if let Some(paths) = part["paths"].as_object() {
        for (path, methods) in paths {
            let entry = &mut doc["paths"][path];
            if entry.is_null() {
                *entry = json!({});
            }
            if let (Some(into), Some(from)) = (entry.as_object_mut(), methods.as_object()) {
                for (m, op) in from {
                    into.insert(m.clone(), op.clone());
                }
            }
        }
    }
    if let Some(schemas) = part["schemas"].as_object() {
        for (name, schema) in schemas {
            doc["components"]["schemas"][name] = schema.clone();
        }
    }
}

/// The security scheme of the operator's routes (`Authorization: Bearer <admin token>`), as
/// operations name it in `security(("adminToken" = []))`.
pub const ADMIN_SECURITY: &str = "adminToken";

/// A service's part from a document generated with utoipa (`#[derive(OpenApi)]`): its paths and
/// component schemas, in the shape [`merge`] takes.
pub fn generated(doc: utoipa::openapi::OpenApi) -> Value {
    let v = serde_json::to_value(doc).unwrap_or_default();
    part(
        v.get("paths").cloned().unwrap_or_else(|| json!({})),
        v.pointer("/components/schemas")
            .cloned()
            .unwrap_or_else(|| json!({})),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_merge_by_path_and_method() {
        let mut doc = json!({"paths": {}, "components": {"schemas": {}}});
        merge(
            &mut doc,
            &part(
                json!({"/orders/{id}": {"get": {"summary": "An order"}}}),
                json!({"Order": {"type": "object"}}),
            ),
        );
        merge(
            &mut doc,
            &part(
                json!({"/orders/{id}": {"delete": {"summary": "Forget it"}}}),
                json!({}),
            ),
        );
        assert_eq!(
            doc["paths"]["/orders/{id}"]
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            vec!["delete", "get"]
        );
        assert_eq!(doc["components"]["schemas"]["Order"]["type"], "object");
    }
}
