"""One server process: build the service and its server, serve until SIGTERM, reload on SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import Callable

import structlog

from router.config import Config, ConfigError, TlsConfig
from router.domain import CircuitState
from router.loading import ConfigSource, Loaded, load
from router.server.app import CannotListen, RunningServer, create_server
from router.server.inflight import InFlight
from router.server.logs import flush_logs, set_worker
from router.service import RouterService
from router.store import StoreError, StoreWriter, start_writer
from router.telemetry import install_tracing, metrics
from router.tls import ServerTls

log = structlog.get_logger()

# Settings a reload cannot change in a running process.
RESTART_ONLY = (
    "host",
    "port",
    "workers",
    "max_message_bytes",
    "metrics_port",
    "metrics_host",
    "metrics_tls",
    "health_port",
    "replica_id",
)
EXIT_LISTEN = 3
EXIT_STORE = 4
# How often a worker moves its pending metric counts into prometheus-client's values.
METRICS_FLUSH_S = 1.0


def _transport(tls: TlsConfig | None) -> str:
    """Return what the port speaks: plaintext, TLS or mutual TLS (changed only by a restart)."""
    return "plaintext" if tls is None else "mutual TLS" if tls.client_ca else "TLS"


def keep_restart_only(running: Config, config: Config) -> tuple[Config, list[str]]:
    """Return ``config`` with ``running``'s values of the settings only a restart applies,
    and the names of those the new configuration changes.

    A running worker keeps its sockets, its log line's settings and its tracing; a worker
    the supervisor starts after a reload must do as the others do (another host or health
    port would be bound unchecked, beside another server's or nowhere). New certificates of
    the same transport apply at once.
    """
    new = config.server
    stale = [key for key in RESTART_ONLY if getattr(running.server, key) != getattr(new, key)]
    kept = {key: getattr(running.server, key) for key in stale}
    if _transport(running.server.tls) != _transport(new.tls):
        stale.append("tls")
        kept["tls"] = running.server.tls
    names = [f"server.{key}" for key in stale]
    sections = [
        key for key in ("logging", "tracing") if getattr(running, key) != getattr(config, key)
    ]
    if not names and not sections:
        return config, []
    update: dict[str, object] = {key: getattr(running, key) for key in sections}
    if kept:
        update["server"] = new.model_copy(update=kept)
    return config.model_copy(update=update), names + sections


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    if os.environ.get("MODELROUTER_NO_UVLOOP"):
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_worker(
    source: ConfigSource,
    loaded: Loaded,
    *,
    index: int | None,
    reuse_port: bool,
    in_flight: InFlight | None = None,
    on_reload: Callable[[], None] | None = None,
) -> int:
    """Run one server process on an event loop (uvloop when installed) until it stops.

    ``in_flight`` is the supervisor's count of every worker's RPCs (None: this process's).
    ``on_reload`` also runs on every SIGHUP (the metrics port's certificates, in one process).
    """
    set_worker(index)
    tracing = None
    if loaded.config.tracing.enabled:
        # After the fork: the exporter's batch thread and channel belong to this process.
        from router.telemetry.tracing import Tracing

        tracing = Tracing(loaded.config.tracing)
        install_tracing(tracing)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_serve_async(source, loaded, index, reuse_port, in_flight, on_reload))
    finally:
        if tracing is not None:
            install_tracing(None)
            tracing.shutdown()


async def _serve_async(
    source: ConfigSource,
    loaded: Loaded,
    index: int | None,
    reuse_port: bool,
    in_flight: InFlight | None,
    on_reload: Callable[[], None] | None,
) -> int:
    loop = asyncio.get_running_loop()
    config = loaded.config
    writer = None
    if loaded.store is not None and config.store is not None:
        try:
            writer = await start_writer(loaded.store, config.store)
        except StoreError as exc:
            log.error("cannot open the store", error=str(exc))
            return EXIT_STORE
    service = RouterService(
        config,
        loaded.router,
        model_source=loaded.model_source,
        store=writer,
        worker=index,
        replica=loaded.replica_id or None,
    )
    await service.restore_controllers()
    try:
        running = create_server(
            config, service, reuse_port=reuse_port, tls=loaded.tls, in_flight=in_flight
        )
    except CannotListen as exc:
        hint = {"hint": exc.hint} if exc.hint else {}
        log.error("cannot listen", address=exc.address, error=str(exc), **hint)
        await service.aclose()
        return EXIT_LISTEN
    await running.start()
    # Everything built so far (the model, the configuration, grpc, the imported modules)
    # lives as long as the process: out of the collector's sight, a full collection under
    # load scans only what the requests made (it took ~75 ms a pass over ~67,000 objects).
    gc.freeze()
    log.info(
        "listening",
        host=running.host,
        port=running.port,
        config=source.describe(),
        model_version=loaded.router.version,
        fastpath=loaded.router.implementation,
        event_loop=type(loop).__module__.split(".")[0],
        store=None if writer is None else writer.store.location,
        replica_id=loaded.replica_id,
        replica_id_from=loaded.replica_id_from,
    )
    stopping = _StopSignals()
    # Supervised workers share the port; the supervisor counts the reloads.
    supervised = reuse_port
    reloader = Reloader(
        source, service, count=None if supervised else metrics.current(), tls=running.tls
    )
    loop.add_signal_handler(signal.SIGTERM, stopping.terminate)
    loop.add_signal_handler(signal.SIGINT, stopping.interrupt)
    loop.add_signal_handler(
        signal.SIGHUP, reloader.trigger if on_reload is None else _both(reloader.trigger, on_reload)
    )
    current_metrics = metrics.current()
    flusher = None
    if current_metrics is not None:
        flusher = loop.create_task(_flush_metrics_every(current_metrics, running))
    await stopping.requested.wait()
    drain = 0.0 if stopping.hurry.is_set() else service.config.server.drain_delay_s
    if drain:
        log.info("draining", drain_s=drain, in_flight=running.interceptor.in_flight)
    await running.drain(drain, stopping.hurry)
    grace = service.config.server.grace_period_s
    log.info("stopping", grace_s=grace, in_flight=running.interceptor.in_flight)
    await running.stop(grace)
    if flusher is not None and current_metrics is not None:
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        _flush_metrics(current_metrics, running)
    store = service.store
    log.info(
        "stopped",
        **(
            {}
            if store is None
            else {"store_written": store.written, "store_dropped": store.dropped}
        ),
    )
    flush_logs()
    return 0


class _StopSignals:
    """SIGTERM asks for a stop after the drain delay; SIGINT or a second SIGTERM, at once."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.hurry = asyncio.Event()

    def terminate(self) -> None:
        """Handle SIGTERM."""
        if self.requested.is_set():
            self.hurry.set()
        self.requested.set()

    def interrupt(self) -> None:
        """Handle SIGINT."""
        self.hurry.set()
        self.requested.set()


def _both(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        first()
        second()

    return run


def _flush_metrics(current: metrics.Metrics, running: RunningServer) -> None:
    """Move pending metric counts into prometheus-client and sample the gauges."""
    info = running.service.info()
    store = running.service.store
    if store is not None:
        current.store(store, store.written, store.dropped, store.queued)
    current.flush(
        running.interceptor.in_flight,
        info.model_version,
        ((b.name, b.circuit is not CircuitState.CLOSED) for b in info.backends),
        info.controllers,
    )


async def _flush_metrics_every(current: metrics.Metrics, running: RunningServer) -> None:
    """Flush the metrics every METRICS_FLUSH_S seconds until cancelled."""
    while True:
        _flush_metrics(current, running)
        await asyncio.sleep(METRICS_FLUSH_S)


class Reloader:
    """Reload configuration and model on SIGHUP; keep the old ones when the new are bad."""

    def __init__(
        self,
        source: ConfigSource,
        service: RouterService,
        *,
        count: metrics.Metrics | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        self._source = source
        self._service = service
        self._count = count
        self._tls = tls
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[bool]] = set()

    async def _writer_for(self, loaded: Loaded) -> StoreWriter | None:
        """Return the writer the new configuration's store needs: the same one, or a new one."""
        current = self._service.store
        if current is not None and current.serves(loaded.store, loaded.config.store):
            return current
        if loaded.store is None or loaded.config.store is None:
            return None
        return await start_writer(loaded.store, loaded.config.store)

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
                config, stale = keep_restart_only(old, loaded.config)
                stale_tls = "server.tls" in stale
                writer = await self._writer_for(loaded)
                self._service.reload(config, loaded.router, loaded.model_source, writer)
                await self._service.restore_controllers()
            except (ConfigError, StoreError) as exc:
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
            # Turning TLS on or off, or client certificates on or off, rebuilds the port
            # (a restart: in ``stale``); new certificates of the same kind apply at once.
            tls, fresh = self._tls, loaded.tls
            if tls is not None and fresh is not None and fresh != tls.files and not stale_tls:
                tls.update(fresh)
                log.info("certificates reloaded", mutual_tls=tls.files.mutual)
            log.info(
                "reloaded", config=self._source.describe(), model_version=loaded.router.version
            )
            if stale:
                log.warning("restart to apply", keys=stale)
            return True
