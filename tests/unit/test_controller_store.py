"""The controllers' states in a real SQLite store: saved while they change, restored cold."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from router.config import Config
from router.controller import STATE_KEY, Controllers, TenantController
from router.controller_store import SAVE_EVERY_S, ControllerStore
from router.store import StoreWriter, open_store
from tests.unit.test_controller import PRICING, Clock, serve, targets_config


def config(**targets: dict[str, float]) -> Config:
    return targets_config(
        {"window_requests": 200, "min_requests": 20, "update_every": 5}, **targets
    )


def saved(path: Path, tenant: str) -> Any:
    store = open_store(path, migrate=False)
    try:
        return store.state(STATE_KEY + tenant)
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
