-- Indexed full text and payload paths. `search` holds, for each event, the word starts of its
-- payload's strings and numbers (as full text reads them) and a key per payload scalar (path
-- and value, numbers by value), written by PulseStream with the row; one GIN index serves `q`
-- and `payload.<path>=value` and replaces the JSONB containment index, which could not
-- compare numbers by value. Adding a nullable column does not rewrite the table.
ALTER TABLE events ADD COLUMN search tsvector;

-- Rows written before this version have no `search` yet: the node that migrates fills it in
-- the background, and until then searches take those rows as candidates through this index
-- (it empties as the backfill goes).
CREATE INDEX events_unsearched ON events (tenant_id, id) WHERE search IS NULL;

-- fastupdate gathers new entries in a pending list that is merged into the index in bulk.
-- PulseStream merges it itself, off the ingest path (`postgres/search.rs`, `merge_pending`);
-- an insert merges it only past gin_pending_list_limit (64 MB, in kB), which bounds what a
-- search reads when no node merges.
CREATE INDEX events_search ON events USING gin (search)
    WITH (fastupdate = on, gin_pending_list_limit = 65536);

DROP INDEX events_payload;
