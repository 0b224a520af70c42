//! The OpenAPI document and the router agree: every documented operation is routed (a request
//! to it reaches a handler, not the fallback, not 405), and every route the shipped code
//! registers is documented — so the document cannot drift from the code.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{Client, blocking};
use shopflow::shop::{Shop, ShopConfig};

/// Routes served but deliberately not operations of the API.
const UNDOCUMENTED: &[(&str, &str)] = &[("GET", "/openapi.json")];

/// Every `.route("PATH", get(..).post(..))` in the shipped sources under `dir`: (METHOD, PATH).
fn routes_in_source(dir: &Path, out: &mut BTreeSet<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        // The gateway's own routes are on its listener, in its own document (tested below).
        if path.ends_with("app/src/gateway.rs") {
            continue;
        }
        if path.is_dir() {
            if path
                .file_name()
                .is_some_and(|n| n == "tests" || n == "target")
            {
                continue;
            }
            routes_in_source(&path, out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        routes_in_text(&text, out);
    }
}

/// Every `.route("PATH", get(..).post(..))` in one source text.
fn routes_in_text(text: &str, out: &mut BTreeSet<(String, String)>) {
    {
        let mut rest = text;
        while let Some(i) = rest.find(".route(") {
            rest = &rest[i + ".route(".len()..];
            // The call's arguments: up to the matching parenthesis.
            let (mut depth, mut end) = (1, 0);
            for (k, c) in rest.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    end = k;
                    break;
                }
            }
            let call = &rest[..end];
            let Some(route) = call
                .trim_start()
                .strip_prefix('"')
                .and_then(|s| s.split_once('"'))
                .map(|(p, _)| p.to_owned())
            else {
                continue;
            };
            for method in ["get", "post", "put", "delete", "patch"] {
                for pattern in [
                    format!(" {method}("),
                    format!("({method}("),
                    format!(".{method}("),
                    format!("::{method}("),
                ] {
                    if call.contains(&pattern) {
                        out.insert((method.to_uppercase(), route.clone()));
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_and_the_router_agree() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::start(ShopConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let c = Client::new(format!("http://{}", shop.addr)).with_token(shop.admin_token.as_str());
    let base = format!("http://{}", shop.addr);
    let token = shop.admin_token.as_str().to_owned();
    let documented = blocking(move || {
        let (s, doc) = c.get("/openapi.json");
        assert_eq!(s, 200);
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let mut documented = BTreeSet::new();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        for (path, methods) in doc["paths"].as_object().unwrap() {
            for (method, op) in methods.as_object().unwrap() {
                let method = method.to_uppercase();
                assert!(
                    op["operationId"].is_string(),
                    "{method} {path}: operationId"
                );
                assert!(op["tags"].is_array(), "{method} {path}: tags");
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{method} {path}: responses"
                );
                documented.insert((method.clone(), path.clone()));
                // The token guard (app/src/security.rs) and the document say the same.
                let guarded = shopflow::security::needs_admin(
                    &method.parse().unwrap(),
                    &path.replace(['{', '}'], ""),
                );
                let declared = op["security"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|r| r.get("adminToken").is_some()));
                assert_eq!(
                    guarded, declared,
                    "{method} {path}: the token guard and the document disagree"
                );
                // Every link is on a documented response and names a documented operation.
                for (status, response) in op["responses"].as_object().unwrap() {
                    assert!(
                        response["description"].is_string(),
                        "{method} {path} {status}"
                    );
                    for (name, link) in response["links"].as_object().into_iter().flatten() {
                        let target = link["operationId"].as_str().unwrap();
                        assert!(
                            doc["paths"].as_object().unwrap().values().any(|ms| ms
                                .as_object()
                                .unwrap()
                                .values()
                                .any(|o| o["operationId"] == target)),
                            "{method} {path} {status}: link {name} to unknown {target}"
                        );
                    }
                }
                // Reach it: path parameters filled in, the admin token sent.
                let concrete = path
                    .split('/')
                    .map(|seg| if seg.starts_with('{') { "probe-1" } else { seg })
                    .collect::<Vec<_>>()
                    .join("/");
                let url = format!("{base}{concrete}");
                let auth = format!("Bearer {token}");
                let mut resp = match method.as_str() {
                    "GET" => agent.get(&url).header("authorization", &auth).call(),
                    "POST" => agent
                        .post(&url)
                        .header("authorization", &auth)
                        .header("content-type", "application/json")
                        .send("{}"),
                    "PUT" => agent
                        .put(&url)
                        .header("authorization", &auth)
                        .header("content-type", "application/json")
                        .send("{}"),
                    other => panic!("{other} {path}: a method the test does not know"),
                }
                .unwrap();
                let status = resp.status().as_u16();
                let body = resp.body_mut().read_to_string().unwrap_or_default();
                assert_ne!(status, 405, "{method} {path} is documented but not routed");
                assert!(
                    !body.contains("no such endpoint here"),
                    "{method} {path} is documented but reaches the fallback"
                );
                // Every status it answered is one the document lists.
                assert!(
                    !op["responses"][status.to_string()].is_null(),
                    "{method} {path} answered {status}, not in its documented responses: {body}"
                );
            }
        }
        documented
    })
    .await;
    shop.stop().await.unwrap();

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut routed = BTreeSet::new();
    for part in ["app/src", "services", "crates"] {
        routes_in_source(&root.join(part), &mut routed);
    }
    assert!(routed.len() >= 25, "the source scan found {routed:?}");
    for (m, p) in UNDOCUMENTED {
        routed.remove(&((*m).to_owned(), (*p).to_owned()));
    }
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routed but not in the document: {undocumented:?}"
    );
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        unrouted.is_empty(),
        "documented but not routed: {unrouted:?}"
    );
}

/// The gateway's own routes (app/src/gateway.rs) and its document (`/gateway/openapi.json`)
/// agree, and its token guard matches the document's security.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_document_and_its_router_agree() {
    let dir = tempfile::tempdir().unwrap();
    let file = shopflow_gateway::RoutesFile::parse(
        "[legacy]\nurl = \"http://127.0.0.1:1\"\n[new]\nurl = \"http://127.0.0.1:1\"\n",
    )
    .unwrap();
    let db = shopflow_store::Db::open_sqlite(dir.path().join("gateway.db")).unwrap();
    let token =
        shopflow_http::auth::AdminToken::new("sfa_test_0123456789abcdef0123456789abcdef").unwrap();
    let (trigger, shutdown) = shopflow_runtime::Shutdown::new();
    // Started through its service descriptor, as `up` and `shopflow gateway` start it.
    let service = &shopflow::gateway::SERVICE;
    service.migrate(&db).await.unwrap();
    let settings = shopflow_service::Settings::new(
        dir.path(),
        Default::default(),
        shopflow_runtime::BreakerConfig::default(),
    )
    .with(shopflow::gateway::GatewaySettings {
        routes: file,
        listen: "127.0.0.1:0".parse().unwrap(),
        token,
        limits: Default::default(),
    });
    let bus = shopflow_log::Log::open(dir.path().join("log"), Default::default()).unwrap();
    let started = (service.start)(shopflow_service::Context {
        db,
        settings: std::sync::Arc::new(settings),
        shutdown,
        bus: std::sync::Arc::new(bus),
    })
    .await
    .unwrap();
    let addr = started
        .exports
        .get::<shopflow::gateway::Running>()
        .unwrap()
        .addr;
    let tasks: Vec<_> = started.tasks.into_iter().map(tokio::spawn).collect();
    let c = Client::new(format!("http://{addr}"));
    let (status, doc) = blocking(move || c.get("/gateway/openapi.json")).await;
    assert_eq!(status, 200);
    let mut documented = BTreeSet::new();
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for (method, op) in methods.as_object().unwrap() {
            documented.insert((method.to_uppercase(), path.clone()));
            let declared = op["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("adminToken").is_some()));
            // Without the token, a guarded route answers 401 and an open one does not.
            let (c, p, m) = (
                Client::new(format!("http://{addr}")),
                path.replace("{sku}", "x"),
                method.to_uppercase(),
            );
            let (s, _) = blocking(move || {
                if m == "GET" {
                    c.get(&p)
                } else {
                    c.send(&m, &p, "{}", &[])
                }
            })
            .await;
            assert_eq!(
                s == 401,
                declared,
                "{method} {path}: answered {s} without the token"
            );
        }
    }
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/gateway.rs"))
            .unwrap();
    let mut routed = BTreeSet::new();
    routes_in_text(&text, &mut routed);
    routed.remove(&("GET".to_owned(), "/gateway/openapi.json".to_owned()));
    assert!(routed.len() >= 5, "{routed:?}");
    assert_eq!(routed, documented);
    trigger.trigger();
    for task in tasks {
        task.await.unwrap();
    }
}
