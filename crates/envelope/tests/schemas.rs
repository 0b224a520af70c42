//! The schema check against a committed fixture catalog (`tests/fixtures/schemas/`, written
//! from [`v1::Parcel`] below): the same type passes, compatible changes pass, incompatible ones
//! fail and cannot be written, and a new version passes only with its upcaster and its file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shopflow_envelope::catalog::{self, Finding};
use shopflow_envelope::{Event, Kind, Registry};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schemas")
}

/// A copy of the fixture catalog to write into.
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

macro_rules! parcel {
    ($version:literal) => {
        impl Event for Parcel {
            const TYPE: &'static str = "Parcel";
            const VERSION: u32 = $version;
            const KIND: Kind = Kind::Integration;
            const DOMAIN: &'static str = "test";
        }
    };
}

/// The type the fixture was written from.
mod v1 {
    use super::*;
    #[derive(Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub(crate) struct Parcel {
        pub(crate) parcel_id: String,
        pub(crate) weight_grams: u32,
        pub(crate) size: Size,
        pub(crate) lines: Vec<Line>,
        pub(crate) note: Option<String>,
    }
    #[derive(Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(rename_all = "lowercase")]
    pub(crate) enum Size {
        Small,
        Large,
    }
    #[derive(Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub(crate) struct Line {
        pub(crate) sku: String,
        pub(crate) quantity: u32,
    }
    parcel!(1);
}

/// Compatible: a new optional field, a wider number, a new enum value, an optional field gone.
mod compatible {
    use super::*;
    #[derive(Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub(crate) struct Parcel {
        pub(crate) parcel_id: String,
        pub(crate) weight_grams: u64,
        pub(crate) size: Size,
        pub(crate) lines: Vec<Line>,
        #[serde(default)]
        pub(crate) fragile: Option<bool>,
    }
    #[derive(Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(rename_all = "lowercase")]
    pub(crate) enum Size {
        Small,
        Medium,
        Large,
    }
    #[derive(Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub(crate) struct Line {
        pub(crate) sku: String,
        pub(crate) quantity: u32,
        #[serde(default)]
        pub(crate) gift_wrap: Option<bool>,
    }
    parcel!(1);
}

/// Incompatible at v1: a required field added, a line's quantity now text, an enum value gone.
mod incompatible {
    use super::*;
    #[derive(Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub(crate) struct Parcel {
        pub(crate) parcel_id: String,
        pub(crate) weight_grams: u32,
        pub(crate) size: Size,
        pub(crate) lines: Vec<Line>,
        pub(crate) note: Option<String>,
        pub(crate) carrier: String,
    }
    #[derive(Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(rename_all = "lowercase")]
    pub(crate) enum Size {
        Small,
    }
    #[derive(Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub(crate) struct Line {
        pub(crate) sku: String,
        pub(crate) quantity: String,
    }
    parcel!(1);
}

/// The same incompatible change done right: version 2.
mod v2 {
    use super::*;
    #[derive(Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub(crate) struct Parcel {
        pub(crate) parcel_id: String,
        pub(crate) weight_grams: u32,
        pub(crate) size: String,
        pub(crate) lines: Vec<super::v1::Line>,
        pub(crate) note: Option<String>,
        pub(crate) carrier: String,
    }
    parcel!(2);
}

fn registry<E: Event>() -> Registry {
    let mut r = Registry::new();
    r.register::<E>();
    r
}

#[test]
fn the_type_the_fixture_was_written_from_passes() {
    let report = catalog::check(&registry::<v1::Parcel>(), &fixtures());
    assert!(report.passed(), "{report}");
    assert!(!report.stale(), "{report}");
    assert_eq!(
        report.findings,
        vec![Finding::Current {
            event_type: "Parcel".into(),
            version: 1
        }]
    );
}

#[test]
fn a_compatible_change_passes_and_can_be_recorded() {
    let r = registry::<compatible::Parcel>();
    let report = catalog::check(&r, &fixtures());
    assert!(report.passed(), "{report}");
    assert!(report.stale());
    let dir = scratch();
    let written = catalog::write(&r, dir.path()).unwrap();
    assert_eq!(written, vec![dir.path().join("Parcel.v1.json")]);
    let after = catalog::check(&r, dir.path());
    assert!(after.passed() && !after.stale(), "{after}");
}

#[test]
fn an_incompatible_change_fails_and_cannot_be_written() {
    let r = registry::<incompatible::Parcel>();
    let report = catalog::check(&r, &fixtures());
    assert!(!report.passed());
    let Finding::Incompatible { problems, .. } = &report.findings[0] else {
        panic!("{report}");
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert!(paths.contains(&"$.carrier"), "{report}");
    assert!(paths.contains(&"$.lines[].quantity"), "{report}");
    assert!(paths.contains(&"$.size"), "{report}");
    let text = report.to_string();
    assert!(text.contains("give Parcel version 2"), "{text}");
    let dir = scratch();
    let before = std::fs::read(dir.path().join("Parcel.v1.json")).unwrap();
    assert!(matches!(
        catalog::write(&r, dir.path()),
        Err(catalog::WriteError::Failing(_))
    ));
    assert_eq!(
        std::fs::read(dir.path().join("Parcel.v1.json")).unwrap(),
        before,
        "the committed schema is untouched"
    );
}

#[test]
fn a_new_version_needs_its_upcaster_and_its_file() {
    let mut r = registry::<v2::Parcel>();
    let report = catalog::check(&r, &fixtures());
    assert!(!report.passed());
    assert!(
        report
            .failures()
            .any(|f| matches!(f, Finding::BrokenChain { .. })),
        "{report}"
    );
    assert!(r.validate().is_err(), "the registry itself refuses the gap");

    r.upcaster("Parcel", 1, |env| {
        let mut d = env.data();
        d["carrier"] = "unknown".into();
        Ok(d)
    });
    r.validate().unwrap();
    let report = catalog::check(&r, &fixtures());
    assert_eq!(
        report.failures().cloned().collect::<Vec<_>>(),
        vec![Finding::Uncommitted {
            event_type: "Parcel".into(),
            version: 2
        }]
    );
    let dir = scratch();
    catalog::write(&r, dir.path()).unwrap();
    let after = catalog::check(&r, dir.path());
    assert!(after.passed(), "{after}");
    assert!(after.findings.contains(&Finding::History {
        event_type: "Parcel".into(),
        version: 1
    }));
}

#[test]
fn files_the_registry_cannot_read_fail() {
    let report = catalog::check(&Registry::new(), &fixtures());
    assert!(
        matches!(&report.findings[..], [Finding::Orphan { .. }]),
        "{report}"
    );
    let dir = scratch();
    std::fs::write(dir.path().join("Parcel.v1.json"), "{not json").unwrap();
    let report = catalog::check(&registry::<v1::Parcel>(), dir.path());
    assert!(
        matches!(&report.findings[..], [Finding::Unreadable { .. }]),
        "{report}"
    );
    std::fs::write(dir.path().join("Parcel.v7.json"), "{}").unwrap();
    let report = catalog::check(&registry::<v1::Parcel>(), dir.path());
    assert!(
        report
            .failures()
            .any(|f| matches!(f, Finding::Orphan { reason, .. } if reason.contains("newer"))),
        "{report}"
    );
}

/// Regenerates the fixture from [`v1::Parcel`] (`SHOPFLOW_WRITE_FIXTURES=1`); otherwise checks
/// that it was generated from it.
#[test]
fn the_fixture_is_v1() {
    let dir = fixtures();
    if std::env::var_os("SHOPFLOW_WRITE_FIXTURES").is_some() {
        let _ = std::fs::remove_file(dir.join("Parcel.v1.json"));
        catalog::write(&registry::<v1::Parcel>(), &dir).unwrap();
    }
    assert!(dir.join("Parcel.v1.json").exists());
}
