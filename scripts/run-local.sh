#!/usr/bin/env bash
# Runs the system locally on its embedded defaults: a nats-server with
# JetStream on 127.0.0.1:4222 (started here, with its store in data/nats,
# unless one is already listening) and the services in release builds.
# Logs go to the terminal, prefixed by service, and to data/logs/. Ctrl-C
# stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
export PATH="$PATH:/usr/sbin"
cargo build --release --locked -p write-service

mkdir -p data/logs data/nats
pids=()
stop() {
  trap - EXIT INT TERM
  ((${#pids[@]})) && kill -TERM "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop EXIT INT TERM

run() { # name command...
  local name=$1; shift
  "$@" > >(tee "data/logs/$name.log" | sed -u "s/^/[$name] /") 2>&1 &
  pids+=($!)
}

if (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
  echo "using the NATS server already listening on 127.0.0.1:4222"
else
  run nats nats-server -a 127.0.0.1 -p 4222 -js -sd data/nats
fi
run write target/release/write-service

sleep 1
cat <<'TRY'

The system is up. Try it (Ctrl-C stops everything):

  grpcurl -plaintext -d '{"account_id":"acc-1","owner":"Ada Lovelace","command_id":"open-acc-1"}' \
    127.0.0.1:50051 bank.v1.AccountCommandService/OpenAccount
  grpcurl -plaintext -d '{"account_id":"acc-1","amount":1500,"command_id":"dep-1"}' \
    127.0.0.1:50051 bank.v1.AccountCommandService/DepositFunds

TRY
wait -n "${pids[@]}"
