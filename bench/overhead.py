"""What the router adds to a streamed completion: time to first token and total time.

In one run, against the fake OpenAI-compatible server run as its own process at a fixed
token rate, the same streams are made two ways, interleaved batch by batch:
- direct: a lean keep-alive HTTP/1.1 client streams ``/v1/chat/completions`` from the fake;
- router: a grpc.aio client streams ``Complete`` from ``modelrouter serve --workers 1``,
  whose cheap tier is the same fake (forced with ``hints.tier``).
- engine: the backend layer (CompletionEngine) driven in this process, without gRPC.
"Added" is a path minus direct at each percentile (p50, p99). Concurrency 50 means 50
streams kept in flight with their starts spread evenly (independent callers); the
"burst" scenario starts each wave of 50 at the same instant instead (the worst case).
Then the gate is switched on for the cheap tier and the added time to first token is
compared with the hold-back window (window_tokens at the fake's token rate).

Usage: python bench/overhead.py [--streams-1 N] [--streams-50 N] [--out FILE]
Writes bench/results/overhead.json and bench/results/overhead_latency.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
import structlog
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router._proto.modelrouter.v1 import router_pb2 as pb  # noqa: E402
from router._proto.modelrouter.v1 import router_pb2_grpc  # noqa: E402
from router.completion import CompletionEngine  # noqa: E402
from router.config import LoggingConfig, parse_config  # noqa: E402
from router.domain import (  # noqa: E402
    ChatMessage,
    CompletionSummary,
    GenerationOptions,
    TextDelta,
)
from router.server.logs import configure_logging  # noqa: E402
from tests.fakes.fake_openai import fake_process  # noqa: E402
from tests.fakes.support import decision  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PROMPT = "What are your business hours?"


@dataclass
class Sample:
    ttft_ms: float
    total_ms: float


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def routing_model(workdir: Path) -> str:
    """Return the shipped model, or a small seeded one where it has not landed yet.

    The benchmark forces the tier with ``hints.tier``; the model only costs its decision
    time, which is part of what the router adds.
    """
    from router.model import default_model_path

    if default_model_path().exists():
        return "builtin"
    from tests.integration.server.support import make_model

    path = workdir / "bench-model.npz"
    make_model(path)
    return str(path)


def router_config(fake_url: str, gate: dict[str, Any] | None, model: str) -> dict[str, Any]:
    cheap: dict[str, Any] = {
        "name": "cheap",
        "model": "ok",
        "backend": "fake",
        "price": {"input_per_mtok": 0.24, "output_per_mtok": 0.24},
    }
    if gate:
        cheap["gate"] = gate
    return {
        "version": 1,
        "model": model,
        "server": {"max_concurrent_rpcs": 1000},
        "tiers": [
            cheap,
            {
                "name": "strong",
                "model": "ok",
                "backend": "fake",
                "price": {"input_per_mtok": 2.5, "output_per_mtok": 10.0},
            },
            {
                "name": "expert",
                "model": "ok",
                "backend": "fake",
                "price": {"input_per_mtok": 15.0, "output_per_mtok": 75.0},
            },
        ],
        "backends": {"fake": {"kind": "openai", "base_url": f"{fake_url}/v1"}},
    }


@contextlib.contextmanager
def router_server(config: dict[str, Any], workdir: Path) -> Iterator[str]:
    """Run ``modelrouter serve --workers 1`` on a free port; yield its address."""
    path = workdir / f"config-{os.getpid()}-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(config))
    port = _free_port()
    log = (workdir / "router.log").open("a")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "router.cli",
            "serve",
            "--config",
            str(path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            # Metrics on, as by default, on a port of their own.
            "--metrics-port",
            str(_free_port()),
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        # The embedded default's store goes to the per-user state directory: not here.
        env={**os.environ, "XDG_STATE_HOME": str(workdir / "state")},
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                log.flush()
                raise RuntimeError(
                    f"modelrouter serve exited {process.returncode}: "
                    + Path(log.name).read_text()[-2000:]
                )
            with grpc.insecure_channel(address) as channel:
                try:
                    stub = router_pb2_grpc.ModelRouterStub(channel)  # type: ignore[no-untyped-call]
                    stub.GetConfig(pb.GetConfigRequest(), timeout=1)
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        yield address
    finally:
        process.terminate()
        process.wait(15)
        log.close()


class StreamClient(Protocol):
    """One way of making a streamed completion, timed."""

    async def one(self) -> Sample: ...

    async def aclose(self) -> None: ...


class DirectClient:
    """Stream chat completions from the fake over pooled keep-alive sockets.

    A deliberately lean HTTP/1.1 client (no parsing beyond what timing needs), so the
    baseline is as fast as a direct caller can be and "added" is not flattered by a
    slow direct client.
    """

    def __init__(self, base_url: str) -> None:
        host_port = base_url.removeprefix("http://")
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        body = json.dumps(
            {
                "model": "ok",
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": PROMPT}],
                "max_tokens": 1024,
            }
        ).encode()
        self.request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: %s\r\n"
            b"content-type: application/json\r\naccept: text/event-stream\r\n"
            b"content-length: %d\r\n\r\n%s" % (host_port.encode(), len(body), body)
        )
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def one(self) -> Sample:
        start = time.perf_counter()
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.write(self.request)
        ttft = 0.0
        tail = b""
        while True:
            data = await reader.read(65536)
            if not data:
                raise RuntimeError("the fake closed the connection mid-stream")
            if not ttft and b'"content": "' in data.replace(b'"content": ""', b""):
                ttft = time.perf_counter() - start
            tail = (tail + data)[-16:]
            if tail.endswith(b"\r\n0\r\n\r\n"):  # the chunked body's end
                break
        total = time.perf_counter() - start
        self.idle.append((reader, writer))
        return Sample(ttft * 1000.0, total * 1000.0)

    async def aclose(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


class RouterClient:
    """Stream Complete from the router over one grpc.aio channel."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = router_pb2_grpc.ModelRouterStub(self.channel)  # type: ignore[no-untyped-call]
        self.request = pb.CompleteRequest(
            route=pb.RouteRequest(prompt=PROMPT, hints=pb.TierHints(tier="cheap"))
        )

    async def one(self) -> Sample:
        start = time.perf_counter()
        ttft = 0.0
        summary = None
        async for event in self.stub.Complete(self.request, timeout=30):
            kind = event.WhichOneof("event")
            if kind == "delta" and not ttft:
                ttft = time.perf_counter() - start
            elif kind == "summary":
                summary = event.summary
        total = time.perf_counter() - start
        if summary is None or summary.tier != "cheap" or len(summary.attempts) != 1:
            raise RuntimeError(f"unexpected Complete result: {summary}")
        return Sample(ttft * 1000.0, total * 1000.0)

    async def aclose(self) -> None:
        await self.channel.close(None)


class EngineClient:
    """Drive the CompletionEngine in this process: the backend layer without the gRPC hop."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = parse_config(config, environ={})
        self.engine = CompletionEngine(self.config)
        self.messages = (ChatMessage("user", PROMPT),)
        self.generation = GenerationOptions()

    async def one(self) -> Sample:
        start = time.perf_counter()
        routed = decision(0, self.config)
        ttft = 0.0
        summary = None
        async for event in self.engine.run(
            routed, self.messages, self.generation, max_tier_index=2
        ):
            if isinstance(event, TextDelta) and not ttft:
                ttft = time.perf_counter() - start
            elif isinstance(event, CompletionSummary):
                summary = event
        total = time.perf_counter() - start
        if summary is None or len(summary.attempts) != 1:
            raise RuntimeError(f"unexpected engine result: {summary}")
        return Sample(ttft * 1000.0, total * 1000.0)

    async def aclose(self) -> None:
        await self.engine.aclose()


async def burst(
    one: Callable[[], Awaitable[Sample]], concurrency: int, count: int, spacing_s: float
) -> list[Sample]:
    """Run ``count`` streams in waves of ``concurrency`` started at the same instant."""
    samples: list[Sample] = []
    for _ in range(count // concurrency):
        samples.extend(await asyncio.gather(*(one() for _ in range(concurrency))))
    return samples


async def steady(
    one: Callable[[], Awaitable[Sample]], concurrency: int, count: int, spacing_s: float
) -> list[Sample]:
    """Keep ``concurrency`` streams in flight, their starts spread ``spacing_s`` apart.

    Each of ``concurrency`` workers makes its streams one after another; worker i starts
    i * spacing_s late, so with spacing_s = stream length / concurrency the starts are
    spread evenly, as independent callers' are.
    """

    async def worker(i: int) -> list[Sample]:
        await asyncio.sleep(i * spacing_s)
        return [await one() for _ in range(count // concurrency)]

    per_worker = await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return [sample for samples in per_worker for sample in samples]


Load = Callable[
    [Callable[[], Awaitable[Sample]], int, int, float], Coroutine[Any, Any, list[Sample]]
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarize(direct: list[Sample], paths: dict[str, list[Sample]]) -> dict[str, Any]:
    """Return percentiles of each path and what it adds to the direct call.

    The unprefixed ``*_added_*`` keys are the router's (gRPC ``Complete``); ``engine_*``
    keys are the backend layer alone, driven in the benchmark process.
    """
    out: dict[str, Any] = {"streams": len(direct)}
    for metric in ("ttft", "total"):
        d = [getattr(s, f"{metric}_ms") for s in direct]
        for q in (50, 99):
            out[f"{metric}_direct_ms_p{q}"] = round(percentile(d, q), 3)
        for name, samples in paths.items():
            prefix = "" if name == "router" else f"{name}_"
            v = [getattr(s, f"{metric}_ms") for s in samples]
            for q in (50, 99):
                out[f"{prefix}{metric}_{name}_ms_p{q}"] = round(percentile(v, q), 3)
                out[f"{prefix}{metric}_added_ms_p{q}"] = round(
                    percentile(v, q) - percentile(d, q), 3
                )
    return out


async def measure(
    fake_url: str,
    address: str,
    config: dict[str, Any],
    concurrency: int,
    count: int,
    rounds: int,
    load: Load = steady,
    spacing_s: float = 0.0,
) -> dict[str, list[Sample]]:
    """Interleave direct, engine and router rounds so drift hits every path alike."""
    clients: dict[str, StreamClient] = {
        "direct": DirectClient(fake_url),
        "engine": EngineClient(config),
        "router": RouterClient(address),
    }
    samples: dict[str, list[Sample]] = {name: [] for name in clients}
    try:
        for client in clients.values():  # warm up connections, pools and code paths
            await burst(client.one, concurrency, concurrency, 0.0)
        per_round = max(concurrency, count // rounds)
        order = list(clients)
        for i in range(rounds):
            for name in order if i % 2 == 0 else reversed(order):
                samples[name].extend(
                    await load(clients[name].one, concurrency, per_round, spacing_s)
                )
        return samples
    finally:
        for client in clients.values():
            await client.aclose()


def plot(results: dict[str, Any], raw: dict[str, dict[str, list[Sample]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(raw), 2, figsize=(11, 3.2 * len(raw)), squeeze=False)
    labels = {
        "direct": "direct HTTP",
        "engine": "backend layer in-process",
        "router": "router Complete (gRPC)",
    }
    for row, (label, paths) in enumerate(raw.items()):
        for col, metric in enumerate(("ttft", "total")):
            ax = axes[row][col]
            values = {n: [getattr(s, f"{metric}_ms") for s in v] for n, v in paths.items()}
            everything = [x for v in values.values() for x in v]
            low, high = min(everything), percentile(everything, 99.5)
            bins = [low + (high - low) * i / 60 for i in range(61)]
            for name, v in values.items():
                ax.hist(v, bins=bins, alpha=0.5, label=labels[name], histtype="stepfilled")
            ax.set_title(f"{label}: {'time to first token' if metric == 'ttft' else 'total'}")
            ax.set_xlabel("ms")
            ax.legend(fontsize=8)
    fig.suptitle(f"modelrouter Complete overhead ({results['machine']['cpu_count']} cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _add_window(summary: dict[str, Any], window_ms: float, gate: dict[str, Any]) -> None:
    """Note the hold-back window and how much the router adds to TTFT beyond it.

    The window closes when its last token arrives: (window_tokens - 1) token intervals
    after the first token.
    """
    summary["gate"] = gate
    summary["hold_back_window_ms"] = round(window_ms, 3)
    for prefix in ("", "engine_"):
        for q in (50, 99):
            summary[f"{prefix}ttft_added_beyond_window_ms_p{q}"] = round(
                summary[f"{prefix}ttft_added_ms_p{q}"] - window_ms, 3
            )


def run(coroutine: Coroutine[Any, Any, dict[str, list[Sample]]]) -> dict[str, list[Sample]]:
    """Run on uvloop when installed, as ``modelrouter serve`` does."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="fake tokens per second")
    parser.add_argument("--tokens", type=int, default=20, help="tokens per answer")
    parser.add_argument("--first-token-ms", type=float, default=20.0)
    parser.add_argument("--streams-1", type=int, default=200)
    parser.add_argument("--streams-50", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--gate-window-tokens", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS / "overhead.json")
    args = parser.parse_args()

    results: dict[str, Any] = {
        "command": "python " + " ".join(sys.argv),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            # Other processes share this machine's cores: the load says how busy it was.
            "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
        },
        "fake": {
            "tokens_per_second": args.rate,
            "tokens": args.tokens,
            "first_token_ms": args.first_token_ms,
        },
    }
    raw: dict[str, dict[str, list[Sample]]] = {}
    gate = {"window_tokens": args.gate_window_tokens, "window_ms": 10_000.0}
    with (
        tempfile.TemporaryDirectory() as tmp,
        fake_process(args.rate, args.tokens, args.first_token_ms) as fake_url,
    ):
        workdir = Path(tmp)
        engine_log = (workdir / "engine.log").open("w")
        # The in-process engine logs as the server does (JSON lines at info), to a file.
        configure_logging(LoggingConfig())
        structlog.configure(logger_factory=structlog.WriteLoggerFactory(file=engine_log))
        model = routing_model(workdir)
        results["routing_model"] = "builtin" if model == "builtin" else "small seeded test model"
        stream_s = (args.first_token_ms + args.tokens * 1000.0 / args.rate) / 1000.0
        scenarios: list[tuple[str, str, bool, int, int, Load]] = [
            ("gate_off_c1", "gate off, 1 stream", False, 1, args.streams_1, steady),
            ("gate_off_c50", "gate off, 50 streams", False, 50, args.streams_50, steady),
            (
                "gate_off_c50_burst",
                "gate off, 50 started at once",
                False,
                50,
                args.streams_50 // 2,
                burst,
            ),
            ("gate_on_c1", "gate on, 1 stream", True, 1, args.streams_1, steady),
            ("gate_on_c50", "gate on, 50 streams", True, 50, args.streams_50 // 2, steady),
        ]
        window_ms = (args.gate_window_tokens - 1) * 1000.0 / args.rate
        for gated in (False, True):
            config = router_config(fake_url, gate if gated else None, model)
            with router_server(config, workdir) as address:
                for key, label, on, concurrency, count, load in scenarios:
                    if on is not gated:
                        continue
                    paths = run(
                        measure(
                            fake_url,
                            address,
                            config,
                            concurrency,
                            count,
                            args.rounds,
                            load,
                            stream_s / concurrency,
                        )
                    )
                    direct = paths.pop("direct")
                    summary = summarize(direct, paths)
                    if gated:
                        _add_window(summary, window_ms, gate)
                    results[key] = summary
                    raw[label] = {"direct": direct, **paths}
                    print(f"{key}: {summary}")
    # The per-concurrency keys the issue asks for, gate off.
    results["by_concurrency"] = {
        str(c): {
            k: results[f"gate_off_c{c}"][k]
            for k in (
                "ttft_added_ms_p50",
                "ttft_added_ms_p99",
                "total_added_ms_p50",
                "total_added_ms_p99",
            )
        }
        for c in (1, 50)
    }
    results["machine"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, raw, args.out.with_name("overhead_latency.png"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
