"""What API keys and tenant limits cost a call: microseconds per check, in memory and in Redis.

Measures, in one run on one process:
- ``KeyRing.authorize`` (hash the presented key, compare with every listed digest in
  constant time) with 1, 10 and 100 configured keys;
- ``Limiter.admit`` (one request against a tenant's rate) counted in memory and in a real
  Redis on loopback (one Lua script per call);
- a Complete's budget hold and settle (two store operations), in memory and in Redis.

The Redis is Debian's ``redis-server``, started in a temp dir on a free port without
persistence (the cost of the call, not of the disk); without it the Redis rows are left
out. Writes ``bench/results/limits.json``.

    .venv/bin/python bench/bench_limits.py [--calls N] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from router.auth import KeyRing, digest
from router.config import DEFAULT_CONFIG_YAML, AuthConfig, Config, parse_config
from router.limits import Limiter

RESULTS = Path(__file__).resolve().parent / "results" / "limits.json"


def _config(redis_url: str) -> Config:
    data = yaml.safe_load(DEFAULT_CONFIG_YAML)
    data["tenants"] = {
        "acme": {"limits": {"requests_per_s": 1e9, "burst": 10**9, "usd_per_day": 1e9}}
    }
    data["limits"] = {"redis_url": redis_url, "redis_timeout_s": 5}
    return parse_config(data, environ={})


def _auth_micros(keys: int, calls: int) -> float:
    config = AuthConfig.model_validate(
        {
            "enabled": True,
            "keys": [
                {"sha256": digest(f"mrk_key-{i}"), "tenant": f"t{i}", "methods": ["Route"]}
                for i in range(keys)
            ],
        }
    )
    ring = KeyRing(config)
    metadata = (("authorization", f"Bearer mrk_key-{keys - 1}"),)
    started = time.perf_counter()
    for _ in range(calls):
        ring.authorize(metadata, "Route")
    return (time.perf_counter() - started) / calls * 1e6


async def _async_micros(calls: int, operation: Callable[[], Awaitable[Any]]) -> float:
    for _ in range(min(calls, 100)):  # warm up (the Lua scripts load on first use)
        await operation()
    started = time.perf_counter()
    for _ in range(calls):
        await operation()
    return (time.perf_counter() - started) / calls * 1e6


async def _limiter_micros(redis_url: str, calls: int) -> dict[str, float]:
    limiter = Limiter(_config(redis_url))

    async def admit() -> None:
        check = limiter.admit("acme")
        assert check is not None
        await check

    async def hold_and_settle() -> None:
        held = await limiter.hold("acme", 50, 0.001)
        assert held is not None
        held.attempts = ()
        await held.settle()

    try:
        return {
            "admit_us": await _async_micros(calls, admit),
            "hold_and_settle_us": await _async_micros(calls, hold_and_settle),
        }
    finally:
        await limiter.aclose()


@contextmanager
def _redis() -> Iterator[str | None]:
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as directory:
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                directory,
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(10)


def main() -> int:
    """Run the measurements and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--smoke", action="store_true", help="a few calls, to check it runs")
    args = parser.parse_args()
    calls = 200 if args.smoke else args.calls
    result: dict[str, Any] = {
        "machine": f"{platform.node()} {platform.machine()} Python {platform.python_version()}",
        "calls": calls,
        # The machine is shared: the 1-minute load average when the run started.
        "load_average": os.getloadavg()[0],
        "authorize_us": {str(k): _auth_micros(k, calls) for k in (1, 10, 100)},
        "memory": asyncio.run(_limiter_micros("", calls)),
    }
    with _redis() as url:
        result["redis"] = None if url is None else asyncio.run(_limiter_micros(url, calls // 4))
    for name, value in result.items():
        print(f"{name}: {value}")
    if not args.smoke:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
