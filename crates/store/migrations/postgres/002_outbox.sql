-- Transactional outbox. Ids come from a sequence, so id order is not commit order across
-- transactions; enqueue takes a transaction-scoped advisory lock per message key, which makes id
-- order equal commit order for each key — the order the relay promises.
CREATE TABLE outbox (
    id         BIGSERIAL PRIMARY KEY,
    topic      TEXT   NOT NULL,
    msg_key    BYTEA,
    payload    BYTEA  NOT NULL,
    headers    BYTEA  NOT NULL,
    created_at BIGINT NOT NULL
);
