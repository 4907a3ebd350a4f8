"""A no-op Python gRPC server with modelrouter's Route: the ceiling of Python's gRPC stack.

It answers every Route with one fixed decision, on grpc.aio with uvloop like modelrouter
serve, with health and reflection, in N processes forked before any gRPC object exists and
sharing the port (SO_REUSEPORT). bench/ghz_route.py runs it between the no-op Go server and
the router, so the gap between the Go and Python no-op servers is the cost of the stack and
the gap between the Python no-op server and the router is the router's own per-RPC work.

    python bench/noop_aio_server.py --port 50062 --workers 2 [--request-id-header]

``--request-id-header`` sends ``x-request-id`` with ``send_initial_metadata`` before the
response, as modelrouter's Route did until it moved the id to the trailers: it measures
what that header costs on grpc.aio (a batch and a write of its own).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from router._proto.modelrouter.v1 import router_pb2 as pb
from router._proto.modelrouter.v1 import router_pb2_grpc
from router.server.reflection import enable_server_reflection

SERVICE = "modelrouter.v1.ModelRouter"
# The same decision as bench/baseline/main.go returns.
FIXED = pb.RouteResponse(
    decision=pb.RoutingDecision(
        request_id="00000000-0000-4000-8000-000000000000",
        tier="cheap",
        model="demo-cheap",
        backend="demo",
        score=0.12,
        level_probabilities=[0.61, 0.27, 0.08, 0.03, 0.01],
        reason=pb.DECISION_REASON_SCORE,
        estimated_prompt_tokens=48,
        estimated_cost_usd=1.152e-05,
        strongest_tier_cost_usd=7.2e-04,
        model_version="baseline",
    )
)


class NoopRouter(router_pb2_grpc.ModelRouterServicer):
    """Answer Route with the fixed decision (optionally sending a request-id header first)."""

    def __init__(self, request_id_header: bool) -> None:
        self._header = request_id_header

    async def Route(
        self, request: pb.RouteRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.RouteResponse:
        """Return the fixed decision."""
        if self._header:
            # A separate initial-metadata send: what modelrouter's Route first did.
            await context.send_initial_metadata((("x-request-id", FIXED.decision.request_id),))
        return FIXED


async def serve(port: int, request_id_header: bool) -> None:
    """Serve until SIGTERM."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    router_pb2_grpc.add_ModelRouterServicer_to_server(NoopRouter(request_id_header), server)  # type: ignore[no-untyped-call]
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # no stubs
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    enable_server_reflection((SERVICE, "grpc.health.v1.Health"), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def main() -> int:
    """Fork the workers, relay SIGTERM to them and wait."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--request-id-header", action="store_true")
    args = p.parse_args()
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            uvloop.run(serve(args.port, args.request_id_header))
            os._exit(0)
        children.append(pid)

    def relay(signum: int, _frame: object) -> None:
        for child in children:
            os.kill(child, signum)

    signal.signal(signal.SIGTERM, relay)
    signal.signal(signal.SIGINT, relay)
    for child in children:
        os.waitpid(child, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
