"""Set the score thresholds for a target: a strong share, a quality, or a hard-query bound.

The first threshold (cheapest tier -> the next) is set by the target. The tiers above
share what is left: the strongest tier takes the top ``top_share`` of the queries above
the cheapest tier, and any tiers in between split the rest evenly by rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from router.training.metrics import pgr_curve

HARD_LEVELS = (3, 4)


@dataclass(frozen=True, slots=True)
class Target:
    """Exactly one of the three targets."""

    strong_share: float | None = None
    quality: float | None = None
    max_hard_on_cheapest: float | None = None

    def __post_init__(self) -> None:
        given = [
            v for v in (self.strong_share, self.quality, self.max_hard_on_cheapest) if v is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "give exactly one target: strong share, quality or hard-on-cheapest share"
            )
        if not 0.0 <= given[0] <= 1.0:
            raise ValueError(f"the target must lie in [0, 1], got {given[0]}")

    def describe(self) -> str:
        if self.strong_share is not None:
            return f"strong share {self.strong_share:g}"
        if self.quality is not None:
            return f"quality {self.quality:g} of all-strong"
        return f"at most {self.max_hard_on_cheapest:g} of level 3-4 queries on the cheapest tier"


def _threshold_for_top(scores: npt.NDArray[np.float64], k: int) -> float:
    """Return the threshold that sends the ``k`` highest scores (and their ties) up."""
    if k <= 0:
        return float(min(1.0, np.nextafter(scores.max(), np.inf))) if len(scores) else 1.0
    ordered = np.sort(scores)[::-1]
    return float(ordered[min(k, len(ordered)) - 1])


def first_threshold(
    scores: npt.ArrayLike,
    target: Target,
    *,
    weak: npt.ArrayLike | None = None,
    strong: npt.ArrayLike | None = None,
    levels: Sequence[int | None] | None = None,
) -> float:
    """Return the cheapest tier's upper threshold meeting ``target`` on these rows."""
    s = np.asarray(scores, dtype=np.float64)
    if target.strong_share is not None:
        return _threshold_for_top(s, math.ceil(target.strong_share * len(s) - 1e-9))
    if target.quality is not None:
        if weak is None or strong is None:
            raise ValueError("a quality target needs rows with weak and strong outcomes")
        curve = pgr_curve(s, weak, strong)
        reach = np.flatnonzero(curve.quality >= target.quality * curve.q_strong - 1e-12)
        return _threshold_for_top(s, int(reach[0]) if len(reach) else len(s))
    assert target.max_hard_on_cheapest is not None
    if levels is None:
        raise ValueError("a hard-query target needs rows with levels")
    hard = np.array([lvl in HARD_LEVELS for lvl in levels])
    if not hard.any():
        raise ValueError("no level 3-4 rows to calibrate the hard-query share on")
    hard_scores = np.sort(s[hard])
    allowed = math.floor(target.max_hard_on_cheapest * len(hard_scores) + 1e-9)
    # Everything at or above the (allowed+1)-th lowest hard score goes up.
    return float(hard_scores[min(allowed, len(hard_scores) - 1)])


def thresholds_for(
    scores: npt.ArrayLike, first: float, n_tiers: int, top_share: float = 0.2
) -> tuple[float, ...]:
    """Return increasing thresholds for ``n_tiers`` tiers given the first one."""
    if n_tiers < 2:
        raise ValueError("at least two tiers")
    s = np.asarray(scores, dtype=np.float64)
    above = np.sort(s[s >= first])[::-1]
    result = [first]
    upper = n_tiers - 2
    for j in range(1, upper + 1):
        # Share of the above-cheapest rows at tier j+1 or higher.
        share = top_share + (1.0 - top_share) * (upper - j) / upper
        k = math.ceil(share * len(above) - 1e-9)
        t = float(above[k - 1]) if k > 0 and len(above) else 1.0
        result.append(t)
    # Keep them strictly increasing and within [0, 1].
    for i in range(1, len(result)):
        if result[i] <= result[i - 1]:
            result[i] = float(np.nextafter(result[i - 1], np.inf))
    if result[-1] > 1.0:
        raise ValueError("the scores leave no room for distinct thresholds; give fewer tiers")
    return tuple(result)
