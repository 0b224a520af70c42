-- The legacy monolith's catalog, followed through change data capture: per source table and
-- SKU, the position of the last change applied (commit LSN, index in its transaction; an
-- older or repeated change is dropped) and, for stock, the legacy quantity the shop's stock
-- already reflects.
CREATE TABLE legacy_sync (
    source     TEXT   NOT NULL,
    sku        TEXT   NOT NULL,
    commit_lsn BIGINT NOT NULL,
    idx        BIGINT NOT NULL,
    quantity   BIGINT,
    PRIMARY KEY (source, sku)
);
