"""The routing core: score a query with the model, pick a tier with the thresholds.

``Router`` is the Python API (``Router.default().route("...")``); the gRPC service, the
CLI and the benchmarks all go through it.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.domain import ChatMessage, DecisionReason
from router.fastpath import IMPLEMENTATION, Implementation
from router.model import RouterModel, default_model_path, load_model


@dataclass(frozen=True, slots=True)
class Scored:
    """What the model says of a query: difficulty score, level probabilities, rules fired."""

    score: float
    levels: tuple[float, ...]
    rules: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    """A scored query and the tier its score picks."""

    tier: str
    tier_index: int
    score: float
    levels: tuple[float, ...]
    rules: tuple[str, ...]

    def as_json(self, row_id: Any = None) -> dict[str, Any]:
        """Return the decision in the fixed ``modelrouter route`` JSON shape."""
        return {
            "id": row_id,
            "tier": self.tier,
            "tier_index": self.tier_index,
            "score": self.score,
            "levels": list(self.levels),
            "rules": list(self.rules),
        }


_new_object = object.__new__
# The setters of Decision's slot descriptors, which a frozen dataclass leaves callable.
_set_tier = vars(Decision)["tier"].__set__
_set_tier_index = vars(Decision)["tier_index"].__set__
_set_score = vars(Decision)["score"].__set__
_set_levels = vars(Decision)["levels"].__set__
_set_rules = vars(Decision)["rules"].__set__


def tier_for_score(score: float, thresholds: Sequence[float]) -> int:
    """Return the tier index a score picks: the number of thresholds it reaches."""
    return bisect.bisect_right(thresholds, score)


def choose_tier(
    score: float,
    thresholds: Sequence[float],
    *,
    margin: float | Sequence[float] = 0.0,
    forced: int | None = None,
    min_index: int | None = None,
    max_index: int | None = None,
) -> tuple[int, DecisionReason]:
    """Return the tier index and the reason, applying the margin rule and caller hints.

    A score within the margin below the next threshold climbs one tier; ``margin`` is one
    value for every threshold or one per threshold (a tier's own margin). A forced tier
    wins over the score; ``min_index`` and ``max_index`` then clamp the result.
    """
    if forced is not None:
        index, reason = forced, DecisionReason.FORCED
    else:
        index, reason = tier_for_score(score, thresholds), DecisionReason.SCORE
        if index < len(thresholds):
            # A tuple, not `float | int`: that union would be built again on every call.
            below = margin if isinstance(margin, (float, int)) else margin[index]
            if below > 0.0 and score >= thresholds[index] - below:
                index, reason = index + 1, DecisionReason.MARGIN
    if min_index is not None and index < min_index:
        index, reason = min_index, DecisionReason.MIN_TIER
    if max_index is not None and index > max_index:
        index, reason = max_index, DecisionReason.MAX_TIER
    return index, reason


def check_thresholds(thresholds: Sequence[float], n_tiers: int) -> tuple[float, ...]:
    """Return the thresholds as a tuple; raise ValueError unless they fit ``n_tiers`` tiers."""
    result = tuple(float(t) for t in thresholds)
    if len(result) != n_tiers - 1:
        raise ValueError(f"{n_tiers} tiers need {n_tiers - 1} thresholds, got {len(result)}")
    if any(not (0.0 <= t <= 1.0) or math.isnan(t) for t in result):
        raise ValueError(f"thresholds must lie in [0, 1]: {list(result)}")
    if any(b <= a for a, b in itertools.pairwise(result)):
        raise ValueError(f"thresholds must increase: {list(result)}")
    return result


class Router:
    """Score queries with a routing model and map scores to tiers."""

    def __init__(
        self,
        model: RouterModel,
        *,
        tier_names: Sequence[str] | None = None,
        thresholds: Sequence[float] | None = None,
    ) -> None:
        self.model = model
        self.tier_names = tuple(tier_names if tier_names is not None else model.tier_names)
        self.thresholds = check_thresholds(
            thresholds if thresholds is not None else model.thresholds, len(self.tier_names)
        )
        self._fastpath = model.fastpath()

    @classmethod
    def default(cls) -> Router:
        """Return a router over the shipped model and its calibrated three-tier thresholds."""
        return cls(load_model(default_model_path()))

    @classmethod
    def load(cls, path: str | Path) -> Router:
        """Return a router over the model file at ``path`` and its own thresholds."""
        return cls(load_model(path))

    @property
    def version(self) -> str:
        return self.model.version

    @property
    def implementation(self) -> Implementation:
        return IMPLEMENTATION

    def score(self, text: str, context: str = "", context_weight: float = 0.0) -> Scored:
        """Score a query; ``context`` (earlier chat turns) counts ``context_weight`` as much."""
        score, levels, mask = self._fastpath.score(text, context, context_weight)
        return Scored(score, levels, self.model.rule_names_for(mask))

    def score_chat(
        self,
        messages: Sequence[ChatMessage],
        context_weight: float,
        last_user: int | None = None,
    ) -> Scored:
        """Score a chat: its last user turn (found, unless given), the other turns as context."""
        if last_user is None:
            last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
            if last_user < 0:
                raise ValueError("messages: no turn has role 'user'")
        context = "\n".join(m.content for i, m in enumerate(messages) if i != last_user)
        return self.score(messages[last_user].content, context, context_weight)

    def route(self, text: str) -> Decision:
        """Score a query and return the tier its score picks."""
        score, levels, mask = self._fastpath.score(text)
        index = bisect.bisect_right(self.thresholds, score)  # tier_for_score, inlined
        # Decision's slots filled directly: its frozen __init__ goes through
        # object.__setattr__ field by field, 0.5 us of a 5 us decision.
        decision = _new_object(Decision)
        _set_tier(decision, self.tier_names[index])
        _set_tier_index(decision, index)
        _set_score(decision, score)
        _set_levels(decision, levels)
        _set_rules(decision, self.model.rule_names_for(mask) if mask else ())
        return decision
