#!/usr/bin/env bash
# Usage: scripts/fan-out-search.sh [N]  (BIN defaults to target/debug/pulsestream)
# Fan-out: N destinations (refused URLs), one event and a 100-event batch, then limit=1 searches.
BIN=${BIN:-$(dirname "$0")/../target/debug/pulsestream}
N=${1:-2000}
DIR=$(mktemp -d)
PORT=$((20000 + RANDOM % 20000))
PULSESTREAM_ADMIN_TOKEN=admintoken-0123456789abcdef PULSESTREAM_ALLOW_PRIVATE_DESTINATIONS=true PULSESTREAM_MAX_DESTINATIONS_PER_TENANT=100000 \
  RUST_LOG=error "$BIN" serve --listen 127.0.0.1:$PORT --data-dir "$DIR" >"${TMPDIR:-/tmp}/pulsestream-idle-server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 1 100); do curl -sf localhost:$PORT/healthz >/dev/null && break; sleep 0.1; done
KEY=$(curl -s localhost:$PORT/admin/tenants -H 'authorization: Bearer admintoken-0123456789abcdef' -H 'content-type: application/json' -d '{"name":"f","rate_limit_per_minute":10000000,"burst":100000}' | python3 -c 'import sys,json; print(json.load(sys.stdin)["api_key"])')
python3 - "$PORT" "$KEY" "$N" <<'PY'
import sys, json, urllib.request, time
port, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
h = {"authorization": f"Bearer {key}", "content-type": "application/json"}
def post(path, body):
    return urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), headers=h)).status
for i in range(n):
    post("/v1/destinations", {"kind":"webhook","url":f"http://127.0.0.1:9/h{i}"})
time.sleep(3)
post("/v1/events", {"event_type":"fan.out"})
post("/v1/events/batch", {"events":[{"event_type":"fan.out","payload":{"i":i}} for i in range(100)]})
worst = 0
for _ in range(20):
    t = time.time()
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/v1/events?limit=1", headers=h)).read()
    worst = max(worst, time.time() - t)
    time.sleep(0.25)
print("slowest limit=1 search over 5 s after fan-out: %.0f ms" % (worst*1000))
PY
echo "threads: $(ls /proc/$PID/task | wc -l), rss MB: $(( $(grep VmRSS /proc/$PID/status | awk '{print $2}') / 1024 ))"
