#!/usr/bin/env bash
# Runs the whole system locally on its embedded defaults: a nats-server with
# JetStream (the pinned release, started here, storing in $DATA_DIR/nats;
# a server already listening on $NATS_PORT is used only if it is 2.11 or
# later, else ours takes the next free port), write-service, projector and
# read-service on the SQLite read store $DATA_DIR/read-model.db. Each
# service serves its metrics on METRICS_PORT (9464), +1 (read), +2
# (projector), for scraping and for cqrs-top; traces go over OTLP to
# $OTEL_EXPORTER_OTLP_ENDPOINT, or to a collector listening on
# 127.0.0.1:4317, and with neither stay local. Logs go to the terminal,
# prefixed by service, and to $DATA_DIR/logs/. A service that stops leaves
# the others running; Ctrl-C stops everything this script started.
#
# Settings (all optional): DATA_DIR (data), NATS_PORT (4222), WRITE_PORT
# (50051), READ_PORT (50052), PROJECTOR_PORT (50053), METRICS_PORT (9464),
# PROFILE (release; or debug to reuse the test build), SKIP_SETUP=1 to skip
# installing packages.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR=${DATA_DIR:-data}
NATS_PORT=${NATS_PORT:-4222}
WRITE_PORT=${WRITE_PORT:-50051}
READ_PORT=${READ_PORT:-50052}
PROJECTOR_PORT=${PROJECTOR_PORT:-50053}
PROFILE=${PROFILE:-release}

[[ ${SKIP_SETUP:-} == 1 ]] || scripts/setup.sh run
if [[ $PROFILE == release ]]; then
  cargo build --release --locked -p write-service -p projector -p read-service -p top -p loadgen
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

# The version a NATS server announces in its INFO line.
nats_version() {
  local info
  info=$(timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1; head -1 <&3" 2>/dev/null || true)
  sed -nE 's/.*"version":"([^"]+)".*/\1/p' <<<"$info"
}
at_least_2_11() { [[ "$(printf '%s\n' 2.11.0 "$1" | sort -V | head -1)" == 2.11.0 ]]; }

if listening "$NATS_PORT"; then
  version=$(nats_version "$NATS_PORT")
  if [[ -n $version ]] && at_least_2_11 "$version"; then
    echo "using nats-server $version, already listening on 127.0.0.1:$NATS_PORT"
  else
    old=$NATS_PORT
    while listening "$NATS_PORT"; do NATS_PORT=$((NATS_PORT + 1)); done
    echo "the nats-server on 127.0.0.1:$old is ${version:-of an unknown version}, older than 2.11 (the write side needs 2.11+):"
    echo "starting the pinned release on 127.0.0.1:$NATS_PORT instead"
  fi
fi
if ! listening "$NATS_PORT"; then
  run nats scripts/nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$DATA_DIR/nats"
  for _ in $(seq 100); do listening "$NATS_PORT" && break; sleep 0.1; done
fi

# Metrics are served by each service for scraping (and for cqrs-top) on
# METRICS_PORT, +1, +2; traces go over OTLP when a collector listens.
METRICS_PORT=${METRICS_PORT:-9464}
export OTEL_METRICS_EXPORTER=${OTEL_METRICS_EXPORTER:-prometheus} OTEL_EXPORTER_PROMETHEUS_HOST=127.0.0.1
if [[ ${OTEL_SDK_DISABLED:-} == true ]]; then
  echo "telemetry: export is off (OTEL_SDK_DISABLED=true)"
elif [[ -n ${OTEL_EXPORTER_OTLP_ENDPOINT:-} ]] || listening 4317; then
  echo "telemetry: traces over OTLP to ${OTEL_EXPORTER_OTLP_ENDPOINT:-http://127.0.0.1:4317}"
else
  echo "telemetry: no OTLP collector on 127.0.0.1:4317, so traces are not exported (OTEL_TRACES_EXPORTER=none);"
  echo "  start one there, or set OTEL_EXPORTER_OTLP_ENDPOINT, to see them"
  export OTEL_TRACES_EXPORTER=none
fi

export NATS_URL="nats://127.0.0.1:$NATS_PORT"
export READ_STORE_URL="sqlite://$DATA_DIR/read-model.db"
LISTEN_ADDR="127.0.0.1:$WRITE_PORT" OTEL_EXPORTER_PROMETHEUS_PORT=$METRICS_PORT run write "$bin/write-service"
LISTEN_ADDR="127.0.0.1:$PROJECTOR_PORT" OTEL_EXPORTER_PROMETHEUS_PORT=$((METRICS_PORT + 2)) run projector "$bin/projector"
LISTEN_ADDR="127.0.0.1:$READ_PORT" OTEL_EXPORTER_PROMETHEUS_PORT=$((METRICS_PORT + 1)) run read "$bin/read-service"

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

Watch the three sides live, in another terminal (put load on with loadgen):

  $bin/cqrs-top
  $bin/loadgen mixed --duration 60s

TRY
# Until Ctrl-C: a service that stops (or is stopped, to watch what the
# others do without it) leaves the rest running; its log says why.
wait
