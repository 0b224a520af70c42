-- The card vault: card numbers, encrypted (AES-256-GCM) under the key named by key_id, by token.
-- The token names the card (an HMAC of it under the vault's token secret) and is what every
-- event and every other service carries, with the last four digits; only this service can
-- turn a token back into a card, to charge it.
CREATE TABLE vault (
    token      TEXT   PRIMARY KEY,
    last4      TEXT   NOT NULL,
    key_id     TEXT   NOT NULL,
    nonce      BYTEA  NOT NULL,
    ciphertext BYTEA  NOT NULL,
    created_at BIGINT NOT NULL
);
