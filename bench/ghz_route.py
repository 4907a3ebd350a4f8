"""Load-test Route (and Complete) with ghz: the no-op Go baseline against modelrouter serve.

Run it through ``bench/ghz_route.sh``, which installs ghz and builds the baseline first.
One invocation runs the same ghz command (same concurrency, connections, duration and
payload) against the baseline and against ``modelrouter serve --workers 1`` and
``--workers 2``, then a fixed-rate run at half of the workers-2 maximum, an optional soak
at that rate, and Complete (server streaming) on the demo backend. It writes a JSON file
and a Markdown table; see bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from report_files import cpu_model

from router.config import DEFAULT_CONFIG_YAML

SERVICE = "modelrouter.v1.ModelRouter"
ROUTE = f"{SERVICE}.Route"
COMPLETE = f"{SERVICE}.Complete"
ROUTE_BATCH = f"{SERVICE}.RouteBatch"
# RouteBatch sizes measured against unary Route (decisions per second).
BATCH_SIZES = (1, 16, 256)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
# The soak's RSS counts as flat when it grows by at most this much from start to end.
RSS_FLAT_MB = 5.0
RSS_FLAT_SHARE = 0.05


@dataclass
class GhzRun:
    """One ghz invocation and what the server and ghz spent on it."""

    name: str
    target: str
    call: str
    cpus: str
    rate: int | None
    duration_s: float
    count: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    average_ms: float = 0.0
    errors: int = 0
    status_codes: dict[str, int] = field(default_factory=dict)
    error_samples: dict[str, int] = field(default_factory=dict)
    server_cpu_percent: float = 0.0
    server_cpu_percent_per_process: list[float] = field(default_factory=list)
    server_cpu_us_per_call: float | None = None
    ghz_cpu_percent: float = 0.0
    loadavg_before: float = 0.0
    ratio_to_baseline: float | None = None
    batch_size: int | None = None  # requests per RouteBatch call (None: not RouteBatch)


@dataclass
class Settings:
    concurrency: int
    connections: int
    duration_s: float
    warmup_s: float
    soak_s: float | None
    payload_queries: int
    payload_seed: int
    complete_max_tokens: int
    ghz_argv: list[str] = field(default_factory=list)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ghz", required=True, help="path of the ghz binary")
    p.add_argument("--baseline", required=True, help="path of the no-op Go server")
    p.add_argument("--modelrouter", required=True, help="path of the modelrouter command")
    p.add_argument("--data", required=True, type=Path, help="routing_train.jsonl")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=None, help="seconds of unrecorded load first")
    p.add_argument("--soak", type=float, default=600.0, help="soak seconds at half rate")
    p.add_argument("--no-soak", action="store_true", help="skip the soak")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--connections", type=int, default=16, help="at least the worker count")
    p.add_argument("--queries", type=int, default=2000, help="distinct queries in the payload")
    p.add_argument("--seed", type=int, default=20261128)
    p.add_argument("--complete-max-tokens", type=int, default=64)
    p.add_argument("--cache", type=Path, required=True, help="scratch directory")
    p.add_argument("--output", type=Path, required=True, help="JSON result file")
    p.add_argument("--markdown", type=Path, help="Markdown table (default: beside --output)")
    p.add_argument("--command", default="", help="the command line, recorded in the result")
    p.add_argument("--profile", action="store_true", help="py-spy the router_w1 run")
    p.add_argument("--py-spy", default=shutil.which("py-spy"), help="path of py-spy")
    p.add_argument(
        "--overhead-only",
        action="store_true",
        help="run only the observability comparison and replace it in the existing --output",
    )
    p.add_argument(
        "--route-cpu-only",
        action="store_true",
        help="run only the Route CPU comparison and replace it in the existing --output",
    )
    p.add_argument(
        "--route-cpu-rounds",
        type=int,
        default=3,
        help="rounds of the Route CPU comparison (each server once a round)",
    )
    p.add_argument(
        "--route-cpu-features",
        action="store_true",
        help="also run --workers 1 without the per-RPC log line, without the store, and "
        "without both, in the Route CPU comparison (what the two default features cost)",
    )
    p.add_argument(
        "--before",
        help="another modelrouter command (an earlier build) to run beside this one in the "
        "Route CPU comparison, as 'before'",
    )
    p.add_argument(
        "--batch-only",
        action="store_true",
        help="run only the RouteBatch comparison and replace it in the existing --output",
    )
    p.add_argument(
        "--batch-rounds", type=int, default=2, help="rounds of the RouteBatch comparison"
    )
    p.add_argument(
        "--overhead-rounds",
        type=int,
        default=2,
        help="rounds of the metrics/tracing/log-sampling comparison (each variant once a round)",
    )
    args = p.parse_args(argv)
    if args.connections < 2:
        p.error("--connections must be at least the largest worker count (2)")
    return args


def build_payloads(
    data: Path, cache: Path, queries: int, seed: int, max_tokens: int
) -> tuple[Path, Path, dict[str, int]]:
    """Write the Route and Complete payloads: a seeded random sample of real queries."""
    rows = []
    with data.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row.get("text", "").strip():
                rows.append(row)
    sample = random.Random(seed).sample(rows, min(queries, len(rows)))
    mix: dict[str, int] = {}
    for row in sample:
        mix[row["source"]] = mix.get(row["source"], 0) + 1
    route = [{"prompt": row["text"]} for row in sample]
    complete = [
        {"route": {"prompt": row["text"]}, "generation": {"max_tokens": max_tokens}}
        for row in sample
    ]
    cache.mkdir(parents=True, exist_ok=True)
    route_path, complete_path = cache / "route_payload.json", cache / "complete_payload.json"
    route_path.write_text(json.dumps(route), encoding="utf-8")
    complete_path.write_text(json.dumps(complete), encoding="utf-8")
    for size in BATCH_SIZES:
        # The same queries in order, cut into batches (the last one filled from the start).
        count = -(-len(route) // size)
        batches = [
            {"requests": [route[(i * size + j) % len(route)] for j in range(size)]}
            for i in range(count)
        ]
        batch_payload(cache, size).write_text(json.dumps(batches), encoding="utf-8")
    return route_path, complete_path, dict(sorted(mix.items()))


def batch_payload(cache: Path, size: int) -> Path:
    """Return the path of the RouteBatch payload of batches of ``size`` requests."""
    return cache / f"route_batch_{size}_payload.json"


def free_port() -> int:
    """Return a loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_tree(root: int) -> list[int]:
    """Return root and all its descendants that are alive."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = [root], [root]
    while frontier:
        children = [pid for pid, ppid in parents.items() if ppid in frontier]
        tree.extend(children)
        frontier = children
    return tree


def cpu_ticks(pid: int) -> int:
    """Return user + system clock ticks a process has used (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def rss_mb(pid: int) -> float:
    """Return a process's resident set size in MiB (0 once it is gone)."""
    try:
        resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except OSError:
        return 0.0
    return resident * PAGE_BYTES / 2**20


def loadavg() -> float:
    """Return the one-minute load average (other work on the machine skews the numbers)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def pinned(argv: list[str], cpus: str) -> list[str]:
    """Prefix argv with taskset when cpus names a CPU list."""
    return ["taskset", "-c", cpus, *argv] if cpus != "all" else argv


class Server:
    """A server process (baseline or modelrouter) listening on a loopback port."""

    def __init__(self, name: str, argv: list[str], port: int, log_path: Path) -> None:
        self.name = name
        self.addr = f"127.0.0.1:{port}"
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        # The embedded default records every request in a store in the per-user state
        # directory: the benchmark's servers keep theirs beside their logs instead.
        env = {**os.environ, "XDG_STATE_HOME": str(log_path.parent / "state")}
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait_serving(self, timeout_s: float = 60.0) -> None:
        """Block until the health service reports SERVING for the router service."""
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.addr) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}"
                    )
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=0.5)
                except grpc.RpcError:
                    time.sleep(0.1)
                    continue
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} not SERVING after {timeout_s} s: {self.log_tail()}")

    def pids(self) -> list[int]:
        """Return the server's process and its workers."""
        return process_tree(self.proc.pid)

    def rss_mb(self) -> float:
        """Return the RSS of the server and all its workers, in MiB."""
        return sum(rss_mb(pid) for pid in self.pids())

    def log_tail(self, lines: int = 20) -> str:
        """Return the last lines the server printed."""
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> int:
        """Stop the server with SIGTERM (SIGKILL after 30 s) and return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@contextlib.contextmanager
def running(name: str, argv: list[str], port: int, cache: Path) -> Iterator[Server]:
    """Run a server for the duration of a with-block."""
    server = Server(name, argv, port, cache / "logs" / f"{name}.log")
    try:
        server.wait_serving()
        yield server
    except BaseException:
        server.stop()
        print(f"{name}: the server's output is in {server.log_path}", file=sys.stderr)
        raise
    # The log of a clean run is only noise (one line per RPC); keep it when the stop failed.
    if server.stop() in (0, -signal.SIGTERM):
        server.log_path.unlink(missing_ok=True)
    else:
        print(f"{name}: did not stop cleanly, see {server.log_path}", file=sys.stderr)


def wait_sampling(
    pid: int, sample: Callable[[], None] | None, every_s: float
) -> tuple[int, resource.struct_rusage]:
    """Wait for a child, calling sample every every_s seconds; return its status and usage."""
    if sample is None:
        _, status, usage = os.wait4(pid, 0)
        return status, usage
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return status, usage
        sample()
        time.sleep(every_s)


class Bench:
    """Runs ghz against servers and records each run."""

    def __init__(
        self, args: argparse.Namespace, route_payload: Path, complete_payload: Path
    ) -> None:
        self.args = args
        self.route_payload = route_payload
        self.complete_payload = complete_payload
        self.cache: Path = args.cache
        self.runs: list[GhzRun] = []
        self.profile: dict[str, Any] | None = None
        self.warmup_s = args.warmup if args.warmup is not None else max(1.0, args.duration / 10)

    def ghz_argv(
        self, call: str, payload: Path, duration_s: float, rate: int | None, addr: str
    ) -> list[str]:
        """Return the ghz command line; only the address, call and rate differ between runs."""
        argv = [
            self.args.ghz,
            "--insecure",
            f"--call={call}",
            f"--data-file={payload}",
            f"--concurrency={self.args.concurrency}",
            f"--connections={self.args.connections}",
            f"--duration={duration_s:g}s",
            "--duration-stop=wait",
            "--timeout=20s",
            "--format=json",
        ]
        if rate is not None:
            argv.append(f"--rps={rate}")
        return [*argv, addr]

    def ghz(
        self,
        name: str,
        server: Server,
        *,
        call: str = ROUTE,
        duration_s: float | None = None,
        rate: int | None = None,
        ghz_cpus: str = "all",
        server_cpus: str = "all",
        record: bool = True,
        profile: bool = False,
        sample: Callable[[], None] | None = None,
        batch_size: int | None = None,
    ) -> GhzRun:
        """Run ghz once against server and return (and record) the measurements.

        ``sample``, when given, is called every few seconds while ghz runs (the soak uses it
        to follow the server's memory).
        """
        duration = self.args.duration if duration_s is None else duration_s
        payload = {ROUTE: self.route_payload, COMPLETE: self.complete_payload}.get(call)
        if call == ROUTE_BATCH:
            assert batch_size is not None
            payload = batch_payload(self.cache, batch_size)
        assert payload is not None
        argv = pinned(self.ghz_argv(call, payload, duration, rate, server.addr), ghz_cpus)
        run = GhzRun(
            name=name,
            target=server.name,
            call=call.rsplit(".", 1)[1],
            cpus=f"server {server_cpus}, ghz {ghz_cpus}",
            rate=rate,
            duration_s=duration,
            loadavg_before=loadavg(),
            batch_size=batch_size,
        )
        pids = server.pids()
        before = [cpu_ticks(pid) for pid in pids]
        out_path = self.cache / f"ghz_{name}.json"
        start = time.monotonic()
        with out_path.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE)
            spy = self.start_profile(server, duration) if profile else None
            status, usage = wait_sampling(proc.pid, sample, min(10.0, max(1.0, duration / 60)))
            proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - start
        if spy is not None:
            self.profile = self.finish_profile(*spy)
        after = [cpu_ticks(pid) for pid in pids]
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.returncode != 0:
            raise RuntimeError(
                f"ghz failed ({proc.returncode}) on {name}: {stderr}\n{server.log_tail()}"
            )
        report = json.loads(out_path.read_text())
        out_path.unlink()
        per_process = [
            (a - b) / CLOCK_TICKS / wall * 100 for a, b in zip(after, before, strict=True)
        ]
        run.server_cpu_percent = round(sum(per_process), 1)
        run.server_cpu_percent_per_process = [round(p, 1) for p in per_process]
        run.ghz_cpu_percent = round((usage.ru_utime + usage.ru_stime) / wall * 100, 1)
        fill_from_report(run, report)
        if run.count:
            # CPU per call does not depend on how the loaded machine shared its cores.
            cpu_s = sum(a - b for a, b in zip(after, before, strict=True)) / CLOCK_TICKS
            run.server_cpu_us_per_call = round(cpu_s / run.count * 1e6, 1)
        if record:
            self.runs.append(run)
            print(summary_line(run), flush=True)
        return run

    def start_profile(
        self, server: Server, duration_s: float
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """Sample the server's Python stacks with py-spy for most of a run."""
        if not self.args.py_spy:
            raise RuntimeError("--profile needs py-spy (pip install py-spy)")
        raw = self.cache / "profile_router_w1.txt"
        seconds = max(1, int(duration_s) - 2)
        argv = [self.args.py_spy, "record", "--pid", str(server.proc.pid), "--duration",
                str(seconds), "--rate", "100", "--format", "raw", "--nonblocking",
                "--output", str(raw)]  # fmt: skip
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), raw

    @staticmethod
    def finish_profile(spy: subprocess.Popen[bytes], raw: Path) -> dict[str, Any]:
        """Wait for py-spy and summarise where the samples fell."""
        _, err = spy.communicate()
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')}")
        return summarise_profile(raw.read_text().splitlines())

    def measure(self, name: str, server: Server, **kwargs: Any) -> GhzRun:
        """Warm the server up with unrecorded load, then run and record ghz."""
        warm = {k: v for k, v in kwargs.items() if k != "profile"}
        self.ghz(f"{name}_warmup", server, duration_s=self.warmup_s, record=False, **warm)
        return self.ghz(name, server, **kwargs)


# Where a sample's innermost Python frame lies says what the process was doing. Time in C
# (gRPC's core, the event loop, syscalls) shows as the Python frame that called into it.
PROFILE_AREAS = (
    ("fast path: featurize + score", ("router/_fastpath", "router/fastpath", "router/routing")),
    ("logging (structlog, one JSON line per RPC)", ("structlog/", "json/", "logs.py")),
    ("interceptor", ("router/server/interceptor",)),
    ("servicer + conversion", ("router/server/servicer", "router/server/convert")),
    (
        "service: validation, ids, decision",
        ("router/service", "router/validation", "router/request_ids", "router/domain"),
    ),
    ("protobuf", ("google/protobuf",)),
    ("gRPC + event loop (C, called from asyncio)", ("asyncio/", "grpc/", "uvloop", "threading")),
)


def summarise_profile(lines: Sequence[str]) -> dict[str, Any]:
    """Return the share of py-spy samples per area and the busiest leaf functions."""
    areas: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        leaf = stack.rsplit(";", 1)[-1]
        leaves[leaf] = leaves.get(leaf, 0) + n
        area = next(
            (name for name, marks in PROFILE_AREAS if any(m in leaf for m in marks)), "other"
        )
        areas[area] = areas.get(area, 0) + n
    share = {k: round(v / total, 3) for k, v in sorted(areas.items(), key=lambda kv: -kv[1])}
    top = sorted(leaves.items(), key=lambda kv: -kv[1])[:12]
    return {
        "samples": total,
        "share_by_area": share,
        "top_leaf_frames": {k: round(v / total, 3) for k, v in top},
    }


def fill_from_report(run: GhzRun, report: dict[str, Any]) -> None:
    """Copy what ghz's JSON report says into run (ghz reports nanoseconds)."""
    percentiles = {
        int(p["percentage"]): p["latency"] / 1e6 for p in report.get("latencyDistribution") or []
    }
    codes: dict[str, int] = report.get("statusCodeDistribution") or {}
    run.count = int(report["count"])
    run.rps = round(float(report["rps"]), 1)
    run.average_ms = round(report["average"] / 1e6, 3)
    run.p50_ms = round(percentiles.get(50, 0.0), 3)
    run.p95_ms = round(percentiles.get(95, 0.0), 3)
    run.p99_ms = round(percentiles.get(99, 0.0), 3)
    run.status_codes = codes
    run.errors = sum(n for code, n in codes.items() if code != "OK")
    # A few distinct error texts, to see what failed without keeping every detail.
    run.error_samples = dict(list((report.get("errorDistribution") or {}).items())[:5])
    if not codes and run.count:
        raise RuntimeError(f"ghz reported {run.count} calls but no status codes")


def summary_line(run: GhzRun) -> str:
    """Return one progress line for a run."""
    rate = f" at {run.rate}/s" if run.rate else ""
    return (
        f"{run.name:<26} {run.rps:>9.1f} rps{rate}  p50 {run.p50_ms:.2f} p99 {run.p99_ms:.2f} ms  "
        f"errors {run.errors}  server CPU {run.server_cpu_percent:.0f}%  "
        f"ghz CPU {run.ghz_cpu_percent:.0f}%"
    )


def default_config_with(cache: Path, name: str, section: str, key: str, value: Any) -> Path:
    """Write the embedded default configuration with one value changed; return its path."""
    return config_with(cache, name, ((section, key, value),))


def machine() -> dict[str, Any]:
    """Describe the machine the numbers were measured on."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * PAGE_BYTES / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "go": subprocess.run(["go", "version"], capture_output=True, text=True).stdout.strip()
        if shutil.which("go")
        else "",
    }


def soak(bench: Bench, server: Server, rate: int, seconds: float) -> dict[str, Any]:
    """Hold the half rate for seconds, sampling the server's RSS; return the soak's results."""
    start = time.monotonic()
    samples: list[tuple[float, float]] = []

    def sample() -> None:
        samples.append((round(time.monotonic() - start, 1), round(server.rss_mb(), 1)))

    run = bench.ghz("router_w2_soak", server, duration_s=seconds, rate=rate, sample=sample)
    sample()
    rss_start, rss_end = samples[0][1], samples[-1][1]
    return {
        "soak_errors": run.errors,
        "soak_p99_ms": run.p99_ms,
        "rss_mb_start": rss_start,
        "rss_mb_end": rss_end,
        "rss_mb_max": max(s[1] for s in samples),
        "rss_flat": rss_end - rss_start <= max(RSS_FLAT_MB, RSS_FLAT_SHARE * rss_start),
        "rss_samples": samples,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the whole benchmark and write its results."""
    args = parse_args(argv)
    cache: Path = args.cache
    cache.mkdir(parents=True, exist_ok=True)
    route_payload, complete_payload, mix = build_payloads(
        args.data, cache, args.queries, args.seed, args.complete_max_tokens
    )
    bench = Bench(args, route_payload, complete_payload)
    cpus = os.cpu_count() or 1
    # Pinned apart: the server alone on the last CPU, ghz on the others.
    server_cpu, ghz_cpus = str(cpus - 1), f"0-{cpus - 2}" if cpus > 2 else "0"

    def router(workers: int, *extra: str, cpus: str = "all") -> tuple[list[str], int]:
        port = free_port()
        cmd = [args.modelrouter, "serve", "--host", "127.0.0.1", "--port", str(port)]
        # Metrics on, as by default, on a port of their own; a variant may turn them off.
        metrics = ["--metrics-port", str(free_port())]
        return pinned([*cmd, "--workers", str(workers), *metrics, *extra], cpus), port

    def baseline(cpus: str = "all") -> tuple[list[str], int]:
        port = free_port()
        return pinned([args.baseline, f"-addr=127.0.0.1:{port}"], cpus), port

    def python_noop(workers: int, *extra: str) -> tuple[list[str], int]:
        port = free_port()
        script = str(Path(__file__).with_name("noop_aio_server.py"))
        cmd = [sys.executable, script, "--port", str(port), "--workers", str(workers), *extra]
        return cmd, port

    if (args.overhead_only or args.route_cpu_only or args.batch_only) and not args.output.exists():
        # Checked before the runs, not after them: a rerun replaces one part of a full run.
        sys.exit(f"ghz_route.py: --output {args.output}: no full run there to put this rerun into")
    if args.overhead_only:
        return rerun_overhead(args, bench, router)
    if args.route_cpu_only:
        return rerun_route_cpu(args, bench, router, python_noop)
    if args.batch_only:
        return rerun_batch(args, bench, router)

    soak_result: dict[str, Any] = dict.fromkeys(
        ("soak_errors", "soak_p99_ms", "rss_mb_start", "rss_mb_end", "rss_mb_max", "rss_flat")
    )
    soak_result["rss_samples"] = []
    print(f"payload: {len(json.loads(route_payload.read_text()))} queries {mix}", flush=True)
    print(f"ghz and the servers share all {cpus} CPUs unless a run says 'pinned'", flush=True)

    # 1. Maximum rate, ghz and the server sharing every CPU: the headline comparison, with
    # the Python no-op server in between to separate the stack's cost from the router's.
    with running("baseline", *baseline(), cache) as s:
        base = bench.measure("baseline", s)
    with running("python_noop_w1", *python_noop(1), cache) as s:
        py1 = bench.measure("python_noop_w1", s)
    with running("python_noop_w2", *python_noop(2), cache) as s:
        py2 = bench.measure("python_noop_w2", s)
    with running("python_noop_w2_header", *python_noop(2, "--request-id-header"), cache) as s:
        py2_header = bench.measure("python_noop_w2_header", s)
    profile: dict[str, Any] | None = None
    with running("router_w1", *router(1), cache) as s:
        w1 = bench.measure("router_w1", s, profile=args.profile)
        profile = bench.profile
    with running("router_w2", *router(2), cache) as s:
        w2 = bench.measure("router_w2", s)
        half_rate = max(1, int(w2.rps / 2))
        # 2. Latency under normal load: a fixed rate of half the maximum, then the soak.
        half = bench.measure("router_w2_half_rate", s, rate=half_rate)
        if not args.no_soak:
            soak_result = soak(bench, s, half_rate, args.soak)
    # The same without the per-RPC access log line (logging.rpc: false), which operators
    # can turn off.
    no_log = default_config_with(cache, "no_rpc_log", "logging", "rpc", False)
    with running("router_w2_no_rpc_log", *router(2, "--config", str(no_log)), cache) as s:
        w2_no_log = bench.measure("router_w2_no_rpc_log", s)

    # What observability costs Route (--workers 2), variants interleaved round by round:
    # metrics on (the default) and off, tracing on at 1% and 100% of traces, and the
    # per-RPC log line sampled at 1%.
    overhead = overhead_comparison(bench, router, cache, args.overhead_rounds)
    # Server CPU per Route against the no-op Python server, interleaved round by round.
    route_cpu = route_cpu_comparison(bench, router, python_noop, args)
    # Decisions per second: RouteBatch at several sizes against unary Route.
    batch = batch_comparison(bench, router, args.batch_rounds)

    # 3. Pinned apart: the server alone on one CPU, ghz on the other(s).
    pinned_runs: list[GhzRun] = []
    if cpus >= 2:
        with running("baseline_pinned", *baseline(server_cpu), cache) as s:
            pinned_runs.append(
                bench.measure("baseline_pinned", s, ghz_cpus=ghz_cpus, server_cpus=server_cpu)
            )
        with running("router_w1_pinned", *router(1, cpus=server_cpu), cache) as s:
            pinned_runs.append(
                bench.measure("router_w1_pinned", s, ghz_cpus=ghz_cpus, server_cpus=server_cpu)
            )

    # 4. Complete (server streaming) on the demo backend: its default pace and instant.
    with running("complete_demo_w2", *router(2), cache) as s:
        demo = bench.measure("complete_demo_w2", s, call=COMPLETE)
    instant_demo = default_config_with(
        cache, "instant_demo", "backends.demo", "tokens_per_second", 1e6
    )
    instant_config = ("--config", str(instant_demo))
    with running("complete_instant_demo_w2", *router(2, *instant_config), cache) as s:
        instant = bench.measure("complete_instant_demo_w2", s, call=COMPLETE)

    for run in (base, py1, py2, py2_header, w1, w2, w2_no_log, half):
        run.ratio_to_baseline = round(run.rps / base.rps, 3) if base.rps else None
    for run in pinned_runs:
        run.ratio_to_baseline = round(run.rps / pinned_runs[0].rps, 3)

    def over(a: GhzRun, b: GhzRun) -> float | None:
        return round(a.rps / b.rps, 3) if b.rps else None

    overhead_runs = [
        r
        for r in bench.runs
        if r.name.startswith((OVERHEAD_PREFIX, ROUTE_CPU_PREFIX, BATCH_PREFIX))
    ]
    route_runs = (base, py1, py2, py2_header, w1, w2, w2_no_log, half, *pinned_runs, *overhead_runs)
    result: dict[str, Any] = {
        "baseline_rps": base.rps,
        "router_rps_workers1": w1.rps,
        "router_rps_workers2": w2.rps,
        "ratio_workers1": w1.ratio_to_baseline,
        "ratio_workers2": w2.ratio_to_baseline,
        "half_rate_rps": half_rate,
        "p50_ms_half_rate": half.p50_ms,
        "p99_ms_half_rate": half.p99_ms,
        "errors": sum(r.errors for r in route_runs),
        **soak_result,
        "soak_seconds": None if args.no_soak else args.soak,
        "python_noop_rps_workers1": py1.rps,
        "python_noop_rps_workers2": py2.rps,
        "python_noop_header_rps_workers2": py2_header.rps,
        "python_noop_ratio_workers2": py2.ratio_to_baseline,
        "router_over_python_noop_workers2": over(w2, py2),
        "router_over_python_noop_header_workers2": over(w2, py2_header),
        "router_rps_workers2_no_rpc_log": w2_no_log.rps,
        "observability_overhead": overhead,
        "route_cpu": route_cpu,
        "route_batch": batch,
        "ratio_workers2_no_rpc_log": w2_no_log.ratio_to_baseline,
        "pinned_ratio_workers1": pinned_runs[1].ratio_to_baseline if pinned_runs else None,
        "complete_streams_per_s_demo": demo.rps,
        "complete_p50_ms_demo": demo.p50_ms,
        "complete_p99_ms_demo": demo.p99_ms,
        "complete_streams_per_s_instant": instant.rps,
        "complete_p50_ms_instant": instant.p50_ms,
        "complete_p99_ms_instant": instant.p99_ms,
        "complete_errors": demo.errors + instant.errors,
        "server_cpu_us_per_call": {
            run.name: run.server_cpu_us_per_call
            for run in (base, py1, py2, py2_header, w1, w2, w2_no_log)
        },
        "profile_router_w1": profile,
        "targets": {
            "ratio_workers2_min": 0.4,
            "p99_ms_half_rate_max": 5.0,
            "errors": 0,
            "soak_errors": 0,
        },
        "settings": asdict(
            Settings(
                concurrency=args.concurrency,
                connections=args.connections,
                duration_s=args.duration,
                warmup_s=bench.warmup_s,
                soak_s=None if args.no_soak else args.soak,
                payload_queries=len(json.loads(route_payload.read_text())),
                payload_seed=args.seed,
                complete_max_tokens=args.complete_max_tokens,
                ghz_argv=bench.ghz_argv(
                    ROUTE, Path("PAYLOAD.json"), args.duration, None, "HOST:PORT"
                ),
            )
        ),
        "payload_mix": mix,
        "command": args.command,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "runs": [asdict(r) for r in bench.runs],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    markdown = args.markdown or args.output.with_suffix(".md")
    markdown.write_text(render_markdown(result), encoding="utf-8")
    print(f"\nwrote {args.output} and {markdown}\n")
    print(render_markdown(result))
    return 0


OVERHEAD_PREFIX = "w2_"
# name -> (what it is, config section, key, value) laid over the embedded default.
OVERHEAD_VARIANTS: dict[str, tuple[str, str | None, str, Any]] = {
    "metrics_on": ("metrics on (the default), tracing off", None, "", None),
    "metrics_off": ("metrics off (--metrics-port 0)", None, "", None),
    "tracing_1pct": (
        "metrics on, tracing on, 1% of traces sampled",
        "tracing",
        "sample_ratio",
        0.01,
    ),
    "tracing_all": ("metrics on, tracing on, every trace sampled", "tracing", "sample_ratio", 1.0),
    "rpc_sample_1pct": ("metrics on, logging.rpc_sample 0.01", "logging", "rpc_sample", 0.01),
}


def overhead_comparison(
    bench: Bench,
    router: Callable[..., tuple[list[str], int]],
    cache: Path,
    rounds: int,
) -> dict[str, Any]:
    """Run Route against each observability variant, interleaved; return the averages."""
    sink = OtlpSink()
    try:
        for round_number in range(1, rounds + 1):
            for variant, (_, section, key, value) in OVERHEAD_VARIANTS.items():
                extra: list[str] = []
                if variant == "metrics_off":
                    extra = ["--metrics-port", "0"]
                elif section is not None:
                    path = default_config_with(cache, variant, section, key, value)
                    if section == "tracing":
                        config = yaml.safe_load(path.read_text(encoding="utf-8"))
                        config["tracing"]["otlp_endpoint"] = sink.endpoint
                        path.write_text(yaml.safe_dump(config), encoding="utf-8")
                    extra = ["--config", str(path)]
                name = f"{OVERHEAD_PREFIX}{variant}_{round_number}"
                with running(name, *router(2, *extra), cache) as s:
                    bench.measure(name, s)
    finally:
        spans = sink.close()
    runs = {r.name: r for r in bench.runs}
    summary: dict[str, Any] = {"rounds": rounds, "spans_received": spans, "variants": {}}
    for variant, (what, *_) in OVERHEAD_VARIANTS.items():
        mine = [runs[f"{OVERHEAD_PREFIX}{variant}_{n}"] for n in range(1, rounds + 1)]
        cpu = [r.server_cpu_us_per_call for r in mine if r.server_cpu_us_per_call]
        summary["variants"][variant] = {
            "what": what,
            "rps": round(sum(r.rps for r in mine) / len(mine), 1),
            "server_cpu_us_per_call": round(sum(cpu) / len(cpu), 1) if cpu else None,
            "p99_ms": round(sum(r.p99_ms for r in mine) / len(mine), 3),
            "errors": sum(r.errors for r in mine),
        }
    variants = summary["variants"]
    base = variants["metrics_off"]
    for entry in variants.values():
        entry["rps_vs_metrics_off"] = round(entry["rps"] / base["rps"], 3) if base["rps"] else None
        if entry["server_cpu_us_per_call"] and base["server_cpu_us_per_call"]:
            entry["cpu_vs_metrics_off"] = round(
                entry["server_cpu_us_per_call"] / base["server_cpu_us_per_call"], 3
            )
    summary["metrics_cost_share_of_rps"] = round(
        1 - variants["metrics_on"]["rps_vs_metrics_off"], 3
    )
    return summary


def rerun_overhead(
    args: argparse.Namespace, bench: Bench, router: Callable[..., tuple[list[str], int]]
) -> int:
    """Measure the observability comparison again and put it into the recorded results."""
    overhead = overhead_comparison(bench, router, args.cache, args.overhead_rounds)
    return record_rerun(args, bench, "observability_overhead", OVERHEAD_PREFIX, overhead)


def record_rerun(
    args: argparse.Namespace, bench: Bench, key: str, prefix: str, summary: dict[str, Any]
) -> int:
    """Replace one comparison (``key``, its runs named ``prefix``...) in the recorded results."""
    result: dict[str, Any] = json.loads(args.output.read_text(encoding="utf-8"))
    summary["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    summary["command"] = args.command
    summary["duration_s"] = args.duration
    result[key] = summary
    result["runs"] = [run for run in result["runs"] if not run["name"].startswith(prefix)] + [
        asdict(run) for run in bench.runs
    ]
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    markdown = args.markdown or args.output.with_suffix(".md")
    markdown.write_text(render_markdown(result), encoding="utf-8")
    print(render_markdown(result))
    return 0


ROUTE_CPU_PREFIX = "cpu_"
# name -> what it is; each runs once a round, in this order.
ROUTE_CPU_SERVERS: dict[str, str] = {
    "python_noop_w1": "the no-op Python server (bench/noop_aio_server.py), 1 process",
    "router_w1": "modelrouter serve --workers 1 (metrics on, the default)",
    "router_w1_metrics_off": "modelrouter serve --workers 1 --metrics-port 0",
    "python_noop_w2": "the no-op Python server, 2 processes",
    "router_w2": "modelrouter serve --workers 2 (metrics on)",
    "router_w2_metrics_off": "modelrouter serve --workers 2 --metrics-port 0",
}
# With --route-cpu-features: the two default features turned off, one and both at a time
# (name -> what it is, and the configuration changes: (section, key, value)).
ROUTE_CPU_FEATURES: dict[str, tuple[str, tuple[tuple[str, str, Any], ...]]] = {
    "router_w1_no_rpc_log": (
        "modelrouter serve --workers 1, logging.rpc: false",
        (("logging", "rpc", False),),
    ),
    "router_w1_no_store": ("modelrouter serve --workers 1, store: null", (("", "store", None),)),
    "router_w1_neither": (
        "modelrouter serve --workers 1, logging.rpc: false and store: null",
        (("logging", "rpc", False), ("", "store", None)),
    ),
}
# The target: server CPU per Route at most this multiple of the no-op Python server's.
ROUTE_CPU_MAX_RATIO = 1.25
# The target: p99 at most this at half the maximum rate (router_w2 of the same round).
HALF_RATE_MAX_P99_MS = 5.0


def route_cpu_comparison(
    bench: Bench,
    router: Callable[..., tuple[list[str], int]],
    python_noop: Callable[..., tuple[list[str], int]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Measure server CPU per Route against the no-op Python server, rounds interleaved.

    ``args.before``, when given, is an earlier build's modelrouter command, run as
    ``before_w1`` and ``before_w2`` in every round (the before/after of a change);
    ``args.route_cpu_features`` adds the default features turned off (``ROUTE_CPU_FEATURES``).
    Every round also holds ``router_w2`` at half the rate it reached, for its p99.
    """
    servers = dict(ROUTE_CPU_SERVERS)
    configs: dict[str, list[str]] = {}
    if getattr(args, "route_cpu_features", False):
        for name, (what, changes) in ROUTE_CPU_FEATURES.items():
            servers[name] = what
            configs[name] = ["--config", str(config_with(bench.cache, name, changes))]
    if args.before:
        servers["before_w1"] = f"{args.before} serve --workers 1 (metrics on)"
        servers["before_w2"] = f"{args.before} serve --workers 2 (metrics on)"
    rounds = args.route_cpu_rounds
    half_rate: list[GhzRun] = []
    for round_number in range(1, rounds + 1):
        for name in servers:
            workers = 2 if name.endswith(("_w2", "_w2_metrics_off")) else 1
            if name.startswith("python_noop"):
                argv, port = python_noop(workers)
            else:
                extra = ["--metrics-port", "0"] if name.endswith("metrics_off") else []
                argv, port = router(workers, *extra, *configs.get(name, []))
                if name.startswith("before"):
                    argv = [args.before, *argv[1:]]
            run_name = f"{ROUTE_CPU_PREFIX}{name}_{round_number}"
            with running(run_name, argv, port, bench.cache) as s:
                run = bench.measure(run_name, s)
                if name == "router_w2":
                    rate = max(1, int(run.rps / 2))
                    half_rate.append(
                        bench.measure(
                            f"{ROUTE_CPU_PREFIX}router_w2_half_rate_{round_number}", s, rate=rate
                        )
                    )
    runs = {r.name: r for r in bench.runs}
    summary: dict[str, Any] = {
        "rounds": rounds,
        "target_max_ratio": ROUTE_CPU_MAX_RATIO,
        "before": args.before,
        "servers": {},
    }
    for name, what in servers.items():
        mine = [runs[f"{ROUTE_CPU_PREFIX}{name}_{n}"] for n in range(1, rounds + 1)]
        cpu = sorted(r.server_cpu_us_per_call or 0.0 for r in mine)
        summary["servers"][name] = {
            "what": what,
            "server_cpu_us_per_call": [r.server_cpu_us_per_call for r in mine],
            "median_us_per_call": cpu[len(cpu) // 2],
            "rps": [r.rps for r in mine],
            "loadavg_before": [r.loadavg_before for r in mine],
        }
    # Each round's ratio to that round's no-op server of the same worker count, then the
    # median: rounds run minutes apart on a shared machine, the servers of one round do not.
    ratios: dict[str, Any] = {}
    for name in servers:
        if name.startswith("python_noop"):
            continue
        floor = "python_noop_w2" if "_w2" in name else "python_noop_w1"
        per_round = [
            round(
                (runs[f"{ROUTE_CPU_PREFIX}{name}_{n}"].server_cpu_us_per_call or 0.0)
                / (runs[f"{ROUTE_CPU_PREFIX}{floor}_{n}"].server_cpu_us_per_call or 1.0),
                3,
            )
            for n in range(1, rounds + 1)
        ]
        ratios[name] = {"per_round": per_round, "median": sorted(per_round)[len(per_round) // 2]}
    summary["ratio_to_python_noop"] = ratios
    p99 = [r.p99_ms for r in half_rate]
    summary["half_rate_router_w2"] = {
        "target_max_p99_ms": HALF_RATE_MAX_P99_MS,
        "rate": [r.rate for r in half_rate],
        "p50_ms": [r.p50_ms for r in half_rate],
        "p99_ms": p99,
        "errors": [r.errors for r in half_rate],
        "loadavg_before": [r.loadavg_before for r in half_rate],
        "met": all(x <= HALF_RATE_MAX_P99_MS for x in p99),
    }
    return summary


def config_with(cache: Path, name: str, changes: Sequence[tuple[str, str, Any]]) -> Path:
    """Write the embedded default configuration with values changed; return its path.

    A change is (section, key, value); an empty section is the top level.
    """
    config = yaml.safe_load(DEFAULT_CONFIG_YAML)
    for section, key, value in changes:
        parent = config
        for part in filter(None, section.split(".")):
            parent = parent.setdefault(part, {})
        parent[key] = value
    path = cache / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def rerun_route_cpu(
    args: argparse.Namespace,
    bench: Bench,
    router: Callable[..., tuple[list[str], int]],
    python_noop: Callable[..., tuple[list[str], int]],
) -> int:
    """Measure the Route CPU comparison again and put it into the recorded results."""
    route_cpu = route_cpu_comparison(bench, router, python_noop, args)
    return record_rerun(args, bench, "route_cpu", ROUTE_CPU_PREFIX, route_cpu)


BATCH_PREFIX = "batch_"


def batch_comparison(
    bench: Bench, router: Callable[..., tuple[list[str], int]], rounds: int
) -> dict[str, Any]:
    """Measure decisions per second of RouteBatch at each size against unary Route.

    One ``--workers 2`` server per round; within a round, unary Route, then each size.
    """
    variants: list[tuple[str, str, int | None]] = [("route", ROUTE, None)]
    variants += [(f"batch_{size}", ROUTE_BATCH, size) for size in BATCH_SIZES]
    for round_number in range(1, rounds + 1):
        argv, port = router(2)
        with running(f"{BATCH_PREFIX}router_w2_{round_number}", argv, port, bench.cache) as s:
            for name, call, size in variants:
                bench.measure(f"{BATCH_PREFIX}{name}_{round_number}", s, call=call, batch_size=size)
    runs = {r.name: r for r in bench.runs}
    summary: dict[str, Any] = {"rounds": rounds, "sizes": list(BATCH_SIZES), "variants": {}}
    for name, _, size in variants:
        mine = [runs[f"{BATCH_PREFIX}{name}_{n}"] for n in range(1, rounds + 1)]
        per_call = size or 1
        decisions = [r.rps * per_call for r in mine]
        cpu = [r.server_cpu_us_per_call / per_call for r in mine if r.server_cpu_us_per_call]
        summary["variants"][name] = {
            "requests_per_call": per_call,
            "decisions_per_s": round(sum(decisions) / len(decisions), 1),
            "calls_per_s": round(sum(r.rps for r in mine) / len(mine), 1),
            "server_cpu_us_per_decision": round(sum(cpu) / len(cpu), 1) if cpu else None,
            "p50_ms": round(sum(r.p50_ms for r in mine) / len(mine), 3),
            "p99_ms": round(sum(r.p99_ms for r in mine) / len(mine), 3),
            "errors": sum(r.errors for r in mine),
        }
    unary = summary["variants"]["route"]["decisions_per_s"]
    for entry in summary["variants"].values():
        entry["decisions_vs_route"] = round(entry["decisions_per_s"] / unary, 2) if unary else None
    return summary


def rerun_batch(
    args: argparse.Namespace, bench: Bench, router: Callable[..., tuple[list[str], int]]
) -> int:
    """Measure the RouteBatch comparison again and put it into the recorded results."""
    batch = batch_comparison(bench, router, args.batch_rounds)
    return record_rerun(args, bench, "route_batch", BATCH_PREFIX, batch)


class OtlpSink:
    """An OTLP/gRPC trace receiver that counts and drops what it gets (for tracing runs)."""

    def __init__(self) -> None:
        from concurrent import futures

        from opentelemetry.proto.collector.trace.v1 import (
            trace_service_pb2,
            trace_service_pb2_grpc,
        )

        sink = self

        class Drop(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                sink.spans += sum(
                    len(scope.spans)
                    for resource in request.resource_spans
                    for scope in resource.scope_spans
                )
                return trace_service_pb2.ExportTraceServiceResponse()

        self.spans = 0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            Drop(), self.server
        )
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.endpoint = f"http://127.0.0.1:{port}"

    def close(self) -> int:
        """Stop; return how many spans arrived."""
        self.server.stop(0).wait()
        return self.spans


def render_markdown(result: dict[str, Any]) -> str:
    """Render the runs and the headline numbers as a Markdown table."""
    s = result["settings"]
    lines = [
        f"Machine: {result['machine']['cpus']} CPUs ({result['machine']['cpu_model']}), "
        f"{result['machine']['memory_gib']} GiB; grpcio {result['machine']['grpcio']}; "
        f"{result['machine']['go']}.",
        f"ghz: concurrency {s['concurrency']}, {s['connections']} connections, "
        f"{s['duration_s']:g} s per run after {s['warmup_s']:g} s of warm-up, "
        f"{s['payload_queries']} queries sampled from routing_train.jsonl (round-robin).",
        "",
        "| run | call | CPUs | rate limit | rps | p50 ms | p95 ms | p99 ms | errors "
        "| server CPU % | server CPU us/call | ghz CPU % | load before | ratio to baseline |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        ratio = "" if r["ratio_to_baseline"] is None else f"{r['ratio_to_baseline']:.2f}"
        cpu = f"{r['server_cpu_percent']:.0f}" if r["server_cpu_percent"] else "n/a"
        ghz_cpu = f"{r['ghz_cpu_percent']:.0f}" if r["ghz_cpu_percent"] else "n/a"
        per_call = r["server_cpu_us_per_call"]
        per_call_text = "n/a" if per_call is None else f"{per_call:.0f}"
        lines.append(
            f"| {r['name']} | {r['call']} | {r['cpus']} | {r['rate'] or 'none'} | {r['rps']:.0f} | "
            f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | {cpu} | "
            f"{per_call_text} | {ghz_cpu} | {r['loadavg_before']:.1f} | {ratio} |"
        )
    soak = "skipped (--no-soak)"
    if result["soak_seconds"] is not None:
        soak = (
            f"{result['soak_seconds']:g} s at {result['half_rate_rps']}/s: "
            f"{result['soak_errors']} errors, RSS {result['rss_mb_start']} -> "
            f"{result['rss_mb_end']} MiB (max {result['rss_mb_max']}), flat: {result['rss_flat']}"
        )
    r = result
    lines += [
        "",
        f"- Route, --workers 2 over the no-op Go server: **{r['ratio_workers2']}** (target >= "
        f"0.4); --workers 1: {r['ratio_workers1']}; pinned apart, --workers 1: "
        f"{r['pinned_ratio_workers1']}; --workers 2 without the per-RPC log line: "
        f"{r['ratio_workers2_no_rpc_log']}.",
        f"- The no-op Python server (grpc.aio + uvloop) with 2 processes reaches "
        f"{r['python_noop_ratio_workers2']} of the Go one; the router reaches "
        f"{r['router_over_python_noop_workers2']} of it, and "
        f"{r['router_over_python_noop_header_workers2']} of the no-op Python server that also "
        "sends an x-request-id header (modelrouter's Route now returns it as a trailer).",
        "- Server CPU per call (independent of how the cores were shared): "
        + ", ".join(f"{k} {v} us" for k, v in r["server_cpu_us_per_call"].items())
        + ".",
        f"- p99 at half the maximum rate ({r['half_rate_rps']}/s): "
        f"**{r['p99_ms_half_rate']} ms** (target <= 5 ms); Route errors: {r['errors']}.",
        f"- Soak: {soak}.",
        f"- Complete on the demo backend (--workers 2): {r['complete_streams_per_s_demo']} "
        f"streams/s, whole-stream p50 {r['complete_p50_ms_demo']} ms, p99 "
        f"{r['complete_p99_ms_demo']} ms; instant demo: {r['complete_streams_per_s_instant']} "
        f"streams/s, p50 {r['complete_p50_ms_instant']} ms, p99 {r['complete_p99_ms_instant']} "
        f"ms; errors {r['complete_errors']}.",
    ]
    overhead = r.get("observability_overhead")
    if overhead:
        on = overhead["variants"]["metrics_on"]
        lines += [
            "",
            f"Observability overhead on Route (--workers 2), mean of {overhead['rounds']} "
            "interleaved rounds per variant"
            + (
                f" (measured {overhead['date']} with `{overhead['command']}`, "
                f"{overhead['duration_s']:g} s per run)"
                if overhead.get("date")
                else ""
            )
            + ":",
            "",
            "| variant | rps | rps vs metrics off | server CPU us/call | CPU vs metrics off "
            "| p99 ms | errors |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, v in overhead["variants"].items():
            lines.append(
                f"| {name}: {v['what']} | {v['rps']:.0f} | {v['rps_vs_metrics_off']:.3f} | "
                f"{v['server_cpu_us_per_call'] or 'n/a'} | {v.get('cpu_vs_metrics_off', 'n/a')} | "
                f"{v['p99_ms']:.2f} | {v['errors']} |"
            )
        lines += [
            "",
            f"- With metrics on Route made {on['rps_vs_metrics_off']:.3f} of the requests/s it "
            f"made with them off (target >= 0.95) at {on.get('cpu_vs_metrics_off', 'n/a')} of "
            "the server CPU per call; tracing off costs no more than metrics on (its code "
            "tests one None per RPC and attempt); spans received by the OTLP sink: "
            f"{overhead['spans_received']}.",
        ]
    batch = r.get("route_batch")
    if batch:
        lines += [
            "",
            f"RouteBatch against unary Route (--workers 2), mean of {batch['rounds']} rounds"
            + (
                f" (measured {batch['date']} with `{batch['command']}`, "
                f"{batch['duration_s']:g} s per run)"
                if batch.get("date")
                else ""
            )
            + ":",
            "",
            "| call | requests per call | decisions/s | vs unary Route | server CPU us/decision "
            "| p50 ms | p99 ms | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, v in batch["variants"].items():
            lines.append(
                f"| {name} | {v['requests_per_call']} | {v['decisions_per_s']:.0f} | "
                f"{v['decisions_vs_route']} | {v['server_cpu_us_per_decision']} | "
                f"{v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {v['errors']} |"
            )
    route_cpu = r.get("route_cpu")
    if route_cpu:
        lines += [
            "",
            f"Server CPU per Route against the no-op Python server, {route_cpu['rounds']} "
            "interleaved rounds"
            + (
                f" (measured {route_cpu['date']} with `{route_cpu['command']}`, "
                f"{route_cpu['duration_s']:g} s per run)"
                if route_cpu.get("date")
                else ""
            )
            + ":",
            "",
            "| server | CPU us/call, each round | median | ratio to the no-op Python server, "
            "each round | median ratio (target <= "
            f"{route_cpu['target_max_ratio']}) |",
            "|---|---|---:|---|---:|",
        ]
        for name, v in route_cpu["servers"].items():
            ratio = route_cpu["ratio_to_python_noop"].get(name)
            each = ", ".join(f"{x:.0f}" for x in v["server_cpu_us_per_call"] if x is not None)
            lines.append(
                f"| {name}: {v['what']} | {each} | {v['median_us_per_call']:.0f} | "
                + (
                    f"{', '.join(f'{x:.2f}' for x in ratio['per_round'])} | {ratio['median']:.2f} |"
                    if ratio
                    else " | |"
                )
            )
        half = route_cpu.get("half_rate_router_w2")
        if half:
            lines.append(
                "- router_w2 held at half the rate it reached, each round: "
                + ", ".join(
                    f"{rate}/s p99 {p99:.2f} ms"
                    for rate, p99 in zip(half["rate"], half["p99_ms"], strict=True)
                )
                + f" (target <= {half['target_max_p99_ms']:g} ms: "
                + ("met" if half["met"] else "not met")
                + ")."
            )
    if r["profile_router_w1"]:
        shares = ", ".join(
            f"{area} {share:.0%}" for area, share in r["profile_router_w1"]["share_by_area"].items()
        )
        lines.append(f"- Where router_w1 spends its time (py-spy samples): {shares}.")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
