#![doc = include_str!("../README.md")]

pub mod aggregate;
pub mod saga;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use shopflow_contracts::{
    Address, ApproveOrder, CancelOrder, CompleteOrder, OrderCreated, OrderId, OrderLine,
    OrderShipped, PaymentCompleted, PaymentFailed, PaymentRefunded, ProductUpdated, Sku,
    StockReserved, UserId,
};
use shopflow_envelope::{CorrelationId, Envelope, Event, Meta, Registry};
use shopflow_http::{ApiError, Json, Query, reply};
use shopflow_runtime::{Handler, HandlerError, Outgoing, Shutdown, emit};
use shopflow_store::{Db, EventStore, ExpectedVersion, Migration, StoredEvent, Tx, params};

use aggregate::{Command, DomainError, Order, OrderEvent, Status};

pub const NAME: &str = "order";
const SOURCE: &str = "order-service";
const PROJECTION: &str = "order_view";

/// Advisory-lock class of projection steps on PostgreSQL (key: `hashtext(<projection name>)`).
/// Several order-service instances share one schema: each projection step takes this lock for its
/// transaction, so one instance projects at a time and another takes over when it stops (the lock
/// goes with its transaction), instead of all of them doing the same work.
pub const PROJECTOR_LOCK_CLASS: i32 = 0x5346_5052; // "SFPR"

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "order",
    sqlite: include_str!("../migrations/001_order.sql"),
    postgres: include_str!("../migrations/001_order.sql"),
}];

/// The registry of the order service: the shop's events plus the order stream's own.
pub fn registry() -> Registry {
    let mut r = shopflow_contracts::registry();
    r.register::<aggregate::OrderPaid>()
        .register::<aggregate::OrderReserved>()
        .register::<aggregate::OrderCompleted>();
    r
}

#[derive(Clone, Debug)]
pub struct Orders {
    db: Db,
    store: EventStore,
    registry: Arc<Registry>,
    snapshot_every: u64,
    /// Group commit of `POST /orders`: the batcher task takes every placement waiting at that
    /// moment into one transaction (`None` inside the batcher itself).
    placer: Option<tokio::sync::mpsc::Sender<PlaceJob>>,
}

/// A placement waiting for the batcher.
#[derive(Debug)]
struct PlaceJob {
    req: PlaceOrder,
    key: Option<String>,
    correlation: CorrelationId,
    reply: tokio::sync::oneshot::Sender<Result<(bool, OrderId), ApiError>>,
}

/// Most placements committed in one transaction.
const MAX_PLACE_BATCH: usize = 256;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlaceOrder {
    pub customer_id: String,
    pub items: Vec<PlaceLine>,
    pub payment: PaymentMethod,
    pub shipping_address: Address,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlaceLine {
    pub sku: String,
    pub quantity: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PaymentMethod {
    pub card_number: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Placed {
    pub order_id: String,
    pub status: &'static str,
}

/// How far the read model is behind the event store.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Freshness {
    pub projected_position: u64,
    pub store_position: u64,
    pub behind_events: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    pub order_id: String,
    pub status: &'static str,
    pub customer_id: String,
    pub items: Vec<OrderLine>,
    pub total_minor: i64,
    pub currency: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    pub shipping_address: Option<Address>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carrier: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub version: u64,
    /// `read-model` (the projection) or `event-store` (a fold: time travel, or not projected yet).
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub projection: Option<Freshness>,
}

fn view(o: &Order, source: &'static str, projection: Option<Freshness>) -> OrderView {
    OrderView {
        order_id: o
            .order_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        status: o.status.as_str(),
        customer_id: o
            .customer_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        items: o.items.clone(),
        total_minor: o.total_minor,
        currency: o.currency.clone(),
        cancel_reason: o.cancel_reason.clone(),
        shipping_address: o.shipping_address.clone(),
        payment_id: o.payment_id.as_ref().map(ToString::to_string),
        tracking_number: o.tracking_number.clone(),
        carrier: o.carrier.clone(),
        created_at: o.created_at.clone(),
        updated_at: o.updated_at.clone(),
        version: o.version,
        source,
        projection,
    }
}

fn card_digits(card: &str) -> Option<String> {
    let digits: String = card.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    (digits.bytes().all(|b| b.is_ascii_digit()) && (12..=19).contains(&digits.len()))
        .then_some(digits)
}

fn check_text(field: &str, v: &str) -> Result<(), ApiError> {
    if v.trim().is_empty() || v.len() > 200 {
        return Err(ApiError::invalid(format!(
            "{field} must be 1 to 200 characters"
        )));
    }
    Ok(())
}

impl Orders {
    pub async fn open(db: Db) -> shopflow_store::Result<Self> {
        db.migrate_service(NAME, MIGRATIONS).await?;
        // The order service owns the order-fulfilment saga's instances (orchestration).
        db.migrate("saga", shopflow_saga::MIGRATIONS).await?;
        let core = Self {
            store: EventStore::new(db.clone()),
            db,
            registry: Arc::new(registry()),
            snapshot_every: 4,
            placer: None,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4 * MAX_PLACE_BATCH);
        tokio::spawn(core.clone().run_placer(rx));
        Ok(Self {
            placer: Some(tx),
            ..core
        })
    }

    /// Commits placements in groups until every `Orders` handle is gone.
    async fn run_placer(self, mut rx: tokio::sync::mpsc::Receiver<PlaceJob>) {
        while let Some(first) = rx.recv().await {
            let mut jobs = vec![first];
            while jobs.len() < MAX_PLACE_BATCH {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            self.place_batch(jobs).await;
        }
    }

    /// One transaction for many placements, a savepoint each: one bad request fails alone.
    async fn place_batch(&self, jobs: Vec<PlaceJob>) {
        let mut tx = match self.db.begin().await {
            Ok(tx) => tx,
            Err(e) => {
                let e = ApiError::from(e);
                for j in jobs {
                    let _ = j.reply.send(Err(e.clone()));
                }
                return;
            }
        };
        let mut results = Vec::with_capacity(jobs.len());
        for j in &jobs {
            let r = async {
                tx.execute("SAVEPOINT place", &[]).await?;
                let r = self
                    .place_in(&mut tx, &j.req, j.key.as_deref(), j.correlation.clone())
                    .await;
                if r.is_err() {
                    tx.execute("ROLLBACK TO SAVEPOINT place", &[]).await?;
                }
                tx.execute("RELEASE SAVEPOINT place", &[]).await?;
                r
            }
            .await;
            results.push(r);
        }
        match tx.commit().await {
            Ok(()) => {
                for (j, r) in jobs.into_iter().zip(results) {
                    let _ = j.reply.send(r);
                }
            }
            Err(e) => {
                let e = ApiError::from(e);
                for j in jobs {
                    let _ = j.reply.send(Err(e.clone()));
                }
            }
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/orders", post(place).get(list))
            .route("/orders/{id}", get(get_order))
            .route("/orders/{id}/events", get(events))
            .route("/admin/projections/orders/rebuild", post(rebuild))
            .with_state(Arc::new(self.clone()))
    }

    /// Validates and places an order. Returns `(created, order id)`.
    pub async fn place(
        &self,
        req: PlaceOrder,
        idempotency_key: Option<String>,
        correlation: CorrelationId,
    ) -> Result<(bool, OrderId), ApiError> {
        // Everything that needs no database is checked here, before joining a batch.
        UserId::parse(&req.customer_id).map_err(ApiError::invalid)?;
        if req.items.is_empty() || req.items.len() > 100 {
            return Err(ApiError::invalid("an order has 1 to 100 lines"));
        }
        card_digits(&req.payment.card_number)
            .filter(|d| shopflow_contracts::luhn_valid(d))
            .ok_or_else(|| ApiError::invalid("payment.cardNumber is not a valid card number"))?;
        let a = &req.shipping_address;
        for (f, v) in [
            ("shippingAddress.name", &a.name),
            ("shippingAddress.line1", &a.line1),
            ("shippingAddress.city", &a.city),
            ("shippingAddress.postalCode", &a.postal_code),
        ] {
            check_text(f, v)?;
        }
        if a.country.len() != 2 || !a.country.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ApiError::invalid(
                "shippingAddress.country must be an ISO 3166-1 alpha-2 code such as DE",
            ));
        }
        if let Some(k) = &idempotency_key
            && (k.is_empty() || k.len() > 200)
        {
            return Err(ApiError::invalid(
                "Idempotency-Key must be 1 to 200 characters",
            ));
        }
        let placer = self.placer.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the order service is shutting down",
            )
        })?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let unavailable = || {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the order service is shutting down",
            )
        };
        placer
            .send(PlaceJob {
                req,
                key: idempotency_key,
                correlation,
                reply,
            })
            .await
            .map_err(|_| unavailable())?;
        answer.await.map_err(|_| unavailable())?
    }

    /// The transactional half of placing an order, inside the batcher's transaction.
    async fn place_in(
        &self,
        tx: &mut Tx,
        req: &PlaceOrder,
        idempotency_key: Option<&str>,
        correlation: CorrelationId,
    ) -> Result<(bool, OrderId), ApiError> {
        let customer_id = UserId::parse(&req.customer_id).map_err(ApiError::invalid)?;
        let digits = card_digits(&req.payment.card_number)
            .ok_or_else(|| ApiError::invalid("payment.cardNumber is not a valid card number"))?;
        let request = serde_json::to_string(&req).map_err(|e| ApiError::invalid(e.to_string()))?;
        if let Some(k) = idempotency_key {
            let rows = tx
                .query(
                    "SELECT order_id, request FROM idempotency_keys WHERE idem_key = $1",
                    params![k],
                )
                .await?;
            if let Some(r) = rows.first() {
                if r.str(1)? != request {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "idempotency_key_reused",
                        "this Idempotency-Key was used for a different request",
                    ));
                }
                return Ok((false, OrderId::parse(r.str(0)?).map_err(ApiError::invalid)?));
            }
        }
        let mut lines = Vec::with_capacity(req.items.len());
        let mut currency: Option<String> = None;
        let mut total: i64 = 0;
        for l in &req.items {
            let sku = Sku::parse(&l.sku).map_err(ApiError::invalid)?;
            if !(1..=1000).contains(&l.quantity) {
                return Err(ApiError::invalid(format!(
                    "quantity of {sku} must be between 1 and 1000"
                )));
            }
            let rows = tx
                .query(
                    "SELECT price_minor, currency FROM catalog WHERE sku = $1",
                    params![sku.as_str()],
                )
                .await?;
            let r = rows
                .first()
                .ok_or_else(|| ApiError::invalid(format!("unknown sku {sku}")))?;
            let (price, cur) = (r.i64(0)?, r.str(1)?.to_owned());
            if currency.get_or_insert_with(|| cur.clone()) != &cur {
                return Err(ApiError::invalid(
                    "all lines of an order must be in one currency",
                ));
            }
            total = price
                .checked_mul(l.quantity)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| ApiError::invalid("order total is out of range"))?;
            lines.push(OrderLine {
                sku,
                quantity: l.quantity as u32,
                unit_price_minor: price,
            });
        }
        let order_id = OrderId::generate();
        let created = OrderCreated {
            order_id: order_id.clone(),
            customer_id,
            items: lines,
            total_minor: total,
            currency: currency.unwrap_or_default(),
            card_last4: digits[digits.len() - 4..].to_owned(),
            payment_token: format!("tok_{digits}"),
            shipping_address: req.shipping_address.clone(),
        };
        let events = Order::default()
            .handle(Command::Place(created))
            .map_err(|e| ApiError::conflict(e.to_string()))?;
        let meta =
            |v: u64| Meta::new(SOURCE, order_id.as_str(), v).with_correlation(correlation.clone());
        self.commit_events(tx, &order_id, 0, &events, meta)
            .await
            .map_err(|e| match e {
                HandlerError::Transient(m) | HandlerError::Unavailable { reason: m, .. } => {
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
                }
                HandlerError::Permanent(m) => ApiError::invalid(m),
            })?;
        if let Some(k) = idempotency_key {
            tx.execute(
                "INSERT INTO idempotency_keys (idem_key, order_id, request, created_at) VALUES ($1, $2, $3, $4)",
                params![k, order_id.as_str(), request, chrono::Utc::now().timestamp_millis()],
            )
            .await?;
        }
        Ok((true, order_id))
    }

    /// Appends decided events after `version`, publishes the public ones, snapshots now and then.
    async fn commit_events(
        &self,
        tx: &mut Tx,
        order_id: &OrderId,
        version: u64,
        events: &[OrderEvent],
        meta: impl Fn(u64) -> Meta,
    ) -> Result<(), HandlerError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut envs = Vec::with_capacity(events.len());
        let mut out = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let env = e.to_envelope(meta(version + 1 + i as u64))?;
            if let Some(topic) = e.topic() {
                out.push(Outgoing {
                    topic,
                    envelope: env.clone(),
                });
            }
            envs.push(env);
        }
        let expected = if version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version)
        };
        let new_version = self
            .store
            .append(tx, order_id.as_str(), expected, &envs)
            .await
            .map_err(|e| match e {
                shopflow_store::Error::Conflict { .. } => HandlerError::Transient(e.to_string()),
                other => HandlerError::from(other),
            })?;
        if new_version / self.snapshot_every > version / self.snapshot_every {
            let state = self.load_in(tx, order_id).await?;
            let bytes =
                serde_json::to_vec(&state).map_err(|e| HandlerError::Permanent(e.to_string()))?;
            self.store
                .save_snapshot(tx, order_id.as_str(), state.version, &bytes)
                .await?;
        }
        emit(tx, out).await
    }

    /// An order's current state inside `tx`: the snapshot plus the events after it.
    async fn load_in(&self, tx: &mut Tx, order_id: &OrderId) -> Result<Order, HandlerError> {
        let mut order = match self.store.load_snapshot_in(tx, order_id.as_str()).await? {
            Some(s) => serde_json::from_slice(&s.state)
                .map_err(|e| HandlerError::Permanent(format!("corrupt snapshot: {e}")))?,
            None => Order::default(),
        };
        let events = self
            .store
            .read_stream_in(tx, order_id.as_str(), order.version + 1, 10_000)
            .await?;
        for e in events {
            order.apply_envelope(&e.decode(&self.registry)?)?;
        }
        Ok(order)
    }

    /// Folds an order's stream up to a version or a point in time (time travel), or to its end.
    pub async fn fold(
        &self,
        order_id: &str,
        version: Option<u64>,
        at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Option<Order>, ApiError> {
        let events = self.store.read_stream(order_id, 1, 10_000).await?;
        let mut order = Order::default();
        for e in events {
            if version.is_some_and(|v| e.version > v)
                || at.is_some_and(|t| e.recorded_at_ms > t.timestamp_millis())
            {
                break;
            }
            let env = e.decode(&self.registry).map_err(ApiError::from)?;
            order.apply_envelope(&env)?;
        }
        Ok(order.exists().then_some(order))
    }

    pub async fn freshness(&self) -> Result<Freshness, ApiError> {
        let rows = self
            .db
            .query(
                "SELECT position FROM projections WHERE name = $1",
                params![PROJECTION],
            )
            .await?;
        let projected = rows.first().map(|r| r.u64(0)).transpose()?.unwrap_or(0);
        let head = self.store.head_position().await?;
        let rows = self
            .db
            .query(
                "SELECT COUNT(*) FROM events WHERE position > $1",
                params![projected],
            )
            .await?;
        Ok(Freshness {
            projected_position: projected,
            store_position: head,
            behind_events: rows[0].u64(0)?,
        })
    }

    pub async fn get(&self, order_id: &str) -> Result<OrderView, ApiError> {
        let rows = self
            .db
            .query(
                "SELECT state FROM order_view WHERE order_id = $1",
                params![order_id],
            )
            .await?;
        let freshness = self.freshness().await?;
        match rows.first() {
            Some(r) => {
                let o: Order = serde_json::from_str(r.str(0)?)
                    .map_err(|e| ApiError::invalid(e.to_string()))?;
                Ok(view(&o, "read-model", Some(freshness)))
            }
            // Accepted but not projected yet: answer from the store rather than a false 404.
            None => match self.fold(order_id, None, None).await? {
                Some(o) => Ok(view(&o, "event-store", Some(freshness))),
                None => Err(ApiError::not_found("order", order_id)),
            },
        }
    }

    // ---- projection -------------------------------------------------------------------------

    /// Folds new events into `order_view` until shutdown, waking on commits.
    pub async fn run_projector(&self, shutdown: Shutdown) {
        let mut commits = self.db.commits();
        loop {
            if shutdown.is_triggered() {
                return;
            }
            match self.project_batch(PROJECTION, "order_view", 1000).await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "order projection failed; retrying"),
            }
            let wait = async {
                match commits.as_mut() {
                    Some(rx) => {
                        let _ =
                            tokio::time::timeout(Duration::from_millis(500), rx.changed()).await;
                    }
                    None => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            tokio::select! {
                _ = wait => {}
                _ = shutdown.clone().wait() => return,
            }
        }
    }

    /// Projects the next events after the projection's position into `table`.
    async fn project_batch(
        &self,
        projection: &str,
        table: &str,
        max: usize,
    ) -> Result<usize, HandlerError> {
        // Not fsynced: a projection step lost in a crash is redone from the store (the version
        // check makes it idempotent).
        let mut tx = self.db.begin_relaxed().await?;
        if !tx.try_lock(PROJECTOR_LOCK_CLASS, projection).await? {
            // Another instance is projecting; its steps serve this one's reads too.
            tx.rollback().await?;
            return Ok(0);
        }
        // The position is read under the lock, so it never moves backwards.
        let rows = tx
            .query(
                "SELECT position FROM projections WHERE name = $1",
                params![projection],
            )
            .await?;
        let position = rows.first().map(|r| r.u64(0)).transpose()?.unwrap_or(0);
        let events = self.store.read_all(position, max).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            tx.rollback().await?;
            return Ok(0);
        };
        for e in &events {
            self.project_one(&mut tx, table, e).await?;
        }
        tx.execute(
            "INSERT INTO projections (name, position) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            params![projection, last],
        )
        .await?;
        tx.commit().await?;
        Ok(events.len())
    }

    async fn project_one(
        &self,
        tx: &mut Tx,
        table: &str,
        e: &StoredEvent,
    ) -> Result<(), HandlerError> {
        let rows = tx
            .query(
                &format!("SELECT state FROM {table} WHERE order_id = $1"),
                params![e.stream_id.as_str()],
            )
            .await?;
        let mut order: Order = match rows.first() {
            Some(r) => serde_json::from_str(r.str(0)?)
                .map_err(|err| HandlerError::Permanent(err.to_string()))?,
            None => Order::default(),
        };
        if e.version <= order.version {
            return Ok(()); // applied already
        }
        if e.version != order.version + 1 {
            // A gap: never guess. Rebuild the row from its stream (up to this event).
            tracing::warn!(order = %e.stream_id, have = order.version, got = e.version, "gap in the order projection; refolding the stream");
            order = Order::default();
            for s in self
                .store
                .read_stream_in(tx, &e.stream_id, 1, e.version as usize)
                .await?
            {
                order.apply_envelope(&s.decode(&self.registry)?)?;
            }
        } else {
            order.apply_envelope(&e.decode(&self.registry)?)?;
        }
        let state = serde_json::to_string(&order)
            .map_err(|err| HandlerError::Permanent(err.to_string()))?;
        tx.execute(
            &format!(
                "INSERT INTO {table} (order_id, customer_id, status, version, position, updated_at, state) VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, version = excluded.version,
                     position = excluded.position, updated_at = excluded.updated_at, state = excluded.state"
            ),
            params![
                e.stream_id.as_str(),
                order.customer_id.as_ref().map(|c| c.to_string()).unwrap_or_default(),
                order.status.as_str(),
                order.version,
                e.position,
                e.recorded_at_ms,
                state
            ],
        )
        .await?;
        Ok(())
    }

    /// Rebuilds the read model from the whole event store while the live projector keeps serving:
    /// replays into a shadow table, catches up, then swaps in one transaction.
    pub async fn rebuild_projection(&self) -> Result<u64, ApiError> {
        let mut tx = self.db.begin().await?;
        tx.batch(
            "DROP TABLE IF EXISTS order_view_rebuild;
             CREATE TABLE order_view_rebuild (
                 order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, status TEXT NOT NULL, version BIGINT NOT NULL,
                 position BIGINT NOT NULL, updated_at BIGINT NOT NULL, state TEXT NOT NULL)",
        )
        .await?;
        tx.execute(
            "DELETE FROM projections WHERE name = 'order_view_rebuild'",
            &[],
        )
        .await?;
        tx.commit().await?;
        let map = |e: HandlerError| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            )
        };
        let mut replayed = 0u64;
        loop {
            let n = self
                .project_batch("order_view_rebuild", "order_view_rebuild", 5000)
                .await
                .map_err(map)?;
            if n == 0 {
                break;
            }
            replayed += n as u64;
        }
        // Swap: one transaction, after a last catch-up inside it.
        let mut tx = self.db.begin().await?;
        let rows = tx
            .query(
                "SELECT position FROM projections WHERE name = 'order_view_rebuild'",
                &[],
            )
            .await?;
        let mut position = rows.first().map(|r| r.u64(0)).transpose()?.unwrap_or(0);
        loop {
            let rows = tx
                .query("SELECT position, stream_id, version, event_id, event_type, event_version, recorded_at, envelope FROM events WHERE position > $1 ORDER BY position LIMIT 1000", params![position])
                .await?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                let e = StoredEvent {
                    position: r.u64(0)?,
                    stream_id: r.str(1)?.to_owned(),
                    version: r.u64(2)?,
                    event_id: r.str(3)?.to_owned(),
                    event_type: r.str(4)?.to_owned(),
                    event_version: r.i64(5)? as u32,
                    recorded_at_ms: r.i64(6)?,
                    envelope: r.bytes(7)?.to_vec(),
                };
                self.project_one(&mut tx, "order_view_rebuild", &e)
                    .await
                    .map_err(map)?;
                position = e.position;
                replayed += 1;
            }
        }
        tx.batch(
            "DELETE FROM order_view;
             INSERT INTO order_view (order_id, customer_id, status, version, position, updated_at, state)
                 SELECT order_id, customer_id, status, version, position, updated_at, state FROM order_view_rebuild;
             DROP TABLE order_view_rebuild",
        )
        .await?;
        tx.execute(
            "DELETE FROM projections WHERE name = 'order_view_rebuild'",
            &[],
        )
        .await?;
        tx.execute(
            "INSERT INTO projections (name, position) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            params![PROJECTION, position],
        )
        .await?;
        tx.commit().await?;
        Ok(replayed)
    }

    /// The outcome handler.
    pub fn handler(&self) -> OutcomeHandler {
        OutcomeHandler(self.clone())
    }
}

impl From<DomainError> for HandlerError {
    fn from(e: DomainError) -> Self {
        HandlerError::Permanent(e.to_string())
    }
}

/// Moves orders on the other services' outcomes, and keeps the catalog copy.
#[derive(Debug)]
pub struct OutcomeHandler(Orders);

impl Handler for OutcomeHandler {
    fn name(&self) -> &'static str {
        NAME
    }

    fn topics(&self) -> Vec<String> {
        vec![
            ProductUpdated::topic(),
            PaymentCompleted::topic(),
            PaymentFailed::topic(),
            PaymentRefunded::topic(),
            StockReserved::topic(),
            OrderShipped::topic(),
        ]
    }

    async fn handle(&self, tx: &mut Tx, env: &Envelope) -> Result<Vec<Outgoing>, HandlerError> {
        if env.is::<ProductUpdated>() {
            let p: ProductUpdated = env.data_as()?;
            tx.execute(
                "INSERT INTO catalog (sku, name, price_minor, currency) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (sku) DO UPDATE SET name = excluded.name, price_minor = excluded.price_minor, currency = excluded.currency",
                params![p.sku.as_str(), p.name.as_str(), p.price_minor, p.currency.as_str()],
            )
            .await?;
            return Ok(vec![]);
        }
        let (order_id, cmd) = if env.is::<PaymentCompleted>() {
            let e: PaymentCompleted = env.data_as()?;
            (
                e.order_id,
                Command::RecordPayment {
                    payment_id: e.payment_id,
                },
            )
        } else if env.is::<PaymentFailed>() {
            let e: PaymentFailed = env.data_as()?;
            (
                e.order_id,
                Command::Cancel {
                    reason: format!("payment failed: {}", e.reason),
                },
            )
        } else if env.is::<PaymentRefunded>() {
            let e: PaymentRefunded = env.data_as()?;
            (e.order_id, Command::Cancel { reason: e.reason })
        } else if env.is::<StockReserved>() {
            (
                env.data_as::<StockReserved>()?.order_id,
                Command::RecordReservation,
            )
        } else if env.is::<OrderShipped>() {
            let e: OrderShipped = env.data_as()?;
            (
                e.order_id,
                Command::RecordShipment {
                    shipment_id: e.shipment_id,
                    carrier: e.carrier,
                    tracking_number: e.tracking_number,
                },
            )
        } else {
            return Ok(vec![]);
        };
        self.0.decide(tx, env, &order_id, cmd).await
    }
}

impl Orders {
    /// Loads the order, decides `cmd`, appends what it decided (published through the outbox).
    async fn decide(
        &self,
        tx: &mut Tx,
        env: &Envelope,
        order_id: &OrderId,
        cmd: Command,
    ) -> Result<Vec<Outgoing>, HandlerError> {
        let order = self.load_in(tx, order_id).await?;
        let events = order.handle(cmd)?;
        let version = order.version;
        let meta = |v: u64| Meta::caused_by(env, SOURCE, order_id.as_str(), v);
        self.commit_events(tx, order_id, version, &events, meta)
            .await?;
        Ok(vec![]) // published through commit_events
    }

    /// The order service's command side (orchestration).
    pub fn command_handler(&self) -> OrderCommands {
        OrderCommands(self.clone())
    }
}

/// The order service's command side (orchestration): `ApproveOrder`, `CompleteOrder`,
/// `CancelOrder` move the aggregate as the outcome events do in the choreography; the catalog
/// copy is fed by `ProductUpdated` in both styles.
#[derive(Debug, Clone)]
pub struct OrderCommands(Orders);

impl Handler for OrderCommands {
    fn name(&self) -> &'static str {
        "order-commands"
    }

    fn topics(&self) -> Vec<String> {
        vec![ProductUpdated::topic(), CancelOrder::topic()]
    }

    async fn handle(&self, tx: &mut Tx, env: &Envelope) -> Result<Vec<Outgoing>, HandlerError> {
        let (order_id, cmd) = if env.is::<ProductUpdated>() {
            return OutcomeHandler(self.0.clone()).handle(tx, env).await;
        } else if env.is::<ApproveOrder>() {
            let c: ApproveOrder = env.data_as()?;
            (
                c.order_id,
                Command::RecordPayment {
                    payment_id: c.payment_id,
                },
            )
        } else if env.is::<CompleteOrder>() {
            let c: CompleteOrder = env.data_as()?;
            (
                c.order_id,
                Command::RecordShipment {
                    shipment_id: c.shipment_id,
                    carrier: c.carrier,
                    tracking_number: c.tracking_number,
                },
            )
        } else if env.is::<CancelOrder>() {
            let c: CancelOrder = env.data_as()?;
            (c.order_id, Command::Cancel { reason: c.reason })
        } else {
            return Ok(vec![]);
        };
        self.0.decide(tx, env, &order_id, cmd).await
    }
}

// ---- HTTP -----------------------------------------------------------------------------------

async fn place(
    State(s): State<Arc<Orders>>,
    headers: HeaderMap,
    Json(req): Json<PlaceOrder>,
) -> Result<Response, ApiError> {
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()
        .map_err(|_| ApiError::invalid("Idempotency-Key must be ASCII"))?;
    let (created, id) = s
        .place(req, key, shopflow_http::correlation(&headers))
        .await?;
    let _ = created;
    Ok(reply(
        StatusCode::ACCEPTED,
        Placed {
            order_id: id.to_string(),
            status: Status::Pending.as_str(),
        },
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetParams {
    at: Option<String>,
    version: Option<u64>,
}

async fn get_order(
    State(s): State<Arc<Orders>>,
    Path(id): Path<String>,
    Query(p): Query<GetParams>,
) -> Result<Json<OrderView>, ApiError> {
    if p.at.is_none() && p.version.is_none() {
        return s.get(&id).await.map(Json);
    }
    let at = p
        .at
        .map(|t| chrono::DateTime::parse_from_rfc3339(&t).map(|d| d.with_timezone(&chrono::Utc)))
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("`at` is not RFC 3339: {e}")))?;
    match s.fold(&id, p.version, at).await? {
        Some(o) => Ok(Json(view(&o, "event-store", None))),
        None => Err(ApiError::not_found("order at that point", &id)),
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EventItem {
    position: u64,
    version: u64,
    event_id: String,
    event_type: String,
    event_version: u32,
    timestamp: String,
    correlation_id: String,
    data: serde_json::Value,
}

async fn events(
    State(s): State<Arc<Orders>>,
    Path(id): Path<String>,
) -> Result<Json<Vec<EventItem>>, ApiError> {
    let events = s.store.read_stream(&id, 1, 10_000).await?;
    if events.is_empty() {
        return Err(ApiError::not_found("order", &id));
    }
    events
        .iter()
        .map(|e| {
            let env = e.decode(&s.registry)?;
            Ok(EventItem {
                position: e.position,
                version: e.version,
                event_id: e.event_id.clone(),
                event_type: e.event_type.clone(),
                event_version: env.event_version(),
                timestamp: env
                    .timestamp()
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                correlation_id: env.correlation_id().to_string(),
                data: env.data().clone(),
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()
        .map(Json)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListParams {
    status: Option<String>,
    customer_id: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    orders: Vec<OrderView>,
    next_cursor: Option<String>,
    projection: Freshness,
}

async fn list(
    State(s): State<Arc<Orders>>,
    Query(p): Query<ListParams>,
) -> Result<Json<Page>, ApiError> {
    let limit = p.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit must be between 1 and 500"));
    }
    if let Some(st) = &p.status
        && Status::parse(st).is_none()
    {
        return Err(ApiError::invalid(
            "status must be one of PENDING, PAID, RESERVED, SHIPPED, CANCELLED",
        ));
    }
    let rows = s
        .db
        .query(
            "SELECT order_id, state FROM order_view
             WHERE ($1 = '' OR status = $1) AND ($2 = '' OR customer_id = $2) AND ($3 = '' OR order_id < $3)
             ORDER BY order_id DESC LIMIT $4",
            params![p.status.unwrap_or_default(), p.customer_id.unwrap_or_default(), p.cursor.unwrap_or_default(), limit + 1],
        )
        .await?;
    let mut orders = Vec::new();
    for r in rows.iter().take(limit as usize) {
        let o: Order =
            serde_json::from_str(r.str(1)?).map_err(|e| ApiError::invalid(e.to_string()))?;
        orders.push(view(&o, "read-model", None));
    }
    let next_cursor = (rows.len() > limit as usize)
        .then(|| orders.last().map(|o| o.order_id.clone()))
        .flatten();
    Ok(Json(Page {
        orders,
        next_cursor,
        projection: s.freshness().await?,
    }))
}

async fn rebuild(State(s): State<Arc<Orders>>) -> Result<Response, ApiError> {
    let replayed = s.rebuild_projection().await?;
    Ok(reply(
        StatusCode::OK,
        serde_json::json!({"projection": "orders", "replayedEvents": replayed}),
    ))
}
