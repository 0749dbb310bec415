#!/usr/bin/env bash
# Start-up of several server binaries on one crashed store, alternating:
#   scripts/crash-start.sh STORE ROUNDS BINARY...
# STORE is a data dir left by a SIGKILL (e.g. scripts/big-store.sh's, or one killed under
# load by hand). Each start gets a fresh copy of it, so every binary replays the same
# journals; prints the time from process start until /readyz answers 200.
set -euo pipefail
STORE=$1 ROUNDS=$2
shift 2
TOKEN=bench-admin-token-0123456789
URL=http://127.0.0.1:18083
COPY=$(mktemp -d -p "$(dirname "$STORE")")
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$COPY"' EXIT
for _ in $(seq "$ROUNDS"); do
  for binary in "$@"; do
    rm -rf "$COPY/data"
    cp -a "$STORE" "$COPY/data"
    sync
    began=$(date +%s%N)
    PULSESTREAM_ADMIN_TOKEN=$TOKEN RUST_LOG=warn "$binary" serve --listen 127.0.0.1:18083 \
      --data-dir "$COPY/data" >>"$COPY/server.log" 2>&1 & server=$!
    until curl -sf $URL/readyz >/dev/null; do sleep 0.005; done
    echo "$binary: ready in $(( ($(date +%s%N) - began) / 1000000 )) ms"
    kill $server; wait $server || true
  done
done
