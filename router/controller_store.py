"""Keep the tenants' cost controllers in the store, so that a restart does not start cold.

Each controller's state (its window of served requests and its offset) is written through
the store writer's queue: at most every ``SAVE_EVERY_S`` per tenant while it changes, and
once more when the service closes (SIGTERM drains it with the rest of the queue). Every
process runs its own controllers over the requests it serves, so each saves under its own
key (``controller_state_key``), named by its replica (server.replica_id, resolved:
``router.config.resolve_replica_id``) and its worker index:
``controller@<replica>/<index>:<tenant>`` for worker <index> of ``serve --workers N``, and
``controller@<replica>/:<tenant>`` for a server of one process. Releases before replica
ids saved under ``controller@<index>:<tenant>`` and ``controller:<tenant>``; these are still
read (``controller_of_key``), to resume from.

A controller that starts cold (at start-up, or a tenant a reload adds) resumes from its
stored state where that fits (same target kind, model version and tiers; records older
than ``controller.window_s`` drop out of the window as usual). A process reads its own key
first and, when that is absent (a new replica, more workers than last time, one process
after several, or a store an older release wrote), the tenant's most recent state under
any other key: the one whose window's last request is the newest (``latest_request``).

A spend target (``usd_per_hour``) is a rate for the whole service, but each process's
controller holds what its own window spends. So each process aims at the target times its
share of the tenant's recent requests (``spend_share``), counted from the saved states of
every other process (the other workers of its replica and those of the other replicas
sharing the store): read off the event loop, at most every ``SAVE_EVERY_S`` while a tenant
with a spend target has traffic (``refresh_shares``). A process alone in the store has
share 1; a state whose newest request is older than ``window_s`` (a worker or replica that
went away) is not counted, nor is a state an older release wrote (one this process may
have resumed from: its requests would count twice). Request shares do not move with the
controllers' offsets, so the shares are no feedback loop: each process holds a fixed part
of the target, and the parts add up to it. A share target needs none of this (a share of
each process's requests is a share of all of them). Without a replica id (the service
embedded without ``serve``), the keys are an older release's and a process that is no
worker of several keeps share 1.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Sequence

import structlog

from router.controller import MIN_SPAN_S, STATE_KEY, Controllers, TenantController
from router.store import StateRecord, StoreWriter
from router.store.stats import (
    CONTROLLER_STATE,
    WORKER_CONTROLLER_STATE,
    KeyOwner,
    controller_of_key,
    controller_state_key,
)

log = structlog.get_logger()

SAVE_EVERY_S = 10.0
# A worker's share of a tenant's requests is never taken below this (nor above 1): one that
# has just started serving a tenant still aims at something.
MIN_SHARE = 1e-3
# A store that cannot be read for the shares is logged at most this often (the shares stay).
SHARE_WARN_EVERY_S = 300.0


class ControllerStore:
    """Save the controllers' states through the store writer; restore the cold ones."""

    def __init__(
        self,
        controllers: Controllers,
        clock: Callable[[], float],
        cold: Iterable[str] = (),
        *,
        worker: int | None = None,
        replica: str | None = None,
    ) -> None:
        self._controllers = controllers
        self._clock = clock
        # The index of this worker of ``serve --workers N`` (None: the only process), and
        # the replica it belongs to (server.replica_id; None: the keys of a release before
        # replica ids, where a server of one process counts no shares).
        self._worker = worker
        self._replica = replica
        # Tenants whose controller has no state in this process yet.
        self._cold = set(cold)
        # Per tenant: the controller, its request count and the time, when last saved.
        self._saved: dict[str, tuple[TenantController, int, float]] = {}
        # When the spend shares were last read (or a read started), the read in flight, and
        # when a failed read was last logged.
        self._shares_read = -math.inf
        self._reading: asyncio.Task[dict[str, float]] | None = None
        self._warned = -math.inf

    def configured(self, cold: Iterable[str]) -> None:
        """Note the tenants a (re)configuration started cold."""
        self._cold.update(cold)

    def _changed(self, controller: TenantController) -> bool:
        saved = self._saved.get(controller.tenant)
        return saved is None or saved[0] is not controller or saved[1] != controller.recorded

    def _save(self, controller: TenantController, writer: StoreWriter, now: float) -> None:
        state = controller.state()
        key = self._key(controller.tenant)
        writer.put(StateRecord(key, state, now))
        self._saved[controller.tenant] = (controller, controller.recorded, now)

    @property
    def replica(self) -> str | None:
        """The replica this process belongs to (server.replica_id, resolved), if any."""
        return self._replica

    @property
    def worker(self) -> int | None:
        """This process's index among ``serve --workers N`` (None: the only process)."""
        return self._worker

    def _key(self, tenant: str) -> str:
        """Return the key this process saves a tenant's controller under."""
        return controller_state_key(tenant, self._worker, self._replica)

    @property
    def _counts_shares(self) -> bool:
        """Whether this process may be one of several serving a tenant (and count shares)."""
        return self._worker is not None or self._replica is not None

    def _counted(self, key: str, owner: KeyOwner) -> bool:
        """Whether another process's saved state counts toward the spend shares: any but
        this process's own, and, with a replica id, none a release before them wrote (what
        this process resumed from: counting it would count those requests twice)."""
        return key != self._key(owner.tenant) and (
            self._replica is None or owner.replica is not None
        )

    def recorded(self, controller: TenantController, writer: StoreWriter | None) -> None:
        """Save a controller that just recorded a request, if its last save is old enough."""
        if writer is None:
            return
        now = self._clock()
        saved = self._saved.get(controller.tenant)
        if saved is None or now - saved[2] >= SAVE_EVERY_S:
            self._save(controller, writer, now)
        if (
            self._counts_shares
            and controller.target.kind == "usd_per_hour"
            and self._reading is None
            and now - self._shares_read >= SAVE_EVERY_S
        ):
            self._read_shares_later(writer, now)

    def _read_shares_later(self, writer: StoreWriter, now: float) -> None:
        """Start reading the spend shares in the background (on the running loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a caller outside the service): nothing to run on
            return
        self._shares_read = now
        self._reading = loop.create_task(self.refresh_shares(writer))
        self._reading.add_done_callback(self._read)

    def _read(self, task: asyncio.Task[dict[str, float]]) -> None:
        self._reading = None
        # refresh_shares logs the store's failures itself; anything else is logged here.
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.error("spend shares not refreshed", error=repr(error))

    async def settled(self) -> None:
        """Wait for a read of the spend shares in flight (the service closing)."""
        if self._reading is not None:
            await asyncio.wait([self._reading])

    async def refresh_shares(self, writer: StoreWriter | None) -> dict[str, float]:
        """Set each spend-target controller's share of its tenant's requests across the
        processes (the workers of every replica), from the others' saved states; return the
        shares set, by tenant.

        Alone (no other process's state of the tenant is recent) a process gets share 1.
        Nothing for a process without a replica id or worker index (its shares stay 1). A
        store that cannot be read leaves the shares as they were, and is logged at most
        every ``SHARE_WARN_EVERY_S``.
        """
        if writer is None or not self._counts_shares:
            return {}
        tenants = {c.tenant for c in self._controllers if c.target.kind == "usd_per_hour"}
        if not tenants:
            return {}
        store = writer.store

        def read() -> dict[str, list[list[float]]]:
            others: dict[str, list[list[float]]] = {tenant: [] for tenant in tenants}
            for key, state in store.states(WORKER_CONTROLLER_STATE).items():
                owner = controller_of_key(key)
                if owner is not None and owner.tenant in others and self._counted(key, owner):
                    others[owner.tenant].append(request_times(state))
            return others

        try:
            others = await asyncio.to_thread(read)
        except Exception as exc:
            now = self._clock()
            if now - self._warned >= SHARE_WARN_EVERY_S:
                self._warned = now
                log.warning(
                    "controller states unreadable: spend shares kept",
                    store=store.location,
                    error=str(exc),
                )
            return {}
        now = self._clock()
        shares = {}
        for tenant in sorted(tenants):
            # A reload during the read may have replaced or dropped the tenant's controller.
            controller = self._controllers.get(tenant)
            if controller is None or controller.target.kind != "usd_per_hour":
                continue
            settings = controller.settings
            share = spend_share(
                controller.request_times(),
                others[tenant],
                now,
                window_s=settings.window_s,
                window_requests=settings.window_requests,
            )
            if share is not None:
                controller.share = shares[tenant] = share
        return shares

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
                own = self._key(tenant)
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
            out.setdefault(owner.tenant, {})[key] = state
    return out


def request_times(state: object) -> list[float]:
    """Return the times of a saved state's requests ([]: none, or not readable)."""
    if not isinstance(state, dict):
        return []
    try:
        column = state["columns"].index("time")
        times = [float(row[column]) for row in state["window"]]
    except (KeyError, ValueError, TypeError, IndexError, AttributeError):
        return []
    return [t for t in times if math.isfinite(t)]


def spend_share(
    own: Sequence[float],
    others: Iterable[Sequence[float]],
    now: float,
    *,
    window_s: float,
    window_requests: int,
) -> float | None:
    """Return this process's share of a tenant's recent requests, in [MIN_SHARE, 1] (None:
    no span to count over; keep the share as it is).

    ``own`` is the times of this process's live window, ``others`` those of each other
    process's last saved state (the workers of every replica). A state whose newest
    request is older than ``window_s`` is a process that went away: not counted. Each
    process's requests are counted over the same span: ``window_s``, or less when a window
    holds its last ``window_requests`` requests and these span less (what is older is no
    longer in it). A saved state is up to ``SAVE_EVERY_S`` old: its span ends at its newest
    request, or ``SAVE_EVERY_S`` ago if that is later (a process whose traffic stopped
    counts less and less), this process's now.
    """
    workers = [(own, now)]
    for times in others:
        if times and max(times) >= now - window_s:
            workers.append((times, max(max(times), now - SAVE_EVERY_S)))
    span = window_s
    for times, end in workers:
        if len(times) >= window_requests:
            span = min(span, end - min(times))
    if span < MIN_SPAN_S:
        return None
    counts = [sum(1 for t in times if end - span <= t <= end) for times, end in workers]
    total = sum(counts)
    if total == 0:
        return 1.0
    return min(1.0, max(MIN_SHARE, counts[0] / total))


def latest_request(state: object) -> float:
    """Return the time of a saved state's newest request (-inf: none, or not readable)."""
    return max(request_times(state), default=-math.inf)


__all__ = [
    "MIN_SHARE",
    "SAVE_EVERY_S",
    "ControllerStore",
    "latest_request",
    "request_times",
    "saved_by_tenant",
    "spend_share",
]
