"""The supervisor of N forked workers sharing one port.

Workers are forked before any gRPC object exists (gRPC's core does not survive a fork) and
listen on the same port with SO_REUSEPORT; the kernel spreads connections over them. The
supervisor reserves the port first (so ``--port 0`` works with several workers too), after
checking that no other process holds it (SO_REUSEPORT would let this server's workers listen
beside another server's, and the kernel split the calls between the two), restarts
a worker that dies, and relays SIGTERM/SIGINT (graceful stop) and SIGHUP (reload). With
metrics on it also binds the metrics port, makes the run's multiprocess directory before
any fork, and keeps one more child alive that serves the workers' merged metrics.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from router.config import ConfigError
from router.loading import ConfigSource, Loaded, load
from router.server.app import HEALTH_PORT_TAKEN
from router.server.inflight import InFlightSlots
from router.server.logs import flush_logs
from router.server.worker import EXIT_LISTEN, keep_restart_only, run_worker
from router.telemetry import metrics
from router.telemetry.exporter import (
    MetricsTls,
    MultiprocessDir,
    bind_metrics_socket,
    cannot_listen_for_metrics,
    run_exporter,
)

log = structlog.get_logger()

SUPERVISOR_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}
# A worker that dies sooner than this after its start counts towards a crash loop.
CRASH_WINDOW_S = 5.0
MAX_QUICK_CRASHES = 5
MAX_RESTART_DELAY_S = 5.0
# Time a worker gets beyond the grace period before the supervisor kills it.
KILL_MARGIN_S = 5.0
# The slot of the child that serves /metrics.
EXPORTER_SLOT = -1
# How long a supervisor waits while another checks and reserves the same port (a check and
# a reservation take well under a millisecond).
PORT_LOCK_WAIT_S = 2.0


def _addresses(host: str, port: int) -> list[tuple[int, int, int, tuple[Any, ...]]]:
    """Return (family, type, proto, address) of each address ``host`` resolves to, for a bind."""
    infos = socket.getaddrinfo(
        host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    return [(family, kind, proto, address) for family, kind, proto, _, address in infos]


def check_port_free(host: str, port: int) -> None:
    """Raise OSError (EADDRINUSE) when another process holds ``host:port``.

    The workers bind with SO_REUSEPORT, and so do another server's workers: the kernel would
    let both servers listen and split the calls between them. A bind without SO_REUSEPORT,
    closed at once, fails while any process listens on the port (or holds it bound).
    SO_REUSEADDR lets it pass the TIME_WAIT connections a server stopped a moment ago leaves
    (as gRPC's own bind does); it never listens, so it leaves none of its own. Every address
    the host resolves to is tried, and what gRPC binds beyond them: ``[::]`` for both
    families for a wildcard host, both loopbacks for ``localhost`` (whatever /etc/hosts says).
    Errors other than EADDRINUSE (no IPv6 here) are left to the real bind. Port 0 is always
    free: the kernel picks an unused port.
    """
    if port == 0:
        return
    targets = [(family, address) for family, _, _, address in _addresses(host, port)]
    also: list[tuple[int, tuple[Any, ...]]] = []
    if (socket.AF_INET, ("0.0.0.0", port)) in targets:
        also.append((socket.AF_INET6, ("::", port, 0, 0)))
    if (socket.AF_INET6, ("::", port, 0, 0)) in targets:
        also.append((socket.AF_INET, ("0.0.0.0", port)))  # what gRPC binds without IPv6
    if host.lower() == "localhost":
        also += [(socket.AF_INET, ("127.0.0.1", port)), (socket.AF_INET6, ("::1", port, 0, 0))]
    targets += [target for target in also if target not in targets]
    for family, address in targets:
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) a SO_REUSEPORT socket to hold the port the workers share.

    Raise OSError when another process holds the port (``check_port_free``) or it cannot be
    bound. The socket has no SO_REUSEADDR, so that while it is held another supervisor's
    check of the port fails even before this one's workers listen. When the port, free by
    the check, is held by TIME_WAIT connections without SO_REUSEPORT (of a single-process
    server stopped a moment ago), only SO_REUSEADDR lets the bind pass them: it is set for
    the bind and cleared at once after it.
    """
    with port_lock(port):
        check_port_free(host, port)
        family, kind, proto, address = _addresses(host, port)[0]
        try:
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            if exc.errno != errno.EAFNOSUPPORT or address[0] != "::":
                raise
            # No IPv6 on this machine: gRPC binds the wildcard [::] as 0.0.0.0, so hold that.
            address = ("0.0.0.0", address[1])
            sock = socket.socket(socket.AF_INET, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or port == 0:
                    raise
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        except OSError:
            sock.close()
            raise
    return sock


@contextlib.contextmanager
def port_lock(port: int) -> Iterator[None]:
    """Hold, while this supervisor checks and reserves ``port``, a lock that another
    supervisor of this machine waits for: two started at the same moment would otherwise
    both find the port free and both reserve it (SO_REUSEPORT). The lock is an abstract
    Unix socket named after the port, freed by the kernel whatever becomes of the process.

    It only narrows that race (the check is what refuses a taken port), so it never stops
    a start: where Unix sockets are not allowed (a sandbox, systemd's
    RestrictAddressFamilies), or when the lock stays held (by a process that is no
    supervisor) past PORT_LOCK_WAIT_S, the check goes on without it. Port 0 needs none: the
    kernel picks an unused port.
    """
    if port == 0:
        yield
        return
    name = f"modelrouter.port.{port}"
    try:
        lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as exc:
        log.debug("port lock not taken", lock=name, error=str(exc))
        yield
        return
    with lock:
        deadline = time.monotonic() + PORT_LOCK_WAIT_S
        while True:
            try:
                lock.bind(f"\0{name}")
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    log.debug("port lock not taken", lock=name, error=str(exc))
                    break
                if time.monotonic() > deadline:
                    log.warning(
                        "port lock held too long; checking the port without it",
                        lock=name,
                        waited_s=PORT_LOCK_WAIT_S,
                    )
                    break
                time.sleep(0.005)
        yield


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM this worker if the supervisor dies (Linux)."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class _Worker:
    slot: int
    started: float


@dataclass
class Supervisor:
    """Fork N workers, restart the ones that die, relay signals, stop them gracefully."""

    source: ConfigSource
    loaded: Loaded
    workers: int
    _children: dict[int, _Worker] = field(default_factory=dict)
    _restarts: dict[int, float] = field(default_factory=dict)  # slot -> when
    _quick_crashes: dict[int, int] = field(default_factory=dict)
    _stopping: bool = False
    _kill_at: float = 0.0
    _exit_code: int = 0
    _sock: socket.socket | None = None
    _health_sock: socket.socket | None = None
    _metrics_sock: socket.socket | None = None
    _metrics_dir: MultiprocessDir | None = None
    _metrics: metrics.Metrics | None = None
    _metrics_tls: MetricsTls | None = None
    _in_flight: InFlightSlots | None = None

    def run(self) -> int:
        """Supervise until every worker has stopped; return the exit code."""
        server = self.loaded.config.server
        try:
            self._sock = reserve_port(server.host, server.port)
        except OSError as exc:
            log.error("cannot listen", address=f"{server.host}:{server.port}", error=str(exc))
            return EXIT_LISTEN
        if server.health_port:
            # The workers' health servers share it with SO_REUSEPORT too: held the same way.
            try:
                self._health_sock = reserve_port(server.host, server.health_port)
            except OSError as exc:
                self._sock.close()
                log.error(
                    "cannot listen",
                    address=f"{server.host}:{server.health_port}",
                    error=str(exc),
                    hint=HEALTH_PORT_TAKEN,
                )
                return EXIT_LISTEN
        if server.metrics_port:
            metrics_host = server.metrics_host or server.host
            try:
                self._metrics_sock = bind_metrics_socket(metrics_host, server.metrics_port)
            except OSError as exc:
                self._sock.close()
                if self._health_sock is not None:
                    self._health_sock.close()
                cannot_listen_for_metrics(metrics_host, server.metrics_port, exc)
                return EXIT_LISTEN
            if server.metrics_tls is not None:
                self._metrics_tls = MetricsTls(server.metrics_tls, self.source.base_dir)
            # Before any fork: the workers inherit the directory and the value class.
            self._metrics_dir = MultiprocessDir()
            self._metrics = metrics.Metrics()
        # Workers bind the reserved port, also when the configuration asked for port 0.
        port = self._sock.getsockname()[1]
        self.source = replace(self.source, port=port)
        self.loaded = replace(
            self.loaded,
            config=self.loaded.config.model_copy(
                update={"server": server.model_copy(update={"port": port})}
            ),
        )
        # Before any fork: server.max_concurrent_rpcs holds for the workers together.
        self._in_flight = InFlightSlots(self.workers)
        signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISOR_SIGNALS)
        try:
            if self._metrics_sock is not None:
                self._spawn(EXPORTER_SLOT)
            for slot in range(self.workers):
                self._spawn(slot)
            log.info(
                "supervising",
                workers=self.workers,
                port=port,
                metrics_port=server.metrics_port or None,
                pids=sorted(self._children),
            )
            self._loop()
        finally:
            self._sock.close()
            if self._health_sock is not None:
                self._health_sock.close()
            if self._metrics_sock is not None:
                self._metrics_sock.close()
            if self._metrics_dir is not None:
                self._metrics_dir.close()
            self._in_flight.close()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SUPERVISOR_SIGNALS)
        log.info("supervisor stopped", exit_code=self._exit_code)
        return self._exit_code

    def _spawn(self, slot: int) -> None:
        flush_logs()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                _die_with_parent()
                if slot == EXPORTER_SLOT:
                    assert self._metrics_sock is not None
                    code = run_exporter(self._metrics_sock, self._metrics_tls)
                else:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, SUPERVISOR_SIGNALS)
                    if self._metrics_sock is not None:
                        self._metrics_sock.close()
                        metrics.install(metrics.Metrics())
                    assert self._in_flight is not None
                    code = run_worker(
                        self.source,
                        self.loaded,
                        index=slot,
                        reuse_port=True,
                        in_flight=self._in_flight.for_worker(slot),
                    )
            except BaseException:
                traceback.print_exc()
            finally:
                flush_logs()  # os._exit skips atexit
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self._children[pid] = _Worker(slot, time.monotonic())
        if slot == EXPORTER_SLOT:
            log.info(
                "metrics exporter started", exporter_pid=pid, metrics_port=self._metrics_port()
            )
        else:
            log.info("worker started", worker_pid=pid, slot=slot)

    def _metrics_port(self) -> int | None:
        return None if self._metrics_sock is None else int(self._metrics_sock.getsockname()[1])

    def _loop(self) -> None:
        while self._children or self._restarts:
            info = signal.sigtimedwait(SUPERVISOR_SIGNALS, self._timeout())
            if info is not None:
                self._on_signal(info.si_signo)
            self._reap()
            now = time.monotonic()
            for slot, when in list(self._restarts.items()):
                if when <= now:
                    del self._restarts[slot]
                    self._spawn(slot)
            if self._stopping and self._children and now >= self._kill_at:
                log.error("workers did not stop in time; killing", pids=sorted(self._children))
                self._exit_code = 1
                self._relay(signal.SIGKILL)
                self._kill_at = now + KILL_MARGIN_S

    def _timeout(self) -> float:
        deadlines = list(self._restarts.values())
        if self._stopping:
            deadlines.append(self._kill_at)
        if not deadlines:
            return 1.0
        return max(0.0, min(min(deadlines) - time.monotonic(), 1.0))

    def _on_signal(self, signo: int) -> None:
        if signo in (signal.SIGTERM, signal.SIGINT):
            self._stop(f"received {signal.Signals(signo).name}", signo)
        elif signo == signal.SIGHUP:
            log.info("reloading workers", pids=sorted(self._children))
            self._relay(signal.SIGHUP)
            self._reload()
            if self._metrics_tls is not None:
                # An exporter restarted from now on serves the certificates the running
                # one has just re-read.
                self._metrics_tls.reload(quiet=True)

    def _stop(self, reason: str, signo: int = signal.SIGTERM) -> None:
        """Relay a stop to the workers: SIGTERM drains first, SIGINT (or a second signal) not."""
        if self._stopping:
            self._relay(signo)  # the workers take it as "stop now"
            return
        self._stopping = True
        self._restarts.clear()
        server = self.loaded.config.server
        drain = server.drain_delay_s if signo == signal.SIGTERM else 0.0
        self._kill_at = time.monotonic() + drain + server.grace_period_s + KILL_MARGIN_S
        log.info(
            "stopping workers",
            reason=reason,
            drain_s=drain,
            grace_s=server.grace_period_s,
            pids=sorted(self._children),
        )
        self._relay(signo)

    def _relay(self, signo: int) -> None:
        for pid in list(self._children):
            try:
                os.kill(pid, signo)
            except ProcessLookupError:
                continue  # already gone; _reap collects it

    def _reload(self) -> None:
        """Reload the supervisor's own copy, which workers forked from now on start with.

        It is also the one count of the reload in ``modelrouter_config_reloads_total``:
        the workers load the same file.
        """
        success = False
        try:
            loaded = load(self.source)
            # Workers started from now on bind what the running ones bind (the host, the
            # health port, the transport, ...: a restart applies those), log and trace as
            # they do, and keep the replica id.
            config, stale = keep_restart_only(self.loaded.config, loaded.config)
            running = self.loaded
            self.loaded = replace(
                loaded,
                config=config,
                tls=running.tls if "server.tls" in stale else loaded.tls,
                replica_id=running.replica_id,
                replica_id_from=running.replica_id_from,
            )
            success = True
        except ConfigError as exc:
            log.info("supervisor keeps its configuration", error=str(exc))
        except Exception as exc:
            # Whatever a bad file or model throws, the supervisor must outlive it: its
            # workers keep serving the old configuration.
            log.error("supervisor keeps its configuration", error=repr(exc), exc_info=exc)
        if self._metrics is not None:
            self._metrics.reloaded(success)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self._children.pop(pid, None)
            if worker is None:
                continue
            if self._metrics_dir is not None:
                self._metrics_dir.process_dead(pid)
            if self._in_flight is not None and worker.slot != EXPORTER_SLOT:
                self._in_flight.clear(worker.slot)  # its RPCs died with it
            code = os.waitstatus_to_exitcode(status)
            if self._stopping:
                if worker.slot == EXPORTER_SLOT:
                    log.info("metrics exporter stopped", exporter_pid=pid, exit_code=code)
                else:
                    log.info("worker stopped", worker_pid=pid, slot=worker.slot, exit_code=code)
                if code != 0:
                    self._exit_code = 1
                continue
            self._schedule_restart(pid, worker, code)

    def _schedule_restart(self, pid: int, worker: _Worker, code: int) -> None:
        lived = time.monotonic() - worker.started
        crashes = self._quick_crashes.get(worker.slot, 0) + 1 if lived < CRASH_WINDOW_S else 0
        self._quick_crashes[worker.slot] = crashes
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        # The exporter is named for what it is, and by its pid (it has no worker slot; "pid" is
        # every log line's own: the supervisor's).
        what, who = (
            ("metrics exporter", {"exporter_pid": pid})
            if worker.slot == EXPORTER_SLOT
            else ("worker", {"worker_pid": pid, "slot": worker.slot})
        )
        if crashes >= MAX_QUICK_CRASHES:
            log.error(f"{what} keeps dying; stopping", **who, died_of=how, quick_crashes=crashes)
            self._exit_code = 1
            self._stop(f"a {what} keeps dying")
            return
        delay = min(0.1 * 2**crashes, MAX_RESTART_DELAY_S) if crashes else 0.0
        log.error(
            f"{what} died; restarting",
            **who,
            died_of=how,
            lived_s=round(lived, 3),
            restart_in_s=delay,
        )
        self._restarts[worker.slot] = time.monotonic() + delay
