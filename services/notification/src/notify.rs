//! The notification service: templated e-mail and SMS for the shop's events, each sent once,
//! deferred until the recipient (or the order's customer) is known.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use serde::Serialize;
use shopflow_contracts::{OrderCancelled, OrderCreated, OrderShipped, UserRegistered};
use shopflow_envelope::{Envelope, Event, Registry};
use shopflow_http::{ApiError, Json};
use shopflow_runtime::{BreakerConfig, CircuitBreaker, Handler, HandlerError, Outgoing};
use shopflow_store::{Db, Tx, params};

use crate::{Mailer, NAME, Outbound};

/// Advisory-lock class of deferring and releasing notifications (PostgreSQL; key:
/// `hashtext(<what the event waits for>)`).
const DEFER_LOCK_CLASS: i32 = 0x5346_4e44; // "SFND"

/// The notification service.
#[derive(Debug)]
pub struct Notifications<M: Mailer> {
    db: Db,
    mailer: Arc<M>,
    registry: Arc<Registry>,
    /// Guards every delivery (the handler declares it to the runtime): while the mail server is
    /// down the consumer pauses.
    breaker: Arc<CircuitBreaker>,
}

impl<M: Mailer> Clone for Notifications<M> {
    fn clone(&self) -> Self {
        Self {
            db: self.db.clone(),
            mailer: self.mailer.clone(),
            registry: self.registry.clone(),
            breaker: self.breaker.clone(),
        }
    }
}

/// A message sent (or being sent) for an event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationView {
    pub id: String,
    pub event_type: String,
    pub channel: String,
    pub recipient: String,
    pub subject: String,
    pub location: String,
}

struct Recipient {
    user_id: String,
    email: String,
    name: String,
    phone: Option<String>,
}

fn money(minor: i64, currency: &str) -> String {
    format!("{}.{:02} {currency}", minor / 100, (minor % 100).abs())
}

impl<M: Mailer> Notifications<M> {
    pub async fn open(db: Db, mailer: Arc<M>) -> shopflow_store::Result<Self> {
        crate::migrate(&db).await?;
        Ok(Self {
            db,
            mailer,
            registry: Arc::new(shopflow_contracts::registry()),
            breaker: Arc::new(CircuitBreaker::new("delivery", BreakerConfig::default())),
        })
    }

    /// Replaces the delivery circuit breaker's settings.
    pub fn with_breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = Arc::new(CircuitBreaker::new("delivery", config));
        self
    }

    /// The delivery circuit breaker.
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/orders/{id}/notifications", get(list::<M>))
            .with_state(Arc::new(self.clone()))
    }

    pub async fn for_order(&self, order_id: &str) -> Result<Vec<NotificationView>, ApiError> {
        let rows = self
            .db
            .query(
                "SELECT id, event_type, channel, recipient, subject, location FROM notifications WHERE order_id = $1 ORDER BY created_at, id",
                params![order_id],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(NotificationView {
                    id: r.str(0)?.to_owned(),
                    event_type: r.str(1)?.to_owned(),
                    channel: r.str(2)?.to_owned(),
                    recipient: r.str(3)?.to_owned(),
                    subject: r.str(4)?.to_owned(),
                    location: r.str(5)?.to_owned(),
                })
            })
            .collect()
    }

    async fn recipient(tx: &mut Tx, user_id: &str) -> Result<Option<Recipient>, HandlerError> {
        let rows = tx
            .query(
                "SELECT user_id, email, name, phone FROM recipients WHERE user_id = $1",
                params![user_id],
            )
            .await?;
        Ok(match rows.first() {
            Some(r) => Some(Recipient {
                user_id: r.str(0)?.to_owned(),
                email: r.str(1)?.to_owned(),
                name: r.str(2)?.to_owned(),
                phone: r.opt_str(3)?.map(str::to_owned),
            }),
            None => None,
        })
    }

    /// Whether what `key` waits for (`user:<id>`, `order:<id>`) is known now.
    async fn arrived(tx: &mut Tx, key: &str) -> Result<bool, HandlerError> {
        let rows = if let Some(user) = key.strip_prefix("user:") {
            tx.query("SELECT 1 FROM recipients WHERE user_id = $1", params![user])
                .await?
        } else if let Some(order) = key.strip_prefix("order:") {
            tx.query(
                "SELECT 1 FROM order_customers WHERE order_id = $1",
                params![order],
            )
            .await?
        } else {
            Vec::new()
        };
        Ok(!rows.is_empty())
    }

    /// Defers `env` until `waits_for` arrives — unless it arrived while this transaction ran, in
    /// which case the event is handled now.
    async fn defer(
        &self,
        tx: &mut Tx,
        env: &Envelope,
        waits_for: String,
    ) -> Result<(), HandlerError> {
        // Deferring and releasing one key run one after another: else a deferral could commit
        // after a release that did not see it, and wait forever.
        tx.lock(DEFER_LOCK_CLASS, &waits_for).await?;
        if Self::arrived(tx, &waits_for).await? {
            return Box::pin(self.notify(tx, env)).await;
        }
        tx.execute(
            "INSERT INTO deferred (event_id, waits_for, envelope, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING",
            params![env.event_id().to_string(), waits_for, env.encode()?, chrono::Utc::now().timestamp_millis()],
        )
        .await?;
        Ok(())
    }

    /// Sends what the event calls for (or defers it until its recipient is known), then what
    /// waited for it: a customer reads the welcome before the order's confirmation, and the
    /// confirmation before its shipment or cancellation.
    async fn notify(&self, tx: &mut Tx, env: &Envelope) -> Result<(), HandlerError> {
        self.notify_one(tx, env).await?;
        if env.is::<OrderCreated>() {
            let e: OrderCreated = env.data_as()?;
            self.release(tx, &format!("order:{}", e.order_id)).await?;
        } else if env.is::<UserRegistered>() {
            let e: UserRegistered = env.data_as()?;
            self.release(tx, &format!("user:{}", e.user_id)).await?;
        }
        Ok(())
    }

    async fn notify_one(&self, tx: &mut Tx, env: &Envelope) -> Result<(), HandlerError> {
        let (order_id, user_id, subject, body): (Option<String>, String, String, String) =
            if env.is::<OrderCreated>() {
                let e: OrderCreated = env.data_as()?;
                tx.execute(
                "INSERT INTO order_customers (order_id, customer_id) VALUES ($1, $2) ON CONFLICT (order_id) DO NOTHING",
                params![e.order_id.as_str(), e.customer_id.as_str()],
            )
            .await?;
                let lines: Vec<String> = e
                    .items
                    .iter()
                    .map(|i| {
                        format!(
                            "  {} × {}  {}",
                            i.quantity,
                            i.sku,
                            money(i.unit_price_minor, &e.currency)
                        )
                    })
                    .collect();
                (
                    Some(e.order_id.to_string()),
                    e.customer_id.to_string(),
                    format!("Your order {} is confirmed", e.order_id),
                    format!(
                        "Thank you for your order {}.\n\n{}\n\nTotal: {}\n",
                        e.order_id,
                        lines.join("\n"),
                        money(e.total_minor, &e.currency)
                    ),
                )
            } else if env.is::<OrderShipped>() {
                let e: OrderShipped = env.data_as()?;
                let rows = tx
                    .query(
                        "SELECT customer_id FROM order_customers WHERE order_id = $1",
                        params![e.order_id.as_str()],
                    )
                    .await?;
                let Some(r) = rows.first() else {
                    return self.defer(tx, env, format!("order:{}", e.order_id)).await;
                };
                (
                    Some(e.order_id.to_string()),
                    r.str(0)?.to_owned(),
                    format!("Your order {} has shipped", e.order_id),
                    format!(
                        "Your order {} is on its way with {}.\nTracking number: {}\n",
                        e.order_id, e.carrier, e.tracking_number
                    ),
                )
            } else if env.is::<OrderCancelled>() {
                let e: OrderCancelled = env.data_as()?;
                // Told after the confirmation, never before it (the two come on different
                // topics, and a declined card is quick).
                if !Self::arrived(tx, &format!("order:{}", e.order_id)).await? {
                    return self.defer(tx, env, format!("order:{}", e.order_id)).await;
                }
                (
                    Some(e.order_id.to_string()),
                    e.customer_id.to_string(),
                    format!("Your order {} was cancelled", e.order_id),
                    format!(
                        "We are sorry: your order {} was cancelled ({}).\nAny payment has been refunded.\n",
                        e.order_id, e.reason
                    ),
                )
            } else if env.is::<UserRegistered>() {
                let e: UserRegistered = env.data_as()?;
                tx.execute(
                "INSERT INTO recipients (user_id, email, name, phone) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (user_id) DO UPDATE SET email = excluded.email, name = excluded.name, phone = excluded.phone",
                params![e.user_id.as_str(), e.email.as_str(), e.name.as_str(), e.phone.clone()],
            )
            .await?;
                (
                    None,
                    e.user_id.to_string(),
                    "Welcome to shopflow".into(),
                    "Your shopflow account is ready.\n".to_owned(),
                )
            } else {
                return Ok(());
            };
        let Some(to) = Self::recipient(tx, &user_id).await? else {
            return self.defer(tx, env, format!("user:{user_id}")).await;
        };
        let body = format!("Hello {},\n\n{body}", to.name);
        let mut channels = vec![("email", to.email.clone())];
        if let Some(p) = &to.phone {
            channels.push(("sms", p.clone()));
        }
        for (channel, address) in channels {
            let id = format!("{}:{channel}", env.event_id());
            let m = Outbound {
                id: id.clone(),
                channel,
                to: address.clone(),
                subject: subject.clone(),
                body: body.clone(),
            };
            let inserted = tx
                .execute(
                    "INSERT INTO notifications (id, event_id, event_type, order_id, user_id, channel, recipient, subject, location, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, '', $9) ON CONFLICT (id) DO NOTHING",
                    params![id.as_str(), env.event_id().to_string(), env.event_type(), order_id.clone(), to.user_id.as_str(), channel, address.as_str(), subject.as_str(), chrono::Utc::now().timestamp_millis()],
                )
                .await?;
            if inserted == 0 {
                continue; // sent already
            }
            // An SMTP session: other tasks move to another worker meanwhile. A spool append
            // is a page-cache write, made durable by the sync before the commit.
            let deliver = || self.mailer.deliver(&m);
            let delivered = if self.mailer.blocks() {
                shopflow_store::blocking(deliver)
            } else {
                deliver()
            };
            let location = delivered.map_err(|e| {
                HandlerError::dependency(&self.breaker, format!("delivery failed: {e}"))
            })?;
            // Before the commit that records it as sent, the message is made durable (once per
            // transaction, however many messages it delivered).
            tx.before_commit(&self.mailer, || {
                let mailer = self.mailer.clone();
                Box::new(move || mailer.sync())
            });
            // No answer needed: on PostgreSQL it travels with the next statement.
            tx.execute_deferred(
                "UPDATE notifications SET location = $2 WHERE id = $1",
                params![id.as_str(), location],
            )
            .await?;
        }
        Ok(())
    }

    /// Handles the events that waited for `key`.
    async fn release(&self, tx: &mut Tx, key: &str) -> Result<(), HandlerError> {
        tx.lock(DEFER_LOCK_CLASS, key).await?;
        let rows = tx
            .query(
                "SELECT event_id, envelope FROM deferred WHERE waits_for = $1 ORDER BY created_at",
                params![key],
            )
            .await?;
        let mut waiting = Vec::with_capacity(rows.len());
        for r in rows {
            waiting.push((r.str(0)?.to_owned(), self.registry.decode(r.bytes(1)?)?));
        }
        // Deferred in the same millisecond: a confirmation still goes first (a stable sort
        // keeps the rest as they were deferred).
        waiting.sort_by_key(|(_, env)| !env.is::<OrderCreated>());
        for (id, env) in waiting {
            tx.execute_deferred("DELETE FROM deferred WHERE event_id = $1", params![id])
                .await?;
            Box::pin(self.notify(tx, &env)).await?;
        }
        Ok(())
    }
}

/// The messages sent for an order, oldest first.
#[utoipa::path(get, path = "/orders/{id}/notifications", tag = "notification", operation_id = "listNotifications",
    params(("id" = String, Path, description = "The order id (`ord_…`)")),
    responses(
        shopflow_http::responses::Unavailable,
        (status = 200, description = "The messages (none yet: an empty list)", body = Vec<NotificationView>),
    ))]
async fn list<M: Mailer>(
    State(s): State<Arc<Notifications<M>>>,
    Path(id): Path<String>,
) -> Result<Json<Vec<NotificationView>>, ApiError> {
    s.for_order(&id).await.map(Json)
}

impl<M: Mailer> Handler for Notifications<M> {
    fn name(&self) -> &'static str {
        NAME
    }
    /// A deferral and the release of what it waits for take the same advisory lock (see
    /// `defer`), so transactions of this group may overlap: an order's messages share its lane,
    /// and two lanes that defer for the same customers in opposite order are a deadlock
    /// PostgreSQL breaks (the batch is delivered again; the inbox absorbs what was done).
    fn lanes(&self) -> usize {
        usize::MAX
    }

    /// Every topic the order service and the users service number events on.
    fn complete_sources(&self) -> Vec<&'static str> {
        vec!["order-service", "user-service"]
    }

    fn topics(&self) -> Vec<String> {
        vec![
            UserRegistered::topic(),
            OrderCreated::topic(),
            OrderShipped::topic(),
            OrderCancelled::topic(),
        ]
    }

    /// Delivery: while the mail server is down the consumer pauses.
    fn breakers(&self) -> Vec<Arc<CircuitBreaker>> {
        vec![self.breaker.clone()]
    }

    async fn handle(&self, tx: &mut Tx, env: &Envelope) -> Result<Vec<Outgoing>, HandlerError> {
        self.notify(tx, env).await?;
        Ok(vec![])
    }
}

/// The notification service's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list),
    components(schemas(NotificationView, shopflow_http::ErrorBody))
)]
pub(crate) struct Api;
