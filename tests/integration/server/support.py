"""Shared helpers of the server tests: a small real model, config files, a serve subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
import yaml

from router._proto.modelrouter.v1 import router_pb2_grpc
from router.config import DEFAULT_CONFIG_YAML
from router.model import RouterModel, save_model
from tests.support import random_model

TIERS = ("cheap", "strong", "expert")
SERVICE = "modelrouter.v1.ModelRouter"


async def failure(call: Any) -> grpc.aio.AioRpcError:
    """Return the error a unary call, or a whole stream, ends with (failing if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    return caught.value


def error_trailers(error: grpc.RpcError) -> dict[str, str | bytes]:
    """Return the trailing metadata of a failed call as a dict."""
    # grpc gives (key, value) pairs; grpc-stubs types them as _Metadatum, which does not unpack.
    return dict(cast(Iterable[tuple[str, str | bytes]], error.trailing_metadata() or ()))


def free_port() -> int:
    """Return a loopback port that was free a moment ago (for a flag that cannot take 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def router_stub(channel: grpc.Channel | grpc.aio.Channel) -> router_pb2_grpc.ModelRouterStub:
    """Return a ModelRouter client stub on a channel (sync or asyncio)."""
    return router_pb2_grpc.ModelRouterStub(channel)  # type: ignore[no-untyped-call]


def make_model(path: Path, seed: int = 7, name: str = "test") -> RouterModel:
    """Write a small real model (seeded random weights) and return it with its checksum."""
    return save_model(random_model(seed=seed, buckets_log2=10, name=name), path)


def config_data(model: Path, **sections: object) -> dict[str, Any]:
    """Return the embedded default configuration on ``model``, with sections merged in: a
    mapping is merged into the default's, anything else (a list of tiers, None) replaces it."""
    data: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG_YAML)
    data["model"] = str(model)
    # No metrics port unless a test asks: servers of concurrent runs would share 9464.
    data["server"] = {"metrics_port": 0}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def write_config(path: Path, model: Path, **sections: object) -> Path:
    """Write a configuration file and return its path."""
    path.write_text(yaml.safe_dump(config_data(model, **sections)), encoding="utf-8")
    return path


def serve_args(config: Path, workers: int = 1, *more: str) -> tuple[str, ...]:
    """Return ``modelrouter serve`` arguments: this configuration, an ephemeral port on
    loopback, ``workers`` worker processes, then ``more``."""
    return ("--config", str(config), "--host", "127.0.0.1", "--port", "0",
            "--workers", str(workers), *more)  # fmt: skip


def slow_demo(tokens_per_second: float) -> dict[str, Any]:
    """Return a backends section whose demo backend streams at the given rate."""
    return {"demo": {"kind": "demo", "tokens_per_second": tokens_per_second}}


class ServeProcess:
    """A real ``modelrouter serve`` subprocess whose JSON log lines are collected."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        # Metrics off unless the test passes its own --metrics-port (the last flag wins).
        self.args = [sys.executable, "-m", "router.cli", "serve", "--metrics-port", "0", *args]
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._new: queue.Queue[None] = queue.Queue()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.raw.append(line)
                # Tracebacks and other plain text stay in self.raw only.
                with contextlib.suppress(json.JSONDecodeError):
                    self.lines.append(json.loads(line))
            self._new.put(None)
        self._new.put(None)

    def events(self, name: str) -> list[dict[str, Any]]:
        """Return the log lines whose event is ``name``."""
        with self._lock:
            return [line for line in self.lines if line.get("event") == name]

    def wait_for(
        self,
        name: str,
        count: int = 1,
        timeout: float = 30.0,
        where: Callable[[dict[str, Any]], bool] = lambda _: True,
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` log lines of event ``name`` (matching ``where``) were written."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.events(name) if where(line)]
            if len(found) >= count:
                return found
            if self.proc.poll() is not None and self._reader.is_alive() is False:
                raise AssertionError(
                    f"serve exited ({self.proc.returncode}) before {count} {name!r} lines:\n"
                    + "".join(self.raw)
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no {count} {name!r} lines within {timeout}s:\n" + "".join(self.raw)
                )
            try:
                self._new.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue

    @property
    def port(self) -> int:
        """Return the port from the first "listening" line (waiting for it)."""
        return int(self.wait_for("listening")[0]["port"])

    def signal(self, signo: int) -> None:
        self.proc.send_signal(signo)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit; return its exit code."""
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code

    def close(self) -> None:
        """Stop the process (gracefully, then by force) and reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
