#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a fixed time and prints libFuzzer's summary.
#   scripts/fuzz.sh [seconds-per-target] [target...]
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain, or RUSTC_BOOTSTRAP=1
# on stable. Crashes are kept in fuzz/artifacts/<target>/; the corpus grows in fuzz/corpus/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS=${1:-60}
shift || true
TARGETS=("$@")
if [[ ${#TARGETS[@]} -eq 0 ]]; then TARGETS=(event_from_json batch_body search_query stored_decoders); fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  TOOLCHAIN=(+nightly)
else
  TOOLCHAIN=()
  export RUSTC_BOOTSTRAP=1
fi
# The fuzz build has its own target dir: its instrumented artifacts would only evict the
# workspace's from a shared cache.
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$PWD/target}
status=0
for target in "${TARGETS[@]}"; do
  echo "## $target (${SECS}s)"
  mkdir -p "corpus/$target"
  log=$(mktemp)
  # -rss_limit_mb: a leak or an unbounded allocation fails the run like a crash does.
  # No sanitizer: the workspace forbids unsafe code, so ASan would mostly slow the search.
  if cargo "${TOOLCHAIN[@]}" fuzz run --sanitizer none "$target" "corpus/$target" -- \
    -max_total_time="$SECS" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)|^Done' "$log" || tail -5 "$log"
  else
    status=1
    echo "CRASH or error in $target:"
    grep -E 'panicked|ERROR|SUMMARY|Test unit written|artifact' "$log" | head -20 || tail -30 "$log"
  fi
  echo "corpus: $(ls "corpus/$target" | wc -l) inputs"
  rm -f "$log"
done
exit $status
