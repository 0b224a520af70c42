-- Checkpoints of the event store's followers (projections): the position each has read up to.
-- (Services that projected before this migration created the same table themselves.)
CREATE TABLE IF NOT EXISTS projections (
    name     TEXT    PRIMARY KEY,
    position INTEGER NOT NULL
);
