//! The one list of services (`shopflow::services::SERVICES`) agrees with everything around it:
//! the crates under `services/`, the consumers a shop runs in either saga style, the topics it
//! creates, the routes the API document promises, and each service's own README. A service added in
//! one place and not another fails here.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{Client, blocking};
use shopflow::services::{self, SERVICES};
use shopflow::shop::{SagaStyle, Shop, ShopConfig};

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

#[test]
fn every_service_crate_is_in_the_list_once_and_only_there() {
    let mut crates = BTreeSet::new();
    for entry in std::fs::read_dir(workspace().join("services")).unwrap() {
        let dir = entry.unwrap().path();
        let lib = dir.join("src").join("lib.rs");
        let text = std::fs::read_to_string(&lib).unwrap_or_default();
        // A service crate exports its descriptor; `contracts` is the shared vocabulary.
        if text.contains("SERVICE") {
            crates.insert(dir.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    let listed: Vec<&str> = SERVICES.iter().map(|s| s.name).collect();
    let unique: BTreeSet<&str> = listed.iter().copied().collect();
    assert_eq!(unique.len(), listed.len(), "a name twice in {listed:?}");
    assert_eq!(
        crates,
        unique
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>(),
        "services/ and app/src/services.rs disagree"
    );
    let mut groups = BTreeSet::new();
    for g in services::groups() {
        assert!(
            groups.insert(g),
            "consumer group {g} belongs to two services"
        );
    }
    assert!(services::databases().contains(&services::OPS));
}

#[test]
fn every_service_documents_itself() {
    for s in SERVICES {
        let dir = workspace().join("services").join(s.name);
        let readme = std::fs::read_to_string(dir.join("README.md"))
            .unwrap_or_else(|_| panic!("services/{}/README.md is missing", s.name));
        assert!(!readme.trim().is_empty());
        let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
        assert!(
            lib.contains("include_str!(\"../README.md\")"),
            "services/{}: the README is not the crate's front page",
            s.name
        );
        assert!(!s.about.is_empty(), "{}: no `about`", s.name);
    }
}

/// In both saga styles: every consumer is one of its service's declared groups and reads only
/// topics the shop creates; every path of the API document is routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_shop_is_what_the_list_says() {
    let declared: BTreeSet<&str> = services::groups().into_iter().collect();
    let topics: BTreeSet<String> = services::topics().into_iter().collect();
    for style in [SagaStyle::Choreography, SagaStyle::Orchestration] {
        let dir = tempfile::tempdir().unwrap();
        let shop = Shop::start(ShopConfig {
            saga: style,
            ..ShopConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap())
        })
        .await
        .unwrap();
        assert!(!shop.consumers.is_empty());
        for (group, consumed) in &shop.consumers {
            assert!(
                declared.contains(group),
                "{style}: consumer {group} is not declared in its service's groups"
            );
            for t in consumed {
                assert!(
                    topics.contains(t),
                    "{style}: {group} reads {t}, which the shop does not create"
                );
            }
        }
        let created: BTreeSet<String> = shopflow_bus::Bus::topics(&shop.log)
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert!(topics.is_subset(&created));

        let c = Client::new(format!("http://{}", shop.addr)).with_token(shop.admin_token.as_str());
        blocking(move || {
            let doc = shopflow::openapi::document();
            for (path, methods) in doc["paths"].as_object().unwrap() {
                let concrete = path
                    .replace("{id}", "nope")
                    .replace("{sku}", "NOPE")
                    .replace("{token}", "tok_nope");
                for method in methods.as_object().unwrap().keys() {
                    let (status, body) = match method.as_str() {
                        "get" => c.get(&concrete),
                        "post" => c.send("POST", &concrete, "{}", &[]),
                        "put" => c.send("PUT", &concrete, "{}", &[]),
                        other => panic!("{path}: method {other} in the document"),
                    };
                    let unrouted = status == 405
                        || (status == 404
                            && body["message"]
                                .as_str()
                                .is_some_and(|m| m.starts_with("no such endpoint")));
                    assert!(
                        !unrouted,
                        "{style}: {method} {path} is documented but not routed ({status} {body})"
                    );
                }
            }
        })
        .await;
        shop.stop().await.unwrap();
    }
}
