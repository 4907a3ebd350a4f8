"""Routing quality on outcome data: PGR curve, APGR, CPT and cost saved (PRODUCT.md).

Queries go to the strong model in descending order of score. With ``c`` the share sent
to the strong model, ``q(c)`` the mean outcome, PGR(c) = (q(c) - q_weak) / (q_strong -
q_weak). Queries with equal scores are treated as sent in random order (the curve is the
expectation), so a constant score is the random router.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# US dollars per million tokens of the outcome data's models (PRODUCT.md).
STRONG_PRICE = 24.7
WEAK_PRICE = 0.24

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Curve:
    """The PGR curve at every share k/n, k = 0..n."""

    shares: FloatArray
    pgr: FloatArray
    quality: FloatArray
    q_weak: float
    q_strong: float


def pgr_curve(score: npt.ArrayLike, weak: npt.ArrayLike, strong: npt.ArrayLike) -> Curve:
    """Return the PGR curve of routing by ``score`` (higher goes to the strong model)."""
    s = np.asarray(score, dtype=np.float64)
    w = np.asarray(weak, dtype=np.float64)
    st = np.asarray(strong, dtype=np.float64)
    n = len(s)
    if n == 0:
        raise ValueError("no outcome rows")
    order = np.argsort(-s, kind="stable")
    gain = (st - w)[order]
    sorted_scores = s[order]
    # Ties: every member of a group of equal scores gets the group's mean gain.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    sums = np.add.reduceat(gain, starts)
    sizes = np.diff(np.r_[starts, n])
    gain = np.repeat(sums / sizes, sizes)
    q_weak, q_strong = float(w.mean()), float(st.mean())
    quality = (w.sum() + np.r_[0.0, np.cumsum(gain)]) / n
    span = q_strong - q_weak
    pgr = (quality - q_weak) / span if span != 0 else np.zeros(n + 1)
    return Curve(np.arange(n + 1) / n, pgr, quality, q_weak, q_strong)


def apgr(curve: Curve) -> float:
    """Return the area under PGR(c) for c in [0, 1] (a random router scores 0.5)."""
    return float(np.trapezoid(curve.pgr, curve.shares))


def cpt(curve: Curve, target: float) -> float | None:
    """Return the smallest strong share whose PGR reaches ``target``, or None if none does."""
    hits = np.flatnonzero(curve.pgr >= target - 1e-12)
    return float(curve.shares[hits[0]]) if len(hits) else None


def cost_ratio(
    share: float, strong_price: float = STRONG_PRICE, weak_price: float = WEAK_PRICE
) -> float:
    """Return cost relative to all-strong when ``share`` of the calls go to the strong model."""
    return (share * strong_price + (1.0 - share) * weak_price) / strong_price


def cost_saved_at_quality(
    curve: Curve,
    quality: float = 0.98,
    strong_price: float = STRONG_PRICE,
    weak_price: float = WEAK_PRICE,
) -> tuple[float, float]:
    """Return (cost saved, strong share) at the smallest share keeping ``quality`` of all-strong."""
    hits = np.flatnonzero(curve.quality >= quality * curve.q_strong - 1e-12)
    share = float(curve.shares[hits[0]]) if len(hits) else 1.0
    return 1.0 - cost_ratio(share, strong_price, weak_price), share


@dataclass(frozen=True, slots=True)
class CurveSummary:
    apgr: float
    cpt50: float | None
    cpt80: float | None
    cost_saved_98: float
    share_98: float


def summarize(
    curve: Curve, strong_price: float = STRONG_PRICE, weak_price: float = WEAK_PRICE
) -> CurveSummary:
    """Return the headline numbers of a curve."""
    saved, share = cost_saved_at_quality(curve, 0.98, strong_price, weak_price)
    return CurveSummary(apgr(curve), cpt(curve, 0.5), cpt(curve, 0.8), saved, share)


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """What routing at fixed thresholds does on outcome rows."""

    strong_share: float
    quality: float
    quality_kept: float
    cost_saved: float


def operating_point(
    above_cheapest: npt.ArrayLike,
    weak: npt.ArrayLike,
    strong: npt.ArrayLike,
    strong_price: float = STRONG_PRICE,
    weak_price: float = WEAK_PRICE,
) -> OperatingPoint:
    """Return share, quality and cost when rows marked ``above_cheapest`` get the strong model."""
    up = np.asarray(above_cheapest, dtype=bool)
    w = np.asarray(weak, dtype=np.float64)
    st = np.asarray(strong, dtype=np.float64)
    quality = float(np.where(up, st, w).mean())
    share = float(up.mean())
    q_strong = float(st.mean())
    return OperatingPoint(
        strong_share=share,
        quality=quality,
        quality_kept=quality / q_strong if q_strong else 1.0,
        cost_saved=1.0 - cost_ratio(share, strong_price, weak_price),
    )
