#!/usr/bin/env bash
# Reruns every figure of BENCHMARKS.md on this machine: the ceilings (a bare HTTP server that
# parses the same JSON; the raw store) and PulseStream itself, in one run.
#   scripts/bench.sh [seconds-per-run]
# Bounded: each run lasts warmup + the given seconds (default 15), all on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-15}
cargo build --release -q -p pulsestream-server -p pulsestream-loadgen
cargo build --release -q -p pulsestream-store --example raw_append
cargo build --release -q -p pulsestream-limits --example limiter_cost
BENCH=target/release/pulsestream-bench
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
TOKEN=bench-admin-token-0123456789

run() { echo "### $*"; "$BENCH" run --admin-token "$TOKEN" --warmup 3s --duration "${SECS}s" "$@"; echo; }

echo "## ceiling: bare axum handler parsing the same JSON (no storage)"
"$BENCH" ceiling --listen 127.0.0.1:18090 & CEILING=$!
sleep 1
run --url http://127.0.0.1:18090 --scenario batch --batch-size 1000 --concurrency 8
run --url http://127.0.0.1:18090 --scenario single --concurrency 64
kill $CEILING; wait $CEILING 2>/dev/null || true

echo "## ceiling: raw store, same schema, group commit + fdatasync, no HTTP"
target/release/examples/raw_append "$WORK/raw" 1000000 1000 8
echo

echo "## pulsestream on the embedded store (durable: fdatasync per group commit)"
PULSESTREAM_ADMIN_TOKEN=$TOKEN RUST_LOG=warn target/release/pulsestream serve \
  --listen 127.0.0.1:18080 --data-dir "$WORK/server" & SERVER=$!
sleep 1
run --url http://127.0.0.1:18080 --scenario batch --batch-size 1000 --concurrency 8
run --url http://127.0.0.1:18080 --scenario batch --batch-size 1000 --concurrency 16
run --url http://127.0.0.1:18080 --scenario single --concurrency 64
run --url http://127.0.0.1:18080 --scenario single --concurrency 256
run --url http://127.0.0.1:18080 --scenario batch --batch-size 100 --concurrency 16 --duplicates 0.1
echo "peak RSS of the server (kB): $(grep VmHWM /proc/$SERVER/status | awk '{print $2}')"

echo "## search by event_type in one tenant of about a million events (embedded store; 14 s of batches first)"
KEY=$(curl -sf -X POST http://127.0.0.1:18080/admin/tenants -H "authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' \
  -d '{"name":"bench-search","rate_limit_per_minute":100000000,"burst":10000000}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')
"$BENCH" run --url http://127.0.0.1:18080 --api-key "$KEY" --scenario batch --batch-size 1000 \
  --concurrency 8 --warmup 0s --duration 14s | grep -E "events |requests "
run --url http://127.0.0.1:18080 --api-key "$KEY" --scenario mixed --search-share 1 --concurrency 16
kill $SERVER; wait $SERVER 2>/dev/null || true

echo "## start-up on the store just written ($(du -sh "$WORK/server" | cut -f1))"
START=$(date +%s%N)
PULSESTREAM_ADMIN_TOKEN=$TOKEN RUST_LOG=warn target/release/pulsestream serve \
  --listen 127.0.0.1:18080 --data-dir "$WORK/server" & SERVER=$!
until curl -sf http://127.0.0.1:18080/readyz >/dev/null; do sleep 0.01; done
echo "ready after $(( ($(date +%s%N) - START) / 1000000 )) ms"
kill $SERVER; wait $SERVER 2>/dev/null || true

echo "## rate limiter: cost of one decision"
target/release/examples/limiter_cost

# PostgreSQL (skip with PULSESTREAM_BENCH_DATABASE_URL=none): the same figures on the store
# for several nodes, next to its own ceiling, each in a fresh schema that is dropped after.
PGURL=${PULSESTREAM_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
if [ "$PGURL" != none ]; then
  SCHEMAS="bench_raw_$$ bench_srv_$$"
  for s in $SCHEMAS; do psql "$PGURL" -qc "CREATE SCHEMA $s"; done
  trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"; for s in $SCHEMAS; do psql "$PGURL" -qc "DROP SCHEMA IF EXISTS $s CASCADE" 2>/dev/null; done' EXIT
  sep='?'; case "$PGURL" in *\?*) sep='&';; esac

  echo "## ceiling: raw PostgreSQL store, same transactions (group commit, synchronous_commit on), no HTTP"
  target/release/examples/raw_append "${PGURL}${sep}options=-csearch_path%3Dbench_raw_$$" 300000 1000 8
  echo

  echo "## pulsestream on PostgreSQL (one node; synchronous_commit on)"
  PULSESTREAM_ADMIN_TOKEN=$TOKEN RUST_LOG=warn target/release/pulsestream serve \
    --listen 127.0.0.1:18081 --database-url "${PGURL}${sep}options=-csearch_path%3Dbench_srv_$$" \
    --secret-key 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f & SERVER=$!
  sleep 2
  run --url http://127.0.0.1:18081 --scenario batch --batch-size 1000 --concurrency 8
  run --url http://127.0.0.1:18081 --scenario single --concurrency 64
  echo "peak RSS of the server (kB): $(grep VmHWM /proc/$SERVER/status | awk '{print $2}')"
  kill $SERVER; wait $SERVER 2>/dev/null || true
fi
