-- The legacy monolith's catalog, followed through change data capture: per source table and
-- SKU, the WAL position of the last change applied (a repeat or an older change is dropped)
-- and, for stock, the legacy quantity the shop's stock already reflects.
CREATE TABLE legacy_sync (
    source   TEXT   NOT NULL,
    sku      TEXT   NOT NULL,
    lsn      BIGINT NOT NULL,
    quantity BIGINT,
    PRIMARY KEY (source, sku)
);
