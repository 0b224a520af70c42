-- Local, event-fed copies of what notifications need to know.
CREATE TABLE recipients (
    user_id TEXT PRIMARY KEY,
    email   TEXT NOT NULL,
    name    TEXT NOT NULL,
    phone   TEXT
);
CREATE TABLE order_customers (
    order_id    TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL
);
-- One row per (event, channel): a redelivered event finds its row and sends nothing.
CREATE TABLE notifications (
    id          TEXT   PRIMARY KEY,
    event_id    TEXT   NOT NULL,
    event_type  TEXT   NOT NULL,
    order_id    TEXT,
    user_id     TEXT   NOT NULL,
    channel     TEXT   NOT NULL,
    recipient   TEXT   NOT NULL,
    subject     TEXT   NOT NULL,
    location    TEXT   NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX notifications_order ON notifications (order_id);
-- Events that arrived before what they need (the user, the order's customer).
CREATE TABLE deferred (
    event_id   TEXT   PRIMARY KEY,
    waits_for  TEXT   NOT NULL,
    envelope   BYTEA  NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX deferred_waits_for ON deferred (waits_for);
