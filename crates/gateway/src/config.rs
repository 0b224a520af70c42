//! The routes file (`routes.toml`):
//!
//! ```toml
//! [legacy]                       # the system being replaced
//! url = "http://127.0.0.1:9000"
//! timeout_ms = 10000             # per attempt, until the response head (default 10 s)
//! retries = 2                    # extra attempts, idempotent requests without a body only
//! breaker_failures = 5           # consecutive failures that open its circuit breaker
//! breaker_open_ms = 5000         # how long it stays open before a probe
//!
//! [new]                          # the shopflow services
//! url = "http://127.0.0.1:8080"
//!
//! [defaults]
//! target = "legacy"              # where a request no route matches goes
//! max_compare_bytes = 1048576    # shadow: bodies compared up to this size
//!
//! [[route]]
//! methods = ["GET"]              # or ["*"]
//! path = "/products/{sku}"       # {name}: one segment; a final /* : the rest
//! target = "shadow"              # legacy | new | shadow
//! serve = "legacy"               # shadow: the side whose answer the client gets
//! ignore = ["reserved"]          # shadow: JSON fields left out of the comparison
//! shadow_writes = false          # shadow: copy non-GET/HEAD requests too (they run twice!)
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One of the two sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Legacy,
    New,
}

impl Side {
    pub fn as_str(&self) -> &'static str {
        match self {
            Side::Legacy => "legacy",
            Side::New => "new",
        }
    }
    pub fn other(&self) -> Side {
        match self {
            Side::Legacy => Side::New,
            Side::New => Side::Legacy,
        }
    }
}

/// Where a route's requests go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Legacy,
    New,
    Shadow,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    pub url: String,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    #[serde(default = "default_breaker_open_ms")]
    pub breaker_open_ms: u64,
}

impl UpstreamSpec {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            timeout_ms: default_timeout_ms(),
            retries: default_retries(),
            breaker_failures: default_breaker_failures(),
            breaker_open_ms: default_breaker_open_ms(),
        }
    }
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(1))
    }
}

fn default_timeout_ms() -> u64 {
    10_000
}
fn default_retries() -> u32 {
    2
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_open_ms() -> u64 {
    5_000
}
fn default_max_compare() -> usize {
    1024 * 1024
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default = "default_target")]
    pub target: TargetKind,
    #[serde(default = "default_max_compare")]
    pub max_compare_bytes: usize,
}

fn default_target() -> TargetKind {
    TargetKind::Legacy
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            target: default_target(),
            max_compare_bytes: default_max_compare(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub methods: Vec<String>,
    pub path: String,
    pub target: TargetKind,
    #[serde(default)]
    pub serve: Option<Side>,
    #[serde(default)]
    pub ignore: Vec<String>,
    #[serde(default)]
    pub shadow_writes: bool,
}

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    pub legacy: UpstreamSpec,
    pub new: UpstreamSpec,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteSpec>,
}

impl RoutesFile {
    /// Parses and checks a routes file; every problem is named with where it is.
    pub fn parse(text: &str) -> Result<Self, crate::Error> {
        let f: RoutesFile =
            toml::from_str(text).map_err(|e| crate::Error::Config(e.to_string()))?;
        for (side, u) in [("legacy", &f.legacy), ("new", &f.new)] {
            u.url
                .parse::<http::Uri>()
                .ok()
                .filter(|uri| uri.scheme_str() == Some("http") && uri.authority().is_some())
                .ok_or_else(|| {
                    crate::Error::Config(format!(
                        "[{side}] url `{}` is not an http://host:port URL",
                        u.url
                    ))
                })?;
        }
        for (i, r) in f.routes.iter().enumerate() {
            crate::pattern::Pattern::parse(&r.path)
                .map_err(|e| crate::Error::Config(format!("route {} ({}): {e}", i + 1, r.path)))?;
            if r.methods.is_empty() {
                return Err(crate::Error::Config(format!(
                    "route {} ({}): no methods",
                    i + 1,
                    r.path
                )));
            }
            for m in &r.methods {
                if m != "*" && m.parse::<http::Method>().is_err() {
                    return Err(crate::Error::Config(format!(
                        "route {} ({}): `{m}` is not a method",
                        i + 1,
                        r.path
                    )));
                }
            }
        }
        Ok(f)
    }
}
