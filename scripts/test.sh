#!/usr/bin/env bash
# The project's test command: installs what is missing, then checks
# formatting and lints and runs every test (unit and integration; the
# integration tests start their own nats-server on free ports).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
export PATH="$PATH:/usr/sbin"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --all-targets --locked
