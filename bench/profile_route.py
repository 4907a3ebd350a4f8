"""Where a Route RPC's server CPU goes: py-spy samples of one worker under load, by category.

Starts ``modelrouter serve --workers 1``, loads it with the client of ``route_grpc.py``,
samples the worker with py-spy (``pip install py-spy``) and sorts every sample into: the
gRPC stack and event loop, gRPC's poller thread, the ``x-request-id`` header send, the
per-RPC log line, the fast path (featurize and score), and the rest of the service layer
(interceptor, servicer, conversion, validation). Writes bench/results/route_grpc_profile.json.

``--in-process`` measures the router's own Python instead, without gRPC: the wrapped Route
handler (interceptor, servicer, service, store record, log line) called directly on uvloop
with the payload's serialized requests, in one process for several configurations
(``default``, ``no_rpc_log``, ``no_store``, ``neither``), their blocks of calls interleaved
so that the machine's drift falls on all alike. It reports the CPU of the event loop's
thread per call and the store writer's thread per record written (``Store.write`` timed in
the thread that runs it). Writes bench/results/route_inprocess.json.

    .venv/bin/python bench/profile_route.py [--model FILE] [--seconds 10]
    .venv/bin/python bench/profile_route.py --in-process [--blocks 60] [--block 1000]
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from route_grpc import (
    ROOT,
    client_process,
    free_port,
    load_payloads,
    stop_processes,
    wait_listening,
)

from router.config import DEFAULT_CONFIG_YAML

OURS = ("interceptor.py", "servicer.py", "service.py", "convert.py", "feedback.py")


def category(frames: list[str]) -> str:
    """Return the category of one sampled stack (outermost frame first)."""
    stack = ";".join(frames)
    if "Router.score" in stack:
        return "fast path (featurize and score)"
    # py-spy shows time inside a C call as the calling Python line: _start's own time is
    # its await of send_initial_metadata (the rest of it calls Python functions).
    if "ModelRouterServicer._start" in frames[-1]:
        return "x-request-id header (a separate initial-metadata batch)"
    if "_log (router/server/interceptor.py" in stack:
        return "per-RPC log line"
    if any(name in stack for name in OURS):
        return "rest of the service layer"
    if "Thread.run" in stack:
        return "gRPC poller thread"
    return "gRPC stack and event loop"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, help="result file (default: by mode)")
    parser.add_argument("--in-process", action="store_true", help="time the handler, no gRPC")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="in-process variants")
    parser.add_argument("--blocks", type=int, default=60, help="in-process blocks per variant")
    parser.add_argument("--block", type=int, default=1000, help="in-process calls per block")
    args = parser.parse_args()
    if args.in_process:
        return in_process(args)
    args.out = args.out or ROOT / "bench/results/route_grpc_profile.json"
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")

    data = yaml.safe_load(DEFAULT_CONFIG_YAML)
    data["model"] = str(Path(args.model).resolve()) if args.model != "builtin" else "builtin"
    payloads = load_payloads(1000, seed=1)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        config = tmp / "c.yaml"
        config.write_text(yaml.safe_dump(data))
        log = tmp / "serve.log"
        with log.open("wb") as fh:
            server = subprocess.Popen(
                [sys.executable, "-m", "router.cli", "serve", "--config", str(config),
                 "--host", "127.0.0.1", "--port", "0", "--workers", "1",
                 "--metrics-port", str(free_port())],
                stdout=fh, stderr=subprocess.STDOUT,
                # The default store goes to the per-user state directory: not here.
                env={**os.environ, "XDG_STATE_HOME": str(tmp / "state")},
            )  # fmt: skip
        try:
            port = wait_listening(log, 1, [server])[0]["port"]
            ctx = multiprocessing.get_context("spawn")
            out = ctx.Queue()
            client = ctx.Process(
                target=client_process,
                args=(port, payloads, args.concurrency, 4, 2.0, args.seconds + 2.0, out),
            )
            client.start()
            time.sleep(3.0)
            raw = tmp / "samples.txt"
            subprocess.run(
                [py_spy, "record", "-p", str(server.pid), "-d", str(int(args.seconds)), "-r",
                 "1000", "-f", "raw", "-o", str(raw)],
                check=True, capture_output=True,
            )  # fmt: skip
            latencies, errors = out.get(timeout=args.seconds + 60)
            client.join(30)
            counts: Counter[str] = Counter()
            for line in raw.read_text().splitlines():
                stack, _, n = line.rpartition(" ")
                counts[category(stack.split(";"))] += int(n)
        finally:
            stop_processes([server])
    total = sum(counts.values())
    shares = {name: round(100 * n / total, 1) for name, n in counts.most_common()}
    for name, share in shares.items():
        print(f"{share:5.1f}%  {name}")
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "samples": total,
        "requests": len(latencies),
        "errors": errors,
        "share_of_server_cpu_percent": shares,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


# In-process variants: name -> (the per-RPC log line on, the store on).
VARIANTS = {
    "default": (True, True),
    "no_rpc_log": (False, True),
    "no_store": (True, False),
    "neither": (False, False),
}
ROUTE_METHOD = "/modelrouter.v1.ModelRouter/Route"


class _Context:
    """The part of a grpc.aio ServicerContext the Route handler touches on success."""

    def set_trailing_metadata(self, metadata: object) -> None:
        pass

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def time_remaining(self) -> None:
        return None

    async def abort(self, *args: object) -> None:
        raise RuntimeError(f"Route failed: {args}")


class _Registry:
    """Stands in for a grpc.aio server to collect the generated code's method handlers."""

    handler: Any = None

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.handler = handlers[0]

    def add_registered_method_handlers(self, *args: object) -> None:
        pass


class _Details:
    method = ROUTE_METHOD
    invocation_metadata = ()


def in_process(args: argparse.Namespace) -> int:
    """Time the Route handler without gRPC, the variants' blocks interleaved."""
    import uvloop

    from router.server import logs

    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; known: {sorted(VARIANTS)}")
    payloads = ghz_payloads()
    with tempfile.TemporaryDirectory() as folder:
        # The log lines go where a server's would, but nowhere to keep.
        real_stdout, sys.stdout = sys.stdout, open(os.devnull, "w")  # noqa: SIM115
        try:
            logs.configure_logging(_config(args.model, None, True).logging)
            result = uvloop.run(_in_process(args, variants, payloads, Path(folder)))
            logs.flush_logs()
        finally:
            sys.stdout.close()
            sys.stdout = real_stdout
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "what": "us of CPU per Route call, the handler called directly on uvloop (no gRPC): "
        "the event loop's thread (mean of the blocks; median and min beside it), the store "
        "writer's thread per record, and their sum",
        "load_average_1min": {"before": result.pop("load_before"), "after": os.getloadavg()[0]},
        "block_calls": args.block,
        "blocks": args.blocks,
        "variants": result,
    }
    print(f"load average {report['load_average_1min']}; us per call:")
    print(
        f"{'variant':12s} {'loop mean':>9s} {'median':>7s} {'min':>6s} {'writer':>7s} {'total':>6s}"
    )
    for name, v in result.items():
        print(
            f"{name:12s} {v['loop_us']:9.1f} {v['loop_us_median']:7.1f} {v['loop_us_min']:6.1f} "
            f"{v['writer_us']:7.1f} {v['total_us']:6.1f}"
        )
    out = args.out or ROOT / "bench/results/route_inprocess.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def ghz_payloads(count: int = 2000, seed: int = 20261128) -> list[bytes]:
    """Return the serialized RouteRequests ghz_route.py sends: its seeded sample, prompt only."""
    from router._proto.modelrouter.v1 import router_pb2 as pb

    with (ROOT.parent / "shared" / "data" / "routing_train.jsonl").open(encoding="utf-8") as fh:
        rows = [row for row in map(json.loads, fh) if row.get("text", "").strip()]
    sample = random.Random(seed).sample(rows, count)
    return [pb.RouteRequest(prompt=row["text"]).SerializeToString() for row in sample]


def _config(model: str, store: Path | None, log_rpcs: bool) -> Any:
    from router.config import Config

    data = yaml.safe_load(DEFAULT_CONFIG_YAML)
    data["model"] = str(Path(model).resolve()) if model != "builtin" else "builtin"
    data["store"] = None if store is None else {"path": str(store)}
    data["logging"] = {"rpc": log_rpcs}
    return Config.model_validate(data)


async def _in_process(
    args: argparse.Namespace, variants: list[str], payloads: list[bytes], folder: Path
) -> dict[str, Any]:
    import asyncio
    import gc
    import statistics

    from router._proto.modelrouter.v1 import router_pb2_grpc
    from router.loading import load_router
    from router.server.app import SERVICE_NAME
    from router.server.interceptor import ServiceInterceptor
    from router.server.servicer import ModelRouterServicer
    from router.service import RouterService
    from router.store import start_writer
    from router.telemetry import metrics

    metrics.install(metrics.Metrics())
    writer_s: dict[str, float] = {}
    written: dict[str, int] = {}
    handlers: dict[str, Any] = {}
    writers: dict[str, Any] = {}
    for name in variants:
        log_rpcs, with_store = VARIANTS[name]
        store_path = folder / f"{name}.db" if with_store else None
        config = _config(args.model, store_path, log_rpcs)
        router, _ = load_router(config)
        writer = None
        if store_path is not None and config.store is not None:
            writer = await start_writer(str(store_path), config.store)
            timed = _timed_write(writer.store.write, name, writer_s, written)
            writer.store.write = timed  # type: ignore[method-assign]
        service = RouterService(config, router, store=writer)
        interceptor = ServiceInterceptor(
            SERVICE_NAME,
            functools.partial(getattr, service, "max_concurrent_rpcs"),
            service.new_request_id,
            log_rpcs=config.logging.rpc,
            rpc_sample=config.logging.rpc_sample,
            metrics=metrics.current(),
            auth=functools.partial(getattr, service, "key_ring"),
        )
        registry = _Registry()
        servicer = ModelRouterServicer(service, metrics.current())
        router_pb2_grpc.add_ModelRouterServicer_to_server(servicer, registry)  # type: ignore[no-untyped-call]

        async def continuation(details: Any, registry: _Registry = registry) -> Any:
            return registry.handler.service(details)

        handler = await interceptor.intercept_service(continuation, _Details())  # type: ignore[arg-type]
        handlers[name] = handler.unary_unary
        writers[name] = writer
    context = _Context()
    gc.freeze()  # as a serving worker does
    load_before = os.getloadavg()[0]
    loop_us: dict[str, list[float]] = {name: [] for name in variants}
    calls = {name: 0 for name in variants}
    index = 0
    # Two blocks of warm-up; then every block, each variant once, in alternating order.
    for block in range(args.blocks + 2):
        if block == 2:
            writer_s.clear()
            written.clear()
        for name in variants if block % 2 else variants[::-1]:
            handle = handlers[name]
            started = time.thread_time()
            for i in range(args.block):
                await handle(payloads[index % len(payloads)], context)
                index += 1
                if i % 64 == 63:
                    await asyncio.sleep(0)  # let the loop run its other tasks (the writer)
            if block >= 2:
                loop_us[name].append((time.thread_time() - started) * 1e6 / args.block)
                calls[name] += args.block
    for writer in writers.values():
        if writer is not None:
            while writer.queued:
                await asyncio.sleep(0.01)
            await writer.aclose()
    result: dict[str, Any] = {"load_before": load_before}
    for name in variants:
        samples = loop_us[name]
        mean = statistics.mean(samples)
        # Per record written: the record of each call (the state record at start aside).
        writer_us = writer_s.get(name, 0.0) * 1e6 / max(1, calls[name])
        result[name] = {
            "loop_us": round(mean, 2),
            "loop_us_median": round(statistics.median(samples), 2),
            "loop_us_min": round(min(samples), 2),
            "writer_us": round(writer_us, 2),
            "total_us": round(mean + writer_us, 2),
            "records_written": written.get(name, 0),
        }
    return result


def _timed_write(write: Any, name: str, seconds: dict[str, float], written: dict[str, int]) -> Any:
    """Return ``write`` timed in the thread that runs it (the store writer's)."""

    def timed(records: Any) -> None:
        started = time.thread_time()
        try:
            write(records)
        finally:
            seconds[name] = seconds.get(name, 0.0) + time.thread_time() - started
            written[name] = written.get(name, 0) + len(records)

    return timed


if __name__ == "__main__":
    sys.exit(main())
