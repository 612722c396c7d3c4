#!/usr/bin/env python3
"""The benchmarks (issue #6, docs/benchmarks.md): each side's throughput and
latency against its physical limit on the same machine, in one run, with
the ratios printed as a Markdown report.

    python3 scripts/bench.py                 # full run, ~15 min, release build
    python3 scripts/bench.py --out /tmp/benchmarks.md
    python3 scripts/bench.py --smoke --profile debug   # CI: it runs, figures meaningless

Everything runs on a private nats-server (temp store) and temp read stores;
the machine's own NATS and PostgreSQL data are not touched (a fresh
PostgreSQL database is created and dropped for the catch-up figure).

What is measured (loadgen drives every gRPC figure, closed loop, uniform
accounts, deposits only / GetAccount only so both sides of each ratio do
the same work):
 1. write path vs the composed limit (`baseline write-server`: tonic +
    publish + ack, nothing else) and raw JetStream publishes
    (`baseline publish`), at each concurrency, with the projector stopped
    (it would consume only the write path's events);
 2. read path vs `baseline read-server` (GetAccount from memory);
 3. projector catch-up from the backlog into SQLite and PostgreSQL
    (`projector rebuild`), and the lag a client sees (command ack → a
    `min_position` GetAccount answers) with writes at half the measured
    maximum (`loadgen --rate --measure-lag`);
 4. telemetry on (exporting OTLP to `baseline otlp-sink`) vs
    OTEL_SDK_DISABLED=true at 64 in flight;
 5. resident memory of write-service and read-service before and after
    N distinct accounts;
 6. the event log's fsync cost (sync_interval always vs default);
 7. cold start: a write-service restarted on a populated log under load,
    time until it serves >= 90 % of its warm throughput, and the errors
    on the way, for 1,000 and 100,000 touched accounts.
CPU per request (service + nats-server, from /proc) is reported beside
each write and read figure and its baseline: on 2 shared cores it says
what each side costs even where throughput is bounded by co-location.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(message):
    print(f"bench: {message}", file=sys.stderr, flush=True)


class Stack:
    """The processes of one run; everything is killed on exit."""

    def __init__(self, args, work):
        self.args = args
        self.work = work
        self.bin = ROOT / "target" / args.profile
        self.procs = {}
        self.nats_port = free_port()
        self.nats_monitor = free_port()
        self.nats_url = f"nats://127.0.0.1:{self.nats_port}"
        self.ports = {name: free_port() for name in ["write", "read", "projector", "base-write", "base-read", "sink"]}
        self.sqlite = work / "read-model.db"

    def start(self, name, argv, env=None):
        full_env = dict(os.environ, RUST_LOG="warn", **(env or {}))
        out = open(self.work / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(argv, env=full_env, stdout=out, stderr=out)

    def stop(self, name):
        proc = self.procs.pop(name, None)
        if proc and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self):
        for name in list(self.procs):
            self.stop(name)

    def cpu_seconds(self, name):
        """User + system CPU time the process has used so far."""
        fields = Path(f"/proc/{self.procs[name].pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self, name):
        status = Path(f"/proc/{self.procs[name].pid}/status").read_text()
        found = re.search(r"VmRSS:\s+(\d+) kB", status)
        if found is None:
            raise SystemExit(f"bench: {name} is not running any more (see its log in {self.work})")
        return int(found.group(1)) / 1024

    def start_nats(self):
        nats = nats_server()
        log(f"event log: {subprocess.run([nats, '--version'], capture_output=True, text=True).stdout.strip()}")
        self.start("nats", [nats, "-a", "127.0.0.1", "-p", str(self.nats_port), "-m", str(self.nats_monitor),
                            "-js", "-sd", str(self.work / "nats")])
        wait_for(lambda: tcp_open(self.nats_port), "nats-server")

    def service_env(self, telemetry, broker_trace=False):
        env = {"NATS_URL": self.nats_url, "READ_STORE_URL": f"sqlite://{self.sqlite}",
               "PAGE_TOKEN_SECRET": "bench-page-token-key"}
        if broker_trace:
            env.update(BROKER_TRACE_RATIO="1")
        if telemetry:
            env.update(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{self.ports['sink']}",
                       OTEL_METRIC_EXPORT_INTERVAL="10000")
        else:
            env.update(OTEL_SDK_DISABLED="true")
        return env

    def start_services(self, telemetry=False, broker_trace=False):
        env = self.service_env(telemetry, broker_trace)
        self.start("write-service", [str(self.bin / "write-service")],
                   dict(env, LISTEN_ADDR=f"127.0.0.1:{self.ports['write']}"))
        self.start_projector(telemetry)
        self.start("read-service", [str(self.bin / "read-service")],
                   dict(env, LISTEN_ADDR=f"127.0.0.1:{self.ports['read']}"))
        for name, port in [("write-service", self.ports["write"]), ("read-service", self.ports["read"])]:
            wait_for(lambda port=port: serving(port), name)

    def start_projector(self, telemetry=False):
        self.start("projector", [str(self.bin / "projector")],
                   dict(self.service_env(telemetry), LISTEN_ADDR=f"127.0.0.1:{self.ports['projector']}"))

    def stop_services(self):
        for name in ["write-service", "read-service", "projector"]:
            self.stop(name)

    def stream_messages(self, stream="BANK_EVENTS"):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.nats_monitor}/jsz?streams=true") as reply:
            jsz = json.load(reply)
        for account in jsz.get("account_details", []):
            for detail in account.get("stream_detail", []):
                if detail["name"] == stream:
                    return detail["state"]["messages"]
        return 0


def nats_server():
    """The nats-server release the images use (scripts/setup.sh installs it)."""
    return str(ROOT / "scripts" / "nats-server")


def tcp_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def serving(port):
    """Whether the server's gRPC health says SERVING (via grpcurl)."""
    grpcurl = shutil.which("grpcurl")
    if grpcurl is None:
        return tcp_open(port)
    result = subprocess.run([grpcurl, "-plaintext", f"127.0.0.1:{port}", "grpc.health.v1.Health/Check"],
                            capture_output=True, text=True)
    return '"SERVING"' in result.stdout


def wait_for(check, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise SystemExit(f"bench: {what} did not come up within {timeout} s")


def loadgen_argv(stack, workload, *extra, write=None, read=None):
    return [str(stack.bin / "loadgen"), workload, "--json",
            "--write-addr", f"http://127.0.0.1:{write or stack.ports['write']}",
            "--read-addr", f"http://127.0.0.1:{read or stack.ports['read']}", *extra]


def loadgen(stack, workload, *extra, write=None, read=None):
    argv = loadgen_argv(stack, workload, *extra, write=write, read=read)
    result = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, OTEL_SDK_DISABLED="true"))
    if result.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv)} failed:\n{result.stderr}")
    return json.loads(result.stdout)


def row(report, operation):
    for op in report["operations"]:
        if op["operation"] == operation:
            return op
    raise SystemExit(f"bench: no {operation} in {report}")


def closed(stack, workload, concurrency, args, duration=None, cpu_of=(), **addrs):
    """A closed-loop run; with `cpu_of` (process names), the row also gets
    `cpu_us`: their CPU time per operation, in microseconds."""
    mix = ["--withdraw-ratio", "0"] if workload == "write" else ["--history-ratio", "0"]
    before = {name: stack.cpu_seconds(name) for name in cpu_of}
    report = loadgen(stack, workload, "--no-setup", "--distribution", "uniform", "--accounts", str(args.accounts),
                     "--concurrency", str(concurrency), "--duration", duration or args.duration, *mix, **addrs)
    if cpu_of:
        operation = "DepositFunds" if workload == "write" else "GetAccount"
        count = max(1, row(report, operation)["count"])
        for op in report["operations"]:
            op["cpu_us"] = {name: (stack.cpu_seconds(name) - before[name]) * 1e6 / count for name in cpu_of}
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="release", choices=["release", "debug"])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the benchmark runs")
    parser.add_argument("--out", help="also write the report to this file")
    parser.add_argument("--duration", default="10s", help="each loadgen run")
    parser.add_argument("--concurrencies", default="1,16,64,256")
    parser.add_argument("--warmup", default="10s", help="before each telemetry run, on restarted services")
    parser.add_argument("--accounts", type=int, default=5_000)
    parser.add_argument("--backlog", type=int, default=200_000, help="events in the log before the catch-up")
    parser.add_argument("--memory-accounts", type=int, default=1_000_000)
    parser.add_argument("--memory-read-duration", default="20s", help="GetAccount on random accounts")
    parser.add_argument("--cold-sizes", default="1000x100,100000x5",
                        help="cold start: ACCOUNTSxEVENTS_PER_ACCOUNT, comma-separated")
    parser.add_argument("--cold-warmup", default="60s", help="cold start: warming over 1,000+ accounts")
    parser.add_argument("--cold-duration", default="60s", help="cold start: load after the restart")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL",
                                                                  "postgres://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    if args.smoke:
        args.duration, args.concurrencies, args.accounts, args.warmup = "1s", "1,16", 200, "1s"
        args.backlog, args.memory_accounts, args.memory_read_duration = 3_000, 2_000, "1s"
        args.cold_sizes, args.cold_warmup, args.cold_duration = "50x3", "1s", "2s"
    args.cold_sizes = [tuple(int(n) for n in size.split("x")) for size in args.cold_sizes.split(",")]
    concurrencies = [int(c) for c in args.concurrencies.split(",")]

    if not args.smoke or args.profile == "release":
        flags = ["--release"] if args.profile == "release" else []
        subprocess.run(["cargo", "build", "--locked", *flags, "-p", "write-service", "-p", "read-service",
                        "-p", "projector", "-p", "loadgen", "-p", "bench"], cwd=ROOT, check=True)

    work = Path(tempfile.mkdtemp(prefix="cqrs-bench-"))
    stack = Stack(args, work)
    results = {"concurrencies": concurrencies}
    try:
        run(stack, args, concurrencies, results)
    except BaseException:
        # Keep what was measured before the failure.
        print(json.dumps(results, indent=1, default=str), file=sys.stderr)
        raise
    finally:
        stack.stop_all()
        if os.environ.get("BENCH_KEEP") is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")
    report = render(results, args)
    print(report)
    if args.out:
        Path(args.out).write_text(report)


def run(stack, args, concurrencies, results):
    stack.start_nats()
    stack.start("sink", [str(stack.bin / "baseline"), "otlp-sink", "--listen", f"127.0.0.1:{stack.ports['sink']}"])
    stack.start("base-write", [str(stack.bin / "baseline"), "write-server", "--listen",
                               f"127.0.0.1:{stack.ports['base-write']}", "--nats-url", stack.nats_url])
    stack.start("base-read", [str(stack.bin / "baseline"), "read-server", "--listen",
                              f"127.0.0.1:{stack.ports['base-read']}"])
    stack.start_services(telemetry=False)
    wait_for(lambda: tcp_open(stack.ports["base-write"]) and tcp_open(stack.ports["base-read"]), "baselines")

    log(f"opening {args.accounts} accounts")
    loadgen(stack, "write", "--accounts", str(args.accounts), "--concurrency", "64", "--duration", "0s")

    # The write path against the composed limit: the same work on both
    # sides (a tonic call and a JetStream publish), so the projector, which
    # would consume and project only the write path's events on the same
    # cores, waits until the write figures are taken. Section 3 measures the
    # system with everything running.
    stack.stop("projector")
    results["write"], results["composed"], results["publish"] = {}, {}, {}
    for c in concurrencies:
        log(f"write path at {c} in flight")
        results["write"][c] = row(closed(stack, "write", c, args, cpu_of=("write-service", "nats")), "DepositFunds")
        results["composed"][c] = row(closed(stack, "write", c, args, cpu_of=("base-write", "nats"),
                                            write=stack.ports["base-write"]), "DepositFunds")
        publish = subprocess.run([str(stack.bin / "baseline"), "publish", "--nats-url", stack.nats_url,
                                  "--concurrency", str(c), "--duration", args.duration,
                                  "--accounts", str(args.accounts)], capture_output=True, text=True, check=True)
        results["publish"][c] = row(json.loads(publish.stdout), "Publish")

    stack.start_projector()
    wait_for_projection(stack)

    results["read"], results["memory_read"] = {}, {}
    for c in concurrencies:
        log(f"read path at {c} in flight")
        results["read"][c] = row(closed(stack, "read", c, args, cpu_of=("read-service",)), "GetAccount")
        results["memory_read"][c] = row(closed(stack, "read", c, args, cpu_of=("base-read",),
                                               read=stack.ports["base-read"]), "GetAccount")

    # Lag at half the maximum write rate of the whole system (projector and
    # read-service running, as deployed).
    c_max = max(results["write"], key=lambda c: results["write"][c]["throughput"])
    log(f"write path with the whole system running, {c_max} in flight")
    results["system_write"] = row(closed(stack, "write", c_max, args), "DepositFunds")
    wait_for_projection(stack)
    half = max(1, int(results["system_write"]["throughput"] / 2))
    log(f"lag at {half} commands/s (half of the system's maximum)")
    lag = loadgen(stack, "write", "--no-setup", "--distribution", "uniform", "--accounts", str(args.accounts),
                  "--withdraw-ratio", "0", "--rate", str(half), "--concurrency", "1024", "--measure-lag",
                  "--duration", args.duration)
    results["lag"] = {"rate": half, "command": row(lag, "DepositFunds"), "visible": row(lag, "Visible"),
                      "dropped": lag.get("dropped", 0)}

    # Telemetry cost at 64 in flight (or the largest concurrency asked for):
    # both runs on freshly started services after the same warm-up (a
    # restarted write-service reloads each account from the log once).
    c_tel = 64 if 64 in concurrencies else concurrencies[-1]
    results["telemetry"] = {"concurrency": c_tel}
    # "broker": on, and every (sampled) append also traced by nats-server
    # (BROKER_TRACE_RATIO=1, the most it can cost); write path only.
    for mode, on, broker in [("off", False, False), ("on", True, False), ("broker", True, True)]:
        log(f"telemetry {mode}, {c_tel} in flight")
        stack.stop_services()
        stack.start_services(telemetry=on, broker_trace=broker)
        closed(stack, "write", c_tel, args, duration=args.warmup)
        cpu = ("write-service", "sink", "nats")
        results["telemetry"][mode] = {"write": row(closed(stack, "write", c_tel, args, cpu_of=cpu), "DepositFunds")}
        if not broker:
            closed(stack, "read", c_tel, args, duration=args.warmup)
            results["telemetry"][mode]["read"] = row(
                closed(stack, "read", c_tel, args, cpu_of=("read-service", "sink")), "GetAccount")
    stack.stop_services()

    # Projector catch-up: top the log up to the backlog, then rebuild.
    stack.start_services(telemetry=False)
    while (have := stack.stream_messages()) < args.backlog:
        log(f"backlog {have} of {args.backlog} events: writing more")
        seconds = max(1, min(60, (args.backlog - have) // 4000 + 1))
        loadgen(stack, "write", "--no-setup", "--distribution", "uniform", "--accounts", str(args.accounts),
                "--withdraw-ratio", "0", "--concurrency", "64", "--duration", f"{seconds}s")
    stack.stop_services()
    results["backlog"] = stack.stream_messages()
    results["catchup"] = {}
    rebuild_env = dict(os.environ, NATS_URL=stack.nats_url, OTEL_SDK_DISABLED="true", RUST_LOG="warn")
    database = f"bench_{uuid.uuid4().hex[:12]}"
    base_url, _, _ = args.database_url.rpartition("/")
    stores = [("SQLite", f"sqlite://{stack.work / 'catchup.db'}", None),
              ("PostgreSQL", f"{base_url}/{database}", database)]
    for name, url, pg_database in stores:
        if pg_database and not create_database(args.database_url, pg_database):
            log("PostgreSQL unreachable: no PostgreSQL catch-up figure")
            continue
        try:
            log(f"catch-up into {name}")
            result = subprocess.run([str(stack.bin / "projector"), "--read-store-url", url, "rebuild"],
                                    capture_output=True, text=True, env=rebuild_env)
            text = result.stdout + result.stderr
            found = re.search(r"(\d+) events in ([\d.]+) s \((\d+) events/s, (\d+) transactions\)", text)
            if result.returncode != 0 or not found:
                raise SystemExit(f"bench: rebuild into {name} failed:\n{text}")
            results["catchup"][name] = {"events": int(found[1]), "seconds": float(found[2]),
                                        "rate": int(found[3]), "transactions": int(found[4])}
        finally:
            if pg_database:
                drop_database(args.database_url, pg_database)

    results["sync"] = sync_cost(stack, args)
    results["cold_start"] = [cold_start(stack, args, accounts, events) for accounts, events in args.cold_sizes]

    # Memory: N distinct accounts through each service.
    stack.start_services(telemetry=False)
    memory = {"accounts": args.memory_accounts}
    memory["write_before"] = stack.rss_mib("write-service")
    memory["read_before"] = stack.rss_mib("read-service")
    log(f"memory: opening {args.memory_accounts} accounts (this is the long part)")
    opening = subprocess.Popen(loadgen_argv(stack, "write", "--accounts", str(args.memory_accounts),
                                            "--concurrency", "256", "--duration", "0s"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=dict(os.environ, OTEL_SDK_DISABLED="true"))
    started, samples = time.time(), []
    while opening.poll() is None:
        samples.append((time.time() - started, stack.rss_mib("write-service")))
        time.sleep(1)
    elapsed = time.time() - started
    # Accounts open at a steady rate, so time stands for accounts opened.
    memory["write_samples"] = [
        (fraction, max((rss for t, rss in samples if t <= fraction * elapsed), default=0.0))
        for fraction in (0.25, 0.5, 0.75, 1.0)
    ]
    memory["write_after"] = stack.rss_mib("write-service")
    log(f"memory: querying random accounts among the {args.memory_accounts}")
    loadgen(stack, "read", "--no-setup", "--distribution", "uniform", "--accounts", str(args.memory_accounts),
            "--history-ratio", "0", "--concurrency", "64", "--duration", args.memory_read_duration)
    memory["read_after"] = stack.rss_mib("read-service")
    memory["read_duration"] = args.memory_read_duration
    results["memory"] = memory
    stack.stop_services()


def cold_start(stack, args, accounts, events_per_account):
    """A write-service on a log of `accounts` x `events_per_account` events,
    warmed on every account, then restarted (SIGTERM, start) under a
    closed loop of deposits at 64 in flight on the same accounts: how long
    from the restart until a second of >= 90 % of the warm throughput, and
    the errors until then."""
    stream, prefix = f"COLD_{accounts}", f"cold{accounts}"
    env = dict(stack.service_env(False), EVENT_STREAM=stream, EVENT_SUBJECT_PREFIX=prefix,
               LISTEN_ADDR=f"127.0.0.1:{stack.ports['write']}")
    log(f"cold start: seeding {accounts:,} accounts x {events_per_account} events")
    subprocess.run([str(stack.bin / "baseline"), "seed", "--nats-url", stack.nats_url, "--stream", stream,
                    "--subject-prefix", prefix, "--accounts", str(accounts),
                    "--events-per-account", str(events_per_account)], check=True, capture_output=True)
    sized = argparse.Namespace(**dict(vars(args), accounts=accounts))
    stack.start("cold-write", [str(stack.bin / "write-service")], env)
    wait_for(lambda: serving(stack.ports["write"]), "write-service")
    log("cold start: warming every account, then the warm figure")
    warm_up = args.cold_warmup if accounts > 1_000 else args.duration
    closed(stack, "write", 64, sized, duration=warm_up)
    warm = row(closed(stack, "write", 64, sized), "DepositFunds")
    stack.stop("cold-write")
    restarted = time.time()
    stack.start("cold-write", [str(stack.bin / "write-service")], env)
    wait_for(lambda: serving(stack.ports["write"]), "write-service")
    serving_after = time.time() - restarted
    log("cold start: restarted, under load")
    cold = closed(stack, "write", 64, sized, duration=args.cold_duration)
    stack.stop("cold-write")
    target = 0.9 * warm["throughput"]
    reached, errors = None, 0
    for second, sample in enumerate(cold["timeline"], start=1):
        errors += sample["errors"]
        if sample["operations"] >= target:
            reached = serving_after + second
            break
    return {"accounts": accounts, "events": accounts * events_per_account, "warm": warm,
            "serving_after": serving_after, "reached": reached, "errors_until": errors,
            "errors": row(cold, "DepositFunds")["errors"], "timeline": cold["timeline"],
            "duration": args.cold_duration}


def sync_cost(stack, args):
    """Raw publishes at 64 in flight on a fresh server with JetStream's
    default lazy fsync against `sync_interval: always` (fsync before every
    ack; what deploy/k8s/overlays/prod/nats.conf sets). Needs a nats-server
    that knows the setting (>= 2.10), as the pinned one is."""
    server = nats_server()
    figures = {}
    for mode in ["default", "always"]:
        port = free_port()
        store = stack.work / f"sync-{mode}"
        config = stack.work / f"sync-{mode}.conf"
        sync = "sync_interval: always" if mode == "always" else ""
        config.write_text(f"listen: 127.0.0.1:{port}\njetstream {{\n store_dir: {store}\n {sync}\n}}\n")
        name = f"nats-sync-{mode}"
        stack.start(name, [str(server), "-c", str(config)])
        wait_for(lambda: tcp_open(port), name)
        log(f"raw publishes with sync_interval {mode}")
        out = subprocess.run([str(stack.bin / "baseline"), "publish", "--nats-url", f"nats://127.0.0.1:{port}",
                              "--concurrency", "64", "--duration", args.duration], capture_output=True, text=True,
                             check=True)
        figures[mode] = row(json.loads(out.stdout), "Publish")
        stack.stop(name)
    version = subprocess.run([str(server), "--version"], capture_output=True, text=True).stdout.strip()
    return {"version": version, **figures}


def wait_for_projection(stack):
    """Until a command's effect is visible to a min_position query: the
    projector has caught up with everything written before it."""
    log("waiting for the projector to catch up")
    for _ in range(120):
        probe = loadgen(stack, "write", "--no-setup", "--accounts", "1", "--withdraw-ratio", "0",
                        "--concurrency", "1", "--duration", "100ms", "--measure-lag")
        if all(not op["errors"] for op in probe["operations"]) and row(probe, "Visible")["count"] > 0:
            return
    raise SystemExit("bench: the projector did not catch up")


def psql(url, sql):
    return subprocess.run(["psql", url, "-qAtc", sql], capture_output=True, text=True).returncode == 0


def create_database(url, name):
    return shutil.which("psql") is not None and psql(url, f'CREATE DATABASE "{name}"')


def drop_database(url, name):
    psql(url, f'DROP DATABASE IF EXISTS "{name}"')


def render(r, args):
    def ratio(a, b):
        return f"{a / b:.2f}" if b else "n/a"

    def cpu_us(figure):
        """CPU µs per operation: `service + nats = total`."""
        parts = figure.get("cpu_us", {})
        if not parts:
            return "n/a"
        shown = " + ".join(f"{us:.0f}" for us in parts.values())
        return f"{shown} = {sum(parts.values()):.0f}" if len(parts) > 1 else shown

    def cpu_ratio(a, b):
        return ratio(sum(a.get("cpu_us", {}).values()), sum(b.get("cpu_us", {}).values()))

    cpu = "unknown CPU"
    try:
        cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())[1]
    except (OSError, TypeError):
        pass
    lines = [
        f"Machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; "
        f"profile {args.profile}; {args.duration} per point; {args.accounts} accounts, uniform; "
        f"everything (clients, services, nats-server, stores) on this machine.",
        "",
        "### 1. Write path (DepositFunds) vs the composed limit (tonic + JetStream publish/ack)",
        "",
        "| in flight | write path cmd/s | p50 ms | p99 ms | composed limit cmd/s | p50 ms | p99 ms "
        "| throughput ratio | p99 ratio | raw JetStream publish/s | p99 ms "
        "| CPU µs/cmd: write-service + NATS | composed + NATS | CPU ratio (limit/path) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in r["concurrencies"]:
        w, b, p = r["write"][c], r["composed"][c], r["publish"][c]
        lines.append(f"| {c} | {w['throughput']:,.0f} | {w['p50_ms']:.2f} | {w['p99_ms']:.2f} | "
                     f"{b['throughput']:,.0f} | {b['p50_ms']:.2f} | {b['p99_ms']:.2f} | "
                     f"{ratio(w['throughput'], b['throughput'])} | {ratio(w['p99_ms'], b['p99_ms'])} | "
                     f"{p['throughput']:,.0f} | {p['p99_ms']:.2f} | {cpu_us(w)} | {cpu_us(b)} | {cpu_ratio(b, w)} |")
    lines += [
        "",
        "### 2. Read path (GetAccount) vs a bare tonic server answering from memory",
        "",
        "| in flight | read path q/s | p50 ms | p99 ms | from memory q/s | p50 ms | p99 ms "
        "| throughput ratio | p99 ratio | CPU µs/query: read-service | from memory | CPU ratio (limit/path) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in r["concurrencies"]:
        q, m = r["read"][c], r["memory_read"][c]
        lines.append(f"| {c} | {q['throughput']:,.0f} | {q['p50_ms']:.2f} | {q['p99_ms']:.2f} | "
                     f"{m['throughput']:,.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
                     f"{ratio(q['throughput'], m['throughput'])} | {ratio(q['p99_ms'], m['p99_ms'])} | "
                     f"{cpu_us(q)} | {cpu_us(m)} | {cpu_ratio(m, q)} |")
    lines += ["", "### 3. Projection", "",
              f"Catch-up (`projector rebuild`) from a backlog of {r['backlog']:,} events:", "",
              "| read store | events | seconds | events/s | transactions |", "|---|---|---|---|---|"]
    for name, c in r["catchup"].items():
        lines.append(f"| {name} | {c['events']:,} | {c['seconds']:.1f} | {c['rate']:,} | {c['transactions']:,} |")
    lag = r["lag"]
    lines += ["",
              f"Lag a client sees (command acknowledged → a GetAccount with that `min_position` answers), "
              f"writes at {lag['rate']:,} commands/s (half of the {r['system_write']['throughput']:,.0f} the whole "
              f"system sustains, projector and read-service running), open loop:", "",
              "| | count | p50 ms | p90 ms | p99 ms | max ms |", "|---|---|---|---|---|---|",
              f"| commands | {lag['command']['count']:,} | {lag['command']['p50_ms']:.2f} | "
              f"{lag['command']['p90_ms']:.2f} | {lag['command']['p99_ms']:.2f} | {lag['command']['max_ms']:.2f} |",
              f"| ack → visible | {lag['visible']['count']:,} | {lag['visible']['p50_ms']:.2f} | "
              f"{lag['visible']['p90_ms']:.2f} | {lag['visible']['p99_ms']:.2f} | {lag['visible']['max_ms']:.2f} |"]
    t = r["telemetry"]
    c = t["concurrency"]
    lines += ["", f"### 4. Instrumentation cost ({c} in flight; each run on freshly started services after a "
                  f"{args.warmup} warm-up; on = exporting OTLP to a local sink)", "",
              "| path | off ops/s | on ops/s | on/off | off p99 ms | on p99 ms | service CPU µs/op off → on "
              "| service CPU on/off | local OTLP sink CPU µs/op (on) |", "|---|---|---|---|---|---|---|---|---|"]
    for side, service in [("write", "write-service"), ("read", "read-service")]:
        off, on = t["off"][side], t["on"][side]
        cpu_off, cpu_on = off.get("cpu_us", {}).get(service, 0), on.get("cpu_us", {}).get(service, 0)
        lines.append(f"| {side} | {off['throughput']:,.0f} | {on['throughput']:,.0f} | "
                     f"{ratio(on['throughput'], off['throughput'])} | {off['p99_ms']:.2f} | {on['p99_ms']:.2f} | "
                     f"{cpu_off:.1f} → {cpu_on:.1f} | {ratio(cpu_on, cpu_off)} | "
                     f"{on.get('cpu_us', {}).get('sink', 0):.1f} |")
    off, on, broker = t["off"]["write"], t["on"]["write"], t["broker"]["write"]
    cpu = lambda figure: sum(figure.get("cpu_us", {}).get(name, 0) for name in ("write-service", "sink", "nats"))
    lines += ["", "Broker hop in the trace (`BROKER_TRACE_RATIO=1`: nats-server reports every append, each report "
                  "becomes a span), write path against telemetry on:", "",
              "| | ops/s | p99 ms | CPU µs/op (write-service + sink + nats-server) |", "|---|---|---|---|",
              f"| telemetry off | {off['throughput']:,.0f} | {off['p99_ms']:.2f} | {cpu(off):.1f} |",
              f"| telemetry on | {on['throughput']:,.0f} | {on['p99_ms']:.2f} | {cpu(on):.1f} |",
              f"| on + broker tracing | {broker['throughput']:,.0f} ({ratio(broker['throughput'], on['throughput'])} "
              f"of on) | {broker['p99_ms']:.2f} | {cpu(broker):.1f} ({ratio(cpu(broker), cpu(on))} of on) |"]
    m = r["memory"]
    samples = ", ".join(f"{fraction:.0%}: {rss:.1f} MiB" for fraction, rss in m["write_samples"])
    lines += ["", f"### 5. Resident memory, {m['accounts']:,} distinct accounts", "",
              "| service | before MiB | after MiB |", "|---|---|---|",
              f"| write-service (opened every account) | {m['write_before']:.1f} | {m['write_after']:.1f} |",
              f"| read-service ({m['read_duration']} of GetAccount on random ones) "
              f"| {m['read_before']:.1f} | {m['read_after']:.1f} |",
              "", f"write-service RSS (highest so far) while the accounts were opened, by share opened: {samples}."]
    sync = r.get("sync")
    if sync:
        d, a = sync["default"], sync["always"]
        lines += ["", f"### 6. Event-log durability: fsync before every ack ({sync['version']}, raw publishes, "
                      "64 in flight)", "",
                  "| sync_interval | publishes/s | p50 ms | p99 ms |", "|---|---|---|---|",
                  f"| default (lazy, every 2 min) | {d['throughput']:,.0f} | {d['p50_ms']:.2f} | {d['p99_ms']:.2f} |",
                  f"| always | {a['throughput']:,.0f} | {a['p50_ms']:.2f} | {a['p99_ms']:.2f} |",
                  f"| ratio always/default | {ratio(a['throughput'], d['throughput'])} | | "
                  f"{ratio(a['p99_ms'], d['p99_ms'])} |"]
    lines += ["", "### 7. Cold start: a write-service restarted on a populated log under load "
                  "(DepositFunds, 64 in flight, uniform over the accounts, every account warm before the restart)",
              "",
              "| accounts | events in the log | warm cmd/s | SERVING after s | >= 90 % of warm after s "
              "| errors until then | errors in the run |",
              "|---|---|---|---|---|---|---|"]
    for c in r.get("cold_start", []):
        reached = f"{c['reached']:.1f}" if c["reached"] is not None else f"not within {c['duration']}"
        errors = ", ".join(f"{code} {n}" for code, n in c["errors"].items()) or "none"
        lines.append(f"| {c['accounts']:,} | {c['events']:,} | {c['warm']['throughput']:,.0f} | "
                     f"{c['serving_after']:.1f} | {reached} | {c['errors_until']} | {errors} |")
    for c in r.get("cold_start", []):
        series = " ".join(f"{s['operations']:,}" for s in c["timeline"][:30])
        lines.append(f"\n{c['accounts']:,} accounts, commands per second after the restart: {series}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
