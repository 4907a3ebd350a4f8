"""The store under a real ``modelrouter serve``: drained on SIGTERM, counted on SIGKILL,
kept across reloads, shared by workers."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from router._proto.modelrouter.v1 import router_pb2 as pb
from router.config import REPLICA_ID_ENV
from router.store import StatsQuery, open_store
from router.store.stats import controller_state_key
from tests.integration.server.support import (
    ServeProcess,
    router_stub,
    serve_args,
    slow_demo,
    write_config,
)
from tests.integration.server.test_controller import QUERIES
from tests.integration.server.test_serve import OWN_CONNECTION, route, stub_for
from tests.integration.test_cli import modelrouter

Start = Callable[..., ServeProcess]
START_S = 120.0
# Records sit in the queue until a batch is full or the drain: nothing is written by time.
HOLD = {"flush_interval_s": 3600.0}


def store_section(target: str, **settings: Any) -> dict[str, Any]:
    key = "url" if target.startswith("postgresql://") else "path"
    return {key: target, **settings}


def stored_requests(target: str) -> int:
    store = open_store(target, migrate=False)
    try:
        return store.stats(StatsQuery()).total.requests
    finally:
        store.close()


# The replica id the servers here run as ($MODELROUTER_REPLICA_ID; the host name otherwise).
REPLICA = "replica-1"


def serve(start: Start, config: Path, workers: int = 1) -> ServeProcess:
    return start(*serve_args(config, workers), env={REPLICA_ID_ENV: REPLICA})


def port_of(server: ServeProcess, workers: int = 1) -> int:
    """Return the port once the workers listen (start-up is slow on a loaded machine)."""
    return int(server.wait_for("listening", count=workers, timeout=START_S)[0]["port"])


def get_stats(port: int) -> pb.GetStatsResponse:
    with stub_for(port) as stub:
        stats: pb.GetStatsResponse = stub.GetStats(pb.GetStatsRequest(), timeout=30)
        return stats


def stats_when(port: int, done: Callable[[pb.GetStatsResponse], bool]) -> pb.GetStatsResponse:
    deadline = time.monotonic() + 60
    while not done(stats := get_stats(port)):
        assert time.monotonic() < deadline, f"stats never settled: {stats}"
        time.sleep(0.05)
    return stats


def test_sigterm_writes_every_queued_record_of_every_worker(
    serve_process: Start, tmp_path: Path, model_path: Path, store_target: str
) -> None:
    config = write_config(
        tmp_path / "c.yaml", model_path, store=store_section(store_target, **HOLD)
    )
    server = serve(serve_process, config, workers=2)
    port = port_of(server, workers=2)
    for i in range(40):
        route(port, f"query number {i}")  # a connection each: both workers serve
    assert {line["worker"] for line in server.wait_for("rpc", count=40, timeout=START_S)} == {0, 1}
    assert stored_requests(store_target) == 0  # all of them still queued
    server.signal(signal.SIGTERM)
    assert server.wait(START_S) == 0
    assert stored_requests(store_target) == 40
    stopped = server.events("stopped")
    # Each worker also wrote one record of its settings (feedback.satisfied_at).
    assert sum(line["store_written"] for line in stopped) == 40 + 2
    assert all(line["store_dropped"] == 0 for line in stopped)


def test_sigkill_loses_only_what_sat_in_the_queue(
    serve_process: Start, tmp_path: Path, model_path: Path, store_target: str
) -> None:
    config = write_config(
        tmp_path / "c.yaml",
        model_path,
        store=store_section(store_target, batch_size=10, **HOLD),
    )
    server = serve(serve_process, config)
    port = port_of(server)
    for i in range(25):
        route(port, f"query number {i}")
    # The settings record and 25 requests: two full batches are written at once, and six
    # requests wait for a third. (GetStats reads the writer's counters after the store: a
    # batch committed in between shows in the counters first.)
    stats = stats_when(port, lambda s: s.store.written == 20 and s.total.requests == 19)
    assert stats.store.queued == 6
    server.proc.kill()
    server.wait(START_S)
    lost = 25 - stored_requests(store_target)
    assert lost == stats.store.queued == 6
    # The store survives the kill: a new server opens it and records again.
    again = serve(serve_process, config)
    route(port_of(again), "after the crash")
    again.signal(signal.SIGTERM)
    assert again.wait(START_S) == 0
    assert stored_requests(store_target) == 20


def test_a_reload_never_loses_records(
    serve_process: Start, tmp_path: Path, model_path: Path
) -> None:
    first, second = tmp_path / "first.db", tmp_path / "second.db"
    config = tmp_path / "c.yaml"
    sections: dict[str, Any] = {"store": {"path": str(first), **HOLD}, "backends": slow_demo(20)}
    write_config(config, model_path, **sections)
    server = serve(serve_process, config)
    port = port_of(server)
    for i in range(10):
        route(port, f"before {i}")
    # A reload keeping the store keeps its writer and its queue.
    server.signal(signal.SIGHUP)
    server.wait_for("reloaded", timeout=START_S)
    for i in range(5):
        route(port, f"between {i}")
    assert stored_requests(str(first)) == 0
    # A stream in flight when the store changes is recorded where it started.
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = router_stub(channel).Complete(
            pb.CompleteRequest(route=pb.RouteRequest(prompt="a long answer"))
        )
        assert next(stream).WhichOneof("event") == "decision"
        rest: list[str | None] = []
        reader = threading.Thread(
            target=lambda: rest.extend(event.WhichOneof("event") for event in stream)
        )
        reader.start()
        sections["store"]["path"] = str(second)
        write_config(config, model_path, **sections)
        server.signal(signal.SIGHUP)
        server.wait_for("reloaded", count=2, timeout=START_S)
        for i in range(7):
            route(port, f"after {i}")
        reader.join(timeout=120)
        assert rest[-1] == "summary"
    # The old store's writer drains once its last stream ends: 15 Routes and the Complete.
    deadline = time.monotonic() + 60
    while stored_requests(str(first)) < 16:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    server.signal(signal.SIGTERM)
    assert server.wait(START_S) == 0
    assert (stored_requests(str(first)), stored_requests(str(second))) == (16, 7)


def test_serve_stops_on_a_store_it_cannot_open(
    serve_process: Start, tmp_path: Path, model_path: Path
) -> None:
    (tmp_path / "file").write_text("")
    config = write_config(
        tmp_path / "c.yaml", model_path, store={"path": str(tmp_path / "file" / "s.db")}
    )
    server = serve(serve_process, config)
    assert server.wait(START_S) == 1
    assert "modelrouter: store: " in "".join(server.raw)


@pytest.mark.parametrize("value", ["null", "default"])
def test_the_default_store_is_in_the_state_directory(
    serve_process: Start, tmp_path: Path, model_path: Path, value: str
) -> None:
    state = tmp_path / "state"
    sections = {"store": None} if value == "null" else {}
    config = write_config(tmp_path / "c.yaml", model_path, **sections)
    server = serve_process(*serve_args(config), env={"XDG_STATE_HOME": str(state)})
    route(port_of(server))
    server.signal(signal.SIGTERM)
    assert server.wait(START_S) == 0
    path = state / "modelrouter" / "modelrouter.db"
    if value == "null":
        assert not path.exists()
    else:
        assert stored_requests(str(path)) == 1
        assert path.stat().st_mode & 0o077 == 0  # owner only: it may hold prompts


def get_controllers(port: int) -> list[pb.TenantController]:
    with stub_for(port) as stub:
        response = stub.GetConfig(pb.GetConfigRequest(), timeout=30)
    return list(response.controllers)


def test_a_tenant_controller_resumes_after_a_restart_and_a_reload(
    serve_process: Start, tmp_path: Path, model_path: Path, store_target: str
) -> None:
    path = tmp_path / "c.yaml"
    sections: dict[str, Any] = {
        "store": store_section(store_target),
        # A target of 0 pushes the offset up at every update.
        "tenants": {"default": {"target": {"strong_share": 0.0}}},
        "controller": {"window_requests": 100, "min_requests": 20, "update_every": 5},
    }
    config = write_config(path, model_path, **sections)
    server = serve(serve_process, config)
    port = port_of(server)
    for query in QUERIES[:60]:
        route(port, query)
    (before,) = get_controllers(port)
    assert before.offset > 0.0 and before.updates > 0 and before.window_requests == 60
    server.signal(signal.SIGTERM)
    assert server.wait(START_S) == 0
    stored = open_store(store_target, migrate=False)
    try:
        state = stored.state(controller_state_key("default", None, REPLICA))
    finally:
        stored.close()
    assert state["offset"] == before.offset and len(state["window"]) == 60

    def same(after: pb.TenantController) -> None:
        assert (after.offset, after.updates, after.window_requests) == (
            before.offset,
            before.updates,
            before.window_requests,
        )
        assert list(after.thresholds) == list(before.thresholds)
        assert after.realised == before.realised

    again = serve(serve_process, config)
    port = port_of(again)
    again.wait_for("controller states restored", timeout=START_S)
    same(*get_controllers(port))
    # A reload that drops the target, then one that sets it again: the controller comes
    # back cold and resumes from the store.
    write_config(path, model_path, **{**sections, "tenants": {}})
    again.signal(signal.SIGHUP)
    again.wait_for("reloaded", timeout=START_S)
    assert get_controllers(port) == []
    write_config(path, model_path, **sections)
    again.signal(signal.SIGHUP)
    again.wait_for("controller states restored", count=2, timeout=START_S)
    same(*get_controllers(port))
    # It carries on from there: the next update moves from the restored offset.
    for query in QUERIES[60:65]:
        route(port, query)
    assert get_controllers(port)[0].updates == before.updates + 1


def stored_windows(path: Path) -> dict[str, int]:
    """Return the controllers' state keys in a SQLite store, with their windows' sizes."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT key, value FROM state WHERE key LIKE 'controller%'").fetchall()
    return {key: len(json.loads(value)["window"]) for key, value in rows}


def test_each_worker_resumes_its_own_controller_after_a_restart(
    serve_process: Start, tmp_path: Path, model_path: Path
) -> None:
    path = tmp_path / "s.db"
    config = write_config(
        tmp_path / "c.yaml",
        model_path,
        store={"path": str(path)},
        tenants={"default": {"target": {"strong_share": 0.0}}},
        controller={"window_requests": 100, "min_requests": 5, "update_every": 5},
    )
    server = serve(serve_process, config, workers=2)
    port = port_of(server, workers=2)
    for query in QUERIES[:30]:
        route(port, query)  # a connection each: both workers serve
    served = Counter(line["worker"] for line in server.wait_for("rpc", count=30, timeout=START_S))
    assert set(served) == {0, 1}
    server.signal(signal.SIGTERM)
    assert server.wait(START_S) == 0
    # Each worker's window under its own key, none under the shared one.
    first = stored_windows(path)
    assert first == {
        "controller@replica-1/0:default": served[0],
        "controller@replica-1/1:default": served[1],
    }

    again = serve(serve_process, config, workers=2)
    port = port_of(again, workers=2)
    restored = again.wait_for("controller states restored", count=2, timeout=START_S)
    assert sorted((line["worker"], line["keys"]["default"]) for line in restored) == [
        (0, "controller@replica-1/0:default"),
        (1, "controller@replica-1/1:default"),
    ]
    for query in QUERIES[30:40]:
        route(port, query)
    more = Counter(line["worker"] for line in again.wait_for("rpc", count=10, timeout=START_S))
    again.signal(signal.SIGTERM)
    assert again.wait(START_S) == 0
    # Each carried on from its own window (a worker that served nothing kept its state).
    assert stored_windows(path) == {
        f"controller@replica-1/{w}:default": served[w] + more[w] for w in (0, 1)
    }
    read = modelrouter("stats", "--store", path, "--json")
    assert read.returncode == 0, read.stderr
    controllers = json.loads(read.stdout)["controllers"]
    assert [
        (c["tenant"], c["replica"], c["worker"], c["window_requests"]) for c in controllers
    ] == [("default", REPLICA, w, served[w] + more[w]) for w in (0, 1)]


def of_request(request_id: str) -> Callable[[dict[str, Any]], bool]:
    """Return a ``wait_for`` filter for the log lines of one request."""
    return lambda line: bool(line["request_id"] == request_id)


def test_two_workers_report_spend_shares_that_add_up_to_one(
    serve_process: Start, tmp_path: Path, model_path: Path
) -> None:
    # A spend target, two workers, and 3:1 traffic over a connection to each, paced (40
    # Routes a second) so that a window of 200 spans seconds; long enough for each worker
    # to read the other's saved state after both saved a full one (every 10 s).
    config = write_config(
        tmp_path / "c.yaml",
        model_path,
        store={"path": str(tmp_path / "s.db"), "flush_interval_s": 0.1},
        tenants={"default": {"target": {"usd_per_hour": 1.0}}},
        controller={"window_requests": 200, "window_s": 600},
    )
    server = serve(serve_process, config, workers=2)
    port = port_of(server, workers=2)
    channels: dict[int, grpc.Channel] = {}
    try:
        for attempt in range(64):  # a connection lands on either worker: find one of each
            channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION)
            rid = f"probe-{attempt}"
            router_stub(channel).Route(pb.RouteRequest(prompt="hi", request_id=rid), timeout=10)
            (line,) = server.wait_for("rpc", timeout=START_S, where=of_request(rid))
            if line["worker"] in channels:
                channel.close()
            else:
                channels[line["worker"]] = channel
            if len(channels) == 2:
                break
        assert sorted(channels) == [0, 1]
        heavy, light = (router_stub(channels[w]) for w in (0, 1))
        started = time.monotonic()
        while time.monotonic() - started < 32.0:
            tick = time.monotonic()
            for stub in (heavy, heavy, heavy, light):
                stub.Route(pb.RouteRequest(prompt="what is the capital of France?"), timeout=10)
            time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
        reported = {}
        for worker, stub in ((0, heavy), (1, light)):
            (controller,) = stub.GetConfig(pb.GetConfigRequest(), timeout=30).controllers
            assert controller.HasField("share") and controller.HasField("aim")
            reported[worker] = controller
    finally:
        for channel in channels.values():
            channel.close()
    shares = [reported[w].share for w in (0, 1)]
    assert all(0.0 < share <= 1.0 for share in shares), shares
    assert sum(shares) == pytest.approx(1.0, abs=0.05), shares
    assert shares[0] == pytest.approx(0.75, abs=0.05), shares
    assert [reported[w].aim for w in (0, 1)] == pytest.approx(shares)  # 1 USD/hour times each
    server.signal(signal.SIGTERM)
    assert server.wait(START_S) == 0
