//! One of the shop's edge services (change data capture, the strangler-fig gateway) in a
//! process of its own, as the distributed deployment runs them: `shopflow cdc`, `shopflow
//! gateway`. The same descriptor as inside `up` is migrated and started, with the same
//! machinery around it: its database, the bus, its outbox's relay, `ServiceStarted` and
//! `ServiceStopped`, its background tasks until shutdown.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::http::Extensions;
use shopflow_anybus::AnyBus;
use shopflow_bus::{Bus, TopicSpec};
use shopflow_contracts::audit::Facts;
use shopflow_runtime::{Shutdown, ShutdownTrigger, system};
use shopflow_service::{Context, Service, Settings};
use shopflow_store::Db;
use shopflow_store::outbox::{Relay, RelayConfig};
use tokio::task::JoinHandle;

use crate::shop::{BusConfig, DbConfig};

/// A started edge service.
#[derive(Debug)]
pub struct Alone {
    pub name: &'static str,
    pub db: Db,
    pub bus: AnyBus,
    /// The routes it serves (merged into its process's listener, if it has one).
    pub router: Router,
    /// What it exports (its status, the running gateway).
    exports: Extensions,
    pub shutdown: Shutdown,
    trigger: ShutdownTrigger,
    tasks: Vec<JoinHandle<()>>,
}

/// Opens `service`'s database under `data_dir` (or its PostgreSQL schema) and the bus,
/// migrates and starts it with its one typed `setting`, announces it.
pub async fn start<T: Clone + Send + Sync + 'static>(
    service: &'static Service<Facts>,
    setting: T,
    data_dir: &Path,
    bus: &BusConfig,
    db: &DbConfig,
    partitions: u32,
) -> anyhow::Result<Alone> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let db = db.open(data_dir, service.name).await?;
    service
        .migrate(&db)
        .await
        .with_context(|| format!("migrating the {} database", service.name))?;
    let log = AnyBus::open(bus, &data_dir.join("log"), partitions)?;
    if let AnyBus::Kafka(k) = &log {
        k.ping(Duration::from_secs(15)).await?;
    }
    let spec = TopicSpec {
        replication_factor: bus.replication_factor(),
        ..TopicSpec::new(partitions)
    };
    for t in system::topics() {
        log.create_topic(&t, &spec)
            .await
            .with_context(|| format!("creating topic {t}"))?;
    }
    let (trigger, shutdown) = Shutdown::new();
    let started = (service.start)(Context {
        db: db.clone(),
        // An edge service reads only its own setting; the shop-wide ones keep their defaults.
        settings: Arc::new(
            Settings::new(data_dir, Default::default(), Default::default()).with(setting),
        ),
        shutdown: shutdown.clone(),
        bus: Arc::new(log.clone()),
    })
    .await
    .with_context(|| format!("starting the {} service", service.name))?;
    let mut tasks: Vec<JoinHandle<()>> = started.tasks.into_iter().map(tokio::spawn).collect();
    tasks.push(tokio::spawn(shopflow_runtime::retention::run(
        db.clone(),
        Default::default(),
        shutdown.clone(),
    )));
    let relay = Relay::new(db.clone(), log.clone(), RelayConfig::default());
    let s = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        let _ = relay.run(s.wait()).await;
    }));
    crate::shop::announce_started(&db, service.name, Vec::new()).await?;
    Ok(Alone {
        name: service.name,
        db,
        bus: log,
        router: started.router,
        exports: started.exports,
        shutdown,
        trigger,
        tasks,
    })
}

impl Alone {
    /// What the service exports of type `T` (its status, the running gateway).
    pub fn export<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.exports.get::<T>().cloned()
    }

    /// Announces `ServiceStopped`, lets the relay publish it, stops every task, closes the bus.
    pub async fn stop(self) -> anyhow::Result<()> {
        let me = [(self.name, self.db.clone())];
        crate::shop::announce_stopped(&me).await;
        crate::shop::drain_outboxes(&me).await;
        self.trigger.trigger();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        self.bus.close().await?;
        Ok(())
    }
}
