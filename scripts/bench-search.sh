#!/usr/bin/env bash
# The embedded store's search index in figures, all in one run on this machine:
# - what indexing costs ingest: 1,000-event batches with --search-index true and false,
#   alternating, on fresh data dirs, beside the bare HTTP + parse ceiling;
# - one tenant filled for GEN seconds, how long the index takes to catch up and its size;
# - search latency (16 concurrent searches) by filter kind over that tenant, with the index,
#   then without it (1 connection: a scan of every event per search);
# - start-up on that store, and rebuilding a lost index.
#   scripts/bench-search.sh [generation-seconds (default 240)] [seconds-per-search (default 10)]
set -euo pipefail
cd "$(dirname "$0")/.."
GEN=${1:-240}
SECS=${2:-10}
cargo build --release -q -p pulsestream-server -p pulsestream-loadgen
BENCH=target/release/pulsestream-bench
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
TOKEN=bench-admin-token-0123456789
PORT=18080
BASE=http://127.0.0.1:$PORT
. scripts/lib/search-bench.sh

serve() { # data-dir, flags...
  PULSESTREAM_ADMIN_TOKEN=$TOKEN RUST_LOG=warn target/release/pulsestream serve \
    --listen 127.0.0.1:$PORT --data-dir "$@" & SERVER=$!
  until curl -sf $BASE/readyz >/dev/null; do sleep 0.01; done
}
stop() { kill $SERVER; wait $SERVER 2>/dev/null || true; }
metric() { curl -sf $BASE/metrics | awk -v name="$1" '$1 == name {print $2}'; }

ceiling "$SECS"

echo
echo "## ingest, 1,000-event batches, 8 connections, fresh data dir each: index on / off"
for round in 1 2 3; do
  for index in true false; do
    serve "$WORK/ingest" --search-index $index
    printf 'search-index %-5s ' $index
    ingest "$(tenant)" "$SECS"
    stop
    rm -rf "$WORK/ingest"
  done
done

echo
echo "## one tenant filled for ${GEN} s (1,000-event batches, 8 connections), index on"
serve "$WORK/big"
KEY=$(tenant)
START=$(date +%s)
ingest "$KEY" "$GEN"
echo "index behind by $(metric pulsestream_search_index_lag_seconds) s when the load ended"
until [ "$(metric pulsestream_search_index_lag_seconds)" = "0" ]; do sleep 1; done
sleep 2
INDEXED=$(metric pulsestream_search_index_documents_total)
echo "index caught up $(( $(date +%s) - START )) s after the load began: $INDEXED events indexed"
du -sb "$WORK/big/fjall" "$WORK/big/search-index" | awk -v n="$INDEXED" \
  '{printf "%-40s %8.1f MB  %6.1f bytes/event\n", $2, $1/1e6, $1/n}'

search_queries "$KEY"
echo
echo "## search with the index, 16 connections, ${SECS} s each"
for query in "${QUERIES[@]}"; do search "$KEY" 16 "$SECS" "$query"; done
echo "peak RSS of the server (kB): $(grep VmHWM /proc/$SERVER/status | awk '{print $2}')"
stop

echo
echo "## start-up on that store ($(du -sh "$WORK/big" | cut -f1))"
START=$(date +%s%N)
serve "$WORK/big"
echo "ready after $(( ($(date +%s%N) - START) / 1000000 )) ms"
stop

echo
echo "## search without the index (--search-index false): one search each"
serve "$WORK/big" --search-index false
for query in "${QUERIES[@]:1:6}"; do
  printf '%-60s' "$query"
  curl -s -o /dev/null -w ' %{http_code} in %{time_total}s\n' "$BASE/v1/events?$query" \
    -H "authorization: Bearer $KEY" || echo " failed"
done
stop

echo
echo "## rebuilding a lost index"
rm -rf "$WORK/big/search-index"
START=$(date +%s)
serve "$WORK/big"
sleep 2
until [ "$(metric pulsestream_search_index_lag_seconds)" = "0" ]; do sleep 1; done
echo "rebuilt $(metric pulsestream_search_index_documents_total) events in $(( $(date +%s) - START )) s"
stop
