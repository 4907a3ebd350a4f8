"""Build the gRPC server: servicer, interceptor, health per service, reflection, limits."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from router._proto.modelrouter.v1 import router_pb2, router_pb2_grpc
from router.config import Config
from router.loading import load_router
from router.server.health import SERVING, HealthServicer
from router.server.inflight import InFlight
from router.server.interceptor import ServiceInterceptor
from router.server.reflection import enable_server_reflection
from router.server.servicer import ModelRouterServicer
from router.service import RouterService
from router.telemetry import current_tracing, metrics
from router.tls import ServerTls, TlsFiles, read_tls

SERVICE_NAME: str = router_pb2.DESCRIPTOR.services_by_name["ModelRouter"].full_name
HEALTH_SERVICE_NAME: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# The empty name is the server as a whole (grpc.health.v1 convention).
HEALTH_CHECKED = ("", SERVICE_NAME)


@dataclass
class RunningServer:
    """A built server and what it serves; ``port`` is the port actually bound."""

    server: grpc.aio.Server
    service: RouterService
    health: HealthServicer
    interceptor: ServiceInterceptor
    host: str
    port: int
    # The port's certificates when it speaks TLS (a reload updates them), else None.
    tls: ServerTls | None = None
    # The plaintext server of server.health_port (the same health statuses), if any.
    health_server: grpc.aio.Server | None = None

    async def start(self) -> None:
        """Start serving and report every service as SERVING."""
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
        for name in HEALTH_CHECKED:
            await self.health.set(name, SERVING)

    async def drain(self, seconds: float, cut_short: asyncio.Event) -> None:
        """Turn health NOT_SERVING and keep serving for ``seconds`` (or until ``cut_short``)."""
        await self.health.enter_graceful_shutdown()
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cut_short.wait(), seconds)

    async def stop(self, grace: float) -> None:
        """Turn health NOT_SERVING, refuse new RPCs, let in-flight ones finish within ``grace``."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(0)
        await self.service.aclose()


# What to do when the health port cannot be bound (the supervisor says the same).
HEALTH_PORT_TAKEN = "server.health_port is taken; 0 turns the health port off"


class CannotListen(RuntimeError):
    """gRPC could not bind ``address`` (the gRPC port or the health port)."""

    def __init__(self, address: str, error: str, hint: str = "") -> None:
        super().__init__(error)
        self.address = address
        self.hint = hint


def create_server(
    config: Config,
    service: RouterService | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    reuse_port: bool = True,
    in_flight: InFlight | None = None,
    tls: TlsFiles | None = None,
) -> RunningServer:
    """Return a server, not started, bound to the configured (or given) address.

    ``service`` defaults to one built from ``config``.
    ``reuse_port`` lets worker processes share the port (SO_REUSEPORT); a single process
    turns it off so that a port already taken is an error instead of a silent split.
    ``in_flight`` counts the RPCs against ``server.max_concurrent_rpcs`` (default: this
    process's; a supervised worker's counts every worker's).
    ``tls`` is the port's certificates, read from ``server.tls`` when not given.
    """
    if service is None:
        router, source = load_router(config)
        service = RouterService(config, router, model_source=source)
    limit = config.server.max_message_bytes
    options = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]
    interceptor = ServiceInterceptor(
        SERVICE_NAME,
        lambda: service.max_concurrent_rpcs,
        service.new_request_id,
        log_rpcs=config.logging.rpc,
        rpc_sample=config.logging.rpc_sample,
        metrics=metrics.current(),
        tracing=current_tracing(),
        auth=lambda: service.key_ring,
        in_flight=in_flight,
    )
    server = grpc.aio.server(interceptors=[interceptor], options=options)
    router_pb2_grpc.add_ModelRouterServicer_to_server(  # type: ignore[no-untyped-call]
        ModelRouterServicer(service, metrics.current()), server
    )
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_server_reflection((SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server)
    host = config.server.host if host is None else host
    port = config.server.port if port is None else port
    if tls is None and config.server.tls is not None:
        tls = read_tls(config.server.tls, "server.tls")
    address = f"{host}:{port}"
    credentials = None if tls is None else ServerTls(tls)
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials.credentials())
    except RuntimeError as exc:
        raise CannotListen(address, str(exc)) from None
    health_server = None
    if config.server.health_port:
        # Plaintext and its own server: a port of the main one would serve every service.
        health_server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if reuse_port else 0)])
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        health_address = f"{host}:{config.server.health_port}"
        try:
            health_server.add_insecure_port(health_address)
        except RuntimeError as exc:
            raise CannotListen(health_address, str(exc), HEALTH_PORT_TAKEN) from None
    return RunningServer(
        server, service, health_servicer, interceptor, host, bound, credentials, health_server
    )
