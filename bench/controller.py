"""Replay a stream of scored queries whose difficulty mix shifts twice through the controller.

The queries are real: rows of ``../shared/data/routing_train.jsonl`` scored by the shipped
model (easy rows: CLINC150, Natural Questions, Banking77; hard rows: MMLU, GSM8K, MATH,
Arena-Hard). The stream has three regimes with different shares of hard rows; some
requests carry caller hints (a forced tier, a ``min_tier``) and some of those the cheap
tier answers escalate to the next tier, as in production; all of them count toward the
target. The clock is simulated (Poisson arrivals), so the run takes seconds.

Two runs, one per kind of target:

- ``strong_share``: the realised share of requests answered above the cheapest tier, per
  window of requests, against the target. Pass: every window that starts at least 1,000
  requests into a regime is within +-3 points of the target, and within each regime the
  settled windows swing by at most 5 points (peak to peak).
- ``usd_per_hour``: the realised spend rate per window against the target (reported, no
  pass line in the issue).

Writes ``bench/results/controller.json`` and ``bench/results/controller.png``.

    .venv/bin/python bench/controller.py            # ~1 minute (scoring 53,899 rows)
    .venv/bin/python bench/controller.py --smoke    # seconds: CI checks it still runs
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from report_files import write_report

from router.completion.cost import estimate_tokens
from router.config import default_config
from router.controller import NO_TIER, Pricing, Served, Settings, Target, TenantController
from router.routing import Router, choose_tier

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "routing_train.jsonl"
RESULTS = HERE / "results"

EASY_SOURCES = ("clinc150", "nq_open", "banking77")
HARD_SOURCES = ("routellm_mmlu", "gsm8k_train", "math", "arena_hard_v0.1")
# (name, share of hard rows): the mix shifts twice.
REGIMES = (("mostly easy", 0.15), ("mostly hard", 0.60), ("mixed", 0.35))
REGIME_REQUESTS = 5000
SETTLE_REQUESTS = 1000
REPORT_WINDOW = 1000
REPORT_EVERY = 250
SHARE_TARGET = 0.30
SHARE_TOLERANCE = 0.03
MAX_SWING = 0.05
# Caller hints on the stream: a share of forced-strong, min_tier-strong, forced-cheap.
FORCED_STRONG = 0.03
MIN_TIER_STRONG = 0.02
FORCED_CHEAP = 0.01
# The cheap tier fails on a query (and the request climbs one tier) with this probability,
# growing with the query's score.
ESCALATE_BASE, ESCALATE_PER_SCORE = 0.02, 0.10
REQUESTS_PER_SECOND = 5.0
COMPLETION_TOKENS = (50, 400)
SEED = 20261128


@dataclass(frozen=True, slots=True)
class Query:
    """One request of the stream: its score, tokens, hints and whether cheap fails on it."""

    score: float
    prompt_tokens: int
    completion_tokens: int
    forced: int
    min_index: int
    cheap_fails: bool
    hard: bool


def load_scores(path: Path, limit_per_source: int | None) -> dict[str, list[tuple[float, int]]]:
    """Return (score, prompt tokens) of the easy and hard rows, scored by the shipped model."""
    router = Router.default()
    pools: dict[str, list[tuple[float, int]]] = {"easy": [], "hard": []}
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            source = row["source"]
            pool = "easy" if source in EASY_SOURCES else "hard" if source in HARD_SOURCES else ""
            if not pool or (limit_per_source and seen.get(source, 0) >= limit_per_source):
                continue
            seen[source] = seen.get(source, 0) + 1
            text = row["text"]
            pools[pool].append((router.score(text).score, estimate_tokens(len(text))))
    return pools


def make_stream(
    pools: dict[str, list[tuple[float, int]]], regime_requests: int, rng: np.random.Generator
) -> list[Query]:
    """Return the regimes' queries in order, drawn from the pools with the hints and failures."""
    out = []
    for _, hard_share in REGIMES:
        for _ in range(regime_requests):
            hard = bool(rng.random() < hard_share)
            pool = pools["hard" if hard else "easy"]
            score, tokens = pool[int(rng.integers(len(pool)))]
            hint = rng.random()
            forced = 1 if hint < FORCED_STRONG else NO_TIER
            if (
                FORCED_STRONG + MIN_TIER_STRONG
                <= hint
                < FORCED_STRONG + MIN_TIER_STRONG + (FORCED_CHEAP)
            ):
                forced = 0
            min_index = 1 if FORCED_STRONG <= hint < FORCED_STRONG + MIN_TIER_STRONG else NO_TIER
            out.append(
                Query(
                    score=score,
                    prompt_tokens=tokens,
                    completion_tokens=int(rng.integers(*COMPLETION_TOKENS)),
                    forced=forced,
                    min_index=min_index,
                    cheap_fails=bool(rng.random() < ESCALATE_BASE + ESCALATE_PER_SCORE * score),
                    hard=hard,
                )
            )
    return out


class Clock:
    """The simulated clock the controller reads."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(
    queries: Sequence[Query],
    target: Target,
    settings: Settings,
    pricing: Pricing,
    rng: np.random.Generator,
) -> dict[str, np.ndarray[Any, Any]]:
    """Serve the stream through a controller; return per-request tier, cost, time, offset."""
    clock = Clock()
    controller = TenantController("bench", target, settings, pricing, clock=clock)
    n_tiers = len(pricing.input_price)
    answered = np.zeros(len(queries), dtype=np.int64)
    cost = np.zeros(len(queries))
    times = np.zeros(len(queries))
    offsets = np.zeros(len(queries))
    gaps = rng.exponential(1.0 / REQUESTS_PER_SECOND, size=len(queries))
    spent = 0.0
    for i, q in enumerate(queries):
        clock.now += float(gaps[i])
        decided, _ = choose_tier(
            q.score,
            controller.thresholds,
            margin=pricing.margins,
            forced=None if q.forced == NO_TIER else q.forced,
            min_index=None if q.min_index == NO_TIER else q.min_index,
        )
        tier = min(decided + 1, n_tiers - 1) if decided == 0 and q.cheap_fails else decided
        # A failed cheap attempt costs its prompt tokens before the climb.
        extra = q.prompt_tokens * pricing.input_price[0] if tier != decided else 0.0
        answered[i] = tier
        cost[i] = (
            q.prompt_tokens * pricing.input_price[tier]
            + q.completion_tokens * pricing.output_price[tier]
            + extra
        )
        times[i] = clock.now
        offsets[i] = controller.offset
        started = time.process_time()
        controller.record(
            Served(
                score=q.score,
                decided=decided,
                answered=tier,
                forced=q.forced,
                min_index=q.min_index,
                prompt_tokens=q.prompt_tokens,
                completion_tokens=q.completion_tokens,
                extra_cost_usd=extra,
            )
        )
        spent += time.process_time() - started
    return {
        "answered": answered,
        "cost": cost,
        "time": times,
        "offset": offsets,
        "controller_us_per_request": np.array(1e6 * spent / len(queries)),
    }


def windows(
    run: dict[str, np.ndarray[Any, Any]], kind: str, regime_requests: int
) -> list[dict[str, Any]]:
    """Return the realised value per sliding window of REPORT_WINDOW requests."""
    out = []
    n = len(run["answered"])
    for end in range(REPORT_WINDOW, n + 1, REPORT_EVERY):
        start = end - REPORT_WINDOW
        if kind == "strong_share":
            value = float(np.mean(run["answered"][start:end] >= 1))
        else:
            hours = (run["time"][end - 1] - run["time"][start]) / 3600.0
            value = float(run["cost"][start:end].sum() / hours)
        regime = start // regime_requests
        out.append(
            {
                "start": start,
                "end": end,
                "regime": regime,
                "into_regime": start - regime * regime_requests,
                "value": value,
                "offset": float(run["offset"][end - 1]),
            }
        )
    return out


def judge(
    rows: list[dict[str, Any]],
    regime_requests: int,
    target: float,
    tolerance: float,
    max_swing: float,
    *,
    relative: bool,
) -> dict[str, Any]:
    """Return per regime the settled windows' worst error and swing, and whether they pass.

    A settled window starts at least SETTLE_REQUESTS into its regime and ends inside it.
    """
    regimes = []
    for r, (name, hard_share) in enumerate(REGIMES):
        settled = [
            w
            for w in rows
            if w["regime"] == r
            and w["into_regime"] >= SETTLE_REQUESTS
            and w["end"] <= (r + 1) * regime_requests
        ]
        values = np.array([w["value"] for w in settled])
        errors = (values - target) / target if relative else values - target
        swing = float(values.max() - values.min())
        if relative:
            swing /= target
        regimes.append(
            {
                "name": name,
                "hard_share": hard_share,
                "settled_windows": len(settled),
                "max_abs_error": float(np.abs(errors).max()),
                "mean_error": float(errors.mean()),
                "swing": swing,
                "within_tolerance": bool(np.abs(errors).max() <= tolerance),
                "swing_ok": bool(swing <= max_swing),
            }
        )
    return {
        "regimes": regimes,
        "pass": all(r["within_tolerance"] and r["swing_ok"] for r in regimes),
    }


def plot(report: dict[str, Any], path: Path) -> None:
    """Draw the realised share and spend per window against their targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(10, 7.5), sharex=True)
    regime_requests = report["regime_requests"]
    for ax, run in zip(axes, report["runs"], strict=True):
        ends = [w["end"] for w in run["windows"]]
        values = [w["value"] for w in run["windows"]]
        target = run["target"]["value"]
        if run["target"]["kind"] == "strong_share":
            scale, unit = 100.0, "share above the cheapest tier (%)"
            band = SHARE_TOLERANCE * 100
        else:
            scale, unit = 1.0, "spend (USD per hour)"
            band = 0.0
        ax.plot(ends, [v * scale for v in values], color="tab:blue", label="realised")
        ax.axhline(target * scale, color="black", linewidth=1, label="target")
        if band:
            ax.axhspan(
                target * scale - band,
                target * scale + band,
                color="tab:green",
                alpha=0.15,
                label="+-3 points",
            )
        uncontrolled = [w["value"] for w in run["uncontrolled"]]
        ax.plot(
            ends,
            [v * scale for v in uncontrolled],
            color="tab:gray",
            linestyle="--",
            label="fixed thresholds (no controller)",
        )
        for r, (name, hard) in enumerate(REGIMES):
            x = r * regime_requests
            if r:
                ax.axvline(x, color="tab:red", linestyle=":", linewidth=1)
            ax.text(
                x + regime_requests / 2,
                ax.get_ylim()[1],
                f"{name} ({hard:.0%} hard)",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_ylabel(unit)
        twin = ax.twinx()
        twin.plot(
            ends,
            [w["offset"] for w in run["windows"]],
            color="tab:orange",
            linewidth=0.8,
            label="threshold offset (logits)",
        )
        twin.set_ylabel("offset (logits)", color="tab:orange")
        ax.legend(loc="upper left", fontsize=7)
        ax.set_title(
            f"target {run['target']['kind']} {run['target']['value']:g}: "
            f"{'pass' if run['verdict']['pass'] else 'FAIL'}",
            fontsize=9,
            pad=14,
        )
    axes[-1].set_xlabel(f"requests (window of the last {REPORT_WINDOW})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    """Run both simulations and write the JSON report and the picture."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few rows, for CI")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    started = time.monotonic()
    pools = load_scores(args.data, 300 if args.smoke else None)
    regime_requests = 2500 if args.smoke else REGIME_REQUESTS
    config = default_config()
    router = Router.default()
    pricing = Pricing(
        thresholds=router.thresholds,
        margins=(0.0,) * len(router.thresholds),
        input_price=tuple(t.price.input_per_mtok / 1e6 for t in config.tiers),
        output_price=tuple(t.price.output_per_mtok / 1e6 for t in config.tiers),
        model_version=router.version,
    )
    settings = Settings()
    stream = make_stream(pools, regime_requests, np.random.default_rng(SEED))
    # The spend target: the mid-point of what the fixed thresholds spend in the regimes.
    fixed = Settings(min_offset=0.0, max_offset=0.0)
    report: dict[str, Any] = {
        "benchmark": "controller",
        "model": router.version,
        "settings": asdict(settings),
        "regimes": [{"name": n, "hard_share": h} for n, h in REGIMES],
        "regime_requests": regime_requests,
        "settle_requests": SETTLE_REQUESTS,
        "report_window": REPORT_WINDOW,
        "report_every": REPORT_EVERY,
        "hints": {
            "forced_strong": FORCED_STRONG,
            "min_tier_strong": MIN_TIER_STRONG,
            "forced_cheap": FORCED_CHEAP,
        },
        "escalation": {"base": ESCALATE_BASE, "per_score": ESCALATE_PER_SCORE},
        "requests_per_second": REQUESTS_PER_SECOND,
        "pool_rows": {k: len(v) for k, v in pools.items()},
        "runs": [],
        "smoke": args.smoke,
        "python": platform.python_version(),
    }
    baseline = simulate(
        stream, Target("strong_share", 0.0), fixed, pricing, np.random.default_rng(SEED + 1)
    )
    spend = windows(baseline, "usd_per_hour", regime_requests)
    usd_target = round(float(np.median([w["value"] for w in spend])), 1)
    for target in (Target("strong_share", SHARE_TARGET), Target("usd_per_hour", usd_target)):
        run = simulate(stream, target, settings, pricing, np.random.default_rng(SEED + 1))
        rows = windows(run, target.kind, regime_requests)
        share = target.kind == "strong_share"
        verdict = judge(
            rows,
            regime_requests,
            target.value,
            SHARE_TOLERANCE if share else 0.1,
            MAX_SWING if share else 0.2,
            relative=not share,
        )
        report["runs"].append(
            {
                "target": {"kind": target.kind, "value": target.value},
                "criteria": (
                    {"max_abs_error": SHARE_TOLERANCE, "max_swing": MAX_SWING}
                    if share
                    else {"max_relative_error": 0.1, "max_relative_swing": 0.2, "note": "ours"}
                ),
                "verdict": verdict,
                # What the controller costs the request path: record() and, every
                # update_every requests, the solve (CPU time, amortised over the run).
                "controller_us_per_request": float(run["controller_us_per_request"]),
                "windows": rows,
                "uncontrolled": windows(baseline, target.kind, regime_requests),
            }
        )
        for r in verdict["regimes"]:
            err = (
                f"{100 * r['max_abs_error']:.1f} points"
                if share
                else f"{100 * r['max_abs_error']:.1f}%"
            )
            swing = f"{100 * r['swing']:.1f} points" if share else f"{100 * r['swing']:.1f}%"
            print(f"{target.describe()}: {r['name']:<12} worst settled error {err}, swing {swing}")
        outcome = "pass" if verdict["pass"] else "FAIL"
        if args.smoke:
            outcome += " (smoke run: a few hundred rows per pool, no verdict)"
        print(
            f"{target.describe()}: {outcome}; the controller costs "
            f"{float(run['controller_us_per_request']):.1f} us per request"
        )
    report["seconds"] = round(time.monotonic() - started, 1)
    write_report(args.out, "controller_smoke" if args.smoke else "controller", report, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
