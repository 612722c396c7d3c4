#!/usr/bin/env python3
"""The scale-out figures of docs/scaling.md, in one run on this machine:

 1. projector catch-up into PostgreSQL from a seeded log, for 1, 2 and 4
    partitions in one process and 4 partitions over two processes:
    events/s, and CPU per event (the projectors' own, and the whole
    machine's: PostgreSQL and nats-server included);
 2. the write path on a 3-server JetStream cluster (R3 stream,
    sync_interval: always, as the production overlay) against one server
    with the same fsync setting: deposits/s and p99 at 64 in flight.

    python3 scripts/bench-scaling.py            # release build, ~5 min
    python3 scripts/bench-scaling.py --smoke --profile debug

Private servers on free ports and temp dirs; one fresh PostgreSQL database
per catch-up (created and dropped on $BENCH_DATABASE_URL's server).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the same stack, loadgen driver and helpers)

ROOT = bench.ROOT


def machine_busy_seconds():
    """CPU seconds the whole machine has spent not idle, so far."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def checkpoint_low(url):
    result = subprocess.run(["psql", url, "-qAtc", "SELECT MIN(position) FROM projection_checkpoints"],
                            capture_output=True, text=True)
    return int(result.stdout.strip() or 0) if result.returncode == 0 else 0


def catch_up(stack, args, last, partitions, processes):
    """Starts `processes` projectors of `partitions` on a fresh database and
    times them to the end of the log."""
    name = f"bench_{uuid.uuid4().hex[:12]}"
    if not bench.create_database(args.database_url, name):
        raise SystemExit("bench-scaling: PostgreSQL is unreachable")
    url = f"{args.database_url.rpartition('/')[0]}/{name}"
    env = {"NATS_URL": stack.nats_url, "READ_STORE_URL": url, "OTEL_SDK_DISABLED": "true",
           "PROJECTOR_PARTITIONS": str(partitions)}
    names = [f"projector-{i}" for i in range(processes)]
    try:
        busy, started = machine_busy_seconds(), time.time()
        for process in names:
            stack.start(process, [str(stack.bin / "projector")], dict(env, LISTEN_ADDR=f"127.0.0.1:{bench.free_port()}"))
        while checkpoint_low(url) < last:
            if time.time() - started > 600:
                raise SystemExit("bench-scaling: the catch-up took more than 10 minutes")
            time.sleep(0.05)
        elapsed = time.time() - started
        projector_cpu = sum(stack.cpu_seconds(process) for process in names)
        machine_cpu = machine_busy_seconds() - busy
    finally:
        for process in names:
            stack.stop(process)
        bench.drop_database(args.database_url, name)
    return {"partitions": partitions, "processes": processes, "rate": last / elapsed,
            "projector_us": projector_cpu * 1e6 / last, "machine_us": machine_cpu * 1e6 / last}


def cluster(work, size):
    """Starts `size` nats-servers as one JetStream cluster (or a single server
    when 1), all with sync_interval: always. Returns (url, processes)."""
    ports = [bench.free_port() for _ in range(size)]
    routes = [bench.free_port() for _ in range(size)]
    processes = []
    for i in range(size):
        config = work / f"nats-{size}-{i}.conf"
        text = f"server_name: n{i}\nlisten: 127.0.0.1:{ports[i]}\n" \
               f"jetstream {{ store_dir: \"{work / f'js-{size}-{i}'}\", sync_interval: always }}\n"
        if size > 1:
            peers = ", ".join(f"nats://127.0.0.1:{r}" for j, r in enumerate(routes) if j != i)
            text += f"cluster {{ name: bench, listen: 127.0.0.1:{routes[i]}, no_advertise: true, routes: [{peers}] }}\n"
        config.write_text(text)
        log = open(work / f"nats-{size}-{i}.log", "ab")
        processes.append(subprocess.Popen([bench.nats_server(), "-c", str(config)], stdout=log, stderr=log))
    for port in ports:
        bench.wait_for(lambda port=port: bench.tcp_open(port), "nats-server")
    return ",".join(f"nats://127.0.0.1:{p}" for p in ports), processes


def write_path(stack, args, size):
    url, servers = cluster(stack.work, size)
    port = bench.free_port()
    try:
        stack.start("write-service", [str(stack.bin / "write-service")],
                    {"NATS_URL": url, "EVENT_STREAM_REPLICAS": str(size), "OTEL_SDK_DISABLED": "true",
                     "LISTEN_ADDR": f"127.0.0.1:{port}"})
        bench.wait_for(lambda: bench.serving(port), "write-service", timeout=120)
        bench.loadgen(stack, "write", "--withdraw-ratio", "0", "--accounts", str(args.accounts),
                      "--concurrency", "64", "--duration", args.warmup, write=port)
        report = bench.loadgen(stack, "write", "--no-setup", "--withdraw-ratio", "0", "--accounts",
                               str(args.accounts), "--concurrency", "64", "--duration", args.duration, write=port)
        return bench.row(report, "DepositFunds")
    finally:
        stack.stop("write-service")
        for server in servers:
            server.terminate()
            server.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="release", choices=["release", "debug"])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the benchmark runs")
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--events-per-account", type=int, default=100)
    parser.add_argument("--duration", default="15s")
    parser.add_argument("--warmup", default="5s")
    parser.add_argument("--parts", default="catchup,writes", help="what to measure: catchup, writes or both")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL",
                                                                  "postgres://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    if args.smoke:
        args.accounts, args.events_per_account, args.duration, args.warmup = 100, 5, "1s", "1s"
    flags = ["--release"] if args.profile == "release" else []
    subprocess.run(["cargo", "build", "--locked", *flags, "-p", "write-service", "-p", "projector",
                    "-p", "loadgen", "-p", "bench"], cwd=ROOT, check=True)

    work = Path(tempfile.mkdtemp(prefix="cqrs-bench-scaling-"))
    stack = bench.Stack(args, work)
    try:
        stack.start_nats()
        seeded = subprocess.run([str(stack.bin / "baseline"), "seed", "--nats-url", stack.nats_url, "--accounts",
                                 str(args.accounts), "--events-per-account", str(args.events_per_account)],
                                capture_output=True, text=True, check=True)
        last = int(seeded.stdout.split(":")[1].strip(" }\n"))
        bench.log(f"seeded {last} events")
        parts = args.parts.split(",")
        catchups = [catch_up(stack, args, last, partitions, processes)
                    for partitions, processes in [(1, 1), (2, 1), (4, 1), (4, 2)]] if "catchup" in parts else []
        stack.stop_all()
        writes = {size: write_path(stack, args, size) for size in (1, 3)} if "writes" in parts else {}
    finally:
        stack.stop_all()

    print(f"## Scale-out figures ({os.cpu_count()} cores, {args.profile})\n")
    if catchups:
        print(f"Projector catch-up into PostgreSQL, {last:,} events ({args.accounts:,} accounts):\n")
        print("| partitions | processes | events/s | vs 1 partition | projector CPU µs/event | machine CPU µs/event |")
        print("|---:|---:|---:|---:|---:|---:|")
    for c in catchups:
        print(f"| {c['partitions']} | {c['processes']} | {c['rate']:,.0f} | {c['rate'] / catchups[0]['rate']:.2f}× "
              f"| {c['projector_us']:.1f} | {c['machine_us']:.1f} |")
    if writes:
        print(f"\nWrite path, deposits at 64 in flight for {args.duration}, sync_interval: always:\n")
        print("| event log | deposits/s | p50 ms | p99 ms | vs one server |")
        print("|---|---:|---:|---:|---:|")
    for size, w in writes.items():
        label = "1 server, R1" if size == 1 else f"{size}-server cluster, R{size}"
        print(f"| {label} | {w['throughput']:,.0f} | {w['p50_ms']:.2f} | {w['p99_ms']:.2f} "
              f"| {w['throughput'] / writes[1]['throughput']:.2f}× |")


if __name__ == "__main__":
    main()
