#!/usr/bin/env bash
# Usage: scripts/idle-destinations.sh [N]  (builds nothing: BIN defaults to target/debug/pulsestream)
# Idle CPU of a server with N destinations: creates them, waits, samples CPU time over 20 s.
set -euo pipefail
BIN=${BIN:-$(dirname "$0")/../target/debug/pulsestream}
N=${1:-2000}
DIR=$(mktemp -d)
PORT=$((20000 + RANDOM % 20000))
PULSESTREAM_ADMIN_TOKEN=admintoken-0123456789abcdef PULSESTREAM_ALLOW_PRIVATE_DESTINATIONS=true PULSESTREAM_MAX_DESTINATIONS_PER_TENANT=100000 \
  RUST_LOG=warn "$BIN" serve --listen 127.0.0.1:$PORT --data-dir "$DIR" >"${TMPDIR:-/tmp}/pulsestream-idle-server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 1 100); do curl -sf localhost:$PORT/healthz >/dev/null && break; sleep 0.1; done
KEY=$(curl -s localhost:$PORT/admin/tenants -H 'authorization: Bearer admintoken-0123456789abcdef' -H 'content-type: application/json' -d '{"name":"idle","rate_limit_per_minute":10000000,"burst":100000}' | python3 -c 'import sys,json; print(json.load(sys.stdin)["api_key"])')
python3 - "$PORT" "$KEY" "$N" <<'PY'
import sys, json, urllib.request
port, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
codes = {}
for i in range(n):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/destinations", data=json.dumps({"kind":"webhook","url":f"http://127.0.0.1:9/h{i}"}).encode(), headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
    try:
        code = urllib.request.urlopen(req).status
    except urllib.error.HTTPError as e:
        code = e.code
    codes[code] = codes.get(code, 0) + 1
print("created:", codes)
PY
sleep 5
T0=$(awk '{print $14+$15}' /proc/$PID/stat); THREADS=$(ls /proc/$PID/task | wc -l)
sleep 20
THREADS_END=$(ls /proc/$PID/task | wc -l); T1=$(awk '{print $14+$15}' /proc/$PID/stat)
TCK=$(getconf CLK_TCK)
python3 -c "print('idle cores over 20 s: %.3f, threads: %s then %s, rss MB: %d' % (($T1-$T0)/$TCK/20, '$THREADS', '$THREADS_END', int(open('/proc/$PID/status').read().split('VmRSS:')[1].split()[0])//1024))"
