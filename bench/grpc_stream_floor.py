"""The floor of a Python gRPC stream on this machine: what any grpc.aio router must add.

A no-op grpc.aio server (uvloop, in this process) streams a fixed decision and one text
delta for each call of a grpc.aio client on the same event loop: no network between
processes, no routing, no backend. The time to the delta and to the end of the stream is
the least a Python gRPC hop adds in front of a model's first token, against which
``bench/overhead.py``'s "router" column can be read.

    .venv/bin/python bench/grpc_stream_floor.py [--calls 2000]

Writes ``bench/results/grpc_stream_floor.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import grpc
import uvloop

from router._proto.modelrouter.v1 import router_pb2 as pb
from router._proto.modelrouter.v1 import router_pb2_grpc as pb_grpc

HERE = Path(__file__).resolve().parent


class NoopStream(pb_grpc.ModelRouterServicer):
    """Stream a fixed decision and one delta, nothing else."""

    async def Complete(self, request: pb.CompleteRequest, context: Any) -> None:
        await context.write(pb.CompleteEvent(decision=pb.RoutingDecision(tier="cheap")))
        await context.write(pb.CompleteEvent(delta=pb.TextDelta(text="hello")))


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(calls: int, warmup: int) -> dict[str, float]:
    server = grpc.aio.server()
    pb_grpc.add_ModelRouterServicer_to_server(NoopStream(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.ModelRouterStub(channel)  # type: ignore[no-untyped-call]
    request = pb.CompleteRequest(route=pb.RouteRequest(prompt="What are your business hours?"))
    to_delta: list[float] = []
    total: list[float] = []
    for i in range(warmup + calls):
        start = time.perf_counter()
        delta_at = 0.0
        async for event in stub.Complete(request):
            if event.HasField("delta"):
                delta_at = time.perf_counter()
        end = time.perf_counter()
        if i >= warmup:
            to_delta.append((delta_at - start) * 1e3)
            total.append((end - start) * 1e3)
    await channel.close(None)
    await server.stop(None)
    return {
        "to_delta_ms_p50": statistics.median(to_delta),
        "to_delta_ms_p99": percentile(to_delta, 0.99),
        "total_ms_p50": statistics.median(total),
        "total_ms_p99": percentile(total, 0.99),
        "calls": calls,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "grpc_stream_floor.json")
    args = parser.parse_args()
    result = uvloop.run(measure(args.calls, warmup=200))
    result["load_average"] = os.getloadavg()[0]
    print(
        f"no-op grpc.aio stream, client and server in one process: first delta "
        f"{result['to_delta_ms_p50']:.3f} ms p50 / {result['to_delta_ms_p99']:.3f} ms p99, "
        f"whole stream {result['total_ms_p50']:.3f} ms p50"
    )
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
