-- Event store: every event of every stream, in commit order (position). Appends hold a
-- transaction-scoped advisory lock while they allocate positions, so positions become visible in
-- order and a reader following `position` never skips an event that commits late.
CREATE TABLE events (
    position      BIGSERIAL PRIMARY KEY,
    stream_id     TEXT   NOT NULL,
    version       BIGINT NOT NULL,
    event_id      TEXT   NOT NULL UNIQUE,
    event_type    TEXT   NOT NULL,
    event_version BIGINT NOT NULL,
    recorded_at   BIGINT NOT NULL,
    envelope      BYTEA  NOT NULL,
    UNIQUE (stream_id, version)
);
CREATE TABLE streams (
    stream_id TEXT PRIMARY KEY,
    version   BIGINT NOT NULL
);
CREATE TABLE snapshots (
    stream_id TEXT PRIMARY KEY,
    version   BIGINT NOT NULL,
    state     BYTEA  NOT NULL,
    taken_at  BIGINT NOT NULL
);
