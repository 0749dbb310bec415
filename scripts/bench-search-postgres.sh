#!/usr/bin/env bash
# The PostgreSQL store's search index (the `search` tsvector column and its GIN index) in
# figures, all in one run on this machine:
# - what indexing costs ingest: 1,000-event batches with this build and, when BASELINE names
#   a build without the index (the previous release's binary), with that one, alternating,
#   each on a fresh schema, beside the bare HTTP + parse ceiling;
# - one tenant filled for GEN seconds, VACUUM ANALYZE (what autovacuum does in steady state),
#   the table's and the index's size per event;
# - search latency (16 concurrent searches) by filter kind over that tenant;
# - the backfill: `search` emptied on the newest million rows (as after upgrading a database
#   from before it), the time a node takes to fill it again.
#   [BASELINE=path/to/pulsestream] [PULSESTREAM_BENCH_DATABASE_URL=postgres://…]
#   scripts/bench-search-postgres.sh [generation-seconds (default 420)] [seconds-per-search (default 10)]
set -euo pipefail
cd "$(dirname "$0")/.."
GEN=${1:-420}
SECS=${2:-10}
PGURL=${PULSESTREAM_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
cargo build --release -q -p pulsestream-server -p pulsestream-loadgen
BENCH=target/release/pulsestream-bench
TOKEN=bench-admin-token-0123456789
PORT=18080
BASE=http://127.0.0.1:$PORT
. scripts/lib/search-bench.sh
SCHEMA=bench_search_$$
sep='?'; case "$PGURL" in *\?*) sep='&';; esac
URL="${PGURL}${sep}options=-csearch_path%3D$SCHEMA"
sql() { psql "$PGURL" -qAt -c "SET search_path = $SCHEMA" -c "$1"; } # one transaction per -c
fresh() { psql "$PGURL" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE; CREATE SCHEMA $SCHEMA" 2>/dev/null; }
trap 'kill $(jobs -p) 2>/dev/null || true; psql "$PGURL" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" 2>/dev/null' EXIT

serve() { # binary
  PULSESTREAM_ADMIN_TOKEN=$TOKEN RUST_LOG=warn "$1" serve --listen 127.0.0.1:$PORT \
    --database-url "$URL" \
    --secret-key 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f & SERVER=$!
  until curl -sf $BASE/readyz >/dev/null; do sleep 0.05; done
}
stop() { kill $SERVER; wait $SERVER 2>/dev/null || true; }

ceiling "$SECS"

if [ -n "${BASELINE:-}" ]; then
  echo
  echo "## ingest, 1,000-event batches, 8 connections, 30 s, fresh schema each: this build / BASELINE"
  for round in 1 2 3; do
    for bin in target/release/pulsestream "$BASELINE"; do
      fresh
      serve "$bin"
      printf '%-40s ' "$bin"
      ingest "$(tenant)" 30
      stop
    done
  done
fi

echo
echo "## one tenant filled for ${GEN} s (1,000-event batches, 8 connections)"
fresh
serve target/release/pulsestream
KEY=$(tenant)
ingest "$KEY" "$GEN"
START=$(date +%s)
sql "VACUUM ANALYZE events"
echo "VACUUM ANALYZE took $(( $(date +%s) - START )) s"
sql "SELECT count(*) AS events,
            pg_size_pretty((SELECT sum(pg_table_size(relid)) FROM pg_partition_tree('events'))) AS table_size,
            pg_size_pretty((SELECT sum(pg_relation_size(relid)) FROM pg_partition_tree('events_search'))) AS search_index,
            round((SELECT sum(pg_relation_size(relid)) FROM pg_partition_tree('events_search'))::numeric / count(*), 1) AS index_bytes_per_event,
            round(avg(pg_column_size(search)), 1) AS search_column_bytes_per_event
       FROM events" | tr '|' ' ' |
  awk '{print "events " $1 ", table " $2 " " $3 ", GIN index " $4 " " $5 " (" $6 " B/event), search column " $7 " B/event"}'

search_queries "$KEY"
echo
echo "## search, 16 connections, ${SECS} s each"
for query in "${QUERIES[@]}"; do search "$KEY" 16 "$SECS" "$query"; done
stop

echo
echo "## the backfill: search emptied on the newest 1,000,000 rows, then a node started"
START=$(date +%s)
sql "UPDATE events SET search = NULL WHERE id >= (SELECT id FROM events ORDER BY id DESC OFFSET 999999 LIMIT 1)"
echo "emptied in $(( $(date +%s) - START )) s"
START=$(date +%s%N)
serve target/release/pulsestream
until [ "$(sql "SELECT count(*) FROM events WHERE search IS NULL")" = "0" ]; do sleep 0.5; done
echo "filled 1,000,000 events in $(( ($(date +%s%N) - START) / 1000000 )) ms"
stop
