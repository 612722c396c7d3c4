#!/usr/bin/env bash
# Runs the whole system locally on its embedded defaults: a nats-server with
# JetStream (started here, storing in $DATA_DIR/nats, unless one already
# listens on $NATS_PORT), write-service, projector and read-service on the
# SQLite read store $DATA_DIR/read-model.db. Logs go to the terminal,
# prefixed by service, and to $DATA_DIR/logs/. Ctrl-C stops everything this
# script started.
#
# Settings (all optional): DATA_DIR (data), NATS_PORT (4222), WRITE_PORT
# (50051), READ_PORT (50052), PROJECTOR_PORT (50053), PROFILE (release; or
# debug to reuse the test build), SKIP_SETUP=1 to skip installing packages.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR=${DATA_DIR:-data}
NATS_PORT=${NATS_PORT:-4222}
WRITE_PORT=${WRITE_PORT:-50051}
READ_PORT=${READ_PORT:-50052}
PROJECTOR_PORT=${PROJECTOR_PORT:-50053}
PROFILE=${PROFILE:-release}

[[ ${SKIP_SETUP:-} == 1 ]] || scripts/setup.sh
export PATH="$PATH:/usr/sbin"
if [[ $PROFILE == release ]]; then
  cargo build --release --locked -p write-service -p projector -p read-service
fi
bin="target/$PROFILE"
for binary in write-service projector read-service; do
  [[ -x $bin/$binary ]] || { echo "run-local: $bin/$binary is missing; build it first (cargo build --workspace)" >&2; exit 1; }
done

mkdir -p "$DATA_DIR/logs" "$DATA_DIR/nats"
pids=()
stop() {
  trap - EXIT INT TERM
  if ((${#pids[@]})); then kill -TERM "${pids[@]}" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  echo "stopped"
}
trap stop EXIT INT TERM

run() { # name command...
  local name=$1
  shift
  "$@" > >(tee "$DATA_DIR/logs/$name.log" | sed -u "s/^/[$name] /") 2>&1 &
  pids+=($!)
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if listening "$NATS_PORT"; then
  echo "using the NATS server already listening on 127.0.0.1:$NATS_PORT"
else
  run nats nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$DATA_DIR/nats"
fi

export NATS_URL="nats://127.0.0.1:$NATS_PORT"
export READ_STORE_URL="sqlite://$DATA_DIR/read-model.db"
LISTEN_ADDR="127.0.0.1:$WRITE_PORT" run write "$bin/write-service"
LISTEN_ADDR="127.0.0.1:$PROJECTOR_PORT" run projector "$bin/projector"
LISTEN_ADDR="127.0.0.1:$READ_PORT" run read "$bin/read-service"

for port in "$WRITE_PORT" "$READ_PORT" "$PROJECTOR_PORT"; do
  for _ in $(seq 100); do listening "$port" && break; sleep 0.1; done
done

cat <<TRY

The system is up. Try it (Ctrl-C stops everything):

  grpcurl -plaintext -d '{"account_id":"acc-1","owner":"Ada Lovelace","command_id":"open-acc-1"}' \\
    127.0.0.1:$WRITE_PORT bank.v1.AccountCommandService/OpenAccount
  grpcurl -plaintext -d '{"account_id":"acc-1","amount":1500,"command_id":"dep-1"}' \\
    127.0.0.1:$WRITE_PORT bank.v1.AccountCommandService/DepositFunds
  # read your write: pass the position the command returned
  grpcurl -plaintext -d '{"account_id":"acc-1","min_position":2}' \\
    127.0.0.1:$READ_PORT bank.v1.AccountQueryService/GetAccount
  grpcurl -plaintext -d '{"account_id":"acc-1"}' \\
    127.0.0.1:$READ_PORT bank.v1.AccountQueryService/GetAccountHistory

TRY
wait -n "${pids[@]}"
