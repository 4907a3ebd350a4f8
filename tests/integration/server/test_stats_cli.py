"""``modelrouter stats``: the same numbers from the store and from a running server."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from router._proto.modelrouter.v1 import router_pb2 as pb
from router.auth import digest
from router.config import REPLICA_ID_ENV, Config
from router.server import RunningServer
from router.store.cli import API_KEY_ENV, parse_since
from tests.certs import CertificateAuthority
from tests.integration.server.support import ServeProcess, serve_args, write_config
from tests.integration.server.test_serve import stub_for
from tests.integration.server.test_serve_store import (
    START_S,
    port_of,
    stats_when,
    store_section,
)
from tests.integration.store.test_store import JSON_ROW_KEYS
from tests.integration.test_cli import modelrouter

Start = Callable[..., ServeProcess]


def test_stats_from_the_store_and_from_the_server_agree(
    serve_process: Start, tmp_path: Path, model_path: Path, store_target: str
) -> None:
    config = write_config(
        tmp_path / "c.yaml",
        model_path,
        store=store_section(store_target, flush_interval_s=0.05),
        feedback={"satisfied_at": 0.8},
        tenants={"acme": {"target": {"strong_share": 0.5}}},
        controller={"window_requests": 10, "min_requests": 2, "update_every": 1},
    )
    server = serve_process(*serve_args(config), env={REPLICA_ID_ENV: "replica-1"})
    port = port_of(server)
    with stub_for(port) as stub:
        for i, tenant in enumerate(("acme", "acme", "globex")):
            rid = f"q-{i}"
            stub.Route(pb.RouteRequest(prompt=f"question {i}", request_id=rid, tenant=tenant))
            stub.Feedback(pb.FeedbackRequest(request_id=rid, rating=0.25 * (i + 2)))
        events = list(stub.Complete(pb.CompleteRequest(route=pb.RouteRequest(prompt="hi"))))
        assert events[-1].WhichOneof("event") == "summary"
        stub.Feedback(pb.FeedbackRequest(request_id="nobody", rating=1.0))
    stats_when(port, lambda s: s.total.requests == 4 and s.unmatched_feedback == 1)

    asked = modelrouter("stats", "--target", f"127.0.0.1:{port}", "--json")
    assert asked.returncode == 0, asked.stderr
    by_tenant = modelrouter("stats", "--target", f"127.0.0.1:{port}", "--tenant", "acme", "--json")
    other = modelrouter("stats", "--target", f"127.0.0.1:{port}", "--tenant", "globex", "--json")
    table = modelrouter("stats", "--target", f"127.0.0.1:{port}")
    server.signal(signal.SIGTERM)
    assert server.wait(START_S) == 0
    read = modelrouter("stats", "--store", store_target, "--json")
    assert read.returncode == 0, read.stderr

    from_server, from_store = json.loads(asked.stdout), json.loads(read.stdout)
    # The controllers too: live from the server, as saved on SIGTERM in the store (which
    # says by which replica).
    assert [c.pop("replica") for c in from_store["controllers"]] == ["replica-1"]
    assert from_server == from_store
    assert set(from_store) == {"tiers", "total", "controllers"}
    (acme,) = from_store["controllers"]
    assert (acme["tenant"], acme["target_kind"], acme["target"]) == ("acme", "strong_share", 0.5)
    assert acme["window_requests"] == 2 and acme["updates"] == 1
    assert acme["realised"] in (0.0, 0.5, 1.0) and len(acme["thresholds"]) == 2
    assert json.loads(by_tenant.stdout)["controllers"] == [acme]
    assert json.loads(other.stdout)["controllers"] == []
    assert all(set(row) >= JSON_ROW_KEYS for row in from_store["tiers"])
    total = from_store["total"]
    assert (total["requests"], total["rated"], total["unmatched_feedback"]) == (4, 3, 1)
    # Ratings 0.5, 0.75 and 1.0 against the server's satisfied_at of 0.8.
    assert total["satisfied_at"] == 0.8 and total["satisfaction"] == pytest.approx(1 / 3)
    assert json.loads(by_tenant.stdout)["total"]["requests"] == 2
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["tier", "model", "requests", "share"]
    assert any(line.startswith("total") for line in lines)
    assert "satisfied: rated >= 0.8" in table.stdout
    assert "feedback for request ids not in the store: 1" in table.stdout
    assert "controller acme: target strong_share 0.5, realised " in table.stdout

    since = modelrouter("stats", "--store", store_target, "--since", "2099-01-01", "--json")
    assert json.loads(since.stdout)["total"]["requests"] == 0


def test_stats_errors_say_what_is_wrong(tmp_path: Path) -> None:
    missing = modelrouter("stats", "--store", tmp_path / "missing.db")
    assert missing.returncode == 1 and "no store there" in missing.stderr
    bad_since = modelrouter("stats", "--store", tmp_path / "x.db", "--since", "yesterday")
    assert bad_since.returncode == 2 and "give a duration back" in bad_since.stderr
    neither = modelrouter("stats")
    assert neither.returncode == 2 and "--store" in neither.stderr
    down = modelrouter("stats", "--target", "127.0.0.1:1")
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr


def test_since_takes_durations_and_dates() -> None:
    now = 1_800_000_000.0
    assert parse_since("90s", now) == now - 90
    assert parse_since("24h", now) == now - 86400
    assert parse_since("2w", now) == now - 14 * 86400
    assert parse_since("2027-01-15T08:00:00+00:00") == now
    with pytest.raises(argparse.ArgumentTypeError):
        parse_since("soon")


async def test_stats_reach_a_server_with_mutual_tls_and_api_keys(
    tmp_path: Path,
    start_server: Callable[..., Any],
    make_config: Callable[..., Config],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ca = CertificateAuthority("stats test CA")
    cert, key = ca.issue("modelrouter").write(tmp_path, "server")
    client_cert, client_key = ca.issue("operator", client=True).write(tmp_path, "client")
    api_key = "mrk_stats-operator"
    config = make_config(
        server={"tls": {"cert": str(cert), "key": str(key), "client_ca": str(ca.write(tmp_path))}},
        auth={
            "enabled": True,
            "keys": [{"sha256": digest(api_key), "tenant": "ops", "methods": ["GetStats"]}],
        },
    )
    server: RunningServer = await start_server(config)
    target = f"127.0.0.1:{server.port}"
    tls = ("--ca", tmp_path / "ca.crt", "--cert", client_cert, "--key", client_key)

    def stats(*args: str | Path) -> subprocess.CompletedProcess[str]:
        # In a thread: the server answers on this test's event loop.
        return modelrouter("stats", "--target", target, "--json", *args)

    monkeypatch.delenv(API_KEY_ENV, raising=False)
    no_key = await asyncio.to_thread(stats, *tls)
    assert no_key.returncode == 1 and "UNAUTHENTICATED" in no_key.stderr
    monkeypatch.setenv(API_KEY_ENV, api_key)
    plaintext = await asyncio.to_thread(stats)
    assert plaintext.returncode == 1 and "UNAVAILABLE" in plaintext.stderr
    answered = await asyncio.to_thread(stats, *tls)
    assert answered.returncode == 0, answered.stderr
    assert json.loads(answered.stdout)["total"]["requests"] == 0
    other = await asyncio.to_thread(stats, *tls, "--tenant", "acme")
    assert other.returncode == 1 and "PERMISSION_DENIED" in other.stderr
    half = await asyncio.to_thread(stats, "--ca", tmp_path / "ca.crt", "--cert", client_cert)
    assert half.returncode == 2 and "--cert and --key go together" in half.stderr
