-- Ordered delivery: each queued entry of a destination with `ordering` carries its key (a
-- 64-bit hash) and a sequence number drawn when it is stored, which orders the entries of a
-- key (ingest order); both NULL for destinations without ordering. Dead letters keep them,
-- so a replayed event goes back to its place.
CREATE SEQUENCE outbox_order_seq;
ALTER TABLE outbox ADD COLUMN order_key bigint, ADD COLUMN order_seq bigint;
ALTER TABLE dead_letters ADD COLUMN order_key bigint, ADD COLUMN order_seq bigint;
