#![doc = include_str!("../README.md")]

pub mod openapi;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::http::Extensions;
use shopflow_envelope::Registry;
use shopflow_runtime::{BoxHandler, BreakerConfig, CircuitBreaker, Shutdown};
use shopflow_store::{Db, Migration};

pub use shopflow_runtime::BoxFuture;

/// Why a service could not start or be audited.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] shopflow_store::Error),
    /// A setting the service cannot work with (a malformed SMTP URL, …).
    #[error("{what}: {reason}")]
    Config { what: &'static str, reason: String },
    /// Data the service reads back is not what it writes.
    #[error("corrupt {what}: {reason}")]
    Corrupt { what: &'static str, reason: String },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The two saga styles of the seed: every service reacts to events (choreography), or an
/// orchestrator sends commands and advances on the replies (orchestration).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SagaStyle {
    #[default]
    Choreography,
    Orchestration,
}

impl std::str::FromStr for SagaStyle {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "choreography" => Ok(SagaStyle::Choreography),
            "orchestration" => Ok(SagaStyle::Orchestration),
            other => Err(format!(
                "unknown saga style `{other}` (choreography, orchestration)"
            )),
        }
    }
}

impl fmt::Display for SagaStyle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SagaStyle::Choreography => "choreography",
            SagaStyle::Orchestration => "orchestration",
        })
    }
}

/// What the deployment tells every service: shared settings, and typed settings of single
/// services (`settings.get::<GatewayLatency>()`), which a service reads or defaults.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The deployment's data directory (spools and other files live under it).
    pub data_dir: PathBuf,
    pub saga: SagaStyle,
    /// Thresholds of the circuit breakers around external systems.
    pub breaker: BreakerConfig,
    extensions: Extensions,
}

impl Settings {
    pub fn new(data_dir: impl Into<PathBuf>, saga: SagaStyle, breaker: BreakerConfig) -> Self {
        Self {
            data_dir: data_dir.into(),
            saga,
            breaker,
            extensions: Extensions::new(),
        }
    }

    /// Adds a typed setting (one value per type).
    pub fn with<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.extensions.insert(value);
        self
    }

    /// A typed setting, if the deployment gave one.
    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.extensions.get::<T>().cloned()
    }
}

/// What a service gets when it starts.
#[derive(Debug)]
pub struct Context {
    /// Its own database, migrated.
    pub db: Db,
    pub settings: Arc<Settings>,
    /// Background tasks end when it fires.
    pub shutdown: Shutdown,
    /// The deployment's bus, to write to directly: for a component that brings facts in from
    /// outside and has no transaction of its own to put them in (the change-data-capture
    /// connector confirms a source position only once its changes are acknowledged here). The
    /// shop's services never use it: what they decide goes through their outbox.
    pub bus: Arc<dyn shopflow_bus::Publisher>,
}

/// A hook the metrics endpoint runs before it renders (to set gauges that are cheapest to read
/// when asked).
pub type MetricsHook = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// A started service: what the deployment runs and serves for it.
pub struct Started {
    /// Its event and command handlers for the deployment's saga style, each run as a consumer
    /// group member.
    pub handlers: Vec<BoxHandler>,
    /// Its HTTP routes.
    pub router: Router,
    /// The circuit breakers of the external systems it calls (shown to operators).
    pub breakers: Vec<Arc<CircuitBreaker>>,
    /// Background tasks (projectors, timers); they end on shutdown.
    pub tasks: Vec<BoxFuture<'static, ()>>,
    pub metrics: Vec<MetricsHook>,
    /// What it offers the rest of the process, by type (the payment service's card vault, for
    /// the edge).
    pub exports: Extensions,
}

impl Started {
    pub fn new(router: Router) -> Self {
        Self {
            handlers: Vec::new(),
            router,
            breakers: Vec::new(),
            tasks: Vec::new(),
            metrics: Vec::new(),
            exports: Extensions::new(),
        }
    }
}

impl fmt::Debug for Started {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Started")
            .field("handlers", &self.handlers)
            .field("breakers", &self.breakers)
            .field("tasks", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

/// A service of the shop, as the deployment knows it: everything `up`, `service`, `migrate`,
/// `verify` and the API document need, in one value each service crate exports (`SERVICE`).
///
/// `F` is what the deployment's verify collects (the shop's `audit::Facts`): each service reads
/// its own database into it and reports what it finds wrong there; rules across services run
/// over the whole.
pub struct Service<F: 'static> {
    /// Its name: `shopflow service <name>`, its database, its logs.
    pub name: &'static str,
    /// One line for `--help` and the docs.
    pub about: &'static str,
    /// Its schema, by component, applied in order after the building blocks' tables.
    pub migrations: &'static [(&'static str, &'static [Migration])],
    /// Every consumer group it runs in either saga style (kept for `migrate` and lag).
    pub groups: &'static [&'static str],
    /// Event types of its own beyond the shop's contracts (and their upcasters).
    pub register: fn(&mut Registry),
    /// Topics of its own beyond the shop's contracts.
    pub topics: fn() -> Vec<String>,
    /// Opens the service on its (migrated) database.
    pub start: fn(Context) -> BoxFuture<'static, Result<Started>>,
    /// Reads its database into the facts verify checks (and reports local violations there).
    pub audit: for<'a> fn(&'a Db, &'a mut F) -> BoxFuture<'a, Result<()>>,
    /// Its part of the OpenAPI document: `{"paths": {…}, "schemas": {…}}`.
    pub openapi: fn() -> serde_json::Value,
}

impl<F> fmt::Debug for Service<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

impl<F: 'static> Service<F> {
    /// A service with nothing but a name: no migrations, no consumers, no events or topics of its
    /// own, no routes, nothing to audit. Descriptors fill in what they have and take the rest
    /// from here (`..Service::named(NAME)`).
    pub const fn named(name: &'static str) -> Self {
        Self {
            name,
            about: "",
            migrations: &[],
            groups: &[],
            register: no_events,
            topics: no_topics,
            start: start_nothing,
            audit: audit_nothing::<F>,
            openapi: no_openapi,
        }
    }
}

fn start_nothing(_: Context) -> BoxFuture<'static, Result<Started>> {
    Box::pin(async { Ok(Started::new(Router::new())) })
}

fn audit_nothing<'a, F>(_: &'a Db, _: &'a mut F) -> BoxFuture<'a, Result<()>> {
    Box::pin(async { Ok(()) })
}

fn no_openapi() -> serde_json::Value {
    openapi::part(serde_json::json!({}), serde_json::json!({}))
}

impl<F> Service<F> {
    /// Applies the building blocks' and the service's migrations to `db`.
    pub async fn migrate(&self, db: &Db) -> shopflow_store::Result<()> {
        db.migrate_building_blocks().await?;
        for (component, migrations) in self.migrations {
            db.migrate(component, migrations).await?;
        }
        Ok(())
    }
}

/// No events of its own.
fn no_events(_: &mut Registry) {}

/// No topics of its own.
fn no_topics() -> Vec<String> {
    Vec::new()
}
