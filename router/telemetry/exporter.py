"""Serve ``/metrics`` on its own port; set up prometheus-client's multiprocess mode.

With several workers the supervisor makes a fresh directory for the run, points
``PROMETHEUS_MULTIPROC_DIR`` at it before forking, and forks one more child that serves
the directory's merged view (``MultiProcessCollector``): counters of dead workers stay in
the sum, so a restart neither resets nor doubles them, and the live-only gauges of a dead
worker are dropped (``mark_process_dead``). A starting supervisor removes the directories
of servers killed before they could (``remove_dead_dirs``). A single process keeps its
values in memory and serves them from a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import ssl
import stat
import sys
import tempfile
import threading
from http.server import HTTPServer, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, multiprocess, values
from prometheus_client.exposition import MetricsHandler

from router.config import ConfigError, TlsConfig
from router.tls import load_metrics_certificates, metrics_ssl_context

log = structlog.get_logger()

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The multiprocess directories' name prefix (in the temporary directory) and lock file.
METRICS_DIR_PREFIX = "modelrouter-metrics-"
OWNER_LOCK = "owner.lock"
# A scraper gets this long for its TLS handshake and its request.
HTTPS_TIMEOUT_S = 10.0


def cannot_listen_for_metrics(host: str, port: int, exc: OSError) -> None:
    """Log that the metrics port cannot be bound (the server then exits)."""
    log.error(
        "cannot listen",
        address=f"{host}:{port}",
        error=str(exc),
        hint="server.metrics_port (--metrics-port) is taken; 0 turns metrics off",
    )


def bind_metrics_socket(host: str, port: int) -> socket.socket:
    """Return a listening socket for the metrics port; raise OSError when it is taken."""
    infos = socket.getaddrinfo(
        host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(16)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def remove_dead_dirs(parent: Path) -> list[Path]:
    """Remove the multiprocess directories in ``parent`` whose servers are gone; return them.

    A supervisor killed with SIGKILL cannot remove its directory. Each one's ``owner.lock``
    is flocked by its supervisor (and, inherited, by the children it forked) and holds the
    supervisor's pid once locked; the kernel drops the lock when the last of them exits,
    however it dies. A directory is removed only when its lock file has a pid and can be
    locked now: never one a live process holds, one still being made, or one this code did
    not make (another user's, or an older version's without a lock file).
    """
    removed = []
    for path in parent.glob(f"{METRICS_DIR_PREFIX}*"):
        try:
            info = path.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                continue
            fd = os.open(path / OWNER_LOCK, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            owner = os.read(fd, 32).decode("ascii", "replace").strip()
            if owner.isdigit():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
                log.info(
                    "removed the metrics directory of a dead server",
                    path=str(path),
                    owner_pid=int(owner),
                )
        except OSError:
            continue  # locked: its server (or a worker of it) is alive
        finally:
            os.close(fd)
    return removed


class MultiprocessDir:
    """The run's directory of per-process metric files, removed when the run ends.

    Also when it ends by SIGKILL: the next supervisor to start removes it (remove_dead_dirs).
    """

    def __init__(self) -> None:
        parent = Path(tempfile.gettempdir())
        remove_dead_dirs(parent)
        self.path = Path(tempfile.mkdtemp(prefix=METRICS_DIR_PREFIX, dir=parent))
        # Locked for as long as this process or a child it forks lives; the pid written
        # after locking marks the directory as made (remove_dead_dirs).
        self._lock = os.open(self.path / OWNER_LOCK, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        os.write(self._lock, f"{os.getpid()}\n".encode())
        os.environ[MULTIPROC_ENV] = str(self.path)
        # Set here rather than read from the environment at import, so the order of
        # imports does not matter: every metric created from now on (in this process and
        # in the workers it forks) writes to a file named after its process id.
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
        self._owner = os.getpid()

    def process_dead(self, pid: int) -> None:
        """Drop a dead worker's live-only gauges (its counters stay in the totals)."""
        multiprocess.mark_process_dead(pid, str(self.path))  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Remove the directory (only from the process that made it)."""
        if os.getpid() == self._owner:
            shutil.rmtree(self.path, ignore_errors=True)
            os.close(self._lock)
            os.environ.pop(MULTIPROC_ENV, None)


def use_process_values() -> None:
    """Keep metric values in this process's memory (a single process, or tests)."""
    os.environ.pop(MULTIPROC_ENV, None)
    values.ValueClass = values.MutexValue


class _MetricsServer(ThreadingHTTPServer):
    """The metrics HTTP server; with an SSL context, each connection's handshake runs in its
    own thread, so a slow or failing client cannot hold up the others."""

    ssl_context: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(HTTPS_TIMEOUT_S)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.info("metrics tls handshake failed", client=str(client_address[0]), error=str(exc))
            return
        with tls:
            super().finish_request(tls, client_address)


def _http_server(
    sock: socket.socket, registry: CollectorRegistry, ssl_context: ssl.SSLContext | None = None
) -> HTTPServer:
    server = _MetricsServer(
        sock.getsockname()[:2], MetricsHandler.factory(registry), bind_and_activate=False
    )
    server.ssl_context = ssl_context
    server.socket.close()
    server.socket = sock
    server.daemon_threads = True
    return server


def serve_in_thread(
    sock: socket.socket, registry: CollectorRegistry, ssl_context: ssl.SSLContext | None = None
) -> HTTPServer:
    """Serve a registry on a listening socket from a daemon thread; shut it down to stop."""
    server = _http_server(sock, registry, ssl_context)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


def run_exporter(sock: socket.socket, tls: MetricsTls | None = None) -> int:
    """Serve the merged view of the multiprocess directory until SIGTERM (a forked child)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    server = _http_server(sock, registry, None if tls is None else tls.context)

    def stop(signo: int, frame: object) -> None:
        raise SystemExit(0)

    def reload(signo: int, frame: object) -> None:
        if tls is not None:
            tls.reload()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # The supervisor relays SIGHUP (reload) to every child: here it re-reads certificates.
    signal.signal(signal.SIGHUP, reload)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    try:
        server.serve_forever()
    except SystemExit:
        pass
    finally:
        with contextlib.suppress(OSError):
            server.server_close()
        sys.stdout.flush()
    return 0


class MetricsTls:
    """HTTPS on the metrics port (server.metrics_tls); ``reload`` re-reads the certificates."""

    def __init__(self, config: TlsConfig, base_dir: Path | None = None) -> None:
        self._config = config
        self._base_dir = base_dir
        self.context = metrics_ssl_context(config, base_dir)

    def reload(self, quiet: bool = False) -> None:
        """Use the certificate files' current contents for new connections (``quiet``: for
        the supervisor's copy, which the exporter it forks next starts with; the running
        exporter logs the outcome)."""
        try:
            load_metrics_certificates(self.context, self._config, self._base_dir)
        except (ConfigError, ssl.SSLError) as exc:
            if not quiet:
                log.error("metrics certificates not reloaded", error=str(exc))
        else:
            if not quiet:
                log.info("metrics certificates reloaded")
