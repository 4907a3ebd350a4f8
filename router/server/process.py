"""Run the service: in this process, or as a supervisor of N forked workers sharing the port.

Workers are forked before any gRPC object exists (gRPC's core does not survive a fork) and
listen on the same port with SO_REUSEPORT; the kernel spreads connections over them. The
supervisor reserves the port first (so ``--port 0`` works with several workers too), restarts
a worker that dies, and relays SIGTERM/SIGINT (graceful stop) and SIGHUP (reload).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import structlog

from router.config import Config, ConfigError, default_config, load_config
from router.domain import CircuitState
from router.routing import Router
from router.server.app import RunningServer, create_server
from router.server.cpus import usable_cpus
from router.server.logs import configure_logging, flush_logs, set_worker
from router.service import RouterService, load_router
from router.telemetry import install_tracing, metrics
from router.telemetry.exporter import (
    MultiprocessDir,
    bind_metrics_socket,
    run_exporter,
    serve_in_thread,
    use_process_values,
)

log = structlog.get_logger()

# Settings a reload cannot change in a running process.
RESTART_ONLY = ("host", "port", "workers", "max_message_bytes", "metrics_port")
SUPERVISOR_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}
# A worker that dies sooner than this after its start counts towards a crash loop.
CRASH_WINDOW_S = 5.0
MAX_QUICK_CRASHES = 5
MAX_RESTART_DELAY_S = 5.0
# Time a worker gets beyond the grace period before the supervisor kills it.
KILL_MARGIN_S = 5.0
EXIT_CONFIG = 1
EXIT_LISTEN = 3
# How often a worker moves its pending metric counts into the shared files.
METRICS_FLUSH_S = 1.0
# The supervisor's slot number for the child that serves /metrics.
EXPORTER_SLOT = -1


@dataclass(frozen=True)
class ConfigSource:
    """Where the configuration comes from, and the command-line flags laid over it."""

    path: Path | None = None
    host: str | None = None
    port: int | None = None
    workers: int | None = None
    metrics_port: int | None = None

    @property
    def base_dir(self) -> Path | None:
        return None if self.path is None else self.path.parent

    def describe(self) -> str:
        """Return the file name, or a note that the embedded default is in use."""
        return str(self.path) if self.path is not None else "the embedded default configuration"

    def load(self) -> Config:
        """Read and validate the configuration, then apply the command-line flags."""
        config = default_config() if self.path is None else load_config(self.path)
        given = (
            ("host", self.host),
            ("port", self.port),
            ("workers", self.workers),
            ("metrics_port", self.metrics_port),
        )
        flags = {key: value for key, value in given if value is not None}
        if not flags:
            return config
        return config.model_copy(update={"server": config.server.model_copy(update=flags)})


@dataclass(frozen=True)
class Loaded:
    """A validated configuration and the routing model it names."""

    config: Config
    router: Router
    model_source: str


def load(source: ConfigSource) -> Loaded:
    """Load the configuration and its model; raise ConfigError naming the bad key."""
    config = source.load()
    router, model_source = load_router(config, source.base_dir)
    return Loaded(config, router, model_source)


def worker_count(config: Config) -> int:
    """Return the number of workers: the configured one, or one per usable core."""
    return config.server.workers or usable_cpus()


def serve(source: ConfigSource) -> int:
    """Serve until SIGTERM or SIGINT; return the exit code."""
    try:
        loaded = load(source)
    except ConfigError as exc:
        print(f"modelrouter: {source.describe()}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(loaded.config.logging)
    workers = worker_count(loaded.config)
    if workers == 1:
        return _serve_single(source, loaded)
    return Supervisor(source, loaded, workers).run()


def _serve_single(source: ConfigSource, loaded: Loaded) -> int:
    """Serve from this one process; its metrics live in memory and a thread serves them."""
    server = loaded.config.server
    if not server.metrics_port:
        return run_worker(source, loaded, index=None, reuse_port=False)
    try:
        listener = bind_metrics_socket(server.host, server.metrics_port)
    except OSError as exc:
        _cannot_listen_for_metrics(server.host, server.metrics_port, exc)
        return EXIT_LISTEN
    from prometheus_client import CollectorRegistry

    use_process_values()
    registry = CollectorRegistry()
    metrics.install(metrics.Metrics(registry))
    http = serve_in_thread(listener, registry)
    try:
        return run_worker(source, loaded, index=None, reuse_port=False)
    finally:
        http.shutdown()
        http.server_close()
        metrics.install(None)


def _cannot_listen_for_metrics(host: str, port: int, exc: OSError) -> None:
    log.error(
        "cannot listen",
        address=f"{host}:{port}",
        error=str(exc),
        hint="server.metrics_port (--metrics-port) is taken; 0 turns metrics off",
    )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    if os.environ.get("MODELROUTER_NO_UVLOOP"):
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_worker(source: ConfigSource, loaded: Loaded, *, index: int | None, reuse_port: bool) -> int:
    """Run one server process on an event loop (uvloop when installed) until it stops."""
    set_worker(index)
    tracing = None
    if loaded.config.tracing.enabled:
        # After the fork: the exporter's batch thread and channel belong to this process.
        from router.telemetry.tracing import Tracing

        tracing = Tracing(loaded.config.tracing)
        install_tracing(tracing)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_serve_async(source, loaded, reuse_port))
    finally:
        if tracing is not None:
            install_tracing(None)
            tracing.shutdown()


async def _serve_async(source: ConfigSource, loaded: Loaded, reuse_port: bool) -> int:
    loop = asyncio.get_running_loop()
    config = loaded.config
    service = RouterService(config, loaded.router, model_source=loaded.model_source)
    address = f"{config.server.host}:{config.server.port}"
    try:
        running = create_server(config, service, reuse_port=reuse_port)
    except RuntimeError as exc:
        log.error("cannot listen", address=address, error=str(exc))
        await service.aclose()
        return EXIT_LISTEN
    await running.start()
    log.info(
        "listening",
        host=running.host,
        port=running.port,
        config=source.describe(),
        model_version=loaded.router.version,
        fastpath=loaded.router.implementation,
        event_loop=type(loop).__module__.split(".")[0],
    )
    stop = asyncio.Event()
    supervised = reuse_port
    reloader = Reloader(source, service, count=None if supervised else metrics.current())
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reloader.trigger)
    current_metrics = metrics.current()
    flusher = None
    if current_metrics is not None:
        flusher = loop.create_task(_flush_metrics_every(current_metrics, running))
    await stop.wait()
    grace = service.config.server.grace_period_s
    log.info("stopping", grace_s=grace, in_flight=running.interceptor.in_flight)
    await running.stop(grace)
    if flusher is not None and current_metrics is not None:
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        _flush_metrics(current_metrics, running)
    log.info("stopped")
    flush_logs()
    return 0


def _flush_metrics(current: metrics.Metrics, running: RunningServer) -> None:
    """Move pending metric counts into prometheus-client and sample the gauges."""
    info = running.service.info()
    current.flush(
        running.interceptor.in_flight,
        info.model_version,
        ((b.name, b.circuit is not CircuitState.CLOSED) for b in info.backends),
    )


async def _flush_metrics_every(current: metrics.Metrics, running: RunningServer) -> None:
    """Flush the metrics every METRICS_FLUSH_S seconds until cancelled."""
    while True:
        _flush_metrics(current, running)
        await asyncio.sleep(METRICS_FLUSH_S)


class Reloader:
    """Reload configuration and model on SIGHUP; keep the old ones when the new are bad."""

    def __init__(
        self, source: ConfigSource, service: RouterService, *, count: metrics.Metrics | None = None
    ) -> None:
        self._source = source
        self._service = service
        self._count = count
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[bool]] = set()

    def trigger(self) -> None:
        """Start a reload in the background (called from the signal handler)."""
        task = asyncio.get_running_loop().create_task(self.reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> bool:
        """Reload; return whether the new configuration is now in force."""
        done = await self._reload()
        if self._count is not None:
            self._count.reloaded(done)
        return done

    async def _reload(self) -> bool:
        async with self._lock:
            old = self._service.config
            try:
                loaded = await asyncio.to_thread(load, self._source)
                self._service.reload(loaded.config, loaded.router, loaded.model_source)
            except ConfigError as exc:
                log.error("reload rejected", config=self._source.describe(), error=str(exc))
                return False
            except Exception as exc:
                log.error(
                    "reload rejected",
                    config=self._source.describe(),
                    error=repr(exc),
                    exc_info=exc,
                )
                return False
            log.info(
                "reloaded", config=self._source.describe(), model_version=loaded.router.version
            )
            stale = [
                f"server.{key}"
                for key in RESTART_ONLY
                if getattr(old.server, key) != getattr(loaded.config.server, key)
            ]
            stale.extend(
                key
                for key in ("logging", "tracing")
                if getattr(old, key) != getattr(loaded.config, key)
            )
            if stale:
                log.warning("restart to apply", keys=stale)
            return True


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) a SO_REUSEPORT socket to hold the port the workers share."""
    infos = socket.getaddrinfo(
        host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


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
    _metrics_sock: socket.socket | None = None
    _metrics_dir: MultiprocessDir | None = None
    _metrics: metrics.Metrics | None = None

    def run(self) -> int:
        """Supervise until every worker has stopped; return the exit code."""
        server = self.loaded.config.server
        try:
            self._sock = reserve_port(server.host, server.port)
        except OSError as exc:
            log.error("cannot listen", address=f"{server.host}:{server.port}", error=str(exc))
            return EXIT_LISTEN
        if server.metrics_port:
            try:
                self._metrics_sock = bind_metrics_socket(server.host, server.metrics_port)
            except OSError as exc:
                self._sock.close()
                _cannot_listen_for_metrics(server.host, server.metrics_port, exc)
                return EXIT_LISTEN
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
            if self._metrics_sock is not None:
                self._metrics_sock.close()
            if self._metrics_dir is not None:
                self._metrics_dir.close()
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
                    code = run_exporter(self._metrics_sock)
                else:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, SUPERVISOR_SIGNALS)
                    if self._metrics_sock is not None:
                        self._metrics_sock.close()
                        metrics.install(metrics.Metrics())
                    code = run_worker(self.source, self.loaded, index=slot, reuse_port=True)
            except BaseException:
                traceback.print_exc()
            finally:
                flush_logs()  # os._exit skips atexit
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self._children[pid] = _Worker(slot, time.monotonic())
        if slot == EXPORTER_SLOT:
            log.info("metrics exporter started", pid=pid, metrics_port=self._metrics_port())
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
            self._stop(f"received {signal.Signals(signo).name}")
        elif signo == signal.SIGHUP:
            log.info("reloading workers", pids=sorted(self._children))
            self._relay(signal.SIGHUP)
            self._reload()

    def _stop(self, reason: str) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._restarts.clear()
        grace = self.loaded.config.server.grace_period_s
        self._kill_at = time.monotonic() + grace + KILL_MARGIN_S
        log.info("stopping workers", reason=reason, grace_s=grace, pids=sorted(self._children))
        self._relay(signal.SIGTERM)

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
            self.loaded = load(self.source)
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
            code = os.waitstatus_to_exitcode(status)
            if self._stopping:
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
        if crashes >= MAX_QUICK_CRASHES:
            log.error(
                "worker keeps dying; stopping",
                worker_pid=pid,
                slot=worker.slot,
                died_of=how,
                quick_crashes=crashes,
            )
            self._exit_code = 1
            self._stop("a worker keeps dying")
            return
        delay = min(0.1 * 2**crashes, MAX_RESTART_DELAY_S) if crashes else 0.0
        log.error(
            "worker died; restarting",
            worker_pid=pid,
            slot=worker.slot,
            died_of=how,
            lived_s=round(lived, 3),
            restart_in_s=delay,
        )
        self._restarts[worker.slot] = time.monotonic() + delay
