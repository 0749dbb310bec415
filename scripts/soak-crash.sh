#!/usr/bin/env bash
# The crash soak: N SIGKILL cycles of the real binary on one store under mixed load
# (batches, single events, Idempotency-Keys, a live webhook receiver), per store.
#   scripts/soak-crash.sh N [embedded|postgres|both]
# After each restart the unanswered requests are sent again, every event acknowledged in the
# cycle must be stored exactly once, the last keyed request must replay, and the queue must
# hold one entry per stored event; at the end every acknowledged event is stored once (every
# page read) and has reached the receiver at least once (tests/api/soak.rs).
# PostgreSQL at PULSESTREAM_TEST_DATABASE_URL is needed for `postgres`.
# Release builds by default (PROFILE=dev for the test profile: a shorter build).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:?usage: scripts/soak-crash.sh N [embedded|postgres|both]}
WHICH=${2:-both}
PROFILE_FLAG=(--release)
if [[ "${PROFILE:-release}" == dev ]]; then PROFILE_FLAG=(); fi
TEST=soak::the_binary_sigkilled_every_cycle_loses_doubles_and_leaves_undelivered_nothing

suites=()
case "$WHICH" in
  embedded) suites=(api) ;;
  postgres) suites=(api_postgres) ;;
  both) suites=(api api_postgres) ;;
  *) echo "unknown store: $WHICH" >&2; exit 2 ;;
esac

for suite in "${suites[@]}"; do
  echo "== $suite: $N cycles"
  started=$(date +%s)
  PULSESTREAM_SOAK_CYCLES=$N cargo test "${PROFILE_FLAG[@]}" -q -p pulsestream-server \
    --test "$suite" -- "$TEST" --exact --nocapture
  echo "== $suite: $(($(date +%s) - started)) s"
done
