"""The floor of a Python gRPC stream on this machine: what any grpc.aio router must add.

A no-op grpc.aio server (uvloop) streams a fixed decision and one text delta (``--tokens``
of them, ``--rate`` a second, then a summary, as ``bench/overhead.py`` runs it to mirror
its fake provider's answer) for each call of a grpc.aio client: no routing, no backend.
Two set-ups, in one run:
- in-process: server and client on the same event loop, the delta sent at once;
- separate process: the server in a process of its own (as ``modelrouter serve`` is in
  ``bench/overhead.py``) waits ``--first-token-ms`` (20, the fake provider's first token)
  before the delta, so both processes go idle in between as they do in front of a model.
The time to the delta (minus the wait the server measured) is the least a Python gRPC hop
adds in front of a model's first token, against which ``bench/overhead.py``'s "router"
column can be read.

    .venv/bin/python bench/grpc_stream_floor.py [--calls 2000] [--first-token-ms 20]

Writes ``bench/results/grpc_stream_floor.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import uvloop

from router._proto.modelrouter.v1 import router_pb2 as pb
from router._proto.modelrouter.v1 import router_pb2_grpc as pb_grpc

HERE = Path(__file__).resolve().parent


class NoopStream(pb_grpc.ModelRouterServicer):
    """Stream a fixed decision and, after ``wait_s``, one delta (or ``tokens``), nothing else.

    With more than one token, the others follow ``1 / rate`` seconds apart and a summary
    ends the stream, as a model's answer through the router would.
    """

    def __init__(self, wait_s: float = 0.0, tokens: int = 1, rate: float = 100.0) -> None:
        self.wait_s = wait_s
        self.tokens = tokens
        self.gap_s = 1.0 / rate

    async def Complete(self, request: pb.CompleteRequest, context: Any) -> None:
        await context.write(pb.CompleteEvent(decision=pb.RoutingDecision(tier="cheap")))
        # The timer's own overshoot (uvloop's clock ticks in milliseconds) is the server's,
        # not gRPC's: the first delta says how long the server really waited for it, the
        # summary how long in all.
        waited_ms = await self._wait(self.wait_s)
        await context.write(pb.CompleteEvent(delta=pb.TextDelta(text=f"{waited_ms:.6f}")))
        if self.tokens == 1:
            return
        total_ms = waited_ms
        for _ in range(self.tokens - 1):
            total_ms += await self._wait(self.gap_s)
            await context.write(pb.CompleteEvent(delta=pb.TextDelta(text=" token")))
        await context.write(
            pb.CompleteEvent(summary=pb.CompletionSummary(tier="cheap", duration_ms=total_ms))
        )

    @staticmethod
    async def _wait(seconds: float) -> float:
        if not seconds:
            return 0.0
        started = time.perf_counter()
        await asyncio.sleep(seconds)
        return (time.perf_counter() - started) * 1e3


async def start_server(
    wait_s: float, tokens: int = 1, rate: float = 100.0
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    pb_grpc.add_ModelRouterServicer_to_server(NoopStream(wait_s, tokens, rate), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def serve(wait_s: float, tokens: int = 1, rate: float = 100.0) -> None:
    """Serve until stdin closes; print the port first (the separate-process set-up)."""
    server, port = await start_server(wait_s, tokens, rate)
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(None)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(port: int, calls: int, warmup: int) -> dict[str, float]:
    """Time ``calls`` Complete streams; the server's wait is taken off the time to the delta."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.ModelRouterStub(channel)  # type: ignore[no-untyped-call]
    request = pb.CompleteRequest(route=pb.RouteRequest(prompt="What are your business hours?"))
    to_delta: list[float] = []
    total: list[float] = []
    for i in range(warmup + calls):
        start = time.perf_counter()
        delta_at = wait_ms = 0.0
        async for event in stub.Complete(request):
            if event.HasField("delta"):
                delta_at = time.perf_counter()
                wait_ms = float(event.delta.text)
        end = time.perf_counter()
        if i >= warmup:
            to_delta.append((delta_at - start) * 1e3 - wait_ms)
            total.append((end - start) * 1e3 - wait_ms)
    await channel.close(None)
    return {
        "to_delta_ms_p50": statistics.median(to_delta),
        "to_delta_ms_p99": percentile(to_delta, 0.99),
        "total_ms_p50": statistics.median(total),
        "total_ms_p99": percentile(total, 0.99),
        "calls": calls,
    }


async def in_process(calls: int, warmup: int) -> dict[str, float]:
    server, port = await start_server(0.0)
    try:
        return await measure(port, calls, warmup)
    finally:
        await server.stop(None)


async def separate_process(calls: int, warmup: int, wait_ms: float) -> dict[str, float]:
    args = [sys.executable, __file__, "--serve", "--first-token-ms", str(wait_ms)]
    with subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            port = int(proc.stdout.readline())
            result = await measure(port, calls, warmup)
        finally:
            proc.stdin.close()
            proc.wait(timeout=30)
    return {**result, "server_wait_ms": wait_ms}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--first-token-ms", type=float, default=20.0)
    parser.add_argument("--tokens", type=int, default=1, help="deltas per stream (--serve)")
    parser.add_argument("--rate", type=float, default=100.0, help="deltas a second (--serve)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "grpc_stream_floor.json")
    args = parser.parse_args()
    if args.serve:
        uvloop.run(serve(args.first_token_ms / 1e3, args.tokens, args.rate))
        return
    result: dict[str, Any] = uvloop.run(in_process(args.calls, warmup=200))
    # Fewer calls: each waits for its "first token".
    calls = max(1, args.calls // 5)
    result["separate_process"] = uvloop.run(
        separate_process(calls, warmup=20, wait_ms=args.first_token_ms)
    )
    result["load_average"] = os.getloadavg()[0]
    sep = result["separate_process"]
    print(
        f"no-op grpc.aio stream, client and server in one process: first delta "
        f"{result['to_delta_ms_p50']:.3f} ms p50 / {result['to_delta_ms_p99']:.3f} ms p99, "
        f"whole stream {result['total_ms_p50']:.3f} ms p50\n"
        f"server in its own process, delta {args.first_token_ms:g} ms after the decision: "
        f"first delta +{sep['to_delta_ms_p50']:.3f} ms p50 / +{sep['to_delta_ms_p99']:.3f} ms "
        f"p99, whole stream +{sep['total_ms_p50']:.3f} ms p50"
    )
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
