"""The online cost controller: move one tenant's thresholds to hold a cost target.

A tenant may set a target (``tenants.<name>.target``): a share of its requests answered
above the cheapest tier (``strong_share``), or a spend rate (``usd_per_hour``). Its
``TenantController`` keeps a sliding window of the tenant's recent requests as they were
answered: the score, the caller's hints, the tier that answered (escalations included) and
the tokens. Every ``update_every`` requests it finds the threshold offset at which that
window would have met the target, and moves toward it by at most ``max_step``, never past
its limits: feedback through the window, since the window holds what the current
offset produced.

The offset is one number in logit space, added to every tier threshold:
``t' = sigmoid(logit(t) + offset)``. It keeps the thresholds ordered and inside (0, 1),
and moves the whole cost/quality trade-off with one knob. A positive offset raises the
thresholds (fewer requests above the cheapest tier), a negative one lowers them: never the
other way, even by the ulp that sigmoid(logit(t)) can round away from t.

What the controller never does: override a caller's ``tier``, ``min_tier`` or
``max_tier`` (they are applied after the thresholds, as without a controller). Forced and
hinted requests and escalations still count toward the target: the controller holds what
the tenant is actually served, and moves the requests it may move to make up for them.

Pure logic, no I/O: the clock is injected, and the state to persist is a plain dict.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from router.config import DEFAULT_TENANT, MAX_OFFSET, Config, ControllerConfig
from router.store.stats import CONTROLLER_STATE, ControllerStats

TargetKind = Literal["strong_share", "usd_per_hour"]
STATE_VERSION = 1
# The store's named state of a tenant's controller is STATE_KEY + tenant.
STATE_KEY = CONTROLLER_STATE
# A threshold is kept this far from 0 and 1 so that its logit is finite.
_EDGE = 1e-6
# Bisection steps when solving for the offset: the interval shrinks 2^-20.
_SOLVE_STEPS = 20
# A spend rate needs the window to span at least this long before it is trusted.
MIN_SPAN_S = 1.0
NO_TIER = -1


@dataclass(frozen=True, slots=True)
class Target:
    """What a tenant's controller holds: one of the two kinds, and its value."""

    kind: TargetKind
    value: float

    def describe(self) -> str:
        """Return the target as a short human-readable string."""
        if self.kind == "strong_share":
            return f"strong_share {self.value:g}"
        return f"usd_per_hour {self.value:g}"


@dataclass(frozen=True, slots=True)
class Settings:
    """How the controller moves (``controller:`` in the configuration)."""

    window_requests: int = 500
    window_s: float = 3600.0
    min_requests: int = 100
    update_every: int = 25
    max_step: float = 0.5
    # How much of the window's realised error the next requests make up: 0 aims every
    # update at the target itself; 1 aims as far past it as the window missed it.
    catch_up: float = 1.0
    # Limits of the offset, in logits: min_offset <= offset <= max_offset. A min_offset
    # of 0 makes the target a cap: the controller may raise the thresholds, never lower
    # them.
    min_offset: float = -6.0
    max_offset: float = 6.0


@dataclass(frozen=True, slots=True)
class Pricing:
    """What the thresholds act on: base thresholds, margins and the tiers' prices."""

    thresholds: tuple[float, ...]
    margins: tuple[float, ...]
    # US dollars per token, per tier, cheapest first.
    input_price: tuple[float, ...]
    output_price: tuple[float, ...]
    model_version: str = ""


@dataclass(frozen=True, slots=True)
class Served:
    """One request as the tenant was served: what the controller learns from.

    ``decided`` is the tier the routing decision picked; ``answered`` the tier that
    answered (higher after an escalation; the decided tier for Route, which runs no
    model). ``forced``, ``min_index`` and ``max_index`` are the caller's hints (NO_TIER:
    unset). ``extra_cost_usd`` is what failed attempts cost on top of the answer.
    """

    score: float
    decided: int
    answered: int
    forced: int = NO_TIER
    min_index: int = NO_TIER
    max_index: int = NO_TIER
    prompt_tokens: int = 0
    completion_tokens: int = 0
    extra_cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What GetConfig, GetStats and the metrics report of one tenant's controller."""

    tenant: str
    target: Target
    offset: float
    thresholds: tuple[float, ...]
    # The realised value over the window (share or USD per hour), None before any request.
    realised: float | None
    window_requests: int
    updates: int
    # True when the offset sits at a limit and the target is still not met.
    saturated: bool
    # This process's share of the tenant's requests that the target is aimed at in (1 for a
    # share target, whatever share a reload carried over from a spend target).
    share: float = 1.0

    @property
    def aim(self) -> float:
        """Return the target's value this process aims at (TenantController.aim)."""
        return aim_of(self.target, self.share)

    def as_stats(self) -> ControllerStats:
        """Return the snapshot as GetConfig and GetStats report it (flat, by message field)."""
        return ControllerStats(
            tenant=self.tenant,
            target_kind=self.target.kind,
            target=self.target.value,
            offset=self.offset,
            thresholds=self.thresholds,
            realised=self.realised,
            window_requests=self.window_requests,
            updates=self.updates,
            saturated=self.saturated,
        )


def aim_of(target: Target, share: float) -> float:
    """Return what a process with ``share`` of a tenant's requests aims at: a spend rate
    times the share, a share target as it is."""
    if target.kind == "usd_per_hour":
        return target.value * share
    return target.value


def shift_thresholds(thresholds: Sequence[float], offset: float) -> tuple[float, ...]:
    """Return the thresholds moved by ``offset`` in logit space (positive raises them)."""
    if offset == 0.0:
        return tuple(thresholds)
    return tuple(_shift(t, _threshold_logit(t), offset) for t in thresholds)


def _threshold_logit(threshold: float) -> float:
    """Return the logit of a threshold kept inside (0, 1)."""
    t = min(max(threshold, _EDGE), 1.0 - _EDGE)
    return math.log(t / (1.0 - t))


def _shift(threshold: float, logit: float, offset: float) -> float:
    """Return one threshold moved by ``offset``, given its logit (``_threshold_logit``)."""
    if offset == 0.0:
        return threshold
    moved = 1.0 / (1.0 + math.exp(-(logit + offset)))
    # sigmoid(logit(t)) need not round back to t: unbounded, an offset too small to move
    # the logit would still move the threshold an ulp, either way, and the served tier
    # would not be monotonic in the offset (no step function of it could follow).
    return max(threshold, moved) if offset > 0.0 else min(threshold, moved)


# The window's columns, in the order of a stored record (see TenantController.record).
_COLUMNS = (
    "time",
    "score",
    "decided",
    "answered",
    "forced",
    "min_index",
    "max_index",
    "prompt_tokens",
    "completion_tokens",
    "extra_cost_usd",
)
_Array = npt.NDArray[np.float64]
_Ints = npt.NDArray[np.int64]
# Breakpoints are kept finite: an offset beyond MAX_LOGITS is never allowed.
MAX_LOGITS = MAX_OFFSET


class _Window:
    """The window's live records as numpy columns, and what they say at any offset."""

    def __init__(self, columns: _Array, breakpoints: _Array) -> None:
        # Per request and threshold j, the largest offset at which the thresholds alone
        # send it to tier j + 1 or above (``_breakpoints``).
        self.breakpoints = breakpoints
        self.time = columns[0]
        self.score = columns[1]
        tiers = columns[2:7].astype(np.int64)
        decided, self.answered, self.forced, self.min_index, self.max_index = tiers
        # A request that climbed is taken to need the tier it climbed to, wherever the
        # thresholds would have sent it first.
        self.escalated_to = np.where(self.answered > decided, self.answered, NO_TIER)
        self.prompt_tokens = columns[7]
        self.completion_tokens = columns[8]
        self.extra_cost = columns[9]

    def __len__(self) -> int:
        return len(self.score)

    def served_tier(self, natural: _Ints, n_tiers: int) -> _Ints:
        """Return the tier that answers, given the tier the thresholds pick (per request).

        The caller's hints apply as in ``choose_tier`` (forced, then min, then max), and a
        request that climbed still climbs.
        """
        low = np.where(self.min_index >= 0, self.min_index, 0)[:, None]
        high = np.where(self.max_index >= 0, self.max_index, n_tiers - 1)[:, None]
        tier = np.where(self.forced[:, None] >= 0, self.forced[:, None], natural)
        tier = np.minimum(np.maximum(tier, low), high)
        return np.maximum(tier, self.escalated_to[:, None])


def _breakpoints(scores: _Array, pricing: Pricing) -> _Array:
    """Return, per score and threshold j, the largest offset at which ``choose_tier`` on
    ``shift_thresholds`` sends it to tier j + 1 or above (``_NEVER`` when none in reach)."""
    thresholds, margins = pricing.thresholds, pricing.margins
    out = np.empty((len(scores), len(thresholds)), dtype=np.float64)
    # Where the score reaches threshold j - 1 itself, no margin (needed for tier j + 1).
    plain: _Array | None = None
    for j, (threshold, margin) in enumerate(zip(thresholds, margins, strict=True)):
        logit = _threshold_logit(threshold)
        # Tier j + 1 needs the score within the margin below threshold j, and (one climb
        # only) threshold j - 1 reached by the score itself.
        reach = _last_reached(scores, threshold, logit, margin)
        out[:, j] = reach if plain is None else np.minimum(reach, plain)
        if margin == 0.0:
            plain = reach
        elif j + 1 < len(thresholds):
            plain = _last_reached(scores, threshold, logit, 0.0)
    return out


# The breakpoint of a request that no offset down to -MAX_LOGITS sends up.
_NEVER = math.nextafter(-MAX_LOGITS, -math.inf)
_FLOAT = struct.Struct("<d")
_INT = struct.Struct("<q")
# Ulps walked from the logit-space estimate before searching: it is almost always within
# a few of the breakpoint.
_WALK_STEPS = 8


def _last_reached(scores: _Array, threshold: float, logit: float, margin: float) -> _Array:
    """Return, per score, the largest offset in [-MAX_LOGITS, MAX_LOGITS] at which it
    reaches the threshold moved by it, less the margin (``_NEVER`` for none).

    The served arithmetic (``_shift``, then ``choose_tier``'s comparison) is monotonic in
    the offset, so the last float at which it holds is found exactly: a formula in logit
    space is a few ulps off, and a request on such an ulp is served another tier than the
    curve says. The formula is where the search starts.
    """
    levels = np.clip(scores + margin, _EDGE, 1.0 - _EDGE)
    estimates = np.clip(np.log(levels / (1.0 - levels)) - logit, -MAX_LOGITS, MAX_LOGITS)
    return np.array(
        [
            _settle(score, threshold, logit, margin, estimate)
            for score, estimate in zip(scores.tolist(), estimates.tolist(), strict=True)
        ],
        dtype=np.float64,
    )


def _reaches(score: float, threshold: float, logit: float, margin: float, offset: float) -> bool:
    """Return whether ``score`` reaches the threshold moved by ``offset``, less the margin."""
    return score >= _shift(threshold, logit, offset) - margin


def _settle(score: float, threshold: float, logit: float, margin: float, start: float) -> float:
    """Return ``_last_reached`` of one score: walk a few ulps from ``start``, then search."""
    offset = start
    if _reaches(score, threshold, logit, margin, offset):
        for _ in range(_WALK_STEPS):
            if offset == MAX_LOGITS:
                return MAX_LOGITS
            higher = math.nextafter(offset, math.inf)
            if not _reaches(score, threshold, logit, margin, higher):
                return offset + 0.0  # -0.0 and 0.0 alike: the same thresholds
            offset = higher
    else:
        for _ in range(_WALK_STEPS):
            if offset == -MAX_LOGITS:
                return _NEVER
            offset = math.nextafter(offset, -math.inf)
            if _reaches(score, threshold, logit, margin, offset):
                return offset + 0.0
    return _search(score, threshold, logit, margin, offset)


def _search(score: float, threshold: float, logit: float, margin: float, start: float) -> float:
    """Return ``_last_reached`` of one score by a search over the floats from ``start``:
    ordered as integers, widened step by step to a bracket, then bisected."""

    def reaches(key: int) -> bool:
        return _reaches(score, threshold, logit, margin, _key_float(key))

    top, bottom = _float_key(MAX_LOGITS), _float_key(-MAX_LOGITS)
    # Reached at low, not at high.
    start_key = _float_key(start)
    step = 1
    if reaches(start_key):
        low = start_key
        while True:
            high = min(low + step, top)
            if not reaches(high):
                break
            if high == top:
                return MAX_LOGITS
            low, step = high, step * 2
    else:
        high = start_key
        while True:
            low = max(high - step, bottom)
            if reaches(low):
                break
            if low == bottom:
                return _NEVER
            high, step = low, step * 2
    while high - low > 1:
        middle = (low + high) // 2
        if reaches(middle):
            low = middle
        else:
            high = middle
    return _key_float(low)


def _float_key(x: float) -> int:
    """Return an integer in the order of the floats (0.0 and -0.0 alike)."""
    bits: int = _INT.unpack(_FLOAT.pack(x))[0]
    return bits if bits >= 0 else -(bits & 0x7FFF_FFFF_FFFF_FFFF)


def _key_float(key: int) -> float:
    """Return the float of a ``_float_key``."""
    bits = key if key >= 0 else (-key) | -0x8000_0000_0000_0000
    value: float = _FLOAT.unpack(_INT.pack(bits))[0]
    return value


class _Curve:
    """The target's quantity of a window as a step function of the offset."""

    def __init__(self, breakpoints: _Array, base: float, steps: _Array) -> None:
        order = np.argsort(-breakpoints, kind="stable")
        # Descending breakpoints; values[k]: the quantity with the first k steps taken,
        # which holds for offsets in (breakpoints[k], breakpoints[k - 1]].
        self.breakpoints = breakpoints[order]
        self.values = np.concatenate(([base], base + np.cumsum(steps[order])))

    def solve(self, goal: float, low: float, high: float) -> tuple[float, bool]:
        """Return the offset in [low, high] that takes the most steps without exceeding
        ``goal``, and whether no offset in [low, high] comes to it."""
        # The quantity never falls as steps are taken unless prices fall with the tier; a
        # running maximum keeps the search well defined either way.
        reached = np.maximum.accumulate(self.values)
        k = int(np.searchsorted(reached, goal, side="right")) - 1
        if k < 0:  # over the goal even with no step taken
            return high, True
        # Offsets in (below, above] take exactly the first k steps.
        below = float(self.breakpoints[k]) if k < len(self.breakpoints) else -MAX_LOGITS
        above = float(self.breakpoints[k - 1]) if k > 0 else MAX_LOGITS
        if above < low:
            return low, True
        if below >= high:
            return high, True
        return (max(below, low) + min(above, high)) / 2.0, False


class TenantController:
    """Hold one tenant's target by moving its threshold offset over a sliding window."""

    def __init__(
        self,
        tenant: str,
        target: Target,
        settings: Settings,
        pricing: Pricing,
        *,
        clock: Callable[[], float],
    ) -> None:
        self.tenant = tenant
        self.target = target
        self.settings = settings
        self._clock = clock
        # A ring of the last window_requests records: one column each, one row per field
        # of _COLUMNS (so that each field is contiguous when solving).
        self._table = np.zeros((len(_COLUMNS), settings.window_requests), dtype=np.float64)
        # Each record's breakpoints (a row per record, NaN until computed): found once,
        # when the window is next solved, rather than for the whole window at every update.
        self._breakpoints = self._no_breakpoints(pricing)
        self._next = 0
        self._count = 0
        self._since_update = 0
        self.updates = 0
        # Requests recorded since the controller was made (a change to persist).
        self.recorded = 0
        self.offset = 0.0
        self.saturated = False
        # This process's share of the tenant's requests across the workers of every
        # replica sharing the store (ControllerStore.refresh_shares sets it; 1.0 for a
        # process alone): a spend target is aimed at in proportion to it.
        self.share = 1.0
        self._pricing = pricing
        self.thresholds = pricing.thresholds

    # -- the request path -------------------------------------------------------------

    def record(self, served: Served) -> None:
        """Add a served request to the window; every ``update_every`` of them, update."""
        self._table[:, self._next] = (
            self._clock(),
            served.score,
            served.decided,
            served.answered,
            served.forced,
            served.min_index,
            served.max_index,
            served.prompt_tokens,
            served.completion_tokens,
            served.extra_cost_usd,
        )
        self._breakpoints[self._next] = np.nan
        self._next = (self._next + 1) % self.settings.window_requests
        self._count = min(self._count + 1, self.settings.window_requests)
        self._since_update += 1
        self.recorded += 1
        if self._since_update >= self.settings.update_every:
            self.update()

    # -- the controller ---------------------------------------------------------------

    def update(self) -> None:
        """Move the offset toward the one at which the window meets the target."""
        self._since_update = 0
        window = self._window()
        if len(window) < self.settings.min_requests:
            return
        hours = self._hours(window)
        if hours is None:
            return
        realised = self._realised(window, hours)
        target = self.aim()
        goal = max(0.0, target + self.settings.catch_up * (target - realised))
        curve = self._curve(window, hours)
        wanted, self.saturated = curve.solve(
            goal, self.settings.min_offset, self.settings.max_offset
        )
        step = self.settings.max_step
        self._set_offset(self.offset + min(max(wanted - self.offset, -step), step))
        self.updates += 1

    def aim(self) -> float:
        """Return what this process's window aims at: a share target as it is (a share of
        each worker's requests is a share of all of them); a spend rate times this process's
        share of the tenant's requests, so that the workers' rates add up to the target."""
        return aim_of(self.target, self.share)

    def request_times(self) -> list[float]:
        """Return the times of the requests the window holds (live or not), oldest first."""
        return [float(t) for t in self._rows()[:, 0]]

    def _rows(self) -> _Array:
        """Return the ring's records, one row each, oldest first."""
        if self._count < self.settings.window_requests:
            return self._table[:, : self._count].T
        return np.roll(self._table, -self._next, axis=1).T

    def _window(self) -> _Window:
        """Return the live records: the last window_requests, none older than window_s."""
        columns = self._table[:, : self._count]
        live = columns[0] >= self._clock() - self.settings.window_s
        breakpoints = self._breakpoints[: self._count]
        stale = np.flatnonzero(np.isnan(breakpoints).any(axis=1))
        if len(stale):
            breakpoints[stale] = _breakpoints(columns[1, stale], self._pricing)
        if live.all():
            return _Window(columns, breakpoints)
        return _Window(columns[:, live], breakpoints[live])

    def _no_breakpoints(self, pricing: Pricing) -> _Array:
        """Return a ring of breakpoints still to compute, for these thresholds."""
        shape = (self.settings.window_requests, len(pricing.thresholds))
        return np.full(shape, np.nan, dtype=np.float64)

    def _hours(self, window: _Window) -> float | None:
        """Return the hours the window spans (a spend rate's denominator), 1.0 for a share."""
        if self.target.kind == "strong_share":
            return 1.0
        seconds = self._clock() - float(window.time.min())
        return seconds / 3600.0 if seconds >= MIN_SPAN_S else None

    def _quantity(self, window: _Window, tiers: _Ints, hours: float) -> _Array:
        """Return each request's share of the target's quantity when answered at ``tiers``."""
        if self.target.kind == "strong_share":
            return np.asarray(tiers >= 1, dtype=np.float64) / len(window)
        p = self._pricing
        extra = window.extra_cost if tiers.ndim == 1 else window.extra_cost[:, None]
        prompt = window.prompt_tokens if tiers.ndim == 1 else window.prompt_tokens[:, None]
        completion = (
            window.completion_tokens if tiers.ndim == 1 else window.completion_tokens[:, None]
        )
        cost = (
            prompt * np.asarray(p.input_price)[tiers]
            + completion * np.asarray(p.output_price)[tiers]
            + extra
        )
        return np.asarray(cost / hours, dtype=np.float64)

    def _realised(self, window: _Window, hours: float) -> float:
        if self.target.kind == "strong_share":
            return float(np.mean(window.answered >= 1))
        return float(self._quantity(window, window.answered, hours).sum())

    def _curve(self, window: _Window, hours: float) -> _Curve:
        """Return the window's quantity as a function of the offset."""
        n_tiers = len(self._pricing.thresholds) + 1
        natural = np.broadcast_to(np.arange(n_tiers, dtype=np.int64), (len(window), n_tiers))
        per_tier = self._quantity(window, window.served_tier(natural, n_tiers), hours)
        steps = np.diff(per_tier, axis=1)
        return _Curve(
            window.breakpoints.ravel(),
            float(per_tier[:, 0].sum()),
            steps.ravel(),
        )

    def quantity_at(self, offset: float) -> float | None:
        """Return what the window would have come to at ``offset`` (None before enough)."""
        window = self._window()
        hours = self._hours(window) if len(window) else None
        if hours is None:
            return None
        curve = self._curve(window, hours)
        taken = int(np.count_nonzero(curve.breakpoints >= offset))
        return float(curve.values[taken])

    def _set_offset(self, offset: float) -> None:
        self.offset = min(max(offset, self.settings.min_offset), self.settings.max_offset)
        self.thresholds = shift_thresholds(self._pricing.thresholds, self.offset)

    # -- reload, state and reporting --------------------------------------------------

    def reprice(self, pricing: Pricing) -> None:
        """Take new thresholds and prices; a new model's scores start a new window."""
        old = self._pricing
        if pricing.model_version != old.model_version or len(pricing.thresholds) != len(
            old.thresholds
        ):
            self._next = self._count = 0
            self.offset = 0.0
            self.saturated = False
        self._pricing = pricing
        self._breakpoints = self._no_breakpoints(pricing)
        self._set_offset(self.offset)

    def realised(self) -> float | None:
        """Return the target's quantity as the window was actually served."""
        window = self._window()
        hours = self._hours(window) if len(window) else None
        if hours is None:
            return None
        return self._realised(window, hours)

    def snapshot(self) -> Snapshot:
        """Return the controller's state for GetConfig, GetStats and the metrics."""
        window = self._window()
        hours = self._hours(window) if len(window) else None
        return Snapshot(
            tenant=self.tenant,
            target=self.target,
            offset=self.offset,
            thresholds=self.thresholds,
            realised=None if hours is None else self._realised(window, hours),
            window_requests=len(window),
            updates=self.updates,
            saturated=self.saturated,
            share=self.share if self.target.kind == "usd_per_hour" else 1.0,
        )

    def state(self) -> dict[str, Any]:
        """Return what to persist so that a restart does not start cold."""
        # thresholds, realised and saturated are not restored (they follow from the rest):
        # they are there for readers of the store (modelrouter stats --store).
        snapshot = self.snapshot()
        return {
            "version": STATE_VERSION,
            "target": {"kind": self.target.kind, "value": self.target.value},
            "model_version": self._pricing.model_version,
            "tiers": len(self._pricing.input_price),
            "offset": self.offset,
            "updates": self.updates,
            "thresholds": list(snapshot.thresholds),
            "realised": snapshot.realised,
            "saturated": snapshot.saturated,
            "columns": list(_COLUMNS),
            "window": self._rows().tolist(),
        }

    def restore(self, state: Mapping[str, Any]) -> bool:
        """Resume from a persisted state; return False (and start cold) when it does not fit.

        A state is taken only if it was made for the same target kind, model version and
        number of tiers: another model's scores, or another kind of target, say nothing
        about this one.
        """
        n_tiers = len(self._pricing.input_price)
        try:
            if state.get("version") != STATE_VERSION or state.get("columns") != list(_COLUMNS):
                return False
            if state["model_version"] != self._pricing.model_version:
                return False
            if state["tiers"] != n_tiers or state["target"]["kind"] != self.target.kind:
                return False
            offset = float(state["offset"])
            updates = int(state.get("updates", 0))
            rows = [_record(r, n_tiers) for r in state["window"]]
        except (KeyError, TypeError, ValueError, AttributeError):
            return False
        if not math.isfinite(offset):
            return False
        size = self.settings.window_requests
        rows = rows[-size:]
        self._table[:, : len(rows)] = (
            np.array(rows, dtype=np.float64).reshape(len(rows), len(_COLUMNS)).T
        )
        self._count = len(rows)
        self._breakpoints = self._no_breakpoints(self._pricing)
        self._next = len(rows) % size
        self.updates = updates
        self._set_offset(offset)
        return True


def settings_of(config: ControllerConfig) -> Settings:
    """Return the controller settings of the configuration's ``controller`` section."""
    return Settings(
        window_requests=config.window_requests,
        window_s=config.window_s,
        min_requests=config.min_requests,
        update_every=config.update_every,
        max_step=config.max_step,
        catch_up=config.catch_up,
        min_offset=config.min_offset,
        max_offset=config.max_offset,
    )


def targets_of(config: Config) -> dict[str, Target]:
    """Return the tenants' targets of a configuration."""
    out = {}
    for tenant, tenant_config in config.tenants.items():
        target = tenant_config.target
        if target is None:
            continue
        if target.strong_share is not None:
            out[tenant] = Target("strong_share", target.strong_share)
        elif target.usd_per_hour is not None:
            out[tenant] = Target("usd_per_hour", target.usd_per_hour)
    return out


class Controllers:
    """The controllers of the tenants with a target; they outlive reloads."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._by_tenant: dict[str, TenantController] = {}

    def get(self, tenant: str) -> TenantController | None:
        """Return the controller of a request's tenant, or None when it has no target."""
        return self._by_tenant.get(tenant or DEFAULT_TENANT)

    def configure(self, config: Config, pricing: Pricing) -> list[str]:
        """Hold a (new) configuration's targets; return the tenants that start cold."""
        # A tenant whose target kind, model version and tiers are unchanged keeps its window
        # and offset (a new target value is aimed at from there); the others have no state
        # in this process (``restore`` takes one from the store).
        settings = settings_of(config.controller)
        old = self._by_tenant
        new = {}
        cold = []
        for tenant, target in targets_of(config).items():
            controller = TenantController(tenant, target, settings, pricing, clock=self._clock)
            if tenant not in old or not controller.restore(old[tenant].state()):
                cold.append(tenant)
            if tenant in old:
                controller.share = old[tenant].share
            new[tenant] = controller
        self._by_tenant = new
        return cold

    def __iter__(self) -> Iterator[TenantController]:
        return iter(self._by_tenant.values())

    def __len__(self) -> int:
        return len(self._by_tenant)

    def snapshots(self) -> list[Snapshot]:
        """Return every controller's state, by tenant name."""
        return [self._by_tenant[t].snapshot() for t in sorted(self._by_tenant)]

    def states(self) -> dict[str, dict[str, Any]]:
        """Return what to persist, by state key (``controller:<tenant>``)."""
        return {STATE_KEY + t: c.state() for t, c in self._by_tenant.items()}

    def restore(self, states: Mapping[str, Any]) -> list[str]:
        """Resume each tenant from its persisted state (by state key) where it fits; return
        the tenants resumed."""
        resumed = []
        for tenant, controller in self._by_tenant.items():
            state = states.get(STATE_KEY + tenant)
            if isinstance(state, Mapping) and controller.restore(state):
                resumed.append(tenant)
        return resumed


def _record(values: Any, n_tiers: int) -> tuple[float, ...]:
    """Return a persisted window record, checked: finite numbers, tiers that exist."""
    if not isinstance(values, list) or len(values) != len(_COLUMNS):
        raise ValueError("a window record has the wrong shape")
    record = tuple(float(v) for v in values)
    if not all(math.isfinite(v) for v in record):
        raise ValueError("a window record holds a non-finite number")
    _, score, decided, answered, forced, low, high, p_tok, c_tok, extra = record
    if not 0.0 <= score <= 1.0 or p_tok < 0 or c_tok < 0 or extra < 0:
        raise ValueError("a window record holds a score or cost out of range")
    if not (0 <= decided < n_tiers and 0 <= answered < n_tiers):
        raise ValueError("a window record names a tier that does not exist")
    if not all(NO_TIER <= v < n_tiers for v in (forced, low, high)):
        raise ValueError("a window record names a tier that does not exist")
    return record


__all__ = [
    "NO_TIER",
    "STATE_KEY",
    "Controllers",
    "Pricing",
    "Served",
    "Settings",
    "Snapshot",
    "Target",
    "TenantController",
    "aim_of",
    "settings_of",
    "shift_thresholds",
    "targets_of",
]
