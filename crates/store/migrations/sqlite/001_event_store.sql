-- Event store: every event of every stream, in commit order (position).
CREATE TABLE events (
    position      INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id     TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    event_id      TEXT    NOT NULL UNIQUE,
    event_type    TEXT    NOT NULL,
    event_version INTEGER NOT NULL,
    recorded_at   INTEGER NOT NULL, -- the envelope's timestamp, ms since the epoch (UTC)
    envelope      BLOB    NOT NULL,
    UNIQUE (stream_id, version)
);
CREATE TABLE streams (
    stream_id TEXT PRIMARY KEY,
    version   INTEGER NOT NULL
);
CREATE TABLE snapshots (
    stream_id TEXT PRIMARY KEY,
    version   INTEGER NOT NULL,
    state     BLOB    NOT NULL,
    taken_at  INTEGER NOT NULL
);
