CREATE TABLE shipments (
    order_id        TEXT   PRIMARY KEY,
    shipment_id     TEXT,
    status          TEXT   NOT NULL, -- SHIPPED or FAILED
    country         TEXT   NOT NULL,
    carrier         TEXT,
    tracking_number TEXT,
    reason          TEXT,
    created_at      BIGINT NOT NULL
);
