-- Events partitioned by time, so that retention gives whole tables back instead of leaving
-- deleted rows for vacuum (`postgres/partitions.rs`). Ids start with the event's timestamp
-- (uuid order is byte order), so a range of ids is a range of time: `events` is partitioned
-- BY RANGE (id), one partition per calendar month (UTC), made ahead by the server.
--
--   events_before   [MINVALUE, cut): the table as it was, attached without copying a row;
--                   also where events with timestamps before `cut` go from now on.
--   events_yYYYYmMM one per month from `cut` on, made by the server two months ahead.
--   events_default  DEFAULT: ids no other partition takes (a timestamp beyond the months
--                   made, or in a month already dropped). Small by construction, so that
--                   attaching a month, which scans it, is quick.
--
-- A unique constraint on a partitioned table must include the partition key, so
-- exactly-once moves to `event_keys`: one row per (tenant, event_id), inserted in the
-- statement that stores the event; its primary key decides, whichever node answers.
CREATE TABLE event_keys (
    tenant_id    uuid NOT NULL,
    event_id     text NOT NULL,
    id           uuid NOT NULL,
    content_hash bytea NOT NULL,
    PRIMARY KEY (tenant_id, event_id)
);
-- No index on `id`: retention finds the keys of the events it deletes (or of a partition it
-- drops) through their (tenant_id, event_id), so ingest pays for one index, not two.
INSERT INTO event_keys (tenant_id, event_id, id, content_hash)
    SELECT tenant_id, event_id, id, content_hash FROM events;

ALTER TABLE events RENAME TO events_before;
ALTER TABLE events_before DROP CONSTRAINT events_tenant_id_event_id_key;
ALTER INDEX events_pkey RENAME TO events_before_pkey;
ALTER INDEX events_type RENAME TO events_before_type;
ALTER INDEX events_source RENAME TO events_before_source;
ALTER INDEX events_tail RENAME TO events_before_tail;
ALTER INDEX events_search RENAME TO events_before_search;
ALTER INDEX events_unsearched RENAME TO events_before_unsearched;

CREATE TABLE events (LIKE events_before INCLUDING DEFAULTS) PARTITION BY RANGE (id);
ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY (tenant_id, id);
CREATE INDEX events_type ON events (tenant_id, event_type, id);
CREATE INDEX events_source ON events (tenant_id, source, id);
CREATE INDEX events_tail ON events (tenant_id, tail_xid, id);
CREATE INDEX events_search ON events USING gin (search)
    WITH (fastupdate = on, gin_pending_list_limit = 65536);
CREATE INDEX events_unsearched ON events (tenant_id, id) WHERE search IS NULL;

CREATE TABLE events_default (LIKE events INCLUDING DEFAULTS);

DO $$
DECLARE
    this_month timestamptz := date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    next_month timestamptz := this_month + interval '1 month';
    newest uuid;
    cut_at timestamptz;
    cut uuid;
BEGIN
    -- The id of an instant: its microseconds since the epoch with the sign bit flipped, big
    -- endian, then eight zero bytes (`EventId::from_parts(micros, 0)`).
    CREATE FUNCTION pg_temp.id_at(at timestamptz) RETURNS uuid LANGUAGE sql AS
        $f$ SELECT (lpad(to_hex((extract(epoch FROM at) * 1000000)::bigint
                                # (-9223372036854775808)::bigint), 16, '0')
                    || '0000000000000000')::uuid $f$;
    -- `cut` is the first month boundary after every row older than next month (so nothing
    -- but future-dated rows moves), or two months back on a table without such rows (so a
    -- new installation has month partitions for recent events from its first day).
    SELECT id INTO newest FROM events_before WHERE id < pg_temp.id_at(next_month)
     ORDER BY id DESC LIMIT 1;
    IF newest IS NULL THEN
        cut_at := this_month - interval '2 months';
    ELSE
        cut_at := this_month - interval '2 months';
        WHILE pg_temp.id_at(cut_at) <= newest LOOP
            cut_at := cut_at + interval '1 month';
        END LOOP;
    END IF;
    cut := pg_temp.id_at(cut_at);
    INSERT INTO events_default SELECT * FROM events_before WHERE id >= cut;
    DELETE FROM events_before WHERE id >= cut;
    -- A valid constraint that implies the partition's bounds: attaching does not scan again.
    EXECUTE format('ALTER TABLE events_before ADD CONSTRAINT events_before_range CHECK (id < %L)', cut);
    EXECUTE format('ALTER TABLE events ATTACH PARTITION events_before FOR VALUES FROM (MINVALUE) TO (%L)', cut);
END
$$;
ALTER TABLE events ATTACH PARTITION events_default DEFAULT;
