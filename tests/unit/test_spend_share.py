"""A spend target held for the whole service: each worker aims at its share of the requests.

Each worker of ``serve --workers N`` runs its own controllers, and reads the others' saved
states (a real SQLite store here) to count its share of a tenant's recent requests.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog

from router.config import Config
from router.controller import Controllers, TenantController
from router.controller_store import (
    MIN_SHARE,
    SAVE_EVERY_S,
    ControllerStore,
    spend_share,
)
from router.store import Record, Store, StoreWriter, open_store
from tests.unit.test_controller import PRICING, Clock, serve, targets_config

TOKENS = (200, 300)


def cost(tier: int) -> float:
    """Return what one request of TOKENS costs at a tier of PRICING."""
    return TOKENS[0] * PRICING.input_price[tier] + TOKENS[1] * PRICING.output_price[tier]


def config(window_s: float = 3600.0, **targets: dict[str, float]) -> Config:
    return targets_config(
        {"window_requests": 200, "min_requests": 20, "update_every": 5, "window_s": window_s},
        **targets,
    )


class SyncWriter:
    """A store writer that writes each record at once (what StoreWriter does a flush later),
    so that a simulation needs no real time for its states to be readable."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def put(self, record: Record) -> bool:
        self.store.write([record])
        return True


Worker = tuple[Controllers, ControllerStore]


def workers(clock: Clock, cfg: Config, indices: Sequence[int | None]) -> list[Worker]:
    """Return the controllers of each worker (None: a server of one process), with savers."""
    out = []
    for index in indices:
        controllers = Controllers(clock)
        started = controllers.configure(cfg, PRICING)
        out.append((controllers, ControllerStore(controllers, clock, started, worker=index)))
    return out


def acme(worker: Worker, tenant: str = "acme") -> TenantController:
    controller = worker[0].get(tenant)
    assert controller is not None
    return controller


def feed(group: list[Worker], per_second: Sequence[int], seconds: int, clock: Clock) -> None:
    """Serve acme ``per_second[i]`` requests a second in worker i, for ``seconds``."""
    rng = random.Random(1)
    for _ in range(seconds):
        clock.now += 1.0
        for worker, n in zip(group, per_second, strict=True):
            for _ in range(n):
                serve(acme(worker), rng.random(), tokens=TOKENS)


async def save_and_refresh(path: Path, group: list[Worker]) -> list[dict[str, float]]:
    """Save every worker's states, then let each read the others'; return the shares set."""
    writer = StoreWriter(open_store(path))
    for _, saver in group:
        saver.save_all(writer)
    await writer.aclose()
    writer = StoreWriter(open_store(path))
    try:
        return [await saver.refresh_shares(writer) for _, saver in group]
    finally:
        await writer.aclose()


async def test_each_worker_aims_at_the_target_times_its_share_of_the_requests(
    tmp_path: Path,
) -> None:
    clock = Clock()
    group = workers(clock, config(acme={"usd_per_hour": 3.0}), [0, 1, 2])
    # 3:1:2 requests a second. Worker 0's window of 200 requests spans 67 s, less than the
    # others': each is counted over the last 67 s, not over all that its window holds.
    feed(group, [3, 1, 2], 150, clock)
    assert [len(acme(w).request_times()) for w in group] == [200, 150, 200]
    shares = await save_and_refresh(tmp_path / "store.db", group)
    assert [s["acme"] for s in shares] == pytest.approx([3 / 6, 1 / 6, 2 / 6], abs=0.01)
    assert [acme(w).share for w in group] == [s["acme"] for s in shares]
    aims = [acme(w).aim() for w in group]
    assert aims == [3.0 * acme(w).share for w in group]
    assert sum(aims) == pytest.approx(3.0, rel=0.01)
    # The target itself is unchanged: GetConfig reports it as configured.
    assert all(acme(w).target.value == 3.0 for w in group)


async def test_a_worker_that_went_away_is_not_counted(tmp_path: Path) -> None:
    clock = Clock()
    cfg = config(window_s=60.0, acme={"usd_per_hour": 1.0})
    group = workers(clock, cfg, [0, 1, 2])
    feed(group, [0, 0, 2], 30, clock)  # worker 2 served acme, then went away
    path = tmp_path / "store.db"
    await save_and_refresh(path, group[2:])
    clock.now += 61.0  # its newest request is older than window_s
    feed(group[:2], [3, 1], 40, clock)
    shares = await save_and_refresh(path, group[:2])
    assert [s["acme"] for s in shares] == pytest.approx([0.75, 0.25], abs=0.01)
    assert sum(acme(w).aim() for w in group[:2]) == pytest.approx(1.0, rel=0.01)


async def test_a_single_process_and_share_targets_keep_their_target(tmp_path: Path) -> None:
    clock = Clock()
    cfg = config(acme={"usd_per_hour": 2.0}, globex={"strong_share": 0.3})
    group = workers(clock, cfg, [0, 1])
    (single,) = workers(clock, cfg, [None])
    feed([*group, single], [1, 3, 2], 50, clock)
    shares = await save_and_refresh(tmp_path / "store.db", [*group, single])
    assert shares[2] == {} and acme(single).share == 1.0 and acme(single).aim() == 2.0
    # A worker sets its spend shares only; a share target is aimed at as it is.
    assert [sorted(s) for s in shares[:2]] == [["acme"], ["acme"]]
    assert [acme(w).share for w in group] == pytest.approx([0.25, 0.75], abs=0.01)
    assert [acme(w, "globex").aim() for w in [*group, single]] == [0.3] * 3
    assert [acme(w, "globex").share for w in [*group, single]] == [1.0] * 3


def test_a_share_target_moves_as_it_did_whatever_the_share() -> None:
    clock = Clock()
    plain, shared = workers(clock, config(globex={"strong_share": 0.3}), [None, 0])
    acme(shared, "globex").share = 0.25
    rng = random.Random(2)
    for _ in range(300):
        score = rng.random()
        serve(acme(plain, "globex"), score)
        serve(acme(shared, "globex"), score)
    assert acme(plain, "globex").offset == acme(shared, "globex").offset != 0.0


def test_a_spend_target_moves_toward_its_aim() -> None:
    clock = Clock()
    full, quarter = workers(clock, config(acme={"usd_per_hour": 1.0}), [0, 1])
    acme(quarter).share = 0.25
    rng = random.Random(3)
    for _ in range(400):
        clock.now += 1.0
        score = rng.random()
        serve(acme(full), score, tokens=TOKENS)
        serve(acme(quarter), score, tokens=TOKENS)
    assert acme(quarter).offset > acme(full).offset  # a lower aim: higher thresholds


async def test_an_unreadable_store_keeps_the_shares_and_warns_once_in_a_while(
    tmp_path: Path,
) -> None:
    clock = Clock()
    group = workers(clock, config(acme={"usd_per_hour": 1.0}), [0, 1])
    feed(group, [3, 1], 20, clock)
    await save_and_refresh(tmp_path / "store.db", group)
    before = acme(group[0]).share
    assert before == pytest.approx(0.75, abs=0.01)
    store = open_store(tmp_path / "store.db")
    writer = StoreWriter(store)
    store.close()  # every read fails from here on
    saver = group[0][1]
    with structlog.testing.capture_logs() as logs:
        assert await saver.refresh_shares(writer) == {}
        clock.now += SAVE_EVERY_S
        assert await saver.refresh_shares(writer) == {}
    assert [line["event"] for line in logs] == ["controller states unreadable: spend shares kept"]
    assert acme(group[0]).share == before


def counted_store(path: Path, clock: Clock) -> tuple[Store, list[float]]:
    """Return a store, and the times at which its saved states were read (a list it fills)."""
    store = open_store(path)
    reads: list[float] = []
    states = store.states

    def counted(prefix: str) -> dict[str, Any]:
        reads.append(clock.now)
        return states(prefix)

    store.states = counted  # type: ignore[method-assign]
    return store, reads


async def test_a_worker_reads_the_shares_in_the_background_at_most_every_interval(
    tmp_path: Path,
) -> None:
    clock = Clock()
    group = workers(clock, config(acme={"usd_per_hour": 1.0}), [0, 1])
    store, reads = counted_store(tmp_path / "store.db", clock)
    writer: Any = SyncWriter(store)
    feed(group, [1, 3], 20, clock)
    group[1][1].save_all(writer)
    saver = group[0][1]
    saver.recorded(acme(group[0]), writer)  # a request of acme: a read starts
    await saver.settled()
    assert acme(group[0]).share == pytest.approx(0.25, abs=0.01)
    for _ in range(4):
        clock.now += SAVE_EVERY_S / 4
        saver.recorded(acme(group[0]), writer)
        await saver.settled()
    assert reads == [clock.now - SAVE_EVERY_S, clock.now]
    store.close()


async def test_a_process_without_replica_id_or_worker_index_reads_no_shares(tmp_path: Path) -> None:
    clock = Clock()
    (single,) = workers(clock, config(acme={"usd_per_hour": 1.0}), [None])
    store, reads = counted_store(tmp_path / "store.db", clock)
    writer: Any = SyncWriter(store)
    feed([single], [1], 20, clock)
    for _ in range(3):
        clock.now += SAVE_EVERY_S
        single[1].recorded(acme(single), writer)
        await single[1].settled()
    assert reads == [] and acme(single).share == 1.0
    store.close()


def test_shares_are_counted_over_one_span_and_bounded() -> None:
    now = 1_000.0
    own = [now - i for i in range(10)]
    # Alone: the whole service.
    assert spend_share(own, [], now, window_s=60.0, window_requests=100) == 1.0
    assert spend_share([], [], now, window_s=60.0, window_requests=100) == 1.0
    # No request of its own lately: the least share, never 0.
    other = [now - i for i in range(10)]
    assert spend_share([], [other], now, window_s=60.0, window_requests=100) == MIN_SHARE
    # A state saved 4 s ago is counted up to its newest request; one whose traffic stopped
    # more than SAVE_EVERY_S ago, up to SAVE_EVERY_S ago.
    saved = [now - 4.0 - i for i in range(10)]
    assert spend_share(own, [saved], now, window_s=60.0, window_requests=100) == 0.5
    stopped = [now - 20.0 - i for i in range(30)]
    assert spend_share(own, [stopped], now, window_s=30.0, window_requests=100) == 10 / 31
    # A full window spanning less than a second says nothing: the share is kept.
    burst = [now] * 5
    assert spend_share(burst, [other], now, window_s=60.0, window_requests=5) is None


async def simulate(path: Path, shared: bool) -> tuple[float, list[float]]:
    """Serve acme (10 USD/hour) from two workers, 3:1, five requests a second in all, through
    the service's path (save, then read the shares in the background); return the combined
    spend rate over the last 2,000 requests (400 s) and each worker's share."""
    clock = Clock()
    cfg = targets_config({}, acme={"usd_per_hour": 10.0})
    group = workers(clock, cfg, [0, 1])
    writer: Any = SyncWriter(open_store(path))
    rng = random.Random(5)
    spent = []
    for _ in range(8000):
        clock.now += 0.2
        worker = group[0] if rng.random() < 0.75 else group[1]
        controller, saver = acme(worker), worker[1]
        spent.append(cost(serve(controller, rng.random(), tokens=TOKENS)))
        if shared:
            saver.recorded(controller, writer)
            await saver.settled()
    writer.store.close()
    return sum(spent[-2000:]) / (400 / 3600), [acme(w).share for w in group]


async def test_two_workers_with_uneven_traffic_hold_the_spend_target_together(
    tmp_path: Path,
) -> None:
    rate, shares = await simulate(tmp_path / "shared.db", shared=True)
    assert rate == pytest.approx(10.0, rel=0.1)
    assert shares == pytest.approx([0.75, 0.25], abs=0.05)
    # Each worker on its own (as before): each holds the whole target, twice it in all.
    alone, shares = await simulate(tmp_path / "alone.db", shared=False)
    assert alone == pytest.approx(20.0, rel=0.1)
    assert shares == [1.0, 1.0]


Owner = tuple[int | None, str | None]  # (worker index, replica id)


def processes(clock: Clock, cfg: Config, owners: Sequence[Owner]) -> list[Worker]:
    """Return the controllers of each process (a worker of a replica), with savers."""
    out = []
    for index, replica in owners:
        controllers = Controllers(clock)
        started = controllers.configure(cfg, PRICING)
        saver = ControllerStore(controllers, clock, started, worker=index, replica=replica)
        out.append((controllers, saver))
    return out


TWO_BY_TWO: list[Owner] = [(0, "pod-a"), (1, "pod-a"), (0, "pod-b"), (1, "pod-b")]


async def test_two_replicas_of_two_workers_aim_at_shares_of_the_target(store_target: str) -> None:
    clock = Clock()
    group = processes(clock, config(acme={"usd_per_hour": 8.0}), TWO_BY_TWO)
    feed(group, [3, 1, 2, 2], 150, clock)
    shares = await save_and_refresh(store_target, group)  # type: ignore[arg-type]
    store = open_store(store_target)
    try:
        assert sorted(store.states("controller")) == [
            "controller@pod-a/0:acme",
            "controller@pod-a/1:acme",
            "controller@pod-b/0:acme",
            "controller@pod-b/1:acme",
        ]
    finally:
        store.close()
    assert [s["acme"] for s in shares] == pytest.approx([3 / 8, 1 / 8, 2 / 8, 2 / 8], abs=0.01)
    assert sum(acme(w).share for w in group) == pytest.approx(1.0, rel=0.01)
    assert sum(acme(w).aim() for w in group) == pytest.approx(8.0, rel=0.01)


async def test_a_single_process_counts_the_other_replicas_and_alone_has_it_all(
    tmp_path: Path,
) -> None:
    clock = Clock()
    cfg = config(acme={"usd_per_hour": 4.0})
    a, b = processes(clock, cfg, [(None, "pod-a"), (None, "pod-b")])
    path = tmp_path / "store.db"
    feed([a], [2], 40, clock)
    assert await save_and_refresh(path, [a]) == [{"acme": 1.0}]  # alone: the whole target
    assert acme(a).aim() == 4.0
    feed([a, b], [3, 1], 100, clock)
    shares = await save_and_refresh(path, [a, b])
    assert [s["acme"] for s in shares] == pytest.approx([0.75, 0.25], abs=0.01)
    assert acme(a).aim() + acme(b).aim() == pytest.approx(4.0, rel=0.01)


async def test_a_replica_that_went_away_is_not_counted(tmp_path: Path) -> None:
    clock = Clock()
    cfg = config(window_s=60.0, acme={"usd_per_hour": 1.0})
    group = processes(clock, cfg, [(0, "pod-a"), (0, "pod-b"), (0, "pod-old")])
    path = tmp_path / "store.db"
    feed(group, [1, 1, 4], 30, clock)
    await save_and_refresh(path, group)
    clock.now += 61.0  # pod-old was replaced: its newest request is older than window_s
    feed(group[:2], [1, 3], 40, clock)
    shares = await save_and_refresh(path, group[:2])
    assert [s["acme"] for s in shares] == pytest.approx([0.25, 0.75], abs=0.01)


async def test_a_process_upgraded_from_keys_without_replicas_keeps_its_whole_share(
    tmp_path: Path,
) -> None:
    # A release before replica ids saved the state a single process and then two workers
    # resume from: it counts as theirs, not as another replica's.
    clock = Clock()
    cfg = config(acme={"usd_per_hour": 2.0})
    path = tmp_path / "store.db"
    old = processes(clock, cfg, [(None, None), (0, None), (1, None)])
    feed(old, [2, 3, 1], 60, clock)
    await save_and_refresh(path, old)
    (single,) = processes(clock, cfg, [(None, "host")])
    new = processes(clock, cfg, [(0, "host"), (1, "host")])
    writer = StoreWriter(open_store(path))
    for process in [single, *new]:
        assert await process[1].restore(writer) == ["acme"]
    await writer.aclose()
    feed([single], [2], 5, clock)
    assert (await save_and_refresh(path, [single]))[0]["acme"] == 1.0
    # The workers count each other (and the single process, a replica of its own).
    feed(new, [1, 1], 5, clock)
    shares = await save_and_refresh(path, new)
    assert shares[0]["acme"] == pytest.approx(shares[1]["acme"], rel=0.05)
    assert shares[0]["acme"] < 0.5


async def simulate_replicas(path: Path, owners: Sequence[Owner]) -> float:
    """Serve acme (10 USD/hour) from the processes ``owners`` name on one store, five
    requests a second in all, split 3:1 between the first two and evenly among the rest
    (0.5 of the requests in all go to the rest when there are any), through the service's
    path; return the combined spend rate over the last 2,000 requests (400 s)."""
    clock = Clock()
    group = processes(clock, targets_config({}, acme={"usd_per_hour": 10.0}), owners)
    weights = [3.0, 1.0] + [4.0 / max(1, len(owners) - 2)] * (len(owners) - 2)
    writer: Any = SyncWriter(open_store(path))
    rng = random.Random(5)
    spent = []
    for _ in range(8000):
        clock.now += 0.2
        (worker,) = rng.choices(group, weights)
        controller, saver = acme(worker), worker[1]
        spent.append(cost(serve(controller, rng.random(), tokens=TOKENS)))
        saver.recorded(controller, writer)
        await saver.settled()
    writer.store.close()
    return sum(spent[-2000:]) / (400 / 3600)


@pytest.mark.parametrize(
    ("owners", "spent"),
    [
        # Two replicas of one process, then two of two workers: the target in all.
        ([(None, "pod-a"), (None, "pod-b")], 10.0),
        (TWO_BY_TWO, 10.0),
        # Without replica ids (a release before them) each replica of one process holds
        # the whole target, and the workers of two replicas share two keys: twice it.
        ([(None, None), (None, None)], 20.0),
        ([(0, None), (1, None), (0, None), (1, None)], 20.0),
    ],
)
async def test_replicas_on_one_store_hold_the_spend_target_together(
    tmp_path: Path, owners: list[Owner], spent: float
) -> None:
    assert await simulate_replicas(tmp_path / "store.db", owners) == pytest.approx(spent, rel=0.1)
