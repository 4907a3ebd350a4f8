"""``modelrouter eval``: routing quality and cost on labelled rows, as tables, JSON and a plot."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from router.fastpath import LEVELS
from router.routing import Router, tier_for_score
from router.training.calibrate import HARD_LEVELS
from router.training.data import Row, outcome_arrays
from router.training.metrics import (
    STRONG_PRICE,
    WEAK_PRICE,
    Curve,
    cost_ratio,
    operating_point,
    pgr_curve,
    summarize,
)


@dataclass(frozen=True, slots=True)
class ScoredRows:
    """The model's view of each row: score, level probabilities and tier index."""

    scores: npt.NDArray[np.float64]
    levels: npt.NDArray[np.float64]
    tiers: npt.NDArray[np.int64]


def score_rows(router: Router, rows: Sequence[Row]) -> ScoredRows:
    """Score every row with the router's model and pick its tier."""
    scores = np.empty(len(rows))
    levels = np.empty((len(rows), LEVELS))
    for i, row in enumerate(rows):
        scored = router.score(row.text)
        scores[i] = scored.score
        levels[i] = scored.levels
    tiers = np.array([tier_for_score(s, router.thresholds) for s in scores], dtype=np.int64)
    return ScoredRows(scores, levels, tiers)


def _fixed_router(share: float, curve: Curve) -> dict[str, float]:
    quality = curve.q_weak + share * (curve.q_strong - curve.q_weak)
    return {
        "strong_share": share,
        "quality_kept": quality / curve.q_strong if curve.q_strong else 1.0,
        "cost_saved": 1.0 - cost_ratio(share),
    }


def outcome_report(
    name: str, scores: npt.NDArray[np.float64], above: npt.NDArray[np.bool_], rows: Sequence[Row]
) -> dict[str, Any]:
    """Return the curve metrics, the baselines and the operating point on outcome rows."""
    weak, strong = outcome_arrays(rows)
    curve = pgr_curve(scores, weak, strong)
    oracle = pgr_curve(strong - weak, weak, strong)
    span = curve.q_strong - curve.q_weak
    random_share = (
        min(1.0, max(0.0, (0.98 * curve.q_strong - curve.q_weak) / span)) if span > 0 else 0.0
    )
    point = operating_point(above, weak, strong)
    return {
        "name": name,
        "rows": len(rows),
        "q_weak": curve.q_weak,
        "q_strong": curve.q_strong,
        "model": asdict(summarize(curve)),
        "random": {
            "apgr": 0.5,
            "cpt50": 0.5,
            "cpt80": 0.8,
            "cost_saved_98": 1.0 - cost_ratio(random_share),
            "share_98": random_share,
        },
        "oracle": asdict(summarize(oracle)),
        "always_weak": _fixed_router(0.0, curve),
        "always_strong": _fixed_router(1.0, curve),
        "operating_point": asdict(point),
        "curve": {"shares": curve.shares.tolist(), "pgr": curve.pgr.tolist()},
    }


def level_report(
    scored: ScoredRows, rows: Sequence[Row], tier_names: Sequence[str]
) -> dict[str, Any]:
    """Return the confusion of levels and how each level is spread over the tiers."""
    true = np.array([r.tier for r in rows], dtype=np.int64)
    predicted = scored.levels.argmax(axis=1)
    confusion = np.zeros((LEVELS, LEVELS), dtype=np.int64)
    np.add.at(confusion, (true, predicted), 1)
    by_tier = np.zeros((LEVELS, len(tier_names)), dtype=np.int64)
    np.add.at(by_tier, (true, scored.tiers), 1)
    cheapest = scored.tiers == 0

    def share_cheapest(mask: npt.NDArray[np.bool_]) -> float | None:
        return float(cheapest[mask].mean()) if mask.any() else None

    return {
        "rows": len(rows),
        "confusion": confusion.tolist(),
        "level_accuracy": float((predicted == true).mean()),
        "tiers_by_level": by_tier.tolist(),
        "hard_on_cheapest": share_cheapest(np.isin(true, HARD_LEVELS)),
        "level0_on_cheapest": share_cheapest(true == 0),
        "level01_on_cheapest": share_cheapest(true <= 1),
    }


def build_report(
    scored: ScoredRows,
    rows: Sequence[Row],
    *,
    version: str,
    tier_names: Sequence[str],
    thresholds: Sequence[float],
) -> dict[str, Any]:
    """Return the evaluation report of scored rows."""
    above = scored.tiers > 0
    report: dict[str, Any] = {
        "model_version": version,
        "tiers": list(tier_names),
        "thresholds": list(thresholds),
        "rows": len(rows),
        "prices": {"strong": STRONG_PRICE, "weak": WEAK_PRICE},
        "traffic": {
            "above_cheapest": float(above.mean()),
            "tier_counts": np.bincount(scored.tiers, minlength=len(tier_names)).tolist(),
            # Every call above the cheapest tier priced as the strong model.
            "cost_saved": 1.0 - cost_ratio(float(above.mean())),
        },
        "outcomes": [],
        "levels": None,
    }
    outcome = np.array([r.has_outcome for r in rows])
    if outcome.any():
        groups: list[tuple[str, npt.NDArray[np.bool_]]] = [("all", outcome)]
        sources = sorted({r.source for r, o in zip(rows, outcome, strict=True) if o})
        if len(sources) > 1:
            groups += [(s, outcome & np.array([r.source == s for r in rows])) for s in sources]
        for name, mask in groups:
            picked = [r for r, m in zip(rows, mask, strict=True) if m]
            report["outcomes"].append(
                outcome_report(name, scored.scores[mask], above[mask], picked)
            )
    with_level = np.array([r.tier is not None for r in rows])
    if with_level.any():
        sub = ScoredRows(
            scored.scores[with_level], scored.levels[with_level], scored.tiers[with_level]
        )
        picked = [r for r, m in zip(rows, with_level, strict=True) if m]
        report["levels"] = level_report(sub, picked, tier_names)
    return report


def evaluate(router: Router, rows: Sequence[Row]) -> tuple[dict[str, Any], ScoredRows]:
    """Score ``rows`` with ``router`` and return the evaluation report."""
    scored = score_rows(router, rows)
    report = build_report(
        scored,
        rows,
        version=router.version,
        tier_names=router.tier_names,
        thresholds=router.thresholds,
    )
    return report, scored


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_report(report: dict[str, Any]) -> str:
    """Return the report as plain-text tables."""
    lines = [
        f"model {report['model_version']}: tiers {', '.join(report['tiers'])} "
        f"at thresholds {', '.join(f'{t:.4f}' for t in report['thresholds'])}",
        f"{report['rows']} rows; {_pct(report['traffic']['above_cheapest'])} routed above the "
        "cheapest "
        f"tier (rows per tier {report['traffic']['tier_counts']}); cost saved on this traffic "
        f"{_pct(report['traffic']['cost_saved'])} (prices per 1M tokens: strong "
        f"${report['prices']['strong']}, weak ${report['prices']['weak']})",
    ]
    for group in report["outcomes"]:
        lines += [
            "",
            f"outcomes [{group['name']}]: {group['rows']} rows, "
            f"weak quality {group['q_weak']:.4f}, "
            f"strong quality {group['q_strong']:.4f}",
            f"  {'router':<14}{'APGR':>8}{'CPT(50%)':>10}{'CPT(80%)':>10}{'saved@98%':>11}",
        ]
        for label in ("model", "random", "oracle"):
            row = group[label]
            lines.append(
                f"  {label:<14}{row['apgr']:>8.3f}{_pct(row['cpt50']):>10}{_pct(row['cpt80']):>10}"
                f"{_pct(row['cost_saved_98']):>11}"
            )
        for label in ("always_weak", "always_strong"):
            row = group[label]
            lines.append(
                f"  {label:<14} strong share {_pct(row['strong_share'])}, quality kept "
                f"{_pct(row['quality_kept'])}, cost saved {_pct(row['cost_saved'])}"
            )
        point = group["operating_point"]
        lines.append(
            f"  at the model's thresholds: strong share {_pct(point['strong_share'])}, "
            "quality kept "
            f"{_pct(point['quality_kept'])}, cost saved {_pct(point['cost_saved'])}"
        )
    levels = report["levels"]
    if levels:
        lines += [
            "",
            f"levels: {levels['rows']} rows, level accuracy {_pct(levels['level_accuracy'])}",
            "  confusion (rows: true level, columns: predicted level)",
        ]
        lines += [
            f"  {lvl}: " + " ".join(f"{n:>7}" for n in row)
            for lvl, row in enumerate(levels["confusion"])
        ]
        lines.append("  tiers by true level (columns: " + ", ".join(report["tiers"]) + ")")
        lines += [
            f"  {lvl}: " + " ".join(f"{n:>7}" for n in row)
            for lvl, row in enumerate(levels["tiers_by_level"])
        ]
        lines.append(
            f"  level 3-4 on the cheapest tier: {_pct(levels['hard_on_cheapest'])}; level 0 on it: "
            f"{_pct(levels['level0_on_cheapest'])}; "
            f"levels 0-1 on it: {_pct(levels['level01_on_cheapest'])}"
        )
    return "\n".join(lines)


def plot_curves(report: dict[str, Any], path: str | Path) -> None:
    """Draw PGR against the strong share per outcome group, with the operating points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random (APGR 0.500)")
    for group in report["outcomes"]:
        curve = group["curve"]
        line = ax.plot(
            curve["shares"],
            curve["pgr"],
            label=f"{group['name']} (APGR {group['model']['apgr']:.3f})",
        )
        point = group["operating_point"]
        span = group["q_strong"] - group["q_weak"]
        if span:
            pgr = (point["quality_kept"] * group["q_strong"] - group["q_weak"]) / span
            ax.plot([point["strong_share"]], [pgr], marker="o", color=line[0].get_color())
    ax.axhline(1.0, color="black", linewidth=0.5)
    ax.set_xlabel("share of calls to the strong model")
    ax.set_ylabel("PGR (share of the weak-to-strong quality gap recovered)")
    ax.set_title(f"modelrouter {report['model_version']}: quality vs cost (dots: operating point)")
    ax.set_xlim(0, 1)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
