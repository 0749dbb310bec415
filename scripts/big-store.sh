#!/usr/bin/env bash
# The embedded store at size (issue #13's start-up, disk and memory goals), on the release
# binary, in a fresh data dir:
#   scripts/big-store.sh [events] [memory-minutes]
# 1. Writes `events` (default 10,000,000) in 1,000-event batches over 8 connections, then
#    prints bytes written to disk (`/proc/<pid>/io` write_bytes) per byte of event JSON (the
#    segment log's record bytes less their 8-byte headers).
# 2. Start-up on that store: after a clean stop, and after a SIGKILL under load.
# 3. With `memory-minutes` > 0 (default 0): an open loop of 100-event batches at 200
#    requests/s for that long, resident memory sampled every 10 s; prints the peak of the
#    first third and of the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-10000000}
MINUTES=${2:-0}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p pulsestream-server -p pulsestream-loadgen
BENCH=target/release/pulsestream-bench
WORK=$(mktemp -d -p "${BIG_STORE_DIR:-/tmp}")
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
TOKEN=bench-admin-token-0123456789
URL=http://127.0.0.1:18082

# Starts the server; sets SERVER and READY_MS (process start until /readyz answers 200).
start() {
  local began; began=$(date +%s%N)
  PULSESTREAM_ADMIN_TOKEN=$TOKEN RUST_LOG=warn target/release/pulsestream serve \
    --listen 127.0.0.1:18082 --data-dir "$WORK/data" >>"$WORK/server.log" 2>&1 & SERVER=$!
  until curl -sf $URL/readyz >/dev/null; do sleep 0.005; done
  READY_MS=$(( ($(date +%s%N) - began) / 1000000 ))
}

echo "## writing $EVENTS events"
start
# Runs of 20 s until the store holds the events asked for (counted from the answers).
STORED=0
while [ "$STORED" -lt "$EVENTS" ]; do
  RUN=$("$BENCH" run --url $URL --admin-token "$TOKEN" --scenario batch --batch-size 1000 \
    --concurrency 8 --warmup 0s --duration 20s)
  STORED=$(( STORED + $(echo "$RUN" | awk '$1 == "events" {print $2}') ))
  echo "$RUN" | grep -E "^  events |latency" | sed "s/^/  /"
done
written=$(awk '$1 == "write_bytes:" {print $2}' /proc/$SERVER/io)
records=$(find "$WORK/data/segments" -name '*.seg' -printf '%s\n' | awk '{s+=$1} END {print s}')
echo "bytes written: $written; segment log: $records bytes for $STORED events"
python3 -c "print(f'bytes written per byte of event JSON: {$written / ($records - 8 * $STORED):.2f}')"
echo "store on disk: $(du -sh "$WORK/data" | cut -f1)"
STOPPING=$(date +%s%N)
kill $SERVER; wait $SERVER 2>/dev/null || true
echo "## graceful stop took $(( ($(date +%s%N) - STOPPING) / 1000000 )) ms"

start
echo "## start-up after a clean stop: $READY_MS ms"
"$BENCH" run --url $URL --admin-token "$TOKEN" --scenario batch --batch-size 1000 \
  --concurrency 8 --warmup 0s --duration 5s >/dev/null &
LOAD=$!
sleep 4
kill -9 $SERVER; wait $SERVER 2>/dev/null || true
wait $LOAD 2>/dev/null || true
start
echo "## start-up after a SIGKILL under load: $READY_MS ms"

if [ "$MINUTES" -gt 0 ]; then
  echo "## open loop for $MINUTES minutes: 100-event batches at 200 requests/s"
  "$BENCH" run --url $URL --admin-token "$TOKEN" --scenario batch --batch-size 100 \
    --concurrency 16 --rate 200 --warmup 0s --duration "${MINUTES}m" | grep -E "events |requests |p99|dropped" &
  LOAD=$!
  : > "$WORK/rss"
  while kill -0 $LOAD 2>/dev/null; do
    echo "$(date +%s) $(awk '/VmRSS/ {print $2}' /proc/$SERVER/status)" >> "$WORK/rss"
    sleep 10
  done
  python3 - "$WORK/rss" "$MINUTES" <<'PY'
import sys
rows = [tuple(map(int, line.split())) for line in open(sys.argv[1]) if len(line.split()) == 2]
t0 = rows[0][0]
third = int(sys.argv[2]) * 60 / 3
first = max(r for t, r in rows if t - t0 < third)
rest = max(r for t, r in rows if t - t0 >= third)
print(f"peak RSS, first third: {first / 1024:.0f} MiB; the rest: {rest / 1024:.0f} MiB ({(rest / first - 1) * 100:+.1f} %)")
print("samples (minute, MiB):", " ".join(f"{(t - t0) // 60}:{r // 1024}" for t, r in rows[::6]))
PY
fi
kill $SERVER; wait $SERVER 2>/dev/null || true
