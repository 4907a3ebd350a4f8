"""Set the score thresholds for a target: a strong share, a quality, or a hard-query bound.

The first threshold (cheapest tier -> the next) is set by the target. The tiers above
share what is left: the strongest tier starts at expected level 3.5 when the score is
built on the level (PRODUCT.md sends level 4 to the expert tier), or takes the top
``top_share`` of the queries above the cheapest tier when asked (or when the score is not
built on the level); any tiers in between split the rest evenly by rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from router.fastpath import LEVELS
from router.training.metrics import pgr_curve

HARD_LEVELS = (3, 4)
# Halfway between level 1 (cheapest tier in PRODUCT.md's table) and level 2 (the next).
PROMISED_LEVEL_EDGE = 1.5
# Halfway between level 3 (strong tier) and level 4 (expert): where the strongest tier starts.
PROMISED_TOP_LEVEL = 3.5
# The strongest tier's share of the queries above the cheapest, when it is not set by level.
DEFAULT_TOP_SHARE = 0.2
# The score a query of a given expected level gets without any outcome lift (None when the
# model's score is not built on the expected level).
ScoreOfLevel = Callable[[float], float | None]


@dataclass(frozen=True, slots=True)
class Target:
    """Where the cheapest tier ends: a strong share alone, or any of the promise's bounds.

    ``quality``: keep at least this share of all-strong quality on the outcome rows;
    ``max_hard_on_cheapest``: at most this share of level 3-4 rows on the cheapest tier;
    ``min_simple_on_cheapest``: at least this share of level-0 rows on it;
    ``max_level_on_cheapest``: the first threshold at most the score of this level, so that
    queries the score places at it or above leave the cheapest tier: the expected level of
    a query of the median length where the gate is shut (one the outcome level or its
    shortness places below can still stay). Together they pick the most saving threshold
    that keeps all but the simple-query share; that one is met when it can be
    (``first_threshold``).
    """

    strong_share: float | None = None
    quality: float | None = None
    max_hard_on_cheapest: float | None = None
    min_simple_on_cheapest: float | None = None
    max_level_on_cheapest: float | None = None

    def __post_init__(self) -> None:
        shares = (self.quality, self.max_hard_on_cheapest, self.min_simple_on_cheapest)
        bounds = [v for v in (*shares, self.max_level_on_cheapest) if v is not None]
        if (self.strong_share is None) == (not bounds):
            raise ValueError(
                "give a strong share alone, or one or more of: quality, hard-on-cheapest "
                "share, simple-on-cheapest share, highest level on the cheapest tier"
            )
        for value in (self.strong_share, *shares):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"the target must lie in [0, 1], got {value}")
        level = self.max_level_on_cheapest
        if level is not None and not 0.0 <= level <= LEVELS - 1:
            raise ValueError(f"the level on the cheapest tier must lie in [0, 4], got {level}")

    @classmethod
    def promise(cls, *, outcomes: bool, hard: bool, simple: bool, levels: bool) -> Target:
        """Return PRODUCT.md's promise for the rows at hand (a strong share of 0.5 if none).

        With levels to learn from, the promise also keeps every query whose expected level
        is 1.5 or more off the cheapest tier: PRODUCT.md sends levels 0-1 there and level 2
        ("Compare plan A vs plan B") to the next tier, so the cheapest tier's edge lies
        halfway.
        """
        if not (outcomes or hard or simple):
            return cls(strong_share=0.5)
        return cls(
            quality=0.98 if outcomes else None,
            max_hard_on_cheapest=0.02 if hard else None,
            min_simple_on_cheapest=0.95 if simple else None,
            max_level_on_cheapest=PROMISED_LEVEL_EDGE if levels else None,
        )

    def describe(self) -> str:
        if self.strong_share is not None:
            return f"strong share {self.strong_share:g}"
        parts = []
        if self.quality is not None:
            parts.append(f"quality {self.quality:g} of all-strong")
        if self.max_hard_on_cheapest is not None:
            parts.append(
                f"at most {self.max_hard_on_cheapest:g} of level 3-4 queries on the cheapest tier"
            )
        if self.min_simple_on_cheapest is not None:
            parts.append(
                f"at least {self.min_simple_on_cheapest:g} of level 0 queries on the cheapest tier"
            )
        if self.max_level_on_cheapest is not None:
            parts.append(
                f"no query scored at level {self.max_level_on_cheapest:g} or more on the "
                "cheapest tier"
            )
        return ", ".join(parts)


def _threshold_for_top(scores: npt.NDArray[np.float64], k: int) -> float:
    """Return the threshold that sends the ``k`` highest scores (and their ties) up."""
    if k <= 0:
        return float(min(1.0, np.nextafter(scores.max(), np.inf))) if len(scores) else 1.0
    ordered = np.sort(scores)[::-1]
    return float(ordered[min(k, len(ordered)) - 1])


def _quality_bound(
    scores: npt.NDArray[np.float64], weak: npt.ArrayLike, strong: npt.ArrayLike, quality: float
) -> float:
    """Return the highest threshold keeping ``quality`` of all-strong on outcome rows."""
    curve = pgr_curve(scores, weak, strong)
    reach = np.flatnonzero(curve.quality >= quality * curve.q_strong - 1e-12)
    return _threshold_for_top(scores, int(reach[0]) if len(reach) else len(scores))


def _hard_bound(
    scores: npt.NDArray[np.float64], hard: npt.NDArray[np.bool_], share: float
) -> float:
    """Return the highest threshold leaving at most ``share`` of the hard rows below it."""
    hard_scores = np.sort(scores[hard])
    allowed = math.floor(share * len(hard_scores) + 1e-9)
    # Everything at or above the (allowed+1)-th lowest hard score goes up.
    return float(hard_scores[min(allowed, len(hard_scores) - 1)])


def _simple_bound(
    scores: npt.NDArray[np.float64], simple: npt.NDArray[np.bool_], share: float
) -> float:
    """Return the lowest threshold keeping at least ``share`` of the simple rows below it."""
    simple_scores = np.sort(scores[simple])
    needed = math.ceil(share * len(simple_scores) - 1e-9)
    if needed <= 0:
        return 0.0
    return float(min(1.0, np.nextafter(simple_scores[needed - 1], np.inf)))


def first_threshold(
    scores: npt.ArrayLike,
    target: Target,
    *,
    weak: npt.ArrayLike | None = None,
    strong: npt.ArrayLike | None = None,
    levels: Sequence[int | None] | None = None,
    outcome: npt.ArrayLike | None = None,
    score_of_level: ScoreOfLevel | None = None,
) -> float:
    """Return the cheapest tier's upper threshold meeting ``target`` on these rows.

    ``weak`` and ``strong`` are the outcomes of the rows marked in ``outcome`` (of every
    row when it is None), ``levels`` the level of every row, ``score_of_level`` the model's
    score of an expected level (for the level bound). With several bounds the threshold is
    the highest (most saving) one that keeps quality, the hard-query share and the level
    bound; the simple-query share is met when that leaves room for it, else it is missed
    (quality first) and the report says by how much.
    """
    s = np.asarray(scores, dtype=np.float64)
    if target.strong_share is not None:
        return _threshold_for_top(s, math.ceil(target.strong_share * len(s) - 1e-9))
    upper: list[float] = []
    if target.quality is not None:
        if weak is None or strong is None:
            raise ValueError("a quality target needs rows with weak and strong outcomes")
        picked = s if outcome is None else s[np.asarray(outcome, dtype=bool)]
        upper.append(_quality_bound(picked, weak, strong, target.quality))
    level_of = None if levels is None else np.array([-1 if v is None else v for v in levels])
    if target.max_hard_on_cheapest is not None:
        if level_of is None:
            raise ValueError("a hard-query target needs rows with levels")
        hard = np.isin(level_of, HARD_LEVELS)
        if not hard.any():
            raise ValueError("no level 3-4 rows to calibrate the hard-query share on")
        upper.append(_hard_bound(s, hard, target.max_hard_on_cheapest))
    if target.max_level_on_cheapest is not None:
        edge = None if score_of_level is None else score_of_level(target.max_level_on_cheapest)
        if edge is None:
            raise ValueError("a level bound needs a model whose score is built on the level")
        upper.append(edge)
    if upper:
        return min(upper)
    assert target.min_simple_on_cheapest is not None
    if level_of is None or not (level_of == 0).any():
        raise ValueError("a simple-query target needs level 0 rows")
    return _simple_bound(s, level_of == 0, target.min_simple_on_cheapest)


def _rank_thresholds(above: npt.NDArray[np.float64], shares: Sequence[float]) -> list[float]:
    """Return, for each share, the threshold sending that share of ``above`` (sorted high
    to low) up."""
    result = []
    for share in shares:
        k = math.ceil(share * len(above) - 1e-9)
        result.append(float(above[k - 1]) if k > 0 and len(above) else 1.0)
    return result


def thresholds_for(
    scores: npt.ArrayLike,
    first: float,
    n_tiers: int,
    top_share: float | None = None,
    top_edge: float | None = None,
) -> tuple[float, ...]:
    """Return increasing thresholds for ``n_tiers`` tiers given the first one.

    The strongest tier starts at the score ``top_edge`` when it is given and above
    ``first`` (the tiers in between split the queries between the two evenly by rank);
    otherwise it takes the top ``top_share`` (0.2 if None) of the queries above the
    cheapest tier, and the tiers in between split the rest evenly by rank.
    """
    if n_tiers < 2:
        raise ValueError("at least two tiers")
    s = np.asarray(scores, dtype=np.float64)
    upper = n_tiers - 2
    result = [first]
    if upper and top_edge is not None and top_edge > first:
        middle = np.sort(s[(s >= first) & (s < top_edge)])[::-1]
        result += _rank_thresholds(middle, [(upper - j) / upper for j in range(1, upper)])
        result.append(top_edge)
    elif upper:
        top = DEFAULT_TOP_SHARE if top_share is None else top_share
        above = np.sort(s[s >= first])[::-1]
        # Share of the above-cheapest rows at tier j+1 or higher.
        shares = [top + (1.0 - top) * (upper - j) / upper for j in range(1, upper + 1)]
        result += _rank_thresholds(above, shares)
    # Keep them strictly increasing and within [0, 1].
    for i in range(1, len(result)):
        if result[i] <= result[i - 1]:
            result[i] = float(np.nextafter(result[i - 1], np.inf))
    if result[-1] > 1.0:
        raise ValueError("the scores leave no room for distinct thresholds; give fewer tiers")
    return tuple(result)
