"""``modelrouter train``: featurize, cross-validate, fit, calibrate, save."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from router.model import RouterModel
from router.routing import tier_for_score
from router.training.calibrate import HARD_LEVELS, ScoreOfLevel, Target
from router.training.data import Row
from router.training.evaluate import ScoredRows, build_report
from router.training.fit import (
    Log,
    TrainOptions,
    build_model,
    cross_validate,
    featurize,
    fit_heads,
    fit_score,
    query_lengths,
)
from router.training.generalisation import calibrate, generalisation_report, leave_one_source_out


def default_target(rows: Sequence[Row]) -> Target:
    """Return the promise's calibration target for the rows at hand (Target.promise)."""
    return Target.promise(
        outcomes=any(r.has_outcome for r in rows),
        hard=any(r.tier in HARD_LEVELS for r in rows),
        simple=any(r.tier == 0 for r in rows),
        levels=len({r.tier for r in rows if r.tier is not None}) >= 2,
    )


def calibrate_thresholds(
    scores: np.ndarray[Any, np.dtype[np.float64]],
    rows: Sequence[Row],
    target: Target,
    n_tiers: int,
    top_share: float | None,
    score_of_level: ScoreOfLevel | None = None,
) -> tuple[float, ...]:
    """Return the thresholds meeting ``target`` on scored rows (outcomes and levels as needed;
    ``score_of_level`` for a level bound)."""
    return calibrate(scores, rows, target, n_tiers, top_share, score_of_level)


def files_digest(paths: Sequence[str | Path]) -> str:
    """Return the SHA-256 of the training files, in order."""
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).read_bytes())
    return h.hexdigest()


def train(
    rows: Sequence[Row],
    options: TrainOptions,
    *,
    folds: int,
    target: Target | None,
    tier_names: Sequence[str],
    top_share: float | None,
    log: Log,
    data_digest: str = "",
    data_weights: Sequence[tuple[str, float]] = (),
    by_source: bool = False,
) -> tuple[RouterModel, dict[str, Any] | None]:
    """Return the trained, calibrated model and its report (None without CV or sources).

    Thresholds are calibrated on out-of-fold scores when ``folds`` >= 2, so they hold on
    queries the model did not see; otherwise on the training scores themselves. With
    ``by_source`` the report starts with how each source is routed by a model trained
    without any of its rows (``router/training/generalisation.py``): the test models are
    chosen by.
    """
    if not any(r.has_outcome or r.tier is not None for r in rows):
        raise ValueError("no row has outcome 'scores' or a 'tier' to train on")
    started = time.monotonic()
    target = target or default_target(rows)
    spec = options.spec()
    X = featurize([r.text for r in rows], spec)
    log(
        f"featurized {len(rows)} rows into {spec.n_features} features ({X.nnz} non-zeros) "
        f"in {time.monotonic() - started:.1f}s"
    )
    report: dict[str, Any] | None = None
    if folds >= 2:
        oof_scores, oof_levels = cross_validate(X, rows, options, folds, log)
        calibration_scores = oof_scores
    heads = fit_heads(X, rows, options, log)
    if folds < 2:
        calibration_scores = heads.score(X, query_lengths([r.text for r in rows], spec))
        oof_levels = heads.levels(X)
    score_of_level = heads.score_formula.score_at_level
    thresholds = calibrate_thresholds(
        calibration_scores, rows, target, len(tier_names), top_share, score_of_level
    )
    log(
        f"calibrated for {target.describe()}: "
        f"thresholds {', '.join(f'{t:.4f}' for t in thresholds)}"
    )
    if by_source:
        held_levels = np.zeros((len(rows), oof_levels.shape[1]))
        held_gates = np.full(len(rows), np.nan)
        held_out = leave_one_source_out(
            rows, fit_score(X, rows, options, held_levels, held_gates), log
        )
        report = {
            "held_out_sources": generalisation_report(
                rows,
                held_out,
                calibration_scores,
                target,
                len(tier_names),
                top_share,
                score_of_level,
                held_gates,
            )
        }
    if folds >= 2:
        tiers = np.array(
            [tier_for_score(s, thresholds) for s in calibration_scores], dtype=np.int64
        )
        report = report or {}
        report.update(
            build_report(
                ScoredRows(calibration_scores, oof_levels, tiers),
                rows,
                version=f"{options.name} ({folds}-fold cross-validation)",
                tier_names=tier_names,
                thresholds=thresholds,
            )
        )
    info: dict[str, Any] = {
        "trained_rows": len(rows),
        "data_sha256": data_digest,
        # Only when a file was weighted: unweighted models keep their bytes.
        **(
            {"data_weights": [list(w) for w in data_weights]}
            if any(weight != 1.0 for _, weight in data_weights)
            else {}
        ),
        "options": {k: v for k, v in asdict(options).items() if k != "rules"},
        "calibration": {
            "target": target.describe(),
            "top_share": top_share,
            "on": f"{folds}-fold out-of-fold scores" if folds >= 2 else "training scores",
        },
    }
    if report is not None and "traffic" in report:  # not the by-source part alone (no folds)
        info["cross_validation"] = _headline(report)
    model = build_model(heads, options, info)
    model = model.with_operating_point(tier_names, thresholds, info["calibration"])
    log(f"trained in {time.monotonic() - started:.1f}s")
    return model, report


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    """Return the report's headline numbers, small enough to keep in the model file."""
    out: dict[str, Any] = {"traffic": report["traffic"], "outcomes": {}}
    for group in report["outcomes"]:
        out["outcomes"][group["name"]] = {
            "model": group["model"],
            "operating_point": group["operating_point"],
        }
    if report["levels"]:
        out["levels"] = {
            k: report["levels"][k]
            for k in (
                "level_accuracy",
                "hard_on_cheapest",
                "level0_on_cheapest",
                "level01_on_cheapest",
            )
        }
    return out
