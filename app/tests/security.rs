//! The admin token over HTTP: every route that changes operator state or reads across
//! customers answers 401 without it (and with a wrong one), in the JSON error shape; the public
//! routes need nothing; a generated token is kept private and printed once.

mod common;

use std::time::Duration;

use common::{Client, GOOD_CARD, blocking, free_port, order, stop_gracefully, wait_healthy};
use serde_json::Value;
use shopflow::shop::{Shop, ShopConfig};

/// One request with an optional `Authorization` header: status, JSON body, WWW-Authenticate.
fn call(base: &str, method: &str, path: &str, auth: Option<&str>) -> (u16, Value, Option<String>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let url = format!("{base}{path}");
    let resp = match method {
        "GET" => {
            let mut r = agent.get(&url);
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            r.call()
        }
        _ => {
            let mut r = match method {
                "POST" => agent.post(&url),
                "PUT" => agent.put(&url),
                other => panic!("method {other}"),
            };
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            r.header("content-type", "application/json").send("{}")
        }
    };
    let mut resp = resp.expect("request");
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        challenge,
    )
}

/// The routes that need the token (one of each kind of operator action).
const GUARDED: &[(&str, &str)] = &[
    ("PUT", "/admin/payment-gateway"),
    ("GET", "/admin/dlq"),
    ("POST", "/admin/dlq/redrive"),
    ("GET", "/admin/dlq/1"),
    ("POST", "/admin/dlq/1/redrive"),
    ("POST", "/admin/dlq/1/discard"),
    ("GET", "/admin/lag"),
    ("GET", "/admin/events"),
    ("GET", "/admin/breakers"),
    ("POST", "/admin/projections/orders/rebuild"),
    ("POST", "/admin/vault/rekey"),
    ("GET", "/sagas"),
    ("GET", "/sagas/ord_1"),
    ("POST", "/sagas/ord_1/cancel"),
    ("GET", "/orders"),
    ("GET", "/orders?customerId=usr_1"),
    ("PUT", "/products/MUG"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_routes_need_the_token_and_public_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::start(ShopConfig {
        admin_token: Some("operator-token-0123456789".into()),
        ..ShopConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap())
    })
    .await
    .unwrap();
    let base = format!("http://{}", shop.addr);
    blocking(move || {
        for (m, p) in GUARDED {
            for auth in [
                None,
                Some("Bearer wrong-token-0123456789"),
                Some("Bearer operator-token-012345678"), // one character short
                Some("Basic operator-token-0123456789"),
                Some("operator-token-0123456789"),
            ] {
                let (status, body, challenge) = call(&base, m, p, auth);
                assert_eq!(status, 401, "{m} {p} with {auth:?}: {body}");
                assert_eq!(body["code"], "unauthorized", "{m} {p}: {body}");
                assert!(body["message"].is_string(), "{m} {p}: {body}");
                assert!(
                    challenge
                        .as_deref()
                        .is_some_and(|c| c.starts_with("Bearer")),
                    "{m} {p}: {challenge:?}"
                );
            }
            let (status, body, _) = call(&base, m, p, Some("Bearer operator-token-0123456789"));
            assert_ne!(status, 401, "{m} {p} with the token: {body}");
        }

        // The storefront needs no token.
        let c = Client::new(base.clone());
        let admin = Client::new(base.clone()).with_token("operator-token-0123456789");
        admin.put_product("SEC", 900, 5);
        let user = c.register("sec@example.com", None);
        let id = c.place_ok(&order(&user, "SEC", 1, GOOD_CARD, "DE"));
        c.wait_final(&id);
        for p in [
            format!("/orders/{id}"),
            format!("/orders/{id}/events"),
            format!("/orders/{id}/payment"),
            format!("/orders/{id}/shipment"),
            format!("/orders/{id}/notifications"),
            "/products".to_owned(),
            "/products/SEC".to_owned(),
            format!("/users/{user}"),
            "/health".to_owned(),
            "/openapi.json".to_owned(),
            "/metrics".to_owned(),
        ] {
            let (status, body, _) = call(&base, "GET", &p, None);
            assert_eq!(status, 200, "GET {p} without a token: {body}");
        }
        // And the list of every order is the operator's.
        let (status, page) = admin.get("/orders");
        assert_eq!(status, 200, "{page}");
        assert!(!page["orders"].as_array().unwrap().is_empty());
    })
    .await;
    shop.stop().await.unwrap();
}

#[test]
fn a_weak_configured_token_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .args(["up", "--data-dir", dir.path().to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--admin-token", "short"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 16 characters"), "{err}");
}

/// Without a configured token, the first start generates one, keeps it in the data directory
/// (0600) and prints it once; the next start uses the same one and does not print it.
#[test]
fn a_generated_token_is_private_and_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let port = free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_shopflow"))
            .env_remove("SHOPFLOW_ADMIN_TOKEN")
            .args(["up", "--data-dir", dir.path().to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_healthy(port);
        (child, port)
    };
    let path = dir.path().join("admin.token");

    let (mut first, port) = start();
    let token = std::fs::read_to_string(&path).unwrap().trim().to_owned();
    assert!(token.len() >= 32, "{token}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(call(&base, "GET", "/admin/lag", None).0, 401);
    let bearer = format!("Bearer {token}");
    assert_eq!(call(&base, "GET", "/admin/lag", Some(&bearer)).0, 200);
    stop_gracefully(&mut first);
    let out = first.wait_with_output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains(&token),
        "printed on first start: {printed}"
    );

    let (mut second, port) = start();
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(call(&base, "GET", "/admin/lag", Some(&bearer)).0, 200);
    stop_gracefully(&mut second);
    let out = second.wait_with_output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(!printed.contains(&token), "not printed again: {printed}");
    assert!(printed.contains("admin.token"), "{printed}");
}
