-- Transactional outbox: rows written in the same transaction as the state change they announce.
-- SQLite has one writer at a time, so id order is commit order.
CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    topic      TEXT    NOT NULL,
    msg_key    BLOB,
    payload    BLOB    NOT NULL,
    headers    BLOB    NOT NULL,
    created_at INTEGER NOT NULL -- microseconds since the epoch (UTC)
);
