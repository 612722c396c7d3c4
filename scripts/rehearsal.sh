#!/usr/bin/env bash
# The operations rehearsal at full size (projector/tests/e2e/rehearsal.rs;
# scripts/test.sh runs it small): the three services in release builds
# under steady load, a real Prometheus loading the shipped rules, a real
# Alertmanager, and every scenario (steady, cancelled call, a rebuild of
# REHEARSAL_EVENTS events under writes, a dead letter, a side killed, a
# stalled projector). Prints the timeline (scenario, alert, time to fire and
# to resolve) and saves a PNG chart per side over the whole run, scenarios
# marked, into REHEARSAL_SCREENSHOTS (drawn from Prometheus's query API,
# rendered by headless Debian chromium).
#
#   scripts/rehearsal.sh                      # 500,000 events, charts in docs/img/rehearsal
#   REHEARSAL_EVENTS=100000 scripts/rehearsal.sh
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh test
if ! command -v chromium >/dev/null; then
  echo "rehearsal: installing chromium (for the screenshots)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
# The test runs the sibling binaries of the same profile.
cargo build --workspace --release --locked
REHEARSAL_EVENTS="${REHEARSAL_EVENTS:-500000}" \
  REHEARSAL_SCREENSHOTS="${REHEARSAL_SCREENSHOTS:-$PWD/docs/img/rehearsal}" \
  cargo test --release --locked -p projector --test e2e rehearsal -- --nocapture --test-threads 1
