#!/usr/bin/env bash
# Runs the SIGKILL crash test N times on each store and counts passes and failures.
#   scripts/soak-crash.sh N [embedded|postgres|both]
# Each run: eight writers load the real binary, SIGKILL mid-load, restart, then every
# acknowledged event must be stored exactly once and every stored event must have exactly one
# delivery queue entry. PostgreSQL at PULSESTREAM_TEST_DATABASE_URL is needed for `postgres`.
# PROFILE=release runs optimised binaries (a long first build); the default is the test profile.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:?usage: scripts/soak-crash.sh N [embedded|postgres|both]}
WHICH=${2:-both}
PROFILE_FLAG=()
if [[ "${PROFILE:-dev}" == release ]]; then PROFILE_FLAG=(--release); fi
TEST=durability::every_acknowledged_event_survives_a_sigkill_mid_load

suites=()
case "$WHICH" in
  embedded) suites=(api) ;;
  postgres) suites=(api_postgres) ;;
  both) suites=(api api_postgres) ;;
  *) echo "unknown store: $WHICH" >&2; exit 2 ;;
esac

# Build once, then run the test binaries directly: a run costs the test, not cargo.
declare -A binaries
for suite in "${suites[@]}"; do
  binaries[$suite]=$(cargo test "${PROFILE_FLAG[@]}" -q -p pulsestream-server --test "$suite" \
    --no-run --message-format=json 2>/dev/null |
    jq -r 'select(.profile.test == true and .target.name == "'"$suite"'") | .executable')
done

LOGS=$(mktemp -d)
started=$(date +%s)
for suite in "${suites[@]}"; do
  passed=0 failed=0
  for ((i = 1; i <= N; i++)); do
    if "${binaries[$suite]}" "$TEST" --exact --quiet >"$LOGS/$suite-$i.log" 2>&1; then
      passed=$((passed + 1))
      rm "$LOGS/$suite-$i.log"
    else
      failed=$((failed + 1))
      echo "$suite run $i failed: $LOGS/$suite-$i.log"
    fi
  done
  echo "$suite: $passed passed, $failed failed of $N"
done
echo "elapsed: $(($(date +%s) - started)) s; failure logs (if any) in $LOGS"
