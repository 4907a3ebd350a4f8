"""Load what a service runs on: the configuration (file or embedded default, flags over it)
and the routing model it names.

``modelrouter serve``, ``modelrouter config check``, a reload and the tests all load through
here, so a configuration is validated the same way wherever it enters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from router.config import Config, ConfigError, default_config, load_config, resolve_replica_id
from router.model import ModelError, default_model_path, load_model
from router.routing import Router
from router.store import default_store_path
from router.tls import TlsFiles, read_tls


def relative_to(base_dir: Path | None, name: str, key: str) -> Path:
    """Return a path from the configuration, a relative one taken from ``base_dir``.

    Raise ConfigError naming ``key`` for ``~user`` of no known user (or ``~`` without a
    home directory).
    """
    try:
        path = Path(name).expanduser()
    except RuntimeError:
        home = name.split("/", 1)[0]
        raise ConfigError(f"{key}: {name[:256]!r}: no home directory for {home!r}") from None
    return base_dir / path if not path.is_absolute() and base_dir is not None else path


def config_model_path(config: Config, base_dir: Path | None = None) -> Path:
    """Return the model file a configuration names, a relative path taken from ``base_dir``."""
    if config.model == "builtin":
        return default_model_path()
    return relative_to(base_dir, config.model, "model")


def store_target(config: Config, base_dir: Path | None = None) -> str | None:
    """Return the store a configuration names: a PostgreSQL URL, a SQLite path, or None.

    No ``path`` and no ``url`` is the SQLite file in the per-user state directory;
    ``store: null`` is None (nothing kept).
    """
    store = config.store
    if store is None:
        return None
    if store.url is not None:
        return store.url
    if store.path is None:
        return str(default_store_path())
    return str(relative_to(base_dir, store.path, "store.path"))


def load_router(config: Config, base_dir: Path | None = None) -> tuple[Router, str]:
    """Load the routing model a configuration names; return the router and where it came from.

    A relative model path is taken relative to ``base_dir`` (the configuration file's
    directory). Thresholds come from the tiers' ``min_score`` when set, else from the model.
    """
    path = config_model_path(config, base_dir)
    source = "builtin" if config.model == "builtin" else str(path)
    try:
        model = load_model(path)
    except ModelError as exc:
        raise ConfigError(f"model: {exc}") from None
    names = [tier.name for tier in config.tiers]
    thresholds = config.explicit_thresholds()
    if thresholds is None:
        if len(model.thresholds) != len(names) - 1:
            raise ConfigError(
                f"tiers: the model {model.version} is calibrated for "
                f"{len(model.thresholds) + 1} tiers but {len(names)} are configured; set "
                "min_score on every tier above the cheapest"
            )
        thresholds = model.thresholds
    try:
        router = Router(model, tier_names=names, thresholds=thresholds)
    except ValueError as exc:
        raise ConfigError(f"tiers: {exc}") from None
    return router, source


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
    """A validated configuration, the routing model it names, its TLS files, read, and its store."""

    config: Config
    router: Router
    model_source: str
    # The gRPC port's certificates (server.tls), None for plaintext.
    tls: TlsFiles | None = None
    # The store's URL or SQLite path; None when the configuration keeps nothing.
    store: str | None = None
    # This server's replica id (server.replica_id, else $MODELROUTER_REPLICA_ID, else the
    # host name), and which of these it came from.
    replica_id: str = ""
    replica_id_from: str = ""


def load(source: ConfigSource) -> Loaded:
    """Load the configuration, its model and its certificates; raise ConfigError naming the key."""
    config = source.load()
    router, model_source = load_router(config, source.base_dir)
    server = config.server
    tls = None if server.tls is None else read_tls(server.tls, "server.tls", source.base_dir)
    if server.metrics_tls is not None:
        read_tls(server.metrics_tls, "server.metrics_tls", source.base_dir)
    if config.limits.redis_url:
        check_redis_installed()
    if config.store is not None and config.store.url is not None:
        check_postgres_installed()
    if config.tracing.enabled:
        check_tracing_installed()
    replica_id, replica_id_from = resolve_replica_id(server)
    return Loaded(
        config,
        router,
        model_source,
        tls,
        store_target(config, source.base_dir),
        replica_id,
        replica_id_from,
    )


def _installed(module: str) -> bool:
    """Return whether ``module`` can be imported, without importing it (nor, for a module of
    a namespace package such as OpenTelemetry's, anything of its package)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _check_extra(modules: tuple[str, ...], problem: str) -> None:
    """Raise ConfigError with ``problem`` unless every one of ``modules`` is installed."""
    if not all(_installed(m) for m in modules):
        raise ConfigError(problem)


def check_redis_installed() -> None:
    """Raise ConfigError when limits.redis_url is set but redis-py is not installed."""
    _check_extra(
        ("redis",),
        "limits.redis_url: limits shared in Redis need redis-py: pip install 'modelrouter[redis]'",
    )


def check_postgres_installed() -> None:
    """Raise ConfigError when store.url is set but psycopg and its pool are not installed."""
    _check_extra(
        ("psycopg", "psycopg_pool"),
        "store.url: a PostgreSQL store needs psycopg: pip install 'modelrouter[postgres]'",
    )


# What router.telemetry.tracing imports, one module of each package of the tracing extra:
# opentelemetry-api, opentelemetry-sdk and opentelemetry-exporter-otlp-proto-grpc.
TRACING_MODULES = (
    "opentelemetry.trace",
    "opentelemetry.sdk",
    "opentelemetry.exporter.otlp.proto.grpc",
)


def check_tracing_installed() -> None:
    """Raise ConfigError when tracing.otlp_endpoint is set but OpenTelemetry is not installed
    (only found, not imported: a worker imports it when it starts tracing)."""
    _check_extra(
        TRACING_MODULES,
        "tracing.otlp_endpoint: traces exported over OTLP need opentelemetry-sdk and "
        "its OTLP/gRPC exporter: pip install 'modelrouter[tracing]'",
    )
