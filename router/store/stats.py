"""Satisfaction per tier and model: the numbers GetStats and ``modelrouter stats`` show.

A request is counted at the tier that served it: for Complete the tier that answered (the
decided tier when none did), for Route the decided tier (the caller ran it). Escalation is
counted at the tier the router first sent the request to; gate rejections, errors and time
to first token at the tier of each attempt.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from router.config import REPLICA_ID

DEFAULT_SATISFIED_AT = 0.7
# The state key where a server notes its feedback.satisfied_at, so that reading the store
# directly (modelrouter stats --store) counts satisfaction as the server does.
SATISFIED_AT_STATE = "feedback.satisfied_at"
# The state key of a tenant's cost controller. A process saves it under
# ``controller@<replica>/<index>:<tenant>`` as worker <index> of ``serve --workers N`` on
# replica <replica> (server.replica_id), and under ``controller@<replica>/:<tenant>`` as a
# server of one process. The replica and index go before the tenant, which may hold any
# character, and a replica id holds neither "/" nor ":": no key reads two ways.
# Releases before replica ids wrote this prefix + the tenant in a server of one process
# (and in every worker of a release before per-worker keys), ...
CONTROLLER_STATE = "controller:"
# ... and this prefix + "<index>:" + the tenant in worker <index>; this prefix starts
# every key saved now, too.
WORKER_CONTROLLER_STATE = "controller@"
TOTAL = "total"


@dataclass(frozen=True, slots=True)
class StatsQuery:
    """Which requests to count, and the rating that counts as satisfied."""

    since: float | None = None  # Unix seconds; None counts everything
    tenant: str | None = None  # None counts every tenant
    satisfied_at: float = DEFAULT_SATISFIED_AT


@dataclass(frozen=True, slots=True)
class TierStats:
    """The counts of one tier and model (or of all of them: ``tier == "total"``)."""

    tier: str
    tier_index: int
    model: str
    requests: int
    share: float
    completions: int
    # None where there is nothing to divide by (no Complete decided to it, no attempt).
    escalation_rate: float | None
    gate_rejection_rate: float | None
    error_rate: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    rated: int
    mean_rating: float | None
    satisfaction: float | None
    cost_usd: float
    strongest_cost_usd: float
    saved_usd: float

    def as_json(self) -> dict[str, Any]:
        """Return the row in the ``modelrouter stats --json`` shape."""
        return {
            "tier": self.tier,
            "tier_index": self.tier_index,
            "model": self.model,
            "requests": self.requests,
            "share": self.share,
            "completions": self.completions,
            "rated": self.rated,
            "mean_rating": self.mean_rating,
            "satisfaction": self.satisfaction,
            "escalation_rate": self.escalation_rate,
            "gate_rejection_rate": self.gate_rejection_rate,
            "error_rate": self.error_rate,
            "ttft_p50_ms": self.ttft_p50_ms,
            "ttft_p95_ms": self.ttft_p95_ms,
            "cost_usd": self.cost_usd,
            "strongest_cost_usd": self.strongest_cost_usd,
            "saved_usd": self.saved_usd,
        }


@dataclass(frozen=True, slots=True)
class ControllerStats:
    """A tenant's cost controller: its target, offset and what its window was served.

    The fields mirror the TenantController message by name.
    """

    tenant: str
    target_kind: str  # strong_share or usd_per_hour
    target: float
    offset: float  # logits added to every threshold's logit (positive: cheaper)
    thresholds: tuple[float, ...]
    realised: float | None  # the target's quantity over the window; None before enough
    window_requests: int
    updates: int
    saturated: bool

    def as_json(self) -> dict[str, Any]:
        """Return the controller in the ``modelrouter stats --json`` shape."""
        return {name: getattr(self, name) for name in ControllerStats.__slots__} | {
            "thresholds": list(self.thresholds)
        }

    def heading(self) -> str:
        """Return whose controller this is, as ``modelrouter stats`` starts its line."""
        return f"controller {self.tenant}"


@dataclass(frozen=True, slots=True)
class SavedController(ControllerStats):
    """A controller as its process last saved it in the store (``modelrouter stats --store``).

    ``replica`` is the server.replica_id of the server that saved it (None: a release
    before replica ids) and ``worker`` the index of its ``serve --workers N`` worker (None:
    a server of one process, or a release before per-worker keys).
    """

    replica: str | None = None
    worker: int | None = None

    def as_json(self) -> dict[str, Any]:
        """Return the controller in the ``modelrouter stats --json`` shape, with its owner."""
        out = ControllerStats.as_json(self)
        if self.replica is not None:
            out["replica"] = self.replica
        if self.worker is not None:
            out["worker"] = self.worker
        return out

    def heading(self) -> str:
        """Return whose controller this is, with the replica and worker that saved it."""
        own = ControllerStats.heading(self)
        owner = [
            *([] if self.replica is None else [f"replica {self.replica}"]),
            *([] if self.worker is None else [f"worker {self.worker}"]),
        ]
        return f"{own} ({', '.join(owner)})" if owner else own


class KeyOwner(NamedTuple):
    """Whose controller state a key holds: the tenant's, in which replica and worker."""

    tenant: str
    # server.replica_id; None: a key a release before replica ids wrote.
    replica: str | None
    # The worker's index; None: a server of one process (or every worker of a release
    # before per-worker keys).
    worker: int | None


def controller_state_key(tenant: str, worker: int | None = None, replica: str | None = None) -> str:
    """Return the state key of a tenant's controller in a worker (None: one process) of a
    replica (None: the key a release before replica ids used)."""
    if replica is not None:
        return f"{WORKER_CONTROLLER_STATE}{replica}/{'' if worker is None else worker}:{tenant}"
    if worker is None:
        return CONTROLLER_STATE + tenant
    return f"{WORKER_CONTROLLER_STATE}{worker}:{tenant}"


def controller_of_key(key: str) -> KeyOwner | None:
    """Return the tenant, replica and worker of a controller's state key (None: not such a
    key)."""
    if key.startswith(CONTROLLER_STATE):
        return KeyOwner(key.removeprefix(CONTROLLER_STATE), None, None)
    if not key.startswith(WORKER_CONTROLLER_STATE):
        return None
    owner, colon, tenant = key.removeprefix(WORKER_CONTROLLER_STATE).partition(":")
    if not colon:
        return None
    if _is_index(owner):  # a release before replica ids
        return KeyOwner(tenant, None, int(owner))
    replica, slash, index = owner.partition("/")
    if slash and REPLICA_ID.fullmatch(replica) and (not index or _is_index(index)):
        return KeyOwner(tenant, replica, int(index) if index else None)
    return None


def _is_index(text: str) -> bool:
    return text.isascii() and text.isdigit()


def controller_of_state(
    tenant: str, state: Any, worker: int | None = None, replica: str | None = None
) -> SavedController | None:
    """Return what a controller's stored state says of it (None: not a state we read)."""
    try:
        window = state["window"]
        return SavedController(
            tenant=tenant,
            target_kind=str(state["target"]["kind"]),
            target=float(state["target"]["value"]),
            offset=float(state["offset"]),
            thresholds=tuple(float(t) for t in state.get("thresholds", ())),
            realised=None if state.get("realised") is None else float(state["realised"]),
            window_requests=len(window),
            updates=int(state["updates"]),
            saturated=bool(state.get("saturated", False)),
            replica=replica,
            worker=worker,
        )
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Stats:
    """Every tier and model's counts, their total, and the feedback no request matched."""

    tiers: tuple[TierStats, ...]
    total: TierStats
    satisfied_at: float
    # Ratings whose request id the store does not hold (kept, never dropped).
    unmatched_feedback: int
    # The tenants' cost controllers, by tenant name.
    controllers: tuple[ControllerStats, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """Return ``{"tiers": [...], "total": {...}, "controllers": [...]}`` (``stats --json``)."""
        total = self.total.as_json()
        total["satisfied_at"] = self.satisfied_at
        total["unmatched_feedback"] = self.unmatched_feedback
        return {
            "tiers": [row.as_json() for row in self.tiers],
            "total": total,
            "controllers": [c.as_json() for c in self.controllers],
        }


@dataclass(slots=True)
class Counts:
    """What the store's queries return for one (tier, model), summed as they arrive."""

    tier_index: int = -1
    requests: int = 0
    completions: int = 0
    cost_usd: float = 0.0
    strongest_cost_usd: float = 0.0
    rated: int = 0
    rating_sum: float = 0.0
    satisfied: int = 0
    decided_completions: int = 0
    escalated: int = 0
    attempts: int = 0
    gate_rejected: int = 0
    errors: int = 0
    first_token_ms: list[float] = field(default_factory=list)

    def add(self, other: Counts) -> None:
        """Add another row's counts into this one."""
        for name in Counts.__slots__:
            if name == "tier_index":
                continue
            mine = getattr(self, name)
            if isinstance(mine, list):
                mine.extend(getattr(other, name))
            else:
                setattr(self, name, mine + getattr(other, name))


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Return the q-th percentile (0-100, linear between closest ranks), None when empty."""
    if not sorted_values:
        return None
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def tier_stats(tier: str, model: str, counts: Counts, total_requests: int) -> TierStats:
    """Return the row of one (tier, model) from its counts."""
    ttfts = sorted(counts.first_token_ms)
    return TierStats(
        tier=tier,
        tier_index=counts.tier_index,
        model=model,
        requests=counts.requests,
        share=counts.requests / total_requests if total_requests else 0.0,
        completions=counts.completions,
        escalation_rate=_ratio(counts.escalated, counts.decided_completions),
        gate_rejection_rate=_ratio(counts.gate_rejected, counts.attempts),
        error_rate=_ratio(counts.errors, counts.attempts),
        ttft_p50_ms=percentile(ttfts, 50),
        ttft_p95_ms=percentile(ttfts, 95),
        rated=counts.rated,
        mean_rating=_ratio(counts.rating_sum, counts.rated),
        satisfaction=_ratio(counts.satisfied, counts.rated),
        cost_usd=counts.cost_usd,
        strongest_cost_usd=counts.strongest_cost_usd,
        saved_usd=counts.strongest_cost_usd - counts.cost_usd,
    )


def build_stats(
    groups: Iterable[tuple[str, str, Counts]], satisfied_at: float, unmatched_feedback: int
) -> Stats:
    """Return the stats of per-(tier, model) counts, ordered by tier index, then model."""
    rows = sorted(groups, key=lambda g: (g[2].tier_index, g[0], g[1]))
    total = Counts()
    for _, _, counts in rows:
        total.add(counts)
    n = total.requests
    return Stats(
        tiers=tuple(tier_stats(tier, model, counts, n) for tier, model, counts in rows),
        total=tier_stats(TOTAL, "", total, n),
        satisfied_at=satisfied_at,
        unmatched_feedback=unmatched_feedback,
    )


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


STATS_COLUMNS = (
    "tier",
    "model",
    "requests",
    "share",
    "escalated",
    "gate rej.",
    "errors",
    "ttft p50",
    "ttft p95",
    "rated",
    "mean",
    "satisfied",
    "cost $",
    "saved $",
)


def stats_table(stats: Stats) -> str:
    """Return the stats as an aligned text table, with a note on what was counted."""
    lines = [list(STATS_COLUMNS)]
    for row in (*stats.tiers, stats.total):
        lines.append(
            [
                row.tier,
                row.model,
                str(row.requests),
                _percent(row.share),
                _percent(row.escalation_rate),
                _percent(row.gate_rejection_rate),
                _percent(row.error_rate),
                _number(row.ttft_p50_ms, ".0f"),
                _number(row.ttft_p95_ms, ".0f"),
                str(row.rated),
                _number(row.mean_rating, ".2f"),
                _percent(row.satisfaction),
                f"{row.cost_usd:.4f}",
                f"{row.saved_usd:.4f}",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(STATS_COLUMNS))]
    text = [
        "  ".join(
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    ]
    text.append(
        f"satisfied: rated >= {stats.satisfied_at:g}; ttft in ms; saved: against every "
        "request on the strongest tier"
    )
    if stats.unmatched_feedback:
        text.append(f"feedback for request ids not in the store: {stats.unmatched_feedback}")
    for c in stats.controllers:
        realised = "-" if c.realised is None else f"{c.realised:.4g}"
        text.append(
            f"{c.heading()}: target {c.target_kind} {c.target:g}, realised {realised} "
            f"over {c.window_requests} requests, offset {c.offset:+.3f} logits, "
            f"{c.updates} moves{', saturated' if c.saturated else ''}"
        )
    return "\n".join(text)
