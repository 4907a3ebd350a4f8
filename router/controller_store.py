"""Keep the tenants' cost controllers in the store, so that a restart does not start cold.

Each controller's state (its window of served requests and its offset) is written through
the store writer's queue: at most every ``SAVE_EVERY_S`` per tenant while it changes, and
once more when the service closes (SIGTERM drains it with the rest of the queue). With
several workers each runs its own controllers over the requests it serves, so each saves
under its own key: ``controller@<index>:<tenant>`` for worker <index>, and
``controller:<tenant>`` for a server of one process (``controller_state_key``).

A controller that starts cold (at start-up, or a tenant a reload adds) resumes from its
stored state where that fits (same target kind, model version and tiers; records older
than ``controller.window_s`` drop out of the window as usual). A process reads its own key
first and, when that is absent (more workers than last time, one process after several,
or a store a release before per-worker keys wrote), the tenant's most recent state under
any other key: the one whose window's last request is the newest (``latest_request``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable

import structlog

from router.controller import STATE_KEY, Controllers, TenantController
from router.store import StateRecord, StoreWriter
from router.store.stats import (
    CONTROLLER_STATE,
    WORKER_CONTROLLER_STATE,
    controller_of_key,
    controller_state_key,
)

log = structlog.get_logger()

SAVE_EVERY_S = 10.0


class ControllerStore:
    """Save the controllers' states through the store writer; restore the cold ones."""

    def __init__(
        self,
        controllers: Controllers,
        clock: Callable[[], float],
        cold: Iterable[str] = (),
        *,
        worker: int | None = None,
    ) -> None:
        self._controllers = controllers
        self._clock = clock
        # The index of this worker of ``serve --workers N`` (None: the only process).
        self._worker = worker
        # Tenants whose controller has no state in this process yet.
        self._cold = set(cold)
        # Per tenant: the controller, its request count and the time, when last saved.
        self._saved: dict[str, tuple[TenantController, int, float]] = {}

    def configured(self, cold: Iterable[str]) -> None:
        """Note the tenants a (re)configuration started cold."""
        self._cold.update(cold)

    def _changed(self, controller: TenantController) -> bool:
        saved = self._saved.get(controller.tenant)
        return saved is None or saved[0] is not controller or saved[1] != controller.recorded

    def _save(self, controller: TenantController, writer: StoreWriter, now: float) -> None:
        state = controller.state()
        key = controller_state_key(controller.tenant, self._worker)
        writer.put(StateRecord(key, state, now))
        self._saved[controller.tenant] = (controller, controller.recorded, now)

    def recorded(self, controller: TenantController, writer: StoreWriter | None) -> None:
        """Save a controller that just recorded a request, if its last save is old enough."""
        if writer is None:
            return
        now = self._clock()
        saved = self._saved.get(controller.tenant)
        if saved is None or now - saved[2] >= SAVE_EVERY_S:
            self._save(controller, writer, now)

    def save_all(self, writer: StoreWriter | None) -> None:
        """Save every controller that changed since its last save (the service closing)."""
        if writer is None:
            return
        now = self._clock()
        for controller in self._controllers:
            if controller.recorded and self._changed(controller):
                self._save(controller, writer, now)

    async def restore(self, writer: StoreWriter | None) -> list[str]:
        """Resume the cold controllers from their stored states; return the tenants resumed."""
        cold = sorted(self._cold)
        self._cold.clear()
        if writer is None or not cold:
            return []
        store = writer.store

        def read() -> dict[str, tuple[str, object]]:
            found: dict[str, tuple[str, object]] = {}
            others: dict[str, dict[str, object]] | None = None
            for tenant in cold:
                own = controller_state_key(tenant, self._worker)
                state = store.state(own)
                if state is not None:
                    found[tenant] = (own, state)
                    continue
                if others is None:  # every saved controller, read once for all tenants
                    others = saved_by_tenant(
                        store.states(CONTROLLER_STATE) | store.states(WORKER_CONTROLLER_STATE)
                    )
                candidates = others.get(tenant)
                if candidates:
                    key = max(candidates, key=lambda k: (latest_request(candidates[k]), k))
                    found[tenant] = (key, candidates[key])
            return found

        try:
            found = await asyncio.to_thread(read)
        except Exception as exc:
            log.warning(
                "controller states unreadable: starting cold", store=store.location, error=str(exc)
            )
            return []
        # Controllers.restore takes the states by their single-process key.
        resumed = self._controllers.restore(
            {STATE_KEY + tenant: state for tenant, (_, state) in found.items()}
        )
        if resumed:
            keys = {tenant: found[tenant][0] for tenant in resumed}
            log.info("controller states restored", tenants=resumed, keys=keys)
        return resumed


def saved_by_tenant(states: dict[str, object]) -> dict[str, dict[str, object]]:
    """Group saved controller states by their tenant: tenant -> {key: state}."""
    out: dict[str, dict[str, object]] = {}
    for key, state in states.items():
        owner = controller_of_key(key)
        if owner is not None:
            out.setdefault(owner[0], {})[key] = state
    return out


def latest_request(state: object) -> float:
    """Return the time of a saved state's newest request (-inf: none, or not readable)."""
    if not isinstance(state, dict):
        return -math.inf
    try:
        column = state["columns"].index("time")
        return max((float(row[column]) for row in state["window"]), default=-math.inf)
    except (KeyError, ValueError, TypeError, IndexError, AttributeError):
        return -math.inf


__all__ = ["SAVE_EVERY_S", "ControllerStore", "latest_request", "saved_by_tenant"]
