//! The shop's committed schemas (`schemas/` at the repository's root) are those of its Rust
//! types, and `shopflow schemas check` fails on an incompatible change and passes a compatible
//! one. The committed files stand for "what the code was"; editing a copy of them is the same,
//! seen from the check, as changing the code against the files.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn committed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

fn check(dir: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .args(["schemas", "check", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(committed()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    dir
}

fn edit(dir: &Path, file: &str, f: impl FnOnce(&mut Value)) {
    let path = dir.join(file);
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn the_committed_schemas_are_the_code_s() {
    let registry = shopflow::services::registry();
    registry.validate().expect("every upcaster chain is whole");
    let report = shopflow_envelope::catalog::check(&registry, &committed());
    assert!(
        report.passed() && !report.stale(),
        "schemas/ is not what the event types say: run `cargo run -- schemas write` and commit \
         schemas/ (an incompatible change needs a new version, docs/EVOLVING_EVENTS.md)\n{report}"
    );
    // Every registered type and version has its file.
    for (t, v, _) in registry.types() {
        for version in 1..=v {
            let f = committed().join(shopflow_envelope::catalog::file_name(&t, version));
            assert!(f.exists(), "{} is missing", f.display());
        }
    }
    let (ok, text) = check(&committed());
    assert!(ok, "{text}");
    assert!(text.contains("check passed"), "{text}");
}

#[test]
fn an_incompatible_change_fails_the_check() {
    // As if `OrderCreated` v2 had gained `cardLast4` as a required field since it was committed.
    let dir = copy();
    edit(dir.path(), "OrderCreated.v2.json", |v| {
        v["properties"].as_object_mut().unwrap().remove("cardLast4");
        v["required"]
            .as_array_mut()
            .unwrap()
            .retain(|f| f != "cardLast4");
    });
    // And as if `ShipmentFailed`'s reason had been a number.
    edit(dir.path(), "ShipmentFailed.v1.json", |v| {
        v["properties"]["reason"] = serde_json::json!({"type": "integer"});
    });
    let (ok, text) = check(dir.path());
    assert!(!ok, "{text}");
    assert!(text.contains("INCOMPATIBLE OrderCreated v2"), "{text}");
    assert!(
        text.contains("$.cardLast4: is a new required field"),
        "{text}"
    );
    assert!(text.contains("give OrderCreated version 3"), "{text}");
    assert!(
        text.contains("$.reason: type changed from integer to string"),
        "{text}"
    );
    // A required field the code made optional: a reader still on the old code needs it.
    let dir2 = copy();
    edit(dir2.path(), "UserRegistered.v1.json", |v| {
        v["required"].as_array_mut().unwrap().push("phone".into());
    });
    let (ok, text) = check(dir2.path());
    assert!(!ok, "{text}");
    assert!(
        text.contains("$.phone: was required and is now optional"),
        "{text}"
    );
    // Writing cannot paper over it.
    let out = Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .args(["schemas", "write", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to write"));
}

#[test]
fn a_compatible_change_passes_the_check() {
    // As if the code had given `UserRegistered` its optional `phone` since the commit, and
    // dropped an optional field of `OrderShipped`.
    let dir = copy();
    edit(dir.path(), "UserRegistered.v1.json", |v| {
        v["properties"].as_object_mut().unwrap().remove("phone");
    });
    edit(dir.path(), "OrderShipped.v1.json", |v| {
        v["properties"]["signedBy"] = serde_json::json!({"type": ["string", "null"]});
    });
    let (ok, text) = check(dir.path());
    assert!(ok, "{text}");
    assert!(text.contains("compatible   UserRegistered v1"), "{text}");
    assert!(text.contains("compatible   OrderShipped v1"), "{text}");
}

#[test]
fn a_schema_nobody_committed_fails_the_check() {
    let dir = copy();
    std::fs::remove_file(dir.path().join("OrderCreated.v1.json")).unwrap();
    let (ok, text) = check(dir.path());
    assert!(!ok, "{text}");
    assert!(text.contains("UNCOMMITTED  OrderCreated v1"), "{text}");
}
