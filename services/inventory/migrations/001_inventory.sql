-- Catalog and stock. Invariant: stocked = available + reserved + shipped, none negative.
CREATE TABLE products (
    sku         TEXT   PRIMARY KEY,
    name        TEXT   NOT NULL,
    price_minor BIGINT NOT NULL,
    currency    TEXT   NOT NULL,
    available   BIGINT NOT NULL CHECK (available >= 0),
    reserved    BIGINT NOT NULL CHECK (reserved >= 0),
    shipped     BIGINT NOT NULL CHECK (shipped >= 0),
    stocked     BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
-- One row per order: RESERVED, FAILED, RELEASED or SHIPPED.
CREATE TABLE reservations (
    order_id   TEXT   PRIMARY KEY,
    status     TEXT   NOT NULL,
    items      TEXT   NOT NULL,
    reason     TEXT,
    updated_at BIGINT NOT NULL
);
