#![doc = include_str!("../README.md")]

pub mod aggregate;
mod handlers;
mod http;
mod place;
pub mod saga;
mod saga_api;
mod service;
mod view;

use std::sync::Arc;

use axum::Router;
use shopflow_envelope::Registry;
use shopflow_eventsourcing::{Projector, Repository, SnapshotPolicy};
use shopflow_http::ApiError;
use shopflow_runtime::Shutdown;
use shopflow_store::{Db, EventStore, Migration};

use aggregate::Order;
pub use handlers::{OrderCommands, OutcomeHandler};
pub use place::{PaymentMethod, PlaceLine, PlaceOrder, Placed, ShippingAddress};
pub use service::SERVICE;
pub use shopflow_eventsourcing::{Freshness, PROJECTOR_LOCK_CLASS};
pub use view::OrderView;
use view::{ORDER_VIEW, OrderProjection};

pub const NAME: &str = "order";
const SOURCE: &str = "order-service";

/// How often an order is snapshotted unless the deployment says otherwise: orders are short, so
/// only an unusually long one (many late facts, many refused cancellations) gets one.
pub const DEFAULT_SNAPSHOTS: SnapshotPolicy = SnapshotPolicy::Every(50);

/// How many orders' current state the service keeps in memory (~1.3 KiB each), so that moving an
/// order along its saga does not read and fold its stream again: the orders in flight.
pub const CACHED_ORDERS: usize = 2048;

/// The order aggregate's snapshot policy (a typed setting of the deployment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderSnapshots(pub SnapshotPolicy);

pub const MIGRATIONS: &[Migration] = &[
    Migration::portable(1, "order", include_str!("../migrations/001_order.sql")),
    Migration::portable(
        2,
        "customers",
        include_str!("../migrations/002_customers.sql"),
    ),
];

/// The registry of the order service: the shop's events plus the order stream's own.
pub fn registry() -> Registry {
    let mut r = shopflow_contracts::registry();
    (SERVICE.register)(&mut r);
    r
}

/// The order service: its event-sourced orders, their read model, and the batcher that commits
/// placements in groups.
#[derive(Clone, Debug)]
pub struct Orders {
    db: Db,
    orders: Repository<Order>,
    projector: Projector<OrderProjection>,
    registry: Arc<Registry>,
    /// Group commit of `POST /orders` (`None` inside the batcher itself).
    placer: Option<tokio::sync::mpsc::Sender<place::PlaceJob>>,
}

impl Orders {
    pub async fn open(db: Db) -> shopflow_store::Result<Self> {
        Self::open_with(db, DEFAULT_SNAPSHOTS).await
    }

    /// [`Orders::open`] with a snapshot policy of its own.
    pub async fn open_with(db: Db, snapshots: SnapshotPolicy) -> shopflow_store::Result<Self> {
        // Its own tables, and the order-fulfilment saga's instances (orchestration).
        SERVICE.migrate(&db).await?;
        let registry = Arc::new(registry());
        let store = EventStore::new(db.clone());
        let core = Self {
            orders: Repository::new(store.clone(), registry.clone(), snapshots)
                .cached("order", CACHED_ORDERS),
            projector: Projector::new(store, registry.clone(), OrderProjection, ORDER_VIEW),
            db,
            registry,
            placer: None,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4 * place::MAX_PLACE_BATCH);
        tokio::spawn(core.clone().run_placer(rx));
        Ok(Self {
            placer: Some(tx),
            ..core
        })
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    pub fn router(&self) -> Router {
        http::router(self.clone())
    }

    /// How many orders the read model has in each status.
    pub async fn counts_by_status(
        &self,
    ) -> Result<std::collections::BTreeMap<String, u64>, ApiError> {
        let rows = self
            .db
            .query(
                "SELECT status, COUNT(*) FROM order_view GROUP BY status",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.str(0)?.to_owned(), r.u64(1)?)))
            .collect::<Result<_, shopflow_store::Error>>()
            .map_err(ApiError::from)
    }

    /// Folds new events into the read model until shutdown, waking on commits.
    pub async fn run_projector(&self, shutdown: Shutdown) {
        self.projector.run(shutdown).await
    }

    /// Rebuilds the read model from the whole event store while the live projector keeps
    /// serving; returns how many events were replayed.
    pub async fn rebuild_projection(&self) -> Result<u64, ApiError> {
        self.projector.rebuild().await.map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            )
        })
    }

    /// The outcome handler (choreography).
    pub fn handler(&self) -> OutcomeHandler {
        OutcomeHandler(self.clone())
    }

    /// The command side (orchestration).
    pub fn command_handler(&self) -> OrderCommands {
        OrderCommands(self.clone())
    }
}

/// The order service's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        http::place,
        http::list,
        http::get_order,
        http::events,
        http::rebuild,
        http::stats,
        saga_api::list,
        saga_api::show,
        saga_api::cancel
    ),
    components(schemas(
        PlaceOrder,
        PlaceLine,
        place::OrderPayment,
        place::CardPayment,
        place::TokenPayment,
        ShippingAddress,
        Placed,
        OrderView,
        view::Page,
        http::EventItem,
        http::Rebuilt,
        http::OrderStats,
        aggregate::Status,
        shopflow_contracts::OrderLine,
        shopflow_contracts::Address,
        shopflow_eventsourcing::Freshness,
        saga_api::CancelBody,
        saga_api::SagaList,
        shopflow_saga::SagaView,
        shopflow_saga::SagaState,
        shopflow_saga::StepView,
        shopflow_saga::Failure,
        shopflow_saga::FailureKind,
        shopflow_http::ErrorBody
    ))
)]
pub(crate) struct Api;
