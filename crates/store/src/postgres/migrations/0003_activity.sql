-- The live tail: each event carries the id of the transaction that stored it (64 bits, never
-- wraps). A reader takes the rows of transactions older than its snapshot's xmin (all
-- finished), in (tail_xid, id) order: a transaction that commits later always has an id at or
-- above that xmin, so reading on from the last row seen misses nothing and repeats nothing.
-- Rows stored before this migration have no tail_xid and are not in the tail. Setting the
-- default after adding the column does not rewrite the table.
ALTER TABLE events ADD COLUMN tail_xid xid8;
ALTER TABLE events ALTER COLUMN tail_xid SET DEFAULT pg_current_xact_id();
CREATE INDEX events_tail ON events (tenant_id, tail_xid, id);
-- Retries of stored events, shown on the tail again, marked (kept as long as attempts).
CREATE TABLE tail_duplicates (
    tenant_id uuid NOT NULL,
    tail_xid  xid8 NOT NULL DEFAULT pg_current_xact_id(),
    id        uuid NOT NULL,
    seen_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, tail_xid, id)
);
CREATE INDEX tail_duplicates_seen ON tail_duplicates (seen_at);

-- Each delivery attempt, kept for a bounded time (pruned by every node).
CREATE TABLE delivery_attempts (
    destination_id uuid NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    at             bigint NOT NULL,
    id             uuid NOT NULL,
    tenant_id      uuid NOT NULL,
    events         uuid[] NOT NULL,
    record         jsonb NOT NULL,
    PRIMARY KEY (destination_id, at, id)
);
CREATE INDEX delivery_attempts_events ON delivery_attempts USING gin (events);
CREATE INDEX delivery_attempts_at ON delivery_attempts (at);

-- Counts per tenant and minute (minutes since the epoch); the minute 9223372036854775807
-- holds each tenant's all-time counts. Nodes add what they counted every few seconds.
CREATE TABLE activity_counts (
    tenant_id     uuid NOT NULL,
    minute        bigint NOT NULL,
    accepted      bigint NOT NULL DEFAULT 0,
    duplicates    bigint NOT NULL DEFAULT 0,
    rejected      bigint NOT NULL DEFAULT 0,
    rate_limited  bigint NOT NULL DEFAULT 0,
    delivered     bigint NOT NULL DEFAULT 0,
    dead_lettered bigint NOT NULL DEFAULT 0,
    stored_bytes  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, minute)
);
