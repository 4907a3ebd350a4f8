"""Fixtures of the server tests: in-process servers on ephemeral ports and real clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from router._proto.modelrouter.v1 import router_pb2_grpc
from router.config import Config, parse_config
from router.loading import load_router, store_target
from router.runtime import EngineFactory, completion_engine
from router.server import RunningServer, create_server
from router.service import RouterService
from router.store import start_writer
from tests.integration.server.support import ServeProcess, config_data, make_model, router_stub


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "test.npz"
    make_model(path)
    return path


@pytest.fixture
def make_config(model_path: Path, tmp_path: Path) -> Callable[..., Config]:
    """Return a builder of configurations on the test model (sections merged in).

    The store is a SQLite file of the test's own, unless the sections say otherwise.
    """

    def build(**sections: Any) -> Config:
        sections.setdefault("store", {"path": str(tmp_path / "store.db")})
        return parse_config(config_data(model_path, **sections), environ={})

    return build


@pytest.fixture
async def start_server() -> AsyncIterator[Callable[..., Any]]:
    """Return a starter of in-process servers on 127.0.0.1:0; stops them all at the end."""
    running: list[RunningServer] = []

    async def start(
        config: Config, engine_factory: EngineFactory = completion_engine
    ) -> RunningServer:
        router, source = load_router(config)
        target = store_target(config)
        writer = None
        if target is not None and config.store is not None:
            writer = await start_writer(target, config.store)
        service = RouterService(
            config, router, model_source=source, engine_factory=engine_factory, store=writer
        )
        server = create_server(config, service, host="127.0.0.1", port=0, reuse_port=False)
        await server.start()
        running.append(server)
        return server

    yield start
    for server in running:
        await server.stop(0)


@pytest.fixture
async def server(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> RunningServer:
    """Return a started server with the default test configuration."""
    result: RunningServer = await start_server(make_config())
    return result


@pytest.fixture
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> router_pb2_grpc.ModelRouterStub:
    return router_stub(channel)


@pytest.fixture
def serve_process() -> Iterator[Callable[..., ServeProcess]]:
    """Return a starter of ``modelrouter serve`` subprocesses; stops them all at the end."""
    started: list[ServeProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ServeProcess:
        process = ServeProcess(*args, env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()
