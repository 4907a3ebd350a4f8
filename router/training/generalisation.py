"""Leave one source out: how a model routes traffic of a kind it never saw.

Real traffic is never the training mix, so models are chosen by this test first and by
in-distribution cross-validation second. For each source of the training data, a model
trained on every other source scores its rows; the thresholds it is routed with are
calibrated without that source too (on the out-of-fold scores of the other sources' rows),
so neither the model nor the operating point has seen any row of it. The report gives, per
held-out source, the APGR where it has outcomes, the share per tier, the level 3-4 rows on
the cheapest tier and the level 0 rows there; pooled over every held-out score, how well
the score separates levels (AUC) and, within each source with several levels, how it ranks
them (Spearman). Where the score has a gate (the shipped formula), each source also gets
how open it was on the source's rows: how much of the outcome signal, learned on other
sources, placed them.

``bench/quality_baseline.py`` puts the plain scikit-learn baseline through the same code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from router.routing import tier_for_score
from router.training.calibrate import (
    HARD_LEVELS,
    PROMISED_TOP_LEVEL,
    ScoreOfLevel,
    Target,
    first_threshold,
    thresholds_for,
)
from router.training.data import Row, outcome_arrays
from router.training.metrics import operating_point, pgr_curve, summarize

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]
# Fit on the rows at the first indices, return the scores of the rows at the second.
FitScore = Callable[[IndexArray, IndexArray], FloatArray]
Log = Callable[[str], None]


def fold_of(row: Row, folds: int) -> int:
    """Return the row's cross-validation fold, from a hash of its text."""
    digest = hashlib.sha256(row.text.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "little") % folds


def out_of_fold(rows: Sequence[Row], fit_score: FitScore, folds: int, log: Log) -> FloatArray:
    """Return every row's score from the model of the fold that did not train on it."""
    fold = np.array([fold_of(r, folds) for r in rows])
    sizes = np.bincount(fold, minlength=folds)
    if (sizes == 0).any():  # with two or more folds, this also means no fold holds every row
        raise ValueError(
            f"{len(rows)} rows do not fill {folds} cross-validation folds (rows per fold: "
            f"{sizes.tolist()}); give more distinct texts or fewer folds (--cv-folds)"
        )
    scores = np.zeros(len(rows))
    for f in range(folds):
        test = np.flatnonzero(fold == f)
        log(f"fold {f + 1}/{folds}: training on {len(rows) - len(test)} rows")
        scores[test] = fit_score(np.flatnonzero(fold != f), test)
    return scores


def held_out_sources(rows: Sequence[Row]) -> list[str]:
    """Return the sources a leave-one-source-out run holds out (none if fewer than two)."""
    names = sorted({r.source for r in rows})
    return names if len(names) >= 2 else []


def leave_one_source_out(rows: Sequence[Row], fit_score: FitScore, log: Log) -> FloatArray:
    """Return every row's score from a model trained on the other sources' rows."""
    source = np.array([r.source for r in rows])
    scores = np.full(len(rows), np.nan)
    for name in held_out_sources(rows):
        held = source == name
        log(f"holding out source {name!r} ({int(held.sum())} rows)")
        scores[held] = fit_score(np.flatnonzero(~held), np.flatnonzero(held))
    return scores


def auc(positive: FloatArray, negative: FloatArray) -> float | None:
    """Return P(a positive scores above a negative), ties half (None if a side is empty)."""
    if not len(positive) or not len(negative):
        return None
    both = np.concatenate([positive, negative])
    order = np.argsort(both, kind="stable")
    ranks = np.empty(len(both))
    ranks[order] = np.arange(1, len(both) + 1)
    # Average ranks over ties.
    sorted_scores = both[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(both)]
    for s, e in zip(starts, ends, strict=True):
        if e - s > 1:
            ranks[order[s:e]] = (s + e + 1) / 2.0
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def spearman(x: FloatArray, y: FloatArray) -> float | None:
    """Return the rank correlation of two arrays (average ranks on ties; None if constant)."""

    def ranks(v: FloatArray) -> FloatArray:
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        sorted_v = v[order]
        starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
        ends = np.r_[starts[1:], len(v)]
        for s, e in zip(starts, ends, strict=True):
            r[order[s:e]] = (s + e - 1) / 2.0
        return r

    rx, ry = ranks(np.asarray(x, dtype=np.float64)), ranks(np.asarray(y, dtype=np.float64))
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def calibrate(
    scores: FloatArray,
    rows: Sequence[Row],
    target: Target,
    n_tiers: int,
    top_share: float | None,
    score_of_level: ScoreOfLevel | None = None,
) -> tuple[float, ...]:
    """Return the thresholds meeting ``target`` on scored rows (outcomes and levels as needed;
    ``score_of_level`` for a level bound, and for where the strongest tier starts unless
    ``top_share`` is given)."""
    outcome = np.array([r.has_outcome for r in rows], dtype=bool)
    weak, strong = outcome_arrays(rows)
    first = first_threshold(
        scores,
        target,
        weak=weak,
        strong=strong,
        levels=[r.tier for r in rows],
        outcome=outcome,
        score_of_level=score_of_level,
    )
    top_edge = None
    if top_share is None and score_of_level is not None:
        top_edge = score_of_level(PROMISED_TOP_LEVEL)
    return thresholds_for(scores, first, n_tiers, top_share, top_edge)


def _share(mask: npt.NDArray[np.bool_], of: npt.NDArray[np.bool_]) -> float | None:
    return float(mask[of].mean()) if of.any() else None


def source_report(
    scores: FloatArray,
    rows: Sequence[Row],
    thresholds: Sequence[float],
    gates: FloatArray | None = None,
) -> dict[str, Any]:
    """Return how rows of one source are routed at ``thresholds`` and ranked by ``scores``;
    with ``gates``, how far the outcome level placed them (the score's gate, 0 to 1)."""
    tiers = np.array([tier_for_score(float(s), thresholds) for s in scores], dtype=np.int64)
    level = np.array([-1 if r.tier is None else r.tier for r in rows])
    cheapest = tiers == 0
    out: dict[str, Any] = {
        "rows": len(rows),
        "levels": {str(k): int((level == k).sum()) for k in sorted(set(level.tolist())) if k >= 0},
        "thresholds": list(thresholds),
        "tier_shares": (np.bincount(tiers, minlength=len(thresholds) + 1) / len(rows)).tolist(),
        "hard_on_cheapest": _share(cheapest, np.isin(level, HARD_LEVELS)),
        "simple_on_cheapest": _share(cheapest, level == 0),
        "spearman_score_level": spearman(scores[level >= 0], level[level >= 0].astype(float))
        if (level >= 0).sum() > 1
        else None,
        "outcomes": None,
    }
    if gates is not None:
        out["gate_mean"] = float(gates.mean())
        out["gate_open_share"] = float((gates > 0.5).mean())
    outcome = np.array([r.has_outcome for r in rows], dtype=bool)
    if outcome.any():
        weak, strong = outcome_arrays(rows)
        summary = summarize(pgr_curve(scores[outcome], weak, strong))
        point = operating_point(~cheapest[outcome], weak, strong)
        out["outcomes"] = {
            "rows": int(outcome.sum()),
            "apgr": summary.apgr,
            "cpt50": summary.cpt50,
            "cost_saved_98": summary.cost_saved_98,
            "cheapest_share": 1.0 - point.strong_share,
            "quality_kept": point.quality_kept,
            "cost_saved": point.cost_saved,
        }
    return out


def generalisation_report(
    rows: Sequence[Row],
    held_out: FloatArray,
    calibration: FloatArray,
    target: Target,
    n_tiers: int,
    top_share: float | None,
    score_of_level: ScoreOfLevel | None = None,
    gates: FloatArray | None = None,
) -> dict[str, Any]:
    """Return the leave-one-source-out report.

    ``held_out`` holds every row's score from a model that never saw its source;
    ``calibration`` the scores the thresholds are calibrated on (out-of-fold scores), of
    which each source's own rows are left out when its thresholds are set; ``gates``, when
    the score has a gate, every row's gate from that same model: on a source without
    outcomes it says how much of the outcome signal, learned elsewhere, reached it.
    """
    source = np.array([r.source for r in rows])
    names = held_out_sources(rows)
    sources: dict[str, Any] = {}
    for name in names:
        held = source == name
        kept = [r for r, h in zip(rows, held, strict=True) if not h]
        # Without this source a bound may have no rows to rest on (e.g. the only outcome
        # rows): the others still hold.
        thresholds = calibrate(
            calibration[~held], kept, _feasible(target, kept), n_tiers, top_share, score_of_level
        )
        picked = [r for r, h in zip(rows, held, strict=True) if h]
        sources[name] = source_report(
            held_out[held], picked, thresholds, None if gates is None else gates[held]
        )
    scored = ~np.isnan(held_out)
    level = np.array([-1 if r.tier is None else r.tier for r in rows])
    pooled: dict[str, Any] = {
        "rows": int(scored.sum()),
        "auc_level_2plus_vs_01": auc(
            held_out[scored & (level >= 2)], held_out[scored & (level >= 0) & (level <= 1)]
        ),
        "auc_level_34_vs_012": auc(
            held_out[scored & np.isin(level, HARD_LEVELS)],
            held_out[scored & (level >= 0) & (level <= 2)],
        ),
    }
    return {
        "protocol": (
            "each source scored by a model trained on the other sources; its thresholds "
            f"calibrated for {target.describe()} on the other sources' out-of-fold scores"
        ),
        "sources": sources,
        "pooled": pooled,
    }


def _feasible(target: Target, rows: Sequence[Row]) -> Target:
    """Return ``target`` without the bounds these rows cannot calibrate."""
    if target.strong_share is not None:
        return target
    quality = target.quality if any(r.has_outcome for r in rows) else None
    hard = target.max_hard_on_cheapest if any(r.tier in HARD_LEVELS for r in rows) else None
    simple = target.min_simple_on_cheapest if any(r.tier == 0 for r in rows) else None
    if quality is None and hard is None and simple is None:
        return Target(strong_share=0.5)
    return Target(
        quality=quality,
        max_hard_on_cheapest=hard,
        min_simple_on_cheapest=simple,
        max_level_on_cheapest=target.max_level_on_cheapest,
    )


def format_generalisation(report: dict[str, Any], tier_names: Sequence[str]) -> str:
    """Return the leave-one-source-out report as a plain-text table."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    head = (
        f"{'held-out source':<18}{'rows':>7}{'APGR':>7}{'saved@98':>9}"
        + "".join(f"{n[:9]:>10}" for n in tier_names)
        + f"{'L3-4 cheap':>11}{'L0 cheap':>9}{'rho(lvl)':>9}{'gate>0.5':>9}"
    )
    lines = ["leave-one-source-out (" + report["protocol"] + ")", head]
    for name, src in report["sources"].items():
        out = src["outcomes"] or {}
        lines.append(
            f"{name[:17]:<18}{src['rows']:>7}{num(out.get('apgr')):>7}"
            f"{pct(out.get('cost_saved_98')):>9}"
            + "".join(f"{pct(s):>10}" for s in src["tier_shares"])
            + f"{pct(src['hard_on_cheapest']):>11}{pct(src['simple_on_cheapest']):>9}"
            f"{num(src['spearman_score_level']):>9}{pct(src.get('gate_open_share')):>9}"
        )
    pooled = report["pooled"]
    lines.append(
        f"pooled over {pooled['rows']} held-out scores: AUC level 2+ vs 0-1 "
        f"{num(pooled['auc_level_2plus_vs_01'])}, AUC level 3-4 vs 0-2 "
        f"{num(pooled['auc_level_34_vs_012'])}"
    )
    return "\n".join(lines)
