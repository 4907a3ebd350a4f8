"""Shared fixtures: both fast-path implementations, small real model files, both stores, Redis."""

from __future__ import annotations

import importlib.util
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from router import _fastpath_py
from router.model import save_model
from router.store import Store, open_store
from router.telemetry import metrics
from router.telemetry.exporter import use_process_values
from tests import redis_server as redis_support
from tests.postgres_server import REQUIRE_ENV, find_bindir, postgres_server
from tests.support import _fastpath_c, random_model


@pytest.fixture(autouse=True, scope="session")
def _state_home() -> Iterator[None]:
    """Keep the embedded default store (and its children's) out of the real home."""
    with tempfile.TemporaryDirectory(prefix="modelrouter-state-") as state:
        previous = os.environ.get("XDG_STATE_HOME")
        os.environ["XDG_STATE_HOME"] = state
        yield
        if previous is None:
            del os.environ["XDG_STATE_HOME"]
        else:
            os.environ["XDG_STATE_HOME"] = previous


@pytest.fixture(params=["c", "py"])
def fastpath_impl(request: pytest.FixtureRequest) -> type[_fastpath_py.FastPath]:
    """Each fast-path implementation in turn: the compiled one and the pure-Python twin."""
    if request.param == "py":
        return _fastpath_py.FastPath
    if _fastpath_c is None:
        if os.environ.get("MODELROUTER_REQUIRE_EXTENSIONS"):
            pytest.fail("the compiled fast path was required but did not import")
        pytest.skip("compiled fast path not built")
    return _fastpath_c.FastPath  # type: ignore[no-any-return]


@pytest.fixture
def small_model_path(tmp_path: Path) -> Iterator[Path]:
    """A small real model file (random weights) saved to a temporary directory."""
    path = tmp_path / "small.npz"
    save_model(random_model(), path)
    yield path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """Start one real PostgreSQL server for the session; yield its admin URL."""
    missing = []
    if find_bindir() is None:
        missing.append("PostgreSQL (Debian's postgresql package)")
    if importlib.util.find_spec("psycopg_pool") is None:
        missing.append("psycopg and psycopg-pool (pip install 'modelrouter[postgres]')")
    if missing:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{REQUIRE_ENV} is set but {' and '.join(missing)} are missing")
        pytest.skip(f"{' and '.join(missing)} not installed")
    with postgres_server() as url:
        yield url


@pytest.fixture
def postgres_database(postgres_url: str) -> str:
    """Return the URL of a new, empty database on the session's PostgreSQL server."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgres"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store in turn: a SQLite file, then a database on a real PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    return str(request.getfixturevalue("postgres_database"))


@pytest.fixture
def store(store_target: str) -> Iterator[Store]:
    """An open, migrated store of each kind."""
    opened = open_store(store_target)
    yield opened
    opened.close()


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis_support.RedisServer]:
    """Start a real redis-server of its own for one test (it may kill and restart it)."""
    missing = []
    if redis_support.find_redis_server() is None:
        missing.append("redis-server (Debian's redis-server package)")
    if importlib.util.find_spec("redis") is None:
        missing.append("redis-py (pip install 'modelrouter[redis]')")
    if missing:
        if os.environ.get(redis_support.REQUIRE_ENV):
            pytest.fail(f"{redis_support.REQUIRE_ENV} is set but {' and '.join(missing)} missing")
        pytest.skip(f"{' and '.join(missing)} not installed")
    server = redis_support.RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    """Install this process's metrics on a fresh registry for one test."""
    use_process_values()
    registry = CollectorRegistry()
    metrics.install(metrics.Metrics(registry))
    yield registry
    metrics.install(None)
