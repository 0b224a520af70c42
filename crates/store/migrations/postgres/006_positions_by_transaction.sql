-- Global order without a lock held across the appending transaction. An event's position is
-- its transaction's id times 2^20 plus its index within that transaction:
--     position = (pg_current_xact_id() << 20) + n
-- and readers of the global order stop below the oldest transaction still running
-- (pg_snapshot_xmin(pg_current_snapshot()) << 20). Every transaction below that bound has ended,
-- and every transaction that has not yet ended, or has not yet begun writing, has an id at or
-- above it: what a reader has passed can never gain an event, while appends of different
-- transactions overlap. (Until this migration an advisory lock serialized every appending
-- transaction of the schema to its commit.)
DO $$
BEGIN
    IF (SELECT COALESCE(MAX(position), 0) FROM events) >= (pg_current_xact_id()::text::bigint << 20) THEN
        RAISE EXCEPTION 'events.position is already at or beyond %: cannot switch to positions by transaction id',
            pg_current_xact_id()::text::bigint << 20;
    END IF;
END $$;
ALTER TABLE events ALTER COLUMN position DROP DEFAULT;
DROP SEQUENCE IF EXISTS events_position_seq;
