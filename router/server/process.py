"""Run the service: in this process, or as a supervisor of N forked workers sharing the port.

``serve`` loads the configuration once, then runs one worker here (``router.server.worker``)
or hands over to the ``Supervisor`` (``router.server.supervisor``), which forks them.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import structlog

from router.config import Config, ConfigError
from router.loading import ConfigSource, Loaded, load
from router.server.cpus import usable_cpus
from router.server.logs import configure_logging
from router.server.supervisor import Supervisor
from router.server.worker import EXIT_LISTEN, run_worker
from router.store import StoreError, open_store
from router.telemetry import metrics
from router.telemetry.exporter import (
    MetricsTls,
    bind_metrics_socket,
    cannot_listen_for_metrics,
    serve_in_thread,
    use_process_values,
)

EXIT_CONFIG = 1

log = structlog.get_logger()


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
    if loaded.store is not None:
        # Created and migrated once, before any worker starts (a bad path or an
        # unreachable database stops here, with its reason).
        try:
            open_store(loaded.store).close()
        except StoreError as exc:
            print(f"modelrouter: store: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    configure_logging(loaded.config.logging)
    workers = worker_count(loaded.config)
    # Resolved once: GetConfig reports the count, and a reload keeps it.
    source = replace(source, workers=workers)
    config = loaded.config
    loaded = replace(
        loaded,
        config=config.model_copy(
            update={"server": config.server.model_copy(update={"workers": workers})}
        ),
    )
    if workers > 1 and not config.limits.redis_url:
        limited = sorted(name for name, tenant in config.tenants.items() if tenant.limits.any)
        if limited:
            log.warning(
                "tenant limits counted per worker",
                workers=workers,
                tenants=limited,
                hint="each worker admits a tenant's full limit; set limits.redis_url to count "
                "once for every worker and replica",
            )
    if workers == 1:
        return _serve_single(source, loaded)
    return Supervisor(source, loaded, workers).run()


def _serve_single(source: ConfigSource, loaded: Loaded) -> int:
    """Serve from this one process; its metrics live in memory and a thread serves them."""
    server = loaded.config.server
    if not server.metrics_port:
        return run_worker(source, loaded, index=None, reuse_port=False)
    metrics_host = server.metrics_host or server.host
    try:
        listener = bind_metrics_socket(metrics_host, server.metrics_port)
    except OSError as exc:
        cannot_listen_for_metrics(metrics_host, server.metrics_port, exc)
        return EXIT_LISTEN
    from prometheus_client import CollectorRegistry

    tls = None if server.metrics_tls is None else MetricsTls(server.metrics_tls, source.base_dir)
    use_process_values()
    registry = CollectorRegistry()
    metrics.install(metrics.Metrics(registry))
    http = serve_in_thread(listener, registry, None if tls is None else tls.context)
    try:
        return run_worker(
            source,
            loaded,
            index=None,
            reuse_port=False,
            on_reload=None if tls is None else tls.reload,
        )
    finally:
        http.shutdown()
        http.server_close()
        metrics.install(None)
