"""Training end to end in-process: deterministic, calibrated, with held-out numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from router.model import RouterModel, load_model, save_model
from router.routing import Router
from router.training.calibrate import Target
from router.training.data import Row, read_rows
from router.training.train import calibrate_thresholds, default_target, files_digest, train
from tests.unit.training.support import SAMPLE, TIERS, quiet, small_options

OPTIONS = small_options()


def run(
    rows: list[Row], folds: int, target: Target | None = None, **kwargs: Any
) -> tuple[RouterModel, dict[str, Any] | None]:
    return train(
        rows,
        OPTIONS,
        folds=folds,
        target=target,
        tier_names=kwargs.pop("tier_names", TIERS),
        top_share=None,
        log=kwargs.pop("log", quiet),
        **kwargs,
    )


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    return read_rows(SAMPLE)


@pytest.fixture(scope="module")
def trained(rows: list[Row]) -> tuple[RouterModel, dict[str, Any] | None]:
    """The sample trained with 2-fold cross-validation and the default target."""
    return run(rows, folds=2, data_digest=files_digest([SAMPLE]))


def test_training_is_deterministic(
    trained: tuple[RouterModel, dict[str, Any] | None], rows: list[Row], tmp_path: Path
) -> None:
    again, _ = run(rows, folds=2, data_digest=files_digest([SAMPLE]))
    first = save_model(trained[0], tmp_path / "a.npz")
    second = save_model(again, tmp_path / "b.npz")
    assert first.checksum == second.checksum
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_held_out_numbers_with_cv_folds(trained: tuple[RouterModel, dict[str, Any] | None]) -> None:
    model, report = trained
    assert report is not None
    assert report["model_version"] == "model (2-fold cross-validation)"
    assert report["rows"] == 300
    (group,) = report["outcomes"]  # one source with outcomes: no per-source groups
    assert group["name"] == "all" and group["rows"] == 140
    for key in ("apgr", "cpt50", "cpt80", "cost_saved_98", "share_98"):
        assert key in group["model"]
    assert 0.0 < group["model"]["apgr"] < 1.5
    assert report["levels"]["rows"] == 300
    headline = model.info["cross_validation"]
    assert headline["outcomes"]["all"]["operating_point"] == group["operating_point"]
    assert headline["levels"]["hard_on_cheapest"] == report["levels"]["hard_on_cheapest"]
    assert model.info["calibration"]["on"] == "2-fold out-of-fold scores"


def test_the_default_target_holds_on_held_out_scores(
    trained: tuple[RouterModel, dict[str, Any] | None],
) -> None:
    """The promise's bounds that keep quality hold out of fold; the simple one is reported."""
    model, report = trained
    assert report is not None
    promise = Target(
        quality=0.98,
        max_hard_on_cheapest=0.02,
        min_simple_on_cheapest=0.95,
        max_level_on_cheapest=1.5,
    )
    assert model.info["calibration"]["target"] == promise.describe()
    assert model.thresholds[0] <= model.score.score_at_level(1.5)  # type: ignore[operator]
    assert report["levels"]["hard_on_cheapest"] <= 0.02
    assert report["outcomes"][0]["operating_point"]["quality_kept"] >= 0.98 - 1e-12


def test_the_trained_model_is_complete(
    trained: tuple[RouterModel, dict[str, Any] | None], tmp_path: Path
) -> None:
    model, _ = trained
    assert model.tier_names == TIERS
    assert len(model.thresholds) == 2 and model.thresholds[0] < model.thresholds[1]
    assert model.spec.buckets_log2 == 10
    assert model.spec.rules == OPTIONS.rules
    assert model.info["trained_rows"] == 300
    assert model.info["data_sha256"] == files_digest([SAMPLE])
    assert model.info["options"]["buckets_log2"] == 10
    saved = save_model(model, tmp_path / "m.npz")
    loaded = load_model(tmp_path / "m.npz")
    assert loaded.checksum == saved.checksum
    assert Router(loaded).route("Review this contract clause").rules == ("legal",)


def test_without_folds_there_is_no_report(rows: list[Row]) -> None:
    subset = rows[::3]
    model, report = run(subset, folds=0, target=Target(strong_share=0.3))
    assert report is None
    assert "cross_validation" not in model.info
    assert model.info["calibration"]["on"] == "training scores"
    # Calibrated on its own scores: 30% of the rows go above the cheapest tier.
    router = Router(model)
    up = sum(router.route(r.text).tier_index > 0 for r in subset)
    assert abs(up - 30) <= 1  # the boundary row may differ by a rounding of the sum order


@pytest.mark.parametrize("n_tiers", [2, 3, 4, 5])
def test_two_to_five_tiers(rows: list[Row], n_tiers: int) -> None:
    names = ("t0", "t1", "t2", "t3", "t4")[:n_tiers]
    model, _ = run(rows[::5], folds=0, target=Target(strong_share=0.5), tier_names=names)
    assert model.tier_names == names
    assert len(model.thresholds) == n_tiers - 1
    assert list(model.thresholds) == sorted(set(model.thresholds))


def test_held_out_sources(rows: list[Row]) -> None:
    """The leave-one-source-out report: per source, then pooled; it comes first."""
    picked = [r for r in rows if r.source in {"clinc150", "gsm8k_train", "routellm_mmlu"}][::2]
    log: list[str] = []
    _, report = run(picked, folds=2, by_source=True, log=log.append)
    assert report is not None
    assert next(iter(report)) == "held_out_sources"
    held = report["held_out_sources"]
    assert "out-of-fold" in held["protocol"]
    assert set(held["sources"]) == {"clinc150", "gsm8k_train", "routellm_mmlu"}
    for name, numbers in held["sources"].items():
        assert numbers["rows"] == sum(r.source == name for r in picked)
        assert sum(numbers["tier_shares"]) == pytest.approx(1.0)
        assert len(numbers["thresholds"]) == 2
    clinc, mmlu = held["sources"]["clinc150"], held["sources"]["routellm_mmlu"]
    assert clinc["outcomes"] is None and clinc["hard_on_cheapest"] is None
    assert 0.0 <= clinc["simple_on_cheapest"] <= 1.0
    assert 0.0 < mmlu["outcomes"]["apgr"] < 1.5
    assert 0.0 <= mmlu["hard_on_cheapest"] <= 1.0
    assert -1.0 <= mmlu["spearman_score_level"] <= 1.0
    # Held out, the only outcome source leaves none to train on: its gate is shut.
    assert mmlu["gate_open_share"] == 0.0 and mmlu["gate_mean"] < 1e-9
    assert all(0.0 <= n["gate_mean"] <= 1.0 for n in held["sources"].values())
    assert held["pooled"]["rows"] == len(picked)
    assert 0.0 <= held["pooled"]["auc_level_2plus_vs_01"] <= 1.0
    assert any("holding out source 'clinc150'" in line for line in log)


def test_default_target() -> None:
    hard = Row(1, 1, "t", tier=3)
    outcome = Row(2, 2, "t", tier=1, weak=0.0, strong=1.0)
    plain = Row(3, 3, "t", tier=0)
    middle = Row(4, 4, "t", tier=2)
    assert default_target([plain, hard, outcome]) == Target(
        quality=0.98,
        max_hard_on_cheapest=0.02,
        min_simple_on_cheapest=0.95,
        max_level_on_cheapest=1.5,
    )
    assert default_target([middle, outcome]) == Target(quality=0.98, max_level_on_cheapest=1.5)
    assert default_target([Row(5, 5, "t", weak=1.0, strong=1.0)]) == Target(quality=0.98)
    assert default_target([plain]) == Target(min_simple_on_cheapest=0.95)  # one level only
    assert default_target([middle]) == Target(strong_share=0.5)


def test_calibrate_a_quality_target_on_outcome_rows_only() -> None:
    rows = [
        Row(1, 1, "a", tier=0),  # no outcome: ignored by a quality target
        Row(2, 2, "b", weak=0.0, strong=1.0),
        Row(3, 3, "c", weak=1.0, strong=1.0),
        Row(4, 4, "d", tier=1),
    ]
    scores = np.array([0.99, 0.6, 0.2, 0.98])
    (threshold,) = calibrate_thresholds(scores, rows, Target(quality=1.0), 2, 0.2)
    assert threshold == 0.6


def test_files_digest(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    assert files_digest([a, b]) != files_digest([b, a])
    assert len(files_digest([a])) == 64


def test_too_few_distinct_texts_for_the_folds_is_a_clear_error(rows: list[Row]) -> None:
    same_text = [Row(line=i + 1, id=i, text="the same text", tier=i % 5) for i in range(20)]
    with pytest.raises(ValueError, match="do not fill 2 cross-validation folds"):
        run(same_text, folds=2)
