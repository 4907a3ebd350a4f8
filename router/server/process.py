"""Run the service: in this process, or as a supervisor of N forked workers sharing the port.

``serve`` loads the configuration once, then runs one worker here (``router.server.worker``)
or hands over to the ``Supervisor`` (``router.server.supervisor``), which forks them.
"""

from __future__ import annotations

import sys

from router.config import Config, ConfigError
from router.loading import ConfigSource, load
from router.server.cpus import usable_cpus
from router.server.logs import configure_logging
from router.server.supervisor import Supervisor
from router.server.worker import run_worker

EXIT_CONFIG = 1


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
        return run_worker(source, loaded, index=None, reuse_port=False)
    return Supervisor(source, loaded, workers).run()
