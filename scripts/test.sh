#!/usr/bin/env bash
# The project's test command: installs what is missing, then checks
# formatting and lints and runs every test (unit and integration; the
# integration tests start their own nats-server, the pinned release of
# scripts/nats-server, on free ports).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh test

# The PostgreSQL tests create a fresh read_model_<uuid> database each; drop
# those earlier runs left behind.
if command -v psql >/dev/null; then
  psql -h 127.0.0.1 -U postgres -d test -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'read\_model\_%'" 2>/dev/null |
    while read -r database; do psql -h 127.0.0.1 -U postgres -d test -qc "DROP DATABASE \"$database\"" || true; done
fi

scripts/check-deploy.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The end-to-end tests run every service's binary; `cargo test` only builds
# the binaries of packages that have integration tests of their own.
cargo build --workspace --locked
cargo test --workspace --all-targets --locked
# The benchmarks only have to run here (tiny sizes, debug build): their
# figures come from `python3 scripts/bench.py` on a quiet machine.
python3 scripts/bench.py --smoke --profile debug > /dev/null
python3 scripts/bench-scaling.py --smoke --profile debug > /dev/null
# A bounded run of every fuzz target; a campaign is `scripts/fuzz.sh 3600`.
scripts/fuzz.sh 20
