#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 20: the
# bounded run scripts/test.sh makes on every CI run). A real campaign runs
# longer, e.g. an hour per target:
#   scripts/fuzz.sh 3600
# The corpus grows in fuzz/corpus/<target> (kept between runs, not in git);
# a crash stops the run, leaves its input in fuzz/artifacts/<target> and
# prints how to reproduce it (`cargo +nightly fuzz run <target> <file>`).
# Needs cargo-fuzz (scripts/setup.sh installs it) and a nightly toolchain
# for AddressSanitizer; without one, the targets run uninstrumented for
# memory errors (still for panics and coverage) on the stable compiler.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-20}"

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
  sanitizer=address
else
  echo "fuzz: no nightly toolchain; running without AddressSanitizer" >&2
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
  sanitizer=none
fi

"${fuzz[@]}" build --sanitizer "$sanitizer"
mkdir -p logs
for target in $("${fuzz[@]}" list); do
  mkdir -p "corpus/$target"
  log="logs/$target.log"
  echo "fuzz: $target for ${seconds}s (log: fuzz/$log)"
  if ! "${fuzz[@]}" run --sanitizer "$sanitizer" "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 > "$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz: $target failed; the input is in fuzz/artifacts/$target" >&2
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$log" | sed 's/^/  /'
done
