CREATE TABLE users (
    user_id    TEXT   PRIMARY KEY,
    email      TEXT   NOT NULL UNIQUE,
    name       TEXT   NOT NULL,
    phone      TEXT,
    created_at BIGINT NOT NULL
);
