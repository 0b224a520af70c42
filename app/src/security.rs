//! Who may call what (docs/SECURITY.md says it for operators).
//!
//! The public API is what a storefront needs: place an order, follow it by its id, read the
//! catalog, register. An order id, a user id and a card token are unguessable (74 random bits
//! and more), so each works as a capability: whoever has it may read what it names. Everything
//! that changes the operator's state (prices and stock, the payment gateway switch, dead
//! letters, projections, sagas, the vault's keys) or reads across customers (every order, every
//! saga, the bus itself) needs the admin token.

use std::path::Path;

use axum::http::Method;
use shopflow_http::auth::{AdminToken, TokenError};

/// The file under the data directory that keeps a generated token.
pub const TOKEN_FILE: &str = "admin.token";

/// Whether `method path` needs the admin token.
pub fn needs_admin(method: &Method, path: &str) -> bool {
    let path = path.trim_end_matches('/');
    path.starts_with("/admin/")
        || path == "/admin"
        || path == "/sagas"
        || path.starts_with("/sagas/")
        // Listing orders reads every customer's; one order by its id is public.
        || (path == "/orders" && method == Method::GET)
        // The catalog is read by anyone and written by the operator.
        || (path.starts_with("/products") && method != Method::GET && method != Method::HEAD)
}

/// The deployment's token: the one given (`--admin-token`, `SHOPFLOW_ADMIN_TOKEN`), else the
/// one in `<data-dir>/admin.token`, created (0600) on first start. `Some(path)` when it was
/// created now (the caller prints it once).
pub fn admin_token(
    given: Option<&str>,
    data_dir: &Path,
) -> Result<(AdminToken, Option<std::path::PathBuf>), TokenError> {
    if let Some(t) = given.filter(|t| !t.trim().is_empty()) {
        return Ok((AdminToken::new(t)?, None));
    }
    let path = data_dir.join(TOKEN_FILE);
    let (token, created) = AdminToken::load_or_create(&path)?;
    Ok((token, created.then_some(path)))
}

/// The token a CLI command sends: `--admin-token` / `SHOPFLOW_ADMIN_TOKEN`, else the file in
/// the data directory if there is one (a shop started there), else none.
pub fn client_token(given: Option<&str>, data_dir: &Path) -> Option<String> {
    if let Some(t) = given.filter(|t| !t.trim().is_empty()) {
        return Some(t.trim().to_owned());
    }
    std::fs::read_to_string(data_dir.join(TOKEN_FILE))
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_guards_operator_state_and_cross_customer_reads() {
        let admin = [
            (Method::PUT, "/admin/payment-gateway"),
            (Method::GET, "/admin/dlq"),
            (Method::POST, "/admin/dlq/redrive"),
            (Method::POST, "/admin/projections/orders/rebuild"),
            (Method::POST, "/admin/vault/rekey"),
            (Method::GET, "/admin/events"),
            (Method::GET, "/sagas"),
            (Method::GET, "/sagas/ord_1"),
            (Method::POST, "/sagas/ord_1/cancel"),
            (Method::GET, "/orders"),
            (Method::GET, "/orders/"),
            (Method::PUT, "/products/MUG"),
            (Method::DELETE, "/products/MUG"),
        ];
        for (m, p) in admin {
            assert!(needs_admin(&m, p), "{m} {p} needs the token");
        }
        let public = [
            (Method::POST, "/orders"),
            (Method::GET, "/orders/ord_1"),
            (Method::GET, "/orders/ord_1/events"),
            (Method::GET, "/orders/ord_1/payment"),
            (Method::GET, "/orders/ord_1/shipment"),
            (Method::GET, "/orders/ord_1/notifications"),
            (Method::GET, "/products"),
            (Method::GET, "/products/MUG"),
            (Method::POST, "/users"),
            (Method::GET, "/users/usr_1"),
            (Method::POST, "/payments/tokens"),
            (Method::GET, "/health"),
            (Method::GET, "/openapi.json"),
            (Method::GET, "/metrics"),
        ];
        for (m, p) in public {
            assert!(!needs_admin(&m, p), "{m} {p} is public");
        }
    }
}
