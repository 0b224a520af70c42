-- Sequenced dead letters: a key whose record a consumer group dead-lettered is parked in that
-- group (its head is the dead letter); the group's later records of the key wait here, in
-- arrival order, until the head is redriven and handled, or discarded.
CREATE TABLE parked_keys (
    consumer       TEXT   NOT NULL,
    msg_key        TEXT   NOT NULL,
    head_event_id  TEXT,
    head_topic     TEXT   NOT NULL,
    head_partition BIGINT NOT NULL,
    head_offset    BIGINT NOT NULL,
    head_error     TEXT   NOT NULL,
    parked_at      BIGINT NOT NULL,
    PRIMARY KEY (consumer, msg_key)
);
CREATE TABLE parked_records (
    seq           BIGSERIAL PRIMARY KEY,
    consumer      TEXT   NOT NULL,
    msg_key       TEXT   NOT NULL,
    topic         TEXT   NOT NULL,
    part          BIGINT NOT NULL,
    record_offset BIGINT NOT NULL,
    timestamp_ms  BIGINT NOT NULL,
    record_key    BYTEA,
    record_value  BYTEA  NOT NULL,
    headers       BYTEA  NOT NULL,
    parked_at     BIGINT NOT NULL,
    UNIQUE (consumer, topic, part, record_offset)
);
CREATE INDEX parked_records_key ON parked_records (consumer, msg_key, seq);
