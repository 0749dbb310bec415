# Shared by scripts/bench-search.sh and scripts/bench-search-postgres.sh: the tenant, the load
# and the searches both measure. Needs BENCH, BASE and TOKEN.

tenant() {
  curl -sf -X POST $BASE/admin/tenants -H "authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' \
    -d '{"name":"bench","rate_limit_per_minute":1000000000,"burst":100000000}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])'
}
ingest() { # key, seconds
  "$BENCH" run --url $BASE --api-key "$1" --scenario batch --batch-size 1000 --concurrency 8 \
    --warmup 2s --duration "$2s" 2>/dev/null | grep -E "^  events |^  status"
}
search() { # key, connections, seconds, query
  echo "### $4"
  "$BENCH" run --url $BASE --api-key "$1" --scenario mixed --search-share 1 --concurrency "$2" \
    --warmup 1s --duration "$3s" --search-query "$4" --timeout 120s 2>/dev/null |
    grep -E "^  requests |^  latency ms   search|^  status" || true
}
ceiling() { # seconds
  echo "## ceiling: bare axum handler parsing the same JSON (no storage)"
  "$BENCH" ceiling --listen 127.0.0.1:18090 2>/dev/null & CEILING=$!
  sleep 1
  "$BENCH" run --url http://127.0.0.1:18090 --api-key ceiling --scenario batch --batch-size 1000 \
    --concurrency 8 --warmup 2s --duration "$1s" 2>/dev/null | grep -E "^  events "
  kill $CEILING; wait $CEILING 2>/dev/null || true
}
# Sets QUERIES: searches built from events that are there (one event's order id, customer
# email and total; the catalog puts an email or a total in about 1/64 of the events).
search_queries() { # key
  local sample order email total
  sample=$(curl -sf "$BASE/v1/events?limit=1&order=asc" -H "authorization: Bearer $1")
  field() { python3 -c "import json,sys; e=json.loads(sys.argv[1])['events'][0]['payload']; print($1)" "$sample"; }
  order=$(field "e['order_id']")
  email=$(field "e['customer']['email']")
  total=$(field "e['total']")
  QUERIES=(
    "event_type=order.created&limit=100"
    "q=$order&limit=100"
    "payload.order_id=$order&limit=100"
    "q=zzzz-nothing&limit=100"
    "payload.order_id=none&limit=100"
    "q=$email&limit=100"
    "payload.customer.email=$email&limit=100"
    "payload.total=$total&limit=100"
    "payload.currency=EUR&limit=100"
    "q=example.com&limit=100"
    "event_type=order.created&q=$email&limit=100"
  )
}
