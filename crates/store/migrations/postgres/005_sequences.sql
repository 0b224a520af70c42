-- Per-aggregate sequence numbers. `sequences`: the next number of what this database's service
-- publishes for an aggregate (assigned by the outbox in the publishing transaction, so gap-free).
-- `sequence_seen`: what a consumer of this database has handled of another producer's numbers.
CREATE TABLE sequences (
    source       TEXT    NOT NULL,
    aggregate_id TEXT    NOT NULL,
    next         BIGINT  NOT NULL,
    PRIMARY KEY (source, aggregate_id)
);
CREATE TABLE sequence_seen (
    consumer     TEXT    NOT NULL,
    source       TEXT    NOT NULL,
    aggregate_id TEXT    NOT NULL,
    last         BIGINT  NOT NULL, -- the highest number handled
    seen         BIGINT  NOT NULL, -- how many numbers were handled (each once: the inbox)
    complete     BOOLEAN NOT NULL, -- whether the consumer reads every topic the source numbers
    anomalies    BIGINT  NOT NULL,
    PRIMARY KEY (consumer, source, aggregate_id)
);
