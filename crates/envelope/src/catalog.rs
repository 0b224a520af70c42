//! The committed schema catalog: a directory (`schemas/` in the repository) holding
//! `<Type>.v<N>.json` for every version of every event type a registry knows.
//!
//! [`check`] compares the registry's Rust types with the files: a version whose type changed
//! incompatibly fails (it needs a new version and an upcaster), and so does a version that was
//! never committed, a committed version the registry no longer reads, and a broken upcaster chain.
//! [`write`] records the current schemas, and refuses while anything incompatible is pending, so
//! that writing the files can never be how an incompatible change gets through.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::schema::{Incompatibility, compare};
use crate::{Kind, Registry};

/// What the check found for one type and version (or one file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// The committed schema is the Rust type's.
    Current { event_type: String, version: u32 },
    /// The Rust type changed compatibly; `write` records the new schema.
    Compatible { event_type: String, version: u32 },
    /// The Rust type changed in a way events of this version cannot follow.
    Incompatible {
        event_type: String,
        version: u32,
        problems: Vec<Incompatibility>,
    },
    /// No file for a version a Rust type describes; `write` creates it.
    Uncommitted { event_type: String, version: u32 },
    /// An old version kept only as its committed file (no Rust type describes it any more).
    History { event_type: String, version: u32 },
    /// An old version with neither a legacy Rust type nor a committed file: nobody knows its shape.
    Unrecorded { event_type: String, version: u32 },
    /// A registered type without a Rust type, so without a schema.
    NoSchema { event_type: String },
    /// A committed file the registry does not read (a removed type, a version from the future).
    Orphan { file: PathBuf, reason: String },
    /// A committed file that is not a schema this catalog wrote.
    Unreadable { file: PathBuf, reason: String },
    /// Some version cannot be upcast to the current one.
    BrokenChain { reason: String },
}

impl Finding {
    /// Whether this finding fails the check.
    pub fn fails(&self) -> bool {
        !matches!(
            self,
            Finding::Current { .. } | Finding::Compatible { .. } | Finding::History { .. }
        )
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Current {
                event_type,
                version,
            } => write!(f, "ok           {event_type} v{version}"),
            Finding::Compatible {
                event_type,
                version,
            } => write!(
                f,
                "compatible   {event_type} v{version} changed compatibly; `shopflow schemas write` records it"
            ),
            Finding::Incompatible {
                event_type,
                version,
                problems,
            } => {
                write!(
                    f,
                    "INCOMPATIBLE {event_type} v{version} changed in a way its events cannot follow:"
                )?;
                for p in problems {
                    write!(f, "\n               {p}")?;
                }
                write!(
                    f,
                    "\n             make the change compatible, or give {event_type} version {} \
                     and an upcaster from v{version} (docs/EVOLVING_EVENTS.md)",
                    version + 1
                )
            }
            Finding::Uncommitted {
                event_type,
                version,
            } => write!(
                f,
                "UNCOMMITTED  {event_type} v{version} has no committed schema; run `shopflow schemas write` and commit it"
            ),
            Finding::History {
                event_type,
                version,
            } => write!(
                f,
                "history      {event_type} v{version} (committed file, read through upcasters)"
            ),
            Finding::Unrecorded {
                event_type,
                version,
            } => write!(
                f,
                "UNRECORDED   {event_type} v{version} has neither a committed schema nor a legacy type to describe it"
            ),
            Finding::NoSchema { event_type } => write!(
                f,
                "NO SCHEMA    {event_type} is registered without a Rust type"
            ),
            Finding::Orphan { file, reason } => {
                write!(f, "ORPHAN       {}: {reason}", file.display())
            }
            Finding::Unreadable { file, reason } => {
                write!(f, "UNREADABLE   {}: {reason}", file.display())
            }
            Finding::BrokenChain { reason } => write!(f, "BROKEN CHAIN {reason}"),
        }
    }
}

/// Everything the check found, in type order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    /// No finding fails.
    pub fn passed(&self) -> bool {
        !self.findings.iter().any(Finding::fails)
    }
    /// The failing findings.
    pub fn failures(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.fails())
    }
    /// Whether some committed file is behind its (compatibly changed) Rust type.
    pub fn stale(&self) -> bool {
        self.findings
            .iter()
            .any(|f| matches!(f, Finding::Compatible { .. } | Finding::Uncommitted { .. }))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            writeln!(f, "{finding}")?;
        }
        let failed = self.failures().count();
        write!(
            f,
            "{} schemas, {}",
            self.findings.len(),
            if failed == 0 {
                "check passed".to_owned()
            } else {
                format!("{failed} failing")
            }
        )
    }
}

/// The file of a type's version inside a catalog.
pub fn file_name(event_type: &str, version: u32) -> String {
    format!("{event_type}.v{version}.json")
}

/// What a catalog file holds: the schema, with the type, version and kind it belongs to.
fn file_value(schema: &Value, event_type: &str, version: u32, kind: Kind) -> Value {
    let mut v = schema.clone();
    if let Some(m) = v.as_object_mut() {
        m.insert("title".into(), format!("{event_type} v{version}").into());
        m.insert("x-event-type".into(), event_type.into());
        m.insert("x-event-version".into(), version.into());
        m.insert("x-event-kind".into(), kind.as_str().into());
    }
    v
}

fn render(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| "{}".to_owned());
    s.push('\n');
    s
}

/// The `(type, version)` a catalog file name stands for.
fn parse_name(name: &str) -> Option<(String, u32)> {
    let stem = name.strip_suffix(".json")?;
    let (t, v) = stem.rsplit_once(".v")?;
    let version = v.parse().ok().filter(|v| *v >= 1)?;
    (!t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| (t.to_owned(), version))
}

/// Compares a registry with the catalog in `dir` (a missing directory is an empty catalog).
pub fn check(registry: &Registry, dir: &Path) -> Report {
    let mut findings = Vec::new();
    if let Err(crate::Error::BrokenUpcasterChain { missing }) = registry.validate() {
        findings.extend(
            missing
                .into_iter()
                .map(|reason| Finding::BrokenChain { reason }),
        );
    }
    let types = registry.types();
    for (event_type, current, kind) in &types {
        if registry.schema(event_type, *current).is_none() {
            findings.push(Finding::NoSchema {
                event_type: event_type.clone(),
            });
            continue;
        }
        for version in 1..=*current {
            let path = dir.join(file_name(event_type, version));
            let committed = match std::fs::read_to_string(&path) {
                Ok(text) => match serde_json::from_str::<Value>(&text) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        findings.push(Finding::Unreadable {
                            file: path,
                            reason: e.to_string(),
                        });
                        continue;
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    findings.push(Finding::Unreadable {
                        file: path,
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            let (event_type, version) = (event_type.clone(), version);
            let finding = match (registry.schema(&event_type, version), committed) {
                (None, Some(_)) => Finding::History {
                    event_type,
                    version,
                },
                (None, None) => Finding::Unrecorded {
                    event_type,
                    version,
                },
                (Some(_), None) => Finding::Uncommitted {
                    event_type,
                    version,
                },
                (Some(schema), Some(old)) => {
                    let new = file_value(schema, &event_type, version, *kind);
                    let mut problems = compare(&old, &new);
                    let old_kind = old.get("x-event-kind").and_then(Value::as_str);
                    if let Some(k) = old_kind.filter(|k| *k != kind.as_str()) {
                        problems.push(Incompatibility {
                            path: "$".into(),
                            what: format!("kind changed from {k} to {}", kind.as_str()),
                        });
                    }
                    if !problems.is_empty() {
                        Finding::Incompatible {
                            event_type,
                            version,
                            problems,
                        }
                    } else if old == new {
                        Finding::Current {
                            event_type,
                            version,
                        }
                    } else {
                        Finding::Compatible {
                            event_type,
                            version,
                        }
                    }
                }
            };
            findings.push(finding);
        }
    }
    // Files the registry does not read.
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut orphans = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((event_type, version)) = parse_name(&name) else {
                continue;
            };
            let reason = match registry.current_version(&event_type) {
                None => Some(format!(
                    "{event_type} is not registered any more; events of it in the log could not be read"
                )),
                Some(current) if version > current => Some(format!(
                    "{event_type} v{version} is newer than the code's v{current}"
                )),
                Some(_) => None,
            };
            if let Some(reason) = reason {
                orphans.push(Finding::Orphan {
                    file: entry.path(),
                    reason,
                });
            }
        }
        orphans.sort_by_key(|f| f.to_string());
        findings.extend(orphans);
    }
    Report { findings }
}

/// Why [`write`] wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("refusing to write schemas while the check fails:\n{0}")]
    Failing(Report),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Records the schema of every version a Rust type describes, once the check has nothing but
/// new or compatibly changed schemas to record. Returns the files written.
pub fn write(registry: &Registry, dir: &Path) -> Result<Vec<PathBuf>, WriteError> {
    let report = check(registry, dir);
    if report
        .failures()
        .any(|f| !matches!(f, Finding::Uncommitted { .. }))
    {
        return Err(WriteError::Failing(report));
    }
    std::fs::create_dir_all(dir).map_err(|source| WriteError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut written = Vec::new();
    for finding in &report.findings {
        let (Finding::Compatible {
            event_type,
            version,
        }
        | Finding::Uncommitted {
            event_type,
            version,
        }) = finding
        else {
            continue;
        };
        let kind = registry
            .types()
            .into_iter()
            .find(|(n, ..)| n == event_type)
            .map_or(Kind::Domain, |(_, _, k)| k);
        let Some(schema) = registry.schema(event_type, *version) else {
            continue;
        };
        let path = dir.join(file_name(event_type, *version));
        std::fs::write(
            &path,
            render(&file_value(schema, event_type, *version, kind)),
        )
        .map_err(|source| WriteError::Io {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        assert_eq!(
            parse_name(&file_name("OrderCreated", 2)),
            Some(("OrderCreated".into(), 2))
        );
        assert_eq!(parse_name("README.md"), None);
        assert_eq!(parse_name("Order.Created.v1.json"), None);
        assert_eq!(parse_name("X.v0.json"), None);
    }
}
