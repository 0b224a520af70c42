-- The order service's own tables; its events live in the event store (`events`, `snapshots`).
-- A local, event-fed copy of the catalog: prices come from here, never from the client.
CREATE TABLE catalog (
    sku         TEXT   PRIMARY KEY,
    name        TEXT   NOT NULL,
    price_minor BIGINT NOT NULL,
    currency    TEXT   NOT NULL
);
CREATE TABLE idempotency_keys (
    idem_key   TEXT   PRIMARY KEY,
    order_id   TEXT   NOT NULL,
    request    TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
-- The read model (CQRS): one row per order, folded from its events by the projector.
CREATE TABLE order_view (
    order_id    TEXT   PRIMARY KEY,
    customer_id TEXT   NOT NULL,
    status      TEXT   NOT NULL,
    version     BIGINT NOT NULL,
    position    BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    state       TEXT   NOT NULL
);
CREATE INDEX order_view_status ON order_view (status, order_id);
CREATE INDEX order_view_customer ON order_view (customer_id, order_id);
-- Its position in the event store is a checkpoint of the store's (`projections`).
