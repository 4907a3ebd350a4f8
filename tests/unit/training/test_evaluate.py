"""The evaluation report on rows with known outcomes and levels, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from router.routing import Router
from router.training.data import Row
from router.training.evaluate import ScoredRows, build_report, evaluate, format_report, score_rows
from router.training.metrics import cost_ratio
from tests.support import random_model

ROWS = [
    Row(1, "r0", "a", tier=3, weak=0.0, strong=1.0, source="m"),
    Row(2, "r1", "b", tier=1, weak=1.0, strong=1.0, source="m"),
    Row(3, "r2", "c", tier=4, weak=0.0, strong=0.0, source="g"),
    Row(4, "r3", "d", tier=2, weak=0.0, strong=1.0, source="g"),
    Row(5, "r4", "e", tier=0, source="c"),
    Row(6, "r5", "f", source="c"),  # neither a level nor outcomes
]
THRESHOLDS = (0.3, 0.85)
SCORES = np.array([0.9, 0.2, 0.4, 0.8, 0.1, 0.5])
PREDICTED = [3, 1, 3, 2, 0, 0]


def scored() -> ScoredRows:
    levels = np.full((6, 5), 0.05)
    levels[np.arange(6), PREDICTED] = 0.8
    tiers = np.searchsorted(THRESHOLDS, SCORES, side="right").astype(np.int64)
    assert tiers.tolist() == [2, 0, 1, 1, 0, 1]
    return ScoredRows(SCORES, levels, tiers)


@pytest.fixture
def report() -> dict[str, object]:
    return build_report(
        scored(),
        ROWS,
        version="v1",
        tier_names=("cheap", "strong", "expert"),
        thresholds=THRESHOLDS,
    )


def test_traffic(report: dict[str, object]) -> None:
    assert report["model_version"] == "v1"
    assert report["tiers"] == ["cheap", "strong", "expert"]
    assert report["thresholds"] == [0.3, 0.85]
    assert report["rows"] == 6
    assert report["traffic"] == {
        "above_cheapest": pytest.approx(4 / 6),
        "tier_counts": [2, 3, 1],
        "cost_saved": pytest.approx(1 - cost_ratio(4 / 6)),
    }


def test_outcomes_of_all_rows_by_hand(report: dict[str, object]) -> None:
    groups = report["outcomes"]
    assert isinstance(groups, list)
    assert [g["name"] for g in groups] == ["all", "g", "m"]
    everything = groups[0]
    assert everything["rows"] == 4
    assert (everything["q_weak"], everything["q_strong"]) == (0.25, 0.75)
    # Scores 0.9 (gain 1), 0.8 (gain 1), 0.4 (0), 0.2 (0): the oracle's order.
    assert everything["model"] == {
        "apgr": 0.75,
        "cpt50": 0.25,
        "cpt80": 0.5,
        "cost_saved_98": pytest.approx(1 - cost_ratio(0.5)),
        "share_98": 0.5,
    }
    assert everything["oracle"] == everything["model"]
    # Random: PGR(c) = c, so 98% quality (0.735 of 0.25..0.75) needs 97% of the calls.
    assert everything["random"] == {
        "apgr": 0.5,
        "cpt50": 0.5,
        "cpt80": 0.8,
        "cost_saved_98": pytest.approx(1 - cost_ratio(0.97)),
        "share_98": pytest.approx(0.97),
    }
    assert everything["always_weak"] == {
        "strong_share": 0.0,
        "quality_kept": pytest.approx(1 / 3),
        "cost_saved": pytest.approx(1 - cost_ratio(0.0)),
    }
    assert everything["always_strong"] == {
        "strong_share": 1.0,
        "quality_kept": 1.0,
        "cost_saved": pytest.approx(0.0, abs=1e-15),
    }
    # Tiers 2, 0, 1, 1: rows 0, 2, 3 get the strong model (1, 0, 1), row 1 the weak (1).
    assert everything["operating_point"] == {
        "strong_share": 0.75,
        "quality": 0.75,
        "quality_kept": 1.0,
        "cost_saved": pytest.approx(1 - cost_ratio(0.75)),
    }
    assert everything["curve"] == {
        "shares": [0.0, 0.25, 0.5, 0.75, 1.0],
        "pgr": [0.0, 0.5, 1.0, 1.0, 1.0],
    }


def test_outcomes_per_source(report: dict[str, object]) -> None:
    groups = report["outcomes"]
    assert isinstance(groups, list)
    g, m = groups[1], groups[2]
    assert (g["rows"], g["q_weak"], g["q_strong"]) == (2, 0.0, 0.5)
    assert g["model"]["apgr"] == 0.75  # 0.8 (gain 1) before 0.4 (gain 0)
    assert (m["rows"], m["q_weak"], m["q_strong"]) == (2, 0.5, 1.0)
    assert m["operating_point"]["strong_share"] == 0.5  # row 0 up, row 1 cheapest


def test_levels_by_hand(report: dict[str, object]) -> None:
    levels = report["levels"]
    assert isinstance(levels, dict)
    assert levels["rows"] == 5  # row 5 has no level
    confusion = np.zeros((5, 5), dtype=int)
    for true, predicted in [(3, 3), (1, 1), (4, 3), (2, 2), (0, 0)]:
        confusion[true, predicted] += 1
    assert levels["confusion"] == confusion.tolist()
    assert levels["level_accuracy"] == 0.8
    assert levels["tiers_by_level"] == [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 0]]
    assert levels["hard_on_cheapest"] == 0.0
    assert levels["level0_on_cheapest"] == 1.0
    assert levels["level01_on_cheapest"] == 1.0


def test_rows_without_outcomes_or_levels() -> None:
    rows = [Row(1, 1, "a", tier=0), Row(2, 2, "b", tier=1)]
    sub = scored()
    two = ScoredRows(sub.scores[:2], sub.levels[:2], sub.tiers[:2])
    report = build_report(two, rows, version="v", tier_names=("a", "b", "c"), thresholds=THRESHOLDS)
    assert report["outcomes"] == []
    assert report["levels"]["hard_on_cheapest"] is None  # no level 3-4 row to judge
    bare = [Row(1, 1, "a"), Row(2, 2, "b")]
    assert (
        build_report(two, bare, version="v", tier_names=("a", "b", "c"), thresholds=THRESHOLDS)[
            "levels"
        ]
        is None
    )


def test_format_report_shows_the_numbers(report: dict[str, object]) -> None:
    text = format_report(report)
    assert "model v1: tiers cheap, strong, expert at thresholds 0.3000, 0.8500" in text
    assert "6 rows; 66.7% routed above the cheapest tier" in text
    assert "outcomes [all]: 4 rows, weak quality 0.2500, strong quality 0.7500" in text
    assert "  model            0.750     25.0%     50.0%" in text
    assert "  random           0.500     50.0%     80.0%" in text
    assert "at the model's thresholds: strong share 75.0%, quality kept 100.0%" in text
    assert "levels: 5 rows, level accuracy 80.0%" in text
    assert "level 3-4 on the cheapest tier: 0.0%" in text


def test_evaluate_scores_with_the_router() -> None:
    router = Router(random_model())
    rows = [
        Row(1, 1, "What are your business hours?", tier=0),
        Row(2, 2, "Review this contract clause", tier=4, weak=0.0, strong=1.0),
        Row(3, 3, "2 + 2?", tier=0, weak=1.0, strong=1.0),
    ]
    report, result = evaluate(router, rows)
    assert report["model_version"] == router.version
    assert report["thresholds"] == list(router.thresholds)
    for i, row in enumerate(rows):
        decision = router.route(row.text)
        assert result.scores[i] == decision.score
        assert tuple(result.levels[i]) == decision.levels
        assert result.tiers[i] == decision.tier_index
    assert score_rows(router, rows).scores.tolist() == result.scores.tolist()
