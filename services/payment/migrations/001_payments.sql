-- One row per order: COMPLETED, FAILED, REFUNDED, or CANCELLED (compensated before any charge).
CREATE TABLE payments (
    order_id     TEXT   PRIMARY KEY,
    payment_id   TEXT,
    status       TEXT   NOT NULL,
    amount_minor BIGINT NOT NULL,
    currency     TEXT   NOT NULL,
    card_last4   TEXT   NOT NULL,
    reason       TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
