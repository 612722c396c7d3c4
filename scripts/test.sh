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
# The end-to-end tests run every service's binary; `cargo test` only builds
# the binaries of packages that have integration tests of their own.
cargo build --workspace --locked
cargo test --workspace --all-targets --locked
