-- Ordered delivery: each queued entry of a destination with `ordering` carries its key
-- (a 64-bit hash); NULL for destinations without ordering. Dead letters keep it, so a replay
-- puts the event back in its place.
ALTER TABLE outbox ADD COLUMN order_key bigint;
ALTER TABLE dead_letters ADD COLUMN order_key bigint;
