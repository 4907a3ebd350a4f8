"""The ``modelrouter serve`` and ``modelrouter config`` subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from router.config import (
    DEFAULT_CONFIG_YAML,
    RPC_METHODS,
    ApiKeyConfig,
    Config,
    ConfigError,
    listen_host,
)
from router.loading import ConfigSource, load
from router.server.process import EXIT_CONFIG, serve, worker_count
from router.store import is_url

Subparsers = Any  # argparse's _SubParsersAction is private


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-65535)")
    return port


def _workers(text: str) -> int:
    workers = int(text)
    if not 0 <= workers <= 256:
        raise argparse.ArgumentTypeError(f"{workers} workers: use 0 (one per core) to 256")
    return workers


def _host(host: str) -> str:
    try:
        return listen_host(host)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_serve_parser(subparsers: Subparsers) -> None:
    """Register ``modelrouter serve``."""
    parser = subparsers.add_parser(
        "serve",
        help="run the gRPC service",
        description="Serve the ModelRouter gRPC API (with health and reflection). Without "
        "--config it serves the shipped model with the embedded default configuration "
        "(three tiers on the local demo backend). SIGTERM stops gracefully; SIGHUP reloads "
        "the configuration and the model.",
    )
    parser.add_argument("--config", type=Path, help="YAML configuration file")
    parser.add_argument(
        "--host", type=_host, help="address to listen on (default: server.host, [::])"
    )
    parser.add_argument(
        "--port", type=_port, help="port to listen on, 0 for any free one (default: server.port)"
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        help="worker processes sharing the port; 0 means one per core (default: server.workers)",
    )
    parser.add_argument(
        "--metrics-port",
        type=_port,
        help="port of the Prometheus metrics (GET /metrics), 0 turns them off "
        "(default: server.metrics_port, 9464)",
    )
    parser.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    return serve(ConfigSource(args.config, args.host, args.port, args.workers, args.metrics_port))


def add_config_parser(subparsers: Subparsers) -> None:
    """Register ``modelrouter config check`` and ``modelrouter config default``."""
    parser = subparsers.add_parser("config", help="validate or print a configuration")
    commands = parser.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="validate a configuration file and the model it names, without serving",
    )
    check.add_argument("file", type=Path, help="YAML configuration file")
    check.set_defaults(handler=_run_check)
    default = commands.add_parser("default", help="print the embedded default configuration")
    default.set_defaults(handler=_run_default)


def _run_check(args: argparse.Namespace) -> int:
    source = ConfigSource(args.file)
    try:
        loaded = load(source)
    except ConfigError as exc:
        # A file's read and YAML errors name the file already.
        where = source.describe()
        message = str(exc) if str(exc).startswith(f"{where}: ") else f"{where}: {exc}"
        print(f"modelrouter: {message}", file=sys.stderr)
        return EXIT_CONFIG
    config = loaded.config
    tiers = ", ".join(
        f"{tier.name} (>= {threshold:g})" if i else tier.name
        for i, (tier, threshold) in enumerate(
            zip(config.tiers, (0.0, *loaded.router.thresholds), strict=True)
        )
    )
    print(
        f"{source.describe()}: OK: tiers {tiers}; model {loaded.router.version} from "
        f"{loaded.model_source}; backends {', '.join(sorted(config.backends))}; "
        f"{worker_count(config)} worker(s) on {config.server.host}:{config.server.port}"
        f" as replica {loaded.replica_id} ({loaded.replica_id_from})"
        f"; {_security(config)}; store {_describe_store(loaded.store)}"
    )
    return 0


def _security(config: Config) -> str:
    """Describe the transport, the API keys and the tenant limits of a configuration."""
    tls = config.server.tls
    transport = "plaintext" if tls is None else "mutual TLS" if tls.client_ca else "TLS"
    keys = f"{len(config.auth.keys)} API key(s)" if config.auth.enabled else "no API keys"
    limited = sum(1 for tenant in config.tenants.values() if tenant.limits.any)
    where = "in Redis" if config.limits.redis_url else "per worker"
    limits = f"limits for {limited} tenant(s), counted {where}" if limited else "no limits"
    return f"{transport}, {keys}, {limits}"


def _describe_store(target: str | None) -> str:
    """Return where the store is, without a password (the store is not opened here)."""
    if target is None:
        return "off"
    if is_url(target):
        from router.store.postgres import redact

        return f"postgres {redact(target)}"
    return f"sqlite {target}"


def _run_default(args: argparse.Namespace) -> int:
    print(DEFAULT_CONFIG_YAML, end="")
    return 0


def add_keys_parser(subparsers: Subparsers) -> None:
    """Register ``modelrouter keys new``."""
    parser = subparsers.add_parser("keys", help="make API keys")
    commands = parser.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    new = commands.add_parser(
        "new",
        help="print a new API key and the line that lists its digest under auth.keys",
        description="Print a new random API key (give it to the caller; it is not stored "
        "anywhere) and the auth.keys entry that admits it: its SHA-256 digest, tenant and "
        "methods. The configuration holds only the digest.",
    )
    new.add_argument("--tenant", required=True, help="the tenant the key's calls belong to")
    new.add_argument(
        "--methods",
        default=",".join(RPC_METHODS),
        help=f"comma-separated methods the key may call (default: {','.join(RPC_METHODS)})",
    )
    new.set_defaults(handler=_run_keys_new)


def _run_keys_new(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from router.auth import new_key

    key, digest = new_key()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        entry = ApiKeyConfig.model_validate(
            {"sha256": digest, "tenant": args.tenant, "methods": methods}
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"--{e['loc'][0]}: {e['msg']}" if e["loc"] else e["msg"] for e in exc.errors()
        )
        print(
            f"modelrouter keys new: {problems} (methods: {', '.join(RPC_METHODS)})", file=sys.stderr
        )
        return 2
    flow = yaml.safe_dump(
        entry.model_dump(), default_flow_style=True, sort_keys=False, width=1_000_000
    )
    line = f"- {flow.strip()}"
    print(f"# the API key of tenant {entry.tenant} (shown once; keep it in the caller's secrets):")
    print(key)
    print("# add under auth.keys in the configuration (only the digest is stored):")
    print(line)
    return 0
