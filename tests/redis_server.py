"""A real Redis server for the limits tests: Debian's ``redis-server``, in a temp dir.

It listens on a free loopback port, keeps an append-only file fsynced on every write (so a
SIGKILL loses nothing, as a production Redis with ``appendfsync always`` would), and can be
killed and started again on the same port and data. scripts/test.sh installs the package
when missing; without it the tests skip with the reason, unless MODELROUTER_REQUIRE_REDIS
is set (CI), where they fail.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REQUIRE_ENV = "MODELROUTER_REQUIRE_REDIS"
START_TIMEOUT_S = 30.0


def find_redis_server() -> str | None:
    """Return the path of redis-server, or None."""
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process on a fixed port and data directory; restartable."""

    def __init__(self, directory: Path) -> None:
        binary = find_redis_server()
        if binary is None:
            raise FileNotFoundError("redis-server not found (apt-get install redis-server)")
        self._binary = binary
        self.directory = directory
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (on the same port and data as before) and wait for PONG."""
        self._process = subprocess.Popen(
            [
                self._binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--logfile",
                str(self.directory / "redis.log"),
                "--daemonize",
                "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _ping(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "redis.log").read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"redis-server did not start:\n{log}")
            time.sleep(0.05)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self._process is not None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(10)
            self._process = None

    def pause(self) -> None:
        """Stop the process without closing its port (SIGSTOP): calls hang until resume."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server if it runs."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
            self._process = None
