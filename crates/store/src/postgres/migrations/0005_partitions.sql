-- Events partitioned by time, so that retention drops whole partitions instead of deleting
-- rows (issue #14). Ids start with the event's timestamp (uuid order is byte order), so a
-- range of ids is a range of time: `events` is partitioned BY RANGE (id), a partition per
-- month, created ahead by the server (`postgres/partitions.rs`); ids outside every month
-- partition (odd client timestamps, and every row stored before this migration) live in
-- the DEFAULT partition, which retention keeps deleting row by row.
--
-- A unique constraint on a partitioned table must include the partition key, so
-- exactly-once moves to `event_keys`: one row per (tenant, event_id), inserted first in the
-- commit that stores the event; its primary key decides, whichever node answers.
CREATE TABLE event_keys (
    tenant_id    uuid NOT NULL,
    event_id     text NOT NULL,
    id           uuid NOT NULL,
    content_hash bytea NOT NULL,
    PRIMARY KEY (tenant_id, event_id)
);
INSERT INTO event_keys (tenant_id, event_id, id, content_hash)
    SELECT tenant_id, event_id, id, content_hash FROM events;
-- Retention deletes keys by id range (a dropped partition's) or by ids.
CREATE INDEX event_keys_id ON event_keys (id);

-- The existing table becomes the DEFAULT partition, as it is: no row is copied.
ALTER TABLE events RENAME TO events_default;
ALTER TABLE events_default DROP CONSTRAINT events_tenant_id_event_id_key;
ALTER INDEX events_pkey RENAME TO events_default_pkey;
ALTER INDEX events_type RENAME TO events_default_type;
ALTER INDEX events_source RENAME TO events_default_source;
ALTER INDEX events_payload RENAME TO events_default_payload;
ALTER INDEX events_tail RENAME TO events_default_tail;

CREATE TABLE events (LIKE events_default INCLUDING DEFAULTS) PARTITION BY RANGE (id);
ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY (tenant_id, id);
CREATE INDEX events_type ON events (tenant_id, event_type, id);
CREATE INDEX events_source ON events (tenant_id, source, id);
CREATE INDEX events_payload ON events USING gin (payload jsonb_path_ops);
CREATE INDEX events_tail ON events (tenant_id, tail_xid, id);
-- The partition's own indexes have the same definitions: they are attached, not rebuilt.
ALTER TABLE events ATTACH PARTITION events_default DEFAULT;
