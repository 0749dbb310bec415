#!/usr/bin/env bash
# Runs schemathesis (property-based API testing) against /openapi.json of a real server.
#   scripts/schemathesis.sh [max-examples-per-operation]
# Builds and starts `pulsestream serve` on a temporary data dir with a known admin token,
# creates a tenant, then tests the tenant API with its key and the admin and operations
# endpoints with the admin token, every check on. PROFILE=dev uses the debug build (no long
# release build); the default is release. Needs python3 (a venv with schemathesis is made in
# target/schemathesis-venv) and jq.
set -euo pipefail
cd "$(dirname "$0")/.."
EXAMPLES=${1:-50}
TARGET=${CARGO_TARGET_DIR:-target}
if [[ "${PROFILE:-release}" == release ]]; then
  cargo build --release -q -p pulsestream-server
  BIN=$TARGET/release/pulsestream
else
  cargo build -q -p pulsestream-server
  BIN=$TARGET/debug/pulsestream
fi
VENV=${VENV:-$TARGET/schemathesis-venv}
if [[ ! -x $VENV/bin/schemathesis ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q schemathesis
fi

WORK=$(mktemp -d)
PORT=${PORT:-18095}
TOKEN=schemathesis-admin-token-0123456789
PULSESTREAM_ADMIN_TOKEN=$TOKEN "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" \
  >"$WORK/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT
BASE=http://127.0.0.1:$PORT
for _ in $(seq 100); do
  curl -sf "$BASE/readyz" >/dev/null && break
  sleep 0.1
done
KEY=$(curl -sf -X POST "$BASE/admin/tenants" -H "Authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' \
  -d '{"name": "schemathesis", "rate_limit_per_minute": 10000000, "burst": 1000000}' | jq -r .api_key)

status=0
run() {
  local name=$1 auth=$2
  shift 2
  echo "## $name"
  "$VENV/bin/schemathesis" run "$BASE/openapi.json" -H "Authorization: Bearer $auth" \
    --checks all --max-examples "$EXAMPLES" --workers 2 --seed 1 \
    --report junit --report-junit-path "$WORK/$name.xml" "$@" || status=1
}
run tenant "$KEY" --include-path-regex '^/v1/'
run admin "$TOKEN" --exclude-path-regex '^/v1/'
if grep -qE 'panicked|ERROR' "$WORK/server.log"; then
  echo "the server logged errors:"
  grep -E 'panicked|ERROR' "$WORK/server.log" | head -20
  status=1
fi
exit $status
