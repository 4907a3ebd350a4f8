"""The ``modelrouter stats`` subcommand: satisfaction per tier, from a store or a server."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from router.config import DEFAULT_TENANT
from router.store.base import StoreError
from router.store.since import SINCE_HELP
from router.store.since import parse_since as parse_since  # the commands' one parser
from router.store.stats import (
    CONTROLLER_STATE,
    DEFAULT_SATISFIED_AT,
    SATISFIED_AT_STATE,
    WORKER_CONTROLLER_STATE,
    Stats,
    StatsQuery,
    controller_of_key,
    controller_of_state,
    stats_table,
)

Subparsers = Any  # argparse's _SubParsersAction is private

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
# The environment variable an API key is read from (a key on the command line would show in
# ps and the shell's history).
API_KEY_ENV = "MODELROUTER_API_KEY"
RPC_TIMEOUT_S = 60.0


def add_stats_parser(subparsers: Subparsers) -> None:
    """Register ``modelrouter stats``."""
    parser = subparsers.add_parser(
        "stats",
        help="satisfaction, escalation, errors and cost per tier and model",
        description="Print per tier and model: requests and their share, escalation and "
        "gate-rejection rates, error rate, p50/p95 time to first token, rated requests, mean "
        "rating, satisfaction (share rated at or above feedback.satisfied_at) and the cost "
        "with its saving against sending everything to the strongest tier. Reads the store "
        "directly (--store) or asks a running server (--target, the GetStats RPC).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--store", metavar="PATH_OR_URL", help="a SQLite store file or a postgresql:// URL"
    )
    source.add_argument("--target", metavar="HOST:PORT", help="a running modelrouter server")
    parser.add_argument(
        "--since",
        type=parse_since,
        help=f"count requests since then: {SINCE_HELP}",
    )
    parser.add_argument("--tenant", help="count only this tenant's requests")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    tls = parser.add_argument_group(
        "a server with TLS or API keys (--target)",
        f"An API key (auth.enabled) is read from ${API_KEY_ENV}, never from the command line.",
    )
    tls.add_argument("--ca", metavar="FILE", help="CA certificates (PEM): connect with TLS")
    tls.add_argument("--cert", metavar="FILE", help="client certificate (PEM), for mutual TLS")
    tls.add_argument("--key", metavar="FILE", help="the client certificate's private key (PEM)")
    parser.set_defaults(handler=_run_stats)


def _run_stats(args: argparse.Namespace) -> int:
    if (args.cert is None) != (args.key is None):
        print("modelrouter stats: --cert and --key go together", file=sys.stderr)
        return EXIT_USAGE
    try:
        stats, note = (
            _from_store(args.store, args.since, args.tenant)
            if args.store is not None
            else _from_server(args.target, args.since, args.tenant, _Credentials.of(args))
        )
    except StoreError as exc:
        print(f"modelrouter: {exc}", file=sys.stderr)
        return EXIT_USAGE if "pip install" in str(exc) else EXIT_ERROR
    except _ServerError as exc:
        print(f"modelrouter: {args.target}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(stats.as_json(), indent=2))
    else:
        print(stats_table(stats))
        print(note)
    return EXIT_OK


def _from_store(target: str, since: float | None, tenant: str | None) -> tuple[Stats, str]:
    from router.store import open_store

    store = open_store(target, migrate=False)
    try:
        noted = store.state(SATISFIED_AT_STATE)
        satisfied_at = DEFAULT_SATISFIED_AT if noted is None else float(noted)
        stats = store.stats(StatsQuery(since=since, tenant=tenant, satisfied_at=satisfied_at))
        states = store.states(CONTROLLER_STATE) | store.states(WORKER_CONTROLLER_STATE)
    finally:
        store.close()
    # The controllers as last saved (a running server saves them every few seconds), one
    # per process (each worker of each replica) that saved its own.
    wanted = None if tenant is None else tenant or DEFAULT_TENANT
    owners = {key: controller_of_key(key) for key in states}
    controllers = (
        controller_of_state(owner.tenant, states[key], owner.worker, owner.replica)
        for key, owner in owners.items()
        if owner is not None and (wanted is None or owner.tenant == wanted)
    )
    saved = sorted(
        (c for c in controllers if c),
        key=lambda c: (
            c.tenant,
            c.replica is not None,
            c.replica or "",
            -1 if c.worker is None else c.worker,
        ),
    )
    stats = dataclasses.replace(stats, controllers=tuple(saved))
    return stats, f"store: {store.kind} {store.location}"


class _ServerError(Exception):
    """The server could not be asked, or refused."""


@dataclasses.dataclass(frozen=True)
class _Credentials:
    """How to reach a server: TLS files (PEM, read) and an API key, each optional."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    api_key: str = ""

    @property
    def tls(self) -> bool:
        return self.ca is not None or self.cert is not None

    @classmethod
    def of(cls, args: argparse.Namespace) -> _Credentials:
        """Return the credentials the arguments and $MODELROUTER_API_KEY give."""

        def read(name: str) -> bytes | None:
            path = getattr(args, name)
            if path is None:
                return None
            try:
                return Path(path).expanduser().read_bytes()
            except OSError as exc:
                raise _ServerError(f"--{name} {path}: {exc.strerror}") from None

        return cls(read("ca"), read("cert"), read("key"), os.environ.get(API_KEY_ENV, ""))


def _from_server(
    target: str, since: float | None, tenant: str | None, credentials: _Credentials
) -> tuple[Stats, str]:
    import grpc

    from router._proto.modelrouter.v1 import router_pb2 as pb
    from router._proto.modelrouter.v1 import router_pb2_grpc
    from router.server.convert import stats_of

    request = pb.GetStatsRequest(since_unix_seconds=since or 0.0)
    if tenant is not None:
        request.tenant = tenant
    metadata = (("authorization", f"Bearer {credentials.api_key}"),) if credentials.api_key else ()
    channel = (
        grpc.secure_channel(
            target,
            grpc.ssl_channel_credentials(credentials.ca, credentials.key, credentials.cert),
        )
        if credentials.tls
        else grpc.insecure_channel(target)
    )
    with channel:
        stub = router_pb2_grpc.ModelRouterStub(channel)  # type: ignore[no-untyped-call]
        try:
            response = stub.GetStats(request, timeout=RPC_TIMEOUT_S, metadata=metadata)
        except grpc.RpcError as exc:
            raise _ServerError(f"{exc.code().name}: {exc.details()}") from None
    report = stats_of(response)
    store = report.store
    return report.stats, (
        f"store: {store.kind} {store.location}; the worker that answered has "
        f"{store.queued} records queued, {store.written} written, {store.dropped} dropped"
    )
