"""Route over gRPC: requests/s and latency at a fixed concurrency, with 1 and 2 workers.

One invocation measures, on the same machine and under the same closed-loop load:

- ``noop``: a grpc.aio server (uvloop) whose Route returns one fixed RouteResponse without
  reading the request: the Python gRPC stack alone, the ceiling for a Python server;
- ``modelrouter serve`` with the per-RPC log line (the default), without it
  (``logging.rpc: false``), and without the store (``store: null``; the default records
  every decision in a SQLite file), each with ``--workers 1`` and ``--workers 2``.

The load comes from client processes (uvloop, grpc.aio, pre-serialized requests so the
client spends as little CPU as possible), each keeping ``concurrency / clients`` calls in
flight over its own connections; the payload cycles through real queries from
``routing_train.jsonl``. Besides requests/s and p50/p90/p99, it reports the server's CPU time
per request (from /proc), which does not depend on how the clients share the two cores.

    .venv/bin/python bench/route_grpc.py            # about 2 minutes
    .venv/bin/python bench/route_grpc.py --duration 3 --warmup 1   # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from report_files import cpu_model

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "routing_train.jsonl"
RESULTS = ROOT / "bench" / "results" / "route_grpc.json"
METHOD = "/modelrouter.v1.ModelRouter/Route"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- the no-op baseline server ------------------------------------------------------------


def serve_noop(port: int) -> None:
    """Serve Route with one fixed response (run in its own process; SO_REUSEPORT shared)."""
    import grpc

    from router._proto.modelrouter.v1 import router_pb2 as pb

    response = pb.RouteResponse(
        decision=pb.RoutingDecision(
            request_id="0123456789abcdef01",
            tier="cheap",
            model="demo-cheap",
            backend="demo",
            score=0.25,
            level_probabilities=[0.6, 0.2, 0.1, 0.05, 0.05],
            reason=pb.DECISION_REASON_SCORE,
            estimated_prompt_tokens=52,
            estimated_cost_usd=1.2e-5,
            strongest_tier_cost_usd=7.8e-4,
            model_version="noop-000000000000",
            decision_micros=4.0,
        )
    ).SerializeToString()

    async def route(request: bytes, context: Any) -> bytes:
        return response

    async def main() -> None:
        handler = grpc.method_handlers_generic_handler(
            "modelrouter.v1.ModelRouter", {"Route": grpc.unary_unary_rpc_method_handler(route)}
        )
        server = grpc.aio.server(handlers=[handler], options=[("grpc.so_reuseport", 1)])
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print(json.dumps({"event": "listening", "port": port, "pid": os.getpid()}), flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(0)

    import uvloop

    uvloop.run(main())


# -- the load ------------------------------------------------------------------------------


def client_process(
    port: int,
    payloads: list[bytes],
    concurrency: int,
    connections: int,
    warmup: float,
    duration: float,
    out: Any,
) -> None:
    """Keep ``concurrency`` Route calls in flight over ``connections``; put the latencies."""
    import grpc
    import uvloop

    async def main() -> tuple[list[int], int]:
        options = [("grpc.use_local_subchannel_pool", 1)]
        channels = [
            grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
            for _ in range(connections)
        ]
        calls = [ch.unary_unary(METHOD, None, None) for ch in channels]  # bytes in and out
        for ch in channels:
            await asyncio.wait_for(ch.channel_ready(), 10)
        latencies: list[int] = []
        errors = 0
        begin = time.perf_counter_ns() + int(warmup * 1e9)
        end = begin + int(duration * 1e9)

        async def loop(i: int) -> None:
            nonlocal errors
            call, j, n = calls[i % connections], i, len(payloads)
            while True:
                t0 = time.perf_counter_ns()
                if t0 >= end:
                    return
                try:
                    await call(payloads[j % n])
                except grpc.aio.AioRpcError:
                    if t0 >= begin:
                        errors += 1
                    continue
                if t0 >= begin:
                    latencies.append(time.perf_counter_ns() - t0)
                j += concurrency

        await asyncio.gather(*(loop(i) for i in range(concurrency)))
        for ch in channels:
            await ch.close(None)
        return latencies, errors

    out.put(uvloop.run(main()))


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


@dataclass
class Result:
    target: str
    workers: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    server_cpu_us_per_request: float
    # Mean time in the fast path (featurize, score, pick), from the RPC log lines.
    decision_us_mean: float | None = None


def run_load(
    target: str,
    workers: int,
    port: int,
    pids: list[int],
    payloads: list[bytes],
    args: argparse.Namespace,
) -> Result:
    """Drive one server with the client processes; return what they measured."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    per_client = max(1, args.concurrency // args.clients)
    clients = [
        ctx.Process(
            target=client_process,
            args=(
                port,
                payloads[i :: args.clients],
                per_client,
                args.connections,
                args.warmup,
                args.duration,
                out,
            ),
        )
        for i in range(args.clients)
    ]
    for c in clients:
        c.start()
    time.sleep(args.warmup + 1.0)  # the clients connect, then warm up
    cpu_before = _cpu_seconds(pids)
    time.sleep(args.duration)
    cpu_after = _cpu_seconds(pids)
    latencies: list[int] = []
    errors = 0
    for _ in clients:
        lat, err = out.get(timeout=args.duration + 60)
        latencies.extend(lat)
        errors += err
    for c in clients:
        c.join(30)
    latencies.sort()
    n = len(latencies)

    def pct(p: float) -> float:
        return latencies[min(n - 1, int(p * n))] / 1e6 if n else float("nan")

    result = Result(
        target=target,
        workers=workers,
        requests=n,
        errors=errors,
        rps=n / args.duration,
        p50_ms=pct(0.50),
        p90_ms=pct(0.90),
        p99_ms=pct(0.99),
        server_cpu_us_per_request=(cpu_after - cpu_before) / n * 1e6 if n else float("nan"),
    )
    print(
        f"{target:>24} workers={workers}: {result.rps:8.0f} req/s  p50 {result.p50_ms:.2f} ms  "
        f"p99 {result.p99_ms:.2f} ms  errors {errors}  server CPU "
        f"{result.server_cpu_us_per_request:.0f} us/req",
        flush=True,
    )
    return result


# -- the servers ---------------------------------------------------------------------------


def wait_listening(
    log: Path, count: int, proc: list[subprocess.Popen[bytes]]
) -> list[dict[str, Any]]:
    """Wait for ``count`` "listening" log lines in ``log``; return them."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        lines = []
        for raw in log.read_text().splitlines():
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if line.get("event") == "listening":
                lines.append(line)
        if len(lines) >= count:
            return lines
        if any(p.poll() is not None for p in proc):
            raise RuntimeError(f"server exited:\n{log.read_text()}")
        time.sleep(0.1)
    raise RuntimeError(f"server did not listen:\n{log.read_text()}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM the processes and reap them (killing those that hang)."""
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def bench_noop(workers: int, payloads: list[bytes], args: argparse.Namespace, tmp: Path) -> Result:
    """Measure the no-op server with ``workers`` processes on one port."""
    port = free_port()
    log = tmp / f"noop{workers}.log"
    with log.open("wb") as fh:
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--serve-noop", str(port)],
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
            for _ in range(workers)
        ]
    try:
        lines = wait_listening(log, workers, procs)
        return run_load(
            "python grpc.aio no-op", workers, port, [line["pid"] for line in lines], payloads, args
        )
    finally:
        stop_processes(procs)


def bench_router(
    label: str,
    config: Path,
    workers: int,
    payloads: list[bytes],
    args: argparse.Namespace,
    tmp: Path,
    env: dict[str, str] | None = None,
) -> Result:
    """Measure ``modelrouter serve`` with a configuration and a worker count."""
    log = tmp / f"{label.replace(' ', '_')}{workers}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "router.cli",
                "serve",
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--workers",
                str(workers),
                # Metrics on, as by default, on a port of their own.
                "--metrics-port",
                str(free_port()),
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    try:
        lines = wait_listening(log, workers, [proc])
        pids = [line["pid"] for line in lines] + ([proc.pid] if workers > 1 else [])
        result = run_load(label, workers, lines[0]["port"], pids, payloads, args)
    finally:
        stop_processes([proc])
    micros = []
    for raw in log.read_text().splitlines():
        if '"event": "rpc"' in raw:
            value = json.loads(raw).get("decision_micros")
            if value is not None:
                micros.append(value)
    if micros:
        result.decision_us_mean = statistics.fmean(micros)
    return result


def load_payloads(count: int, seed: int) -> list[bytes]:
    """Return serialized RouteRequests over a random sample of the training queries."""
    from router._proto.modelrouter.v1 import router_pb2 as pb

    with DATA.open(encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    sample = random.Random(seed).sample(texts, count)
    return [pb.RouteRequest(prompt=t, tenant="bench").SerializeToString() for t in sample]


def machine() -> dict[str, Any]:
    """Describe the machine and the software measured."""
    cpu = cpu_model()
    import grpc

    from router.fastpath import IMPLEMENTATION

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "fastpath": IMPLEMENTATION,
        "platform": platform.platform(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight in total")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--connections", type=int, default=4, help="connections per client")
    parser.add_argument("--queries", type=int, default=2000, help="distinct queries cycled")
    parser.add_argument("--model", default="builtin", help="routing model (default: shipped)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--compare-loops", action="store_true", help="also run 1 worker on asyncio's own loop"
    )
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repeats (median)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--serve-noop", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_noop is not None:
        serve_noop(args.serve_noop)
        return 0

    payloads = load_payloads(args.queries, seed=1)
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        from router.config import DEFAULT_CONFIG_YAML

        data = yaml.safe_load(DEFAULT_CONFIG_YAML)
        data["model"] = str(Path(args.model).resolve()) if args.model != "builtin" else "builtin"
        logged_config = tmp / "logged.yaml"
        logged_config.write_text(yaml.safe_dump(data))
        unstored_config = tmp / "unstored.yaml"
        unstored_config.write_text(yaml.safe_dump({**data, "store": None}))
        data["logging"] = {"rpc": False}
        quiet_config = tmp / "quiet.yaml"
        quiet_config.write_text(yaml.safe_dump(data))
        # The embedded default keeps a store in the per-user state directory: here, a
        # directory of the run's own.
        state = {"XDG_STATE_HOME": str(tmp / "state")}
        load_before = os.getloadavg()
        # Rounds interleave the targets, so that a burst of other work on the machine
        # hits all of them; each target's median round is reported.
        for _ in range(args.rounds):
            for workers in args.workers:
                results.append(bench_noop(workers, payloads, args, tmp))
                results.append(
                    bench_router("modelrouter", logged_config, workers, payloads, args, tmp, state)
                )
                results.append(
                    bench_router(
                        "modelrouter (no rpc log)",
                        quiet_config,
                        workers,
                        payloads,
                        args,
                        tmp,
                        state,
                    )
                )
                results.append(
                    bench_router(
                        "modelrouter (store off)",
                        unstored_config,
                        workers,
                        payloads,
                        args,
                        tmp,
                        state,
                    )
                )
                if workers == 1 and args.compare_loops:
                    results.append(
                        bench_router(
                            "modelrouter (asyncio loop)",
                            logged_config,
                            workers,
                            payloads,
                            args,
                            tmp,
                            env={"MODELROUTER_NO_UVLOOP": "1", **state},
                        )
                    )
        load_after = os.getloadavg()
    rounds: dict[tuple[str, int], list[Result]] = {}
    for r in results:
        rounds.setdefault((r.target, r.workers), []).append(r)
    by = {key: sorted(runs, key=lambda r: r.rps)[len(runs) // 2] for key, runs in rounds.items()}
    ratios: dict[str, float] = {}
    for w in args.workers:
        noop, logged = by["python grpc.aio no-op", w], by["modelrouter", w]
        quiet = by["modelrouter (no rpc log)", w]
        unstored = by["modelrouter (store off)", w]
        decision = logged.decision_us_mean or 0.0
        ratios[f"modelrouter_over_noop_rps_workers{w}"] = logged.rps / noop.rps
        ratios[f"modelrouter_no_rpc_log_over_noop_rps_workers{w}"] = quiet.rps / noop.rps
        # Server CPU per request that is neither the gRPC stack nor the routing decision:
        # what the service layer (validation, conversion, request id header, log) adds.
        ratios[f"layer_cpu_us_per_request_workers{w}"] = (
            logged.server_cpu_us_per_request - noop.server_cpu_us_per_request - decision
        )
        ratios[f"layer_cpu_us_per_request_no_rpc_log_workers{w}"] = (
            quiet.server_cpu_us_per_request - noop.server_cpu_us_per_request - decision
        )
        # What recording each decision in the embedded SQLite store costs the server.
        ratios[f"store_cpu_us_per_request_workers{w}"] = (
            logged.server_cpu_us_per_request - unstored.server_cpu_us_per_request
        )
        ratios[f"modelrouter_over_store_off_rps_workers{w}"] = logged.rps / unstored.rps
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "serve_noop")},
        "load_average_1min": {"before": load_before[0], "after": load_after[0]},
        "results": [asdict(r) for r in by.values()],
        "rounds_rps": {
            f"{t} workers={w}": [r.rps for r in runs] for (t, w), runs in rounds.items()
        },
        "ratios": ratios,
    }
    report["settings"]["model"] = args.model
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
