#!/usr/bin/env bash
# Delivery throughput to a local webhook receiver, and ingest throughput while deliveries run.
#   scripts/bench-delivery.sh [seconds]
# The receiver is `pulsestream-bench ceiling` (it accepts the webhook's {"events": [...]}).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
cargo build --release -q -p pulsestream-server -p pulsestream-loadgen
BENCH=target/release/pulsestream-bench
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
TOKEN=bench-admin-token-0123456789
BASE=http://127.0.0.1:18080

"$BENCH" ceiling --listen 127.0.0.1:18091 >/dev/null & 
PULSESTREAM_ADMIN_TOKEN=$TOKEN PULSESTREAM_ALLOW_PRIVATE_DESTINATIONS=true RUST_LOG=warn \
  target/release/pulsestream serve --listen 127.0.0.1:18080 --data-dir "$WORK/server" &
sleep 1
json() { python3 -c "import sys, json; print(json.load(sys.stdin)$1)"; }
KEY=$(curl -s -X POST $BASE/admin/tenants -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '{"name": "delivery-bench", "rate_limit_per_minute": 1000000000, "burst": 100000}' | json '["api_key"]')
DEST=$(curl -s -X POST $BASE/v1/destinations -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
  -d '{"kind": "webhook", "url": "http://127.0.0.1:18091/v1/events/batch"}' | json '["id"]')

echo "### ingest while delivering: batches of 1000, 8 connections"
"$BENCH" run --url $BASE --api-key "$KEY" --scenario batch --batch-size 1000 --concurrency 8 --warmup 2s --duration "${SECS}s"
stats() { curl -s $BASE/v1/destinations/$DEST -H "Authorization: Bearer $KEY"; }
echo "### draining the queue"
START=$(date +%s.%N); FIRST=$(stats | json '["delivered"]')
for _ in $(seq 1 600); do [ "$(stats | json '["pending"]')" = "0" ] && break; sleep 0.5; done
END=$(date +%s.%N); LAST=$(stats | json '["delivered"]')
python3 -c "print(f'delivered while loading: {$FIRST}; after the load stopped: {$LAST - $FIRST} more in {$END - $START:.1f} s = {($LAST - $FIRST) / ($END - $START):.0f} events/s; total {$LAST}')"
