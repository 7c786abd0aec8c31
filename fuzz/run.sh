#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each for a short while from its
# seed corpus (fuzz/corpus/<target>); fails on any crash, panic, leak or
# timeout (the input is left in fuzz/artifacts/<target>/). Used by
# scripts/test.sh; see README "Robustness: bad input and fuzzing".
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default 20 s, all)
#
# Only stable rustc exists here: cargo-fuzz passes -Z flags, so
# RUSTC_BOOTSTRAP=1 lets stable accept them (AddressSanitizer included).
# Its own target dir, so the main build cache is never disturbed.
set -euo pipefail
cd "$(dirname "$0")"
SECS="${1:-20}"
shift || true
CARGO_FUZZ_VERSION=0.13.2
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never
TARGET_DIR="${TESSERA_FUZZ_TARGET_DIR:-$HOME/.cache/tessera-fuzz-target}"

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  CARGO_TARGET_DIR="$HOME/.cache/cargo-fuzz-build" cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi

t0=$(date +%s)
cargo fuzz build --target-dir "$TARGET_DIR"
echo "fuzz: built ${#targets[@]} targets in $(( $(date +%s) - t0 ))s"

for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  # New inputs go to a scratch dir so the committed seed corpus stays small.
  scratch=$(mktemp -d)
  log=$(mktemp)
  if ! cargo fuzz run --target-dir "$TARGET_DIR" "$t" "$scratch" "corpus/$t" -- \
      -max_total_time="$SECS" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 \
      -print_final_stats=1 >"$log" 2>&1; then
    tail -60 "$log"
    echo "fuzz: $t FAILED (crash input in fuzz/artifacts/$t/)"
    rm -rf "$scratch" "$log"
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  rate=$(grep -o 'exec/s: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -o 'cov: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo "?")
  echo "fuzz: $t ok: $runs execs in ${SECS}s ($rate exec/s), coverage $cov, $(ls "$scratch" | wc -l) new inputs"
  rm -rf "$scratch" "$log"
done
echo "fuzz: all targets passed in $(( $(date +%s) - t0 ))s"
