-- Inbox: ids of handled messages per consumer, written with the handler's effects.
CREATE TABLE inbox (
    consumer   TEXT   NOT NULL,
    message_id TEXT   NOT NULL,
    handled_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX inbox_handled_at ON inbox (handled_at);
