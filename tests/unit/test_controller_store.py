"""The controllers' states in a real SQLite store: saved while they change, restored cold."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import structlog

from router.config import Config
from router.controller import STATE_KEY, Controllers, TenantController
from router.controller_store import SAVE_EVERY_S, ControllerStore, latest_request
from router.store import StateRecord, StoreWriter, open_store
from router.store.stats import (
    controller_of_key,
    controller_of_state,
    controller_state_key,
)
from tests.unit.test_controller import PRICING, Clock, serve, targets_config


def config(**targets: dict[str, float]) -> Config:
    return targets_config(
        {"window_requests": 200, "min_requests": 20, "update_every": 5}, **targets
    )


def saved(path: Path, tenant: str, worker: int | None = None) -> Any:
    store = open_store(path, migrate=False)
    try:
        return store.state(controller_state_key(tenant, worker))
    finally:
        store.close()


def saved_keys(path: Path) -> list[str]:
    store = open_store(path, migrate=False)
    try:
        return sorted(store.states("controller"))
    finally:
        store.close()


def feed(controller: TenantController | None, n: int, seed: int = 1) -> TenantController:
    assert controller is not None
    rng = random.Random(seed)
    for _ in range(n):
        serve(controller, rng.random())
    return controller


async def test_states_are_saved_at_most_every_interval_and_when_closing(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    clock = Clock()
    controllers = Controllers(clock)
    cold = controllers.configure(config(acme={"strong_share": 0.0}), PRICING)
    assert cold == ["acme"]
    saver = ControllerStore(controllers, clock, cold)
    writer = StoreWriter(open_store(path))
    acme = feed(controllers.get("acme"), 50)
    saver.recorded(acme, writer)  # the first save
    feed(acme, 50, seed=2)
    clock.now += SAVE_EVERY_S / 2
    saver.recorded(acme, writer)  # too soon: not saved
    await writer.aclose()
    first = saved(path, "acme")
    assert len(first["window"]) == 50

    writer = StoreWriter(open_store(path))
    clock.now += SAVE_EVERY_S
    saver.recorded(acme, writer)
    saver.save_all(writer)  # unchanged since: nothing more
    await writer.aclose()
    second = saved(path, "acme")
    assert len(second["window"]) == 100 and second["offset"] == acme.offset > 0.0
    assert second["updates"] == acme.updates
    assert second["realised"] == acme.snapshot().realised

    writer = StoreWriter(open_store(path))
    feed(acme, 10, seed=3)
    saver.save_all(writer)  # changed: saved once more, whatever the interval
    await writer.aclose()
    assert len(saved(path, "acme")["window"]) == 110


async def test_cold_controllers_resume_from_the_store_warm_ones_keep_their_own(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    clock = Clock()
    before = Controllers(clock)
    before.configure(config(acme={"strong_share": 0.0}, globex={"strong_share": 1.0}), PRICING)
    writer = StoreWriter(open_store(path))
    saver = ControllerStore(before, clock)
    feed(before.get("acme"), 60)
    feed(before.get("globex"), 60)
    saver.save_all(writer)
    await writer.aclose()

    # A restart whose configuration holds acme only; a reload then adds globex.
    after = Controllers(clock)
    saver = ControllerStore(
        after, clock, after.configure(config(acme={"strong_share": 0.0}), PRICING)
    )
    writer = StoreWriter(open_store(path))
    assert await saver.restore(writer) == ["acme"]
    acme = after.get("acme")
    assert acme is not None and acme.offset == before.get("acme").offset  # type: ignore[union-attr]
    feed(acme, 30, seed=5)  # the process moves on: its own state is newer than the store's
    moved = acme.offset
    cold = after.configure(
        config(acme={"strong_share": 0.0}, globex={"strong_share": 1.0}), PRICING
    )
    assert cold == ["globex"]
    saver.configured(cold)
    assert await saver.restore(writer) == ["globex"]
    globex = after.get("globex")
    assert globex is not None and globex.offset == before.get("globex").offset < 0.0  # type: ignore[union-attr]
    assert after.get("acme").offset == moved  # type: ignore[union-attr]
    assert await saver.restore(writer) == []  # nothing cold any more
    await writer.aclose()


async def test_an_unreadable_store_starts_cold(tmp_path: Path) -> None:
    clock = Clock()
    controllers = Controllers(clock)
    saver = ControllerStore(
        controllers, clock, controllers.configure(config(acme={"strong_share": 0.5}), PRICING)
    )
    store = open_store(tmp_path / "store.db")
    writer = StoreWriter(store)
    store.close()  # every read fails from here on
    assert await saver.restore(writer) == []
    assert controllers.get("acme").offset == 0.0  # type: ignore[union-attr]


@pytest.mark.parametrize("tenant", ["acme", "default", "a@1:b", "@0:acme", "x:y", "/1:é", "é"])
@pytest.mark.parametrize("worker", [None, 0, 1, 12])
@pytest.mark.parametrize("replica", [None, "pod-a", "3", "h.example_1"])
def test_a_state_key_names_one_tenant_replica_and_worker(
    tenant: str, worker: int | None, replica: str | None
) -> None:
    key = controller_state_key(tenant, worker, replica)
    assert controller_of_key(key) == (tenant, replica, worker)
    # The shared key is the one every release before per-worker keys wrote.
    assert (key == STATE_KEY + tenant) is (worker is None and replica is None)


def test_state_keys_with_a_replica_keep_the_older_keys_apart() -> None:
    assert controller_state_key("acme", 1, "pod-a") == "controller@pod-a/1:acme"
    assert controller_state_key("acme", None, "pod-a") == "controller@pod-a/:acme"
    # A replica named with digits only is no worker of a release before replica ids.
    assert controller_of_key("controller@3/:acme") == ("acme", "3", None)
    assert controller_of_key("controller@3:acme") == ("acme", None, 3)


@pytest.mark.parametrize(
    "key",
    [
        "controllers",
        "controller",
        "controller@",
        "controller@x:acme",
        "controller@1acme",
        "controller@/1:acme",
        "controller@pod a/1:acme",
        "controller@-pod/1:acme",
        "controller@pod/x:acme",
        "controller@pod/1/2:acme",
        "controller@pod/1acme",
    ],
)
def test_other_keys_are_no_controllers_state(key: str) -> None:
    assert controller_of_key(key) is None


def kept(controller: TenantController | None) -> dict[str, Any]:
    """Return what a restart keeps of a controller's state (saturated is found again)."""
    assert controller is not None
    return {k: v for k, v in controller.state().items() if k != "saturated"}


def one_process(clock: Clock, worker: int | None = None) -> tuple[Controllers, ControllerStore]:
    """Return the controllers of acme in a server of one process (or in worker ``worker``
    of several), with their saver."""
    controllers = Controllers(clock)
    started = controllers.configure(config(acme={"strong_share": 0.0}), PRICING)
    return controllers, ControllerStore(controllers, clock, started, worker=worker)


def two_workers(clock: Clock) -> list[tuple[Controllers, ControllerStore]]:
    """Return the controllers of acme in worker 0 and in worker 1, with their savers."""
    return [one_process(clock, worker) for worker in (0, 1)]


async def test_each_worker_saves_and_resumes_its_own_state(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    clock = Clock()
    writer = StoreWriter(open_store(path))
    before = two_workers(clock)
    for (controllers, saver), (n, seed) in zip(before, [(60, 1), (40, 2)], strict=True):
        feed(controllers.get("acme"), n, seed)
        saver.save_all(writer)
    await writer.aclose()
    assert saved_keys(path) == ["controller@0:acme", "controller@1:acme"]
    assert [len(saved(path, "acme", w)["window"]) for w in (0, 1)] == [60, 40]

    writer = StoreWriter(open_store(path))
    after = two_workers(clock)
    for worker, ((controllers, saver), (old, _)) in enumerate(zip(after, before, strict=True)):
        with structlog.testing.capture_logs() as logs:
            assert await saver.restore(writer) == ["acme"]
        assert kept(controllers.get("acme")) == kept(old.get("acme"))
        (line,) = logs
        assert line["keys"] == {"acme": f"controller@{worker}:acme"}
    await writer.aclose()


async def test_a_process_without_its_own_state_resumes_from_the_most_recent_other(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    clock = Clock()
    # A server of one process saved acme under the shared key; later worker 0 of two saved
    # its own (its last request 100 s newer).
    writer = StoreWriter(open_store(path))
    single, single_saver = one_process(clock)
    shared = feed(single.get("acme"), 50)
    single_saver.save_all(writer)
    clock.now += 100.0
    (zero, zero_saver), _ = two_workers(clock)
    own = feed(zero.get("acme"), 30, seed=7)
    zero_saver.save_all(writer)
    await writer.aclose()
    assert saved_keys(path) == ["controller:acme", "controller@0:acme"]

    # Restarted with two workers: worker 0 takes its own state; worker 1 (none of its own:
    # the worker count grew) the most recent of the others, worker 0's.
    writer = StoreWriter(open_store(path))
    (zero, zero_saver), (one, one_saver) = two_workers(clock)
    assert await zero_saver.restore(writer) == ["acme"]
    with structlog.testing.capture_logs() as logs:
        assert await one_saver.restore(writer) == ["acme"]
    assert logs[0]["keys"] == {"acme": "controller@0:acme"}
    assert kept(zero.get("acme")) == kept(own)
    assert kept(one.get("acme")) == kept(own)
    # It then saves under its own key, and leaves the others as they were.
    clock.now += 100.0
    feed(one.get("acme"), 5, seed=8)
    one_saver.save_all(writer)
    await writer.aclose()
    assert len(saved(path, "acme", 1)["window"]) == 35
    assert saved(path, "acme") == shared.state()
    assert saved(path, "acme", 0) == own.state()

    # A single process has a state of its own (the shared key, older): it takes that.
    writer = StoreWriter(open_store(path))
    single, single_saver = one_process(clock)
    assert await single_saver.restore(writer) == ["acme"]
    assert kept(single.get("acme")) == kept(shared)
    await writer.aclose()


async def test_one_process_after_several_workers_resumes_from_the_newest_worker(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    clock = Clock()
    writer = StoreWriter(open_store(path))
    states = []
    for (controllers, saver), (n, seed) in zip(two_workers(clock), [(40, 1), (20, 2)], strict=True):
        states.append(feed(controllers.get("acme"), n, seed))
        saver.save_all(writer)
        clock.now += 5.0  # worker 1's last request is the newer
    await writer.aclose()

    writer = StoreWriter(open_store(path))
    single, single_saver = one_process(clock)
    with structlog.testing.capture_logs() as logs:
        assert await single_saver.restore(writer) == ["acme"]
    assert logs[0]["keys"] == {"acme": "controller@1:acme"}
    assert kept(single.get("acme")) == kept(states[1])
    await writer.aclose()


@pytest.mark.parametrize(
    "state",
    [None, [], {}, {"columns": ["score"], "window": [[0.5]]}, {"columns": ["time"], "window": "x"}],
)
def test_a_state_without_readable_request_times_is_the_oldest(state: Any) -> None:
    assert latest_request(state) == -math.inf
    assert latest_request({"columns": ["score", "time"], "window": [[0.1, 5.0], [0.2, 7.0]]}) == 7.0


def test_a_workers_saved_controller_says_whose_it_is() -> None:
    clock = Clock()
    controllers = Controllers(clock)
    controllers.configure(config(acme={"strong_share": 0.0}), PRICING)
    state = feed(controllers.get("acme"), 30).state()
    shared, own = controller_of_state("acme", state), controller_of_state("acme", state, 1)
    assert shared is not None and own is not None
    # The shared key's reads as before (as a server reports its live controller).
    assert "worker" not in shared.as_json() and shared.heading() == "controller acme"
    assert own.as_json() == shared.as_json() | {"worker": 1}
    assert own.heading() == "controller acme (worker 1)"
    replica = controller_of_state("acme", state, 1, "pod-a")
    single = controller_of_state("acme", state, None, "pod-a")
    assert replica is not None and single is not None
    assert replica.as_json() == shared.as_json() | {"replica": "pod-a", "worker": 1}
    assert replica.heading() == "controller acme (replica pod-a, worker 1)"
    assert single.as_json() == shared.as_json() | {"replica": "pod-a"}
    assert single.heading() == "controller acme (replica pod-a)"


def replica_process(
    clock: Clock, replica: str, worker: int | None = None
) -> tuple[Controllers, ControllerStore]:
    """Return the controllers of acme in a process of a replica, with their saver."""
    controllers = Controllers(clock)
    started = controllers.configure(config(acme={"strong_share": 0.0}), PRICING)
    return controllers, ControllerStore(controllers, clock, started, worker=worker, replica=replica)


async def test_each_replica_saves_and_resumes_its_own_state(store_target: str) -> None:
    clock = Clock()
    owners = [("pod-a", 0), ("pod-a", 1), ("pod-b", 0), ("pod-b", None)]
    writer = StoreWriter(open_store(store_target))
    before = [replica_process(clock, *owner) for owner in owners]
    for i, (controllers, saver) in enumerate(before):
        feed(controllers.get("acme"), 20 + 10 * i, seed=i)
        saver.save_all(writer)
    await writer.aclose()
    keys = [controller_state_key("acme", worker, replica) for replica, worker in owners]
    assert keys == [
        "controller@pod-a/0:acme",
        "controller@pod-a/1:acme",
        "controller@pod-b/0:acme",
        "controller@pod-b/:acme",
    ]
    store = open_store(store_target)
    try:
        assert sorted(store.states("controller")) == keys
    finally:
        store.close()
    writer = StoreWriter(open_store(store_target))
    for owner, key, (old, _) in zip(owners, keys, before, strict=True):
        controllers, saver = replica_process(clock, *owner)
        with structlog.testing.capture_logs() as logs:
            assert await saver.restore(writer) == ["acme"]
        assert logs[0]["keys"] == {"acme": key}
        assert kept(controllers.get("acme")) == kept(old.get("acme"))
    await writer.aclose()


async def test_a_store_without_replica_ids_still_resumes(tmp_path: Path) -> None:
    # A release before replica ids saved acme as one process, then as two workers (worker
    # 1's last request the newest); globex as one process only.
    path = tmp_path / "store.db"
    clock = Clock()
    writer = StoreWriter(open_store(path))
    both = config(acme={"strong_share": 0.0}, globex={"strong_share": 1.0})
    old = []
    for worker, n in [(None, 50), (0, 40), (1, 30)]:
        controllers = Controllers(clock)
        saver = ControllerStore(
            controllers, clock, controllers.configure(both, PRICING), worker=worker
        )
        feed(controllers.get("acme"), n, seed=n)
        if worker is None:
            feed(controllers.get("globex"), n, seed=n)
        saver.save_all(writer)
        old.append(controllers)
        clock.now += 5.0
    await writer.aclose()
    assert saved_keys(path) == [
        "controller:acme",
        "controller:globex",
        "controller@0:acme",
        "controller@1:acme",
    ]
    writer = StoreWriter(open_store(path))
    for worker in (None, 0):
        controllers = Controllers(clock)
        saver = ControllerStore(
            controllers, clock, controllers.configure(both, PRICING), worker=worker, replica="pod-a"
        )
        with structlog.testing.capture_logs() as logs:
            assert await saver.restore(writer) == ["acme", "globex"]
        assert logs[0]["keys"] == {"acme": "controller@1:acme", "globex": "controller:globex"}
        assert kept(controllers.get("acme")) == kept(old[2].get("acme"))
        assert kept(controllers.get("globex")) == kept(old[0].get("globex"))
    await writer.aclose()


def test_stats_from_a_store_list_every_processs_controller_with_its_owner(tmp_path: Path) -> None:
    from router.store.cli import _from_store

    path = tmp_path / "store.db"
    clock = Clock()
    controllers = Controllers(clock)
    controllers.configure(config(acme={"strong_share": 0.0}), PRICING)
    state = feed(controllers.get("acme"), 30).state()
    owners = [("pod-b", None), ("pod-a", 1), (None, None), ("pod-a", 0), (None, 0)]
    store = open_store(path)
    try:
        store.write(
            [
                StateRecord(controller_state_key("acme", worker, replica), state, clock.now)
                for replica, worker in owners
            ]
        )
    finally:
        store.close()
    stats, _ = _from_store(str(path), None, None)
    assert [c.heading() for c in stats.controllers] == [
        "controller acme",
        "controller acme (worker 0)",
        "controller acme (replica pod-a, worker 0)",
        "controller acme (replica pod-a, worker 1)",
        "controller acme (replica pod-b)",
    ]
    listed = stats.as_json()["controllers"]
    assert [(c.get("replica"), c.get("worker")) for c in listed] == [
        (None, None),
        (None, 0),
        ("pod-a", 0),
        ("pod-a", 1),
        ("pod-b", None),
    ]
