"""Thresholds for a target: Target validation, first_threshold, thresholds_for 2..5 tiers."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.model import ScoreFormula
from router.routing import check_thresholds, tier_for_score
from router.training.calibrate import Target, first_threshold, thresholds_for
from router.training.data import Row
from router.training.generalisation import calibrate
from router.training.metrics import pgr_curve

SCORES = np.linspace(0.05, 0.95, 10)  # ten distinct scores


def above_mask(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Return which scores a threshold sends above the cheapest tier."""
    return np.array([tier_for_score(float(s), (threshold,)) == 1 for s in scores], dtype=bool)


def above(scores: np.ndarray, threshold: float) -> int:
    """Return how many scores a threshold sends above the cheapest tier."""
    return int(above_mask(scores, threshold).sum())


# A score of exactly 1.0 reaches every threshold in [0, 1], so no threshold keeps it on the
# cheapest tier: the generated scores stay below 1 (a sigmoid's never reach it in practice).
UNIT_SCORES = st.floats(0.0, 1.0, exclude_max=True)


# -- Target ----------------------------------------------------------------------------------


ONE_OR_BOUNDS = "give a strong share alone, or one or more of"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, ONE_OR_BOUNDS),
        ({"strong_share": 0.3, "quality": 0.98}, ONE_OR_BOUNDS),
        ({"strong_share": 0.3, "max_hard_on_cheapest": 0.01}, ONE_OR_BOUNDS),
        ({"strong_share": 0.3, "min_simple_on_cheapest": 0.9}, ONE_OR_BOUNDS),
        ({"strong_share": 1.2}, "must lie in [0, 1], got 1.2"),
        ({"quality": -0.1}, "must lie in [0, 1]"),
        ({"max_hard_on_cheapest": 2.0}, "must lie in [0, 1]"),
        ({"quality": 0.98, "min_simple_on_cheapest": 1.5}, "must lie in [0, 1], got 1.5"),
        ({"strong_share": 0.3, "max_level_on_cheapest": 1.5}, ONE_OR_BOUNDS),
        ({"max_level_on_cheapest": 4.5}, "level on the cheapest tier must lie in [0, 4]"),
        ({"max_level_on_cheapest": -0.5}, "got -0.5"),
    ],
)
def test_target_validation(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError) as info:
        Target(**kwargs)
    assert message in str(info.value)


def test_target_descriptions() -> None:
    assert Target(strong_share=0.3).describe() == "strong share 0.3"
    assert Target(quality=0.98).describe() == "quality 0.98 of all-strong"
    assert Target(max_hard_on_cheapest=0.01).describe() == (
        "at most 0.01 of level 3-4 queries on the cheapest tier"
    )
    assert Target(quality=0.98, min_simple_on_cheapest=0.95).describe() == (
        "quality 0.98 of all-strong, at least 0.95 of level 0 queries on the cheapest tier"
    )
    assert Target(max_level_on_cheapest=1.5).describe() == (
        "no query scored at level 1.5 or more on the cheapest tier"
    )
    assert Target(strong_share=0.0).strong_share == 0.0  # zero is a target, not "none"
    assert Target(max_level_on_cheapest=0.0).max_level_on_cheapest == 0.0


# -- strong share ----------------------------------------------------------------------------


@pytest.mark.parametrize(("share", "up"), [(0.0, 0), (0.1, 1), (0.3, 3), (0.25, 3), (1.0, 10)])
def test_strong_share_sends_that_share_up(share: float, up: int) -> None:
    threshold = first_threshold(SCORES, Target(strong_share=share))
    assert above(SCORES, threshold) == up
    assert 0.0 <= threshold <= 1.0


def test_strong_share_threshold_is_a_score_itself() -> None:
    assert first_threshold(SCORES, Target(strong_share=0.3)) == SCORES[7]
    assert first_threshold(SCORES, Target(strong_share=1.0)) == SCORES[0]


def test_strong_share_with_ties_sends_the_whole_tie_up() -> None:
    scores = np.array([0.1, 0.2, 0.5, 0.5, 0.5, 0.9])
    assert above(scores, first_threshold(scores, Target(strong_share=0.3))) == 4


@settings(max_examples=200, deadline=None)
@given(
    scores=st.lists(UNIT_SCORES, min_size=1, max_size=50, unique=True),
    share=st.floats(0.0, 1.0),
)
def test_strong_share_property(scores: list[float], share: float) -> None:
    s = np.array(scores)
    assert above(s, first_threshold(s, Target(strong_share=share))) == math.ceil(
        share * len(s) - 1e-9
    )


# -- quality ---------------------------------------------------------------------------------

WEAK = np.array([0.0, 0.0, 1.0, 0.0, 1.0, 0.0])
STRONG = np.array([1.0, 1.0, 1.0, 0.0, 1.0, 1.0])  # q_strong 5/6, q_weak 2/6
QSCORES = np.array([0.9, 0.7, 0.2, 0.1, 0.3, 0.5])  # helped rows: 0.9, 0.7, 0.5


@pytest.mark.parametrize(("quality", "up"), [(1.0, 3), (0.9, 3), (0.8, 2), (0.6, 1), (0.4, 0)])
def test_quality_target_by_hand(quality: float, up: int) -> None:
    """All-strong quality 5/6; each helped row sent up adds 1/6 to the weak 2/6."""
    threshold = first_threshold(QSCORES, Target(quality=quality), weak=WEAK, strong=STRONG)
    assert above(QSCORES, threshold) == up
    routed = np.where(above_mask(QSCORES, threshold), STRONG, WEAK).mean()
    assert routed >= quality * STRONG.mean() - 1e-12


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(UNIT_SCORES, st.sampled_from([0.0, 1.0]), st.sampled_from([0.0, 1.0])),
        min_size=1,
        max_size=40,
        unique_by=lambda r: r[0],
    ),
    quality=st.floats(0.5, 1.0),
)
def test_quality_target_is_met_with_the_fewest_rows_up(
    rows: list[tuple[float, float, float]], quality: float
) -> None:
    s, w, st_ = (np.array(c) for c in zip(*rows, strict=True))
    threshold = first_threshold(s, Target(quality=quality), weak=w, strong=st_)
    up = above_mask(s, threshold)
    target = quality * st_.mean() - 1e-12
    assert np.where(up, st_, w).mean() >= target
    # Exactly as many rows go up as the PGR curve needs to first reach the target.
    curve = pgr_curve(s, w, st_)
    assert up.sum() == np.flatnonzero(curve.quality >= target)[0]


def test_quality_target_needs_outcomes() -> None:
    with pytest.raises(ValueError, match="a quality target needs rows with weak and strong"):
        first_threshold(QSCORES, Target(quality=0.9))


# -- hard queries on the cheapest tier -------------------------------------------------------


def test_hard_target_by_hand() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    levels = [3, 0, 4, 1, 3, None, 4, 2]  # hard rows score 0.1, 0.3, 0.5, 0.7
    cheap_hard = {
        0.0: 0,
        0.24: 0,  # floor(0.96) = 0 allowed
        0.25: 1,
        0.5: 2,
        0.75: 3,
        1.0: 3,  # the highest hard row still goes up
    }
    for z, allowed in cheap_hard.items():
        threshold = first_threshold(scores, Target(max_hard_on_cheapest=z), levels=levels)
        hard_cheap = sum(
            1 for s, lvl in zip(scores, levels, strict=True) if lvl in (3, 4) and s < threshold
        )
        assert hard_cheap == allowed, z


@pytest.mark.parametrize(
    ("levels", "message"),
    [(None, "a hard-query target needs rows with levels"), ([0, 1, 2], "no level 3-4 rows")],
)
def test_hard_target_needs_hard_rows(levels: list[int] | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        first_threshold([0.1, 0.2, 0.3], Target(max_hard_on_cheapest=0.01), levels=levels)


# -- the level bound -------------------------------------------------------------------------


def _score_of_level(level: float) -> float:
    """The shipped formula's shape: expected level 2 at score 1/2."""
    return 1.0 / (1.0 + math.exp(-1.5 * (level - 2.0)))


def test_level_bound_keeps_that_level_off_the_cheapest_tier() -> None:
    levels = np.array([0.0, 0.5, 1.0, 1.4, 1.5, 1.6, 2.0, 3.0])
    scores = np.array([_score_of_level(v) for v in levels])
    threshold = first_threshold(
        scores, Target(max_level_on_cheapest=1.5), score_of_level=_score_of_level
    )
    assert threshold == _score_of_level(1.5)
    assert above_mask(scores, threshold).tolist() == (levels >= 1.5).tolist()


def constant(score: float) -> Callable[[float], float]:
    """Return a score_of_level that puts the level edge at ``score`` whatever the level."""
    return lambda _level: score


def test_level_bound_binds_only_below_the_other_bounds() -> None:
    # Quality 1.0 alone sets 0.5 (test_each_bound_alone); a level edge at score 0.45 is lower
    # and binds, one at score 0.62 is higher and does not.
    for edge, expected in ((0.45, 0.45), (0.62, 0.5)):
        threshold = first_threshold(
            P_SCORES,
            Target(quality=1.0, max_level_on_cheapest=1.5),
            weak=P_WEAK,
            strong=P_STRONG,
            outcome=P_OUTCOME,
            score_of_level=constant(edge),
        )
        assert threshold == expected


@pytest.mark.parametrize("score_of_level", [None, lambda _level: None])
def test_level_bound_needs_a_score_built_on_the_level(score_of_level: object) -> None:
    with pytest.raises(ValueError, match="a level bound needs a model whose score is built"):
        first_threshold(
            [0.1, 0.2],
            Target(max_level_on_cheapest=1.5),
            score_of_level=score_of_level,  # type: ignore[arg-type]
        )


# -- thresholds_for --------------------------------------------------------------------------

MANY = np.random.default_rng(0).random(1000)


@pytest.mark.parametrize("n_tiers", [2, 3, 4, 5])
def test_thresholds_for_each_tier_count(n_tiers: int) -> None:
    first = float(np.quantile(MANY, 0.5))
    thresholds = thresholds_for(MANY, first, n_tiers, top_share=0.2)
    assert len(thresholds) == n_tiers - 1
    assert thresholds[0] == first
    assert check_thresholds(thresholds, n_tiers) == thresholds  # in [0, 1], increasing
    tiers = np.array([tier_for_score(float(s), thresholds) for s in MANY])
    up = tiers > 0
    assert up.mean() == pytest.approx(0.5, abs=0.002)
    if n_tiers > 2:
        # The strongest tier takes the top 20% of the queries above the cheapest.
        assert (tiers == n_tiers - 1).sum() / up.sum() == pytest.approx(0.2, abs=0.005)
    for tier in range(n_tiers):
        assert (tiers == tier).any()


def test_thresholds_for_four_tiers_split_the_middle_evenly() -> None:
    first = float(np.quantile(MANY, 0.5))
    thresholds = thresholds_for(MANY, first, 4, top_share=0.2)
    tiers = np.array([tier_for_score(float(s), thresholds) for s in MANY])
    shares = np.bincount(tiers, minlength=4)[1:] / (tiers > 0).sum()
    # Shares at tier >= 2: 0.2 + 0.8 * 1/2 = 0.6, at tier 3: 0.2; so 0.4 / 0.4 / 0.2.
    assert shares == pytest.approx([0.4, 0.4, 0.2], abs=0.005)


@pytest.mark.parametrize("n_tiers", [3, 4, 5])
def test_a_top_edge_starts_the_strongest_tier_there(n_tiers: int) -> None:
    first = float(np.quantile(MANY, 0.5))
    thresholds = thresholds_for(MANY, first, n_tiers, top_edge=0.9)
    assert thresholds[0] == first and thresholds[-1] == 0.9
    assert check_thresholds(thresholds, n_tiers) == thresholds
    tiers = np.array([tier_for_score(float(s), thresholds) for s in MANY])
    assert ((tiers == n_tiers - 1) == (MANY >= 0.9)).all()
    # The tiers between split the queries from the first threshold to the edge evenly.
    middle = np.bincount(tiers, minlength=n_tiers)[1:-1]
    assert middle == pytest.approx([middle.mean()] * (n_tiers - 2), abs=1)


def test_a_top_edge_below_the_first_threshold_falls_back_to_the_top_share() -> None:
    first = float(np.quantile(MANY, 0.5))
    assert thresholds_for(MANY, first, 3, top_edge=first / 2) == thresholds_for(MANY, first, 3)


def test_calibration_starts_the_strongest_tier_at_expected_level_3_5() -> None:
    """PRODUCT.md: level 4 goes to the expert tier; a top share given overrides the level."""
    formula = ScoreFormula(level_weight=1.5, bias=-3.0)
    rows = [Row(i, f"r{i}", "q", tier=i % 5) for i in range(len(MANY))]
    target = Target(strong_share=0.5)
    by_level = calibrate(MANY, rows, target, 3, None, formula.score_at_level)
    assert by_level[1] == formula.score_at_level(3.5)
    by_share = calibrate(MANY, rows, target, 3, 0.2, formula.score_at_level)
    assert by_share == thresholds_for(MANY, by_level[0], 3, top_share=0.2)
    assert calibrate(MANY, rows, target, 3, None) == by_share


@pytest.mark.parametrize("n_tiers", [2, 3, 4, 5])
def test_thresholds_stay_strictly_increasing_on_tied_scores(n_tiers: int) -> None:
    scores = np.array([0.5] * 20 + [0.2] * 5)
    thresholds = thresholds_for(scores, 0.5, n_tiers)
    assert check_thresholds(thresholds, n_tiers) == thresholds
    assert all(b > a for a, b in itertools.pairwise(thresholds))


def test_thresholds_for_nothing_above_the_first() -> None:
    scores = np.array([0.1, 0.2])
    thresholds = thresholds_for(scores, 0.3, 3)
    assert thresholds[0] == 0.3
    assert check_thresholds(thresholds, 3) == thresholds


def test_thresholds_for_rejects() -> None:
    with pytest.raises(ValueError, match="at least two tiers"):
        thresholds_for(MANY, 0.5, 1)
    with pytest.raises(ValueError, match="no room for distinct thresholds"):
        thresholds_for(np.array([1.0, 1.0]), 1.0, 3)


# -- the promise: several bounds at once -----------------------------------------------------

# Eight rows: levels, outcomes on four of them (weak, strong), and scores.
P_SCORES = np.array([0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
P_LEVELS = [0, 0, 3, 1, 0, 4, 2, 3]
P_OUTCOME = np.array([False, False, True, True, False, True, True, False])
P_WEAK = np.array([1.0, 1.0, 0.0, 0.0])  # rows at 0.2, 0.3, 0.5, 0.6
P_STRONG = np.array([1.0, 1.0, 1.0, 1.0])


def _promise(**bounds: float) -> float:
    return first_threshold(
        P_SCORES,
        Target(**bounds),
        weak=P_WEAK,
        strong=P_STRONG,
        levels=P_LEVELS,
        outcome=P_OUTCOME,
    )


def test_each_bound_alone() -> None:
    # Quality 1.0 needs the two weak-wrong outcome rows (0.5, 0.6) up: threshold 0.5.
    assert _promise(quality=1.0) == 0.5
    # Hard rows score 0.2, 0.5, 0.7: none may stay cheap, so the lowest goes up.
    assert _promise(max_hard_on_cheapest=0.0) == 0.2
    # Level 0 rows score 0.05, 0.1, 0.4: all of them cheap needs a threshold above 0.4.
    simple = _promise(min_simple_on_cheapest=1.0)
    assert 0.4 < simple <= np.nextafter(0.4, 1.0)
    assert 0.1 < _promise(min_simple_on_cheapest=0.6) <= 0.4  # two of three


def test_the_promise_takes_the_most_saving_threshold_that_keeps_quality_and_hard() -> None:
    assert _promise(quality=1.0, max_hard_on_cheapest=0.34) == 0.5  # quality binds
    assert _promise(quality=1.0, max_hard_on_cheapest=0.0) == 0.2  # the hard bound binds
    # The simple bound never lowers what quality allows: it is met when there is room...
    assert _promise(quality=1.0, min_simple_on_cheapest=0.6) == 0.5
    # ...and missed, quality first, when there is not (the report says by how much).
    assert _promise(quality=1.0, max_hard_on_cheapest=0.0, min_simple_on_cheapest=1.0) == 0.2


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(UNIT_SCORES, st.sampled_from([0, 1, 2, 3, 4]), st.booleans()),
        min_size=3,
        max_size=40,
        unique_by=lambda r: r[0],
    ),
    quality=st.floats(0.5, 1.0),
    hard_share=st.floats(0.0, 0.2),
)
def test_the_promise_holds_on_the_rows_it_was_set_on(
    rows: list[tuple[float, int, bool]], quality: float, hard_share: float
) -> None:
    s = np.array([r[0] for r in rows])
    levels = [r[1] for r in rows]
    weak_right = np.array([r[2] for r in rows], dtype=float)
    strong = np.ones(len(rows))
    hard = np.isin(levels, (3, 4))
    if not hard.any():
        return
    threshold = first_threshold(
        s,
        Target(quality=quality, max_hard_on_cheapest=hard_share),
        weak=weak_right,
        strong=strong,
        levels=levels,
    )
    up = above_mask(s, threshold)
    assert np.where(up, strong, weak_right).mean() >= quality * strong.mean() - 1e-12
    assert (~up[hard]).sum() <= math.floor(hard_share * hard.sum() + 1e-9)
