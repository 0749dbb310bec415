-- Erasure: an erased event keeps its row as a tombstone without payload (event_id, id and
-- content hash stay, so the unique constraint still answers a resend `duplicate`), marked
-- `erased` and left out of every read. Retention deletes tombstones with the other rows of
-- their time. Adding a column with a constant default does not rewrite the table.
ALTER TABLE events ADD COLUMN erased boolean NOT NULL DEFAULT false;

-- Each tenant's erasure audit log.
CREATE TABLE erasures (
    tenant_id uuid NOT NULL,
    id        uuid NOT NULL,
    record    jsonb NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
