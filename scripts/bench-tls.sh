#!/usr/bin/env bash
# What TLS costs: the same release binaries serving plaintext and TLS side
# by side (same NATS, same read store; each write-service on its own stream,
# so that they never invalidate each other's caches), loadgen alternating
# between them, closed loop at 16 in flight. Prints each run and the
# TLS/plaintext ratios of the medians. Everything shares this machine's
# cores, loadgen's TLS client included.
#   scripts/bench-tls.sh [ROUNDS] [DURATION]    (default 3 rounds of 8s)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
duration="${2:-8s}"
cargo build --release --locked -q -p write-service -p read-service -p projector -p loadgen
bin="$PWD/target/release"
root="$PWD"
work="$(mktemp -d)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT
cd "$work"
mkdir pki store results

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=ca \
  -keyout pki/ca.key -out pki/ca.crt 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -keyout pki/server.key -out pki/server.csr 2>/dev/null
openssl x509 -req -in pki/server.csr -CA pki/ca.crt -CAkey pki/ca.key -CAcreateserial -days 1 \
  -extfile <(printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth") -out pki/server.crt 2>/dev/null

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
nats_port=$(port) plain_write=$(port) plain_read=$(port) tls_write=$(port) tls_read=$(port) projector=$(port)
"$root/scripts/nats-server" -a 127.0.0.1 -p "$nats_port" -js -sd store >/dev/null 2>&1 & pids+=($!)
sleep 1
export NATS_URL="nats://127.0.0.1:$nats_port" OTEL_SDK_DISABLED=true RUST_LOG=warn READ_STORE_URL="sqlite://$work/read.db"
tls_env=(GRPC_TLS_CERT_FILE=pki/server.crt GRPC_TLS_KEY_FILE=pki/server.key)
LISTEN_ADDR=127.0.0.1:$plain_write "$bin/write-service" 2>>services.log & pids+=($!)
LISTEN_ADDR=127.0.0.1:$projector "$bin/projector" 2>>services.log & projector_pid=$!
env "${tls_env[@]}" EVENT_STREAM=TLS_EVENTS EVENT_SUBJECT_PREFIX=tlsbank LISTEN_ADDR=127.0.0.1:$tls_write \
  "$bin/write-service" 2>>services.log & pids+=($!)
sleep 1
LISTEN_ADDR=127.0.0.1:$plain_read "$bin/read-service" 2>>services.log & pids+=($!)
env "${tls_env[@]}" LISTEN_ADDR=127.0.0.1:$tls_read "$bin/read-service" 2>>services.log & pids+=($!)
sleep 1

plain=(--write-addr "http://127.0.0.1:$plain_write" --read-addr "http://127.0.0.1:$plain_read")
tls=(--write-addr "https://localhost:$tls_write" --read-addr "https://localhost:$tls_read" --tls-ca-file pki/ca.crt)
load=(--accounts 1000 --distribution uniform --withdraw-ratio 0 --concurrency 16 --duration "$duration")
# Open the accounts on both streams and let the projector apply them; then
# stop it, or it would compete for the cores with what is measured.
"$bin/loadgen" write "${plain[@]}" --accounts 1000 --duration 1s --json >/dev/null
"$bin/loadgen" write "${tls[@]}" --accounts 1000 --duration 1s --json >/dev/null
sleep 3
kill "$projector_pid"

for round in $(seq "$rounds"); do
  for mode in plain tls; do
    declare -n addrs="$mode"
    for workload in write read; do
      "$bin/loadgen" "$workload" "${addrs[@]}" "${load[@]}" --no-setup --json 2>/dev/null \
        > "results/$mode-$workload-$round.json"
    done
  done
done

python3 - results <<'PY'
import json, pathlib, statistics, sys
runs = {}
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    mode, workload, _ = path.stem.split("-")
    for op in json.loads(path.read_text())["operations"]:
        if op["errors"]:
            sys.exit(f"{path.stem}: errors {op['errors']}")
        runs.setdefault((op["operation"], mode), []).append(op)
print(f"{'operation':<18} {'mode':<6} {'ops/s':>8} {'p50 ms':>7} {'p99 ms':>7}   (median of {len(next(iter(runs.values())))} runs)")
median = lambda ops, key: statistics.median(o[key] for o in ops)
for (operation, mode), ops in sorted(runs.items()):
    print(f"{operation:<18} {mode:<6} {median(ops, 'throughput'):>8.0f} {median(ops, 'p50_ms'):>7.2f} {median(ops, 'p99_ms'):>7.2f}")
for operation in sorted({op for op, _ in runs}):
    plain, tls = runs[(operation, "plain")], runs[(operation, "tls")]
    print(f"{operation}: TLS/plaintext throughput {median(tls, 'throughput') / median(plain, 'throughput'):.2f}, "
          f"p99 {median(tls, 'p99_ms') / median(plain, 'p99_ms'):.2f}")
PY
