"""Draw how the shipped model makes its score: the heads, the formula, the thresholds.

Left: the seven linear heads over one feature vector, the query's length, and how they
combine. Right: the score against the expected level, with the gate shut (traffic unlike
the outcome rows: the expected level places the query; at the median length of the
training rows, and for a short and a long query), fully open (the outcome level places
it: drawn at the outcome rows' median and one spread either side) and half open, and the
calibrated thresholds that pick the tier. Reads the model file; writes
``bench/results/score_design.png``.

    .venv/bin/python bench/score_design.py [--model router/models/default.npz]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from router._fastpath_py import query_length
from router.fastpath import SCORE_GATED_LEVEL
from router.model import default_model_path, load_model

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "results" / "score_design.png"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    model = load_model(args.model)
    if model.score.formula != SCORE_GATED_LEVEL:
        print("score_design: the model does not use the gated_level formula", file=sys.stderr)
        return 1
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    a, b = model.score.level_weight, model.score.bias
    length_weight, length_center = model.score.length_weight, model.score.length_center
    options = model.info.get("options", {})
    center = float(options.get("outcome_center", 2.0))  # outcome level at the median gain
    spread = float(options.get("outcome_spread", 0.5))  # levels per deviation of the gain

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2), dpi=110)
    left.set_axis_off()
    left.set_xlim(-0.5, 10.5)
    left.set_ylim(0, 10)

    def box(x: float, y: float, w: float, h: float, text: str, color: str) -> None:
        left.add_patch(Rectangle((x, y), w, h, facecolor=color, edgecolor="black", linewidth=0.8))
        left.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9)

    def arrow(x0: float, y0: float, x1: float, y1: float) -> None:
        left.annotate("", (x1, y1), (x0, y0), arrowprops={"arrowstyle": "->", "lw": 0.9})

    query = "query\n-> hashed word and\nchar n-grams,\ndense bins, rules"
    box(-0.3, 4.0, 2.5, 2.0, query, "#eeeeee")
    box(3.2, 7.2, 2.6, 1.6, "5 level logits\n(softmax)\n-> E[level]", "#cfe2f3")
    box(3.2, 4.2, 2.6, 1.6, "outcome level\n(ridge on strong -\nweak outcome)", "#d9ead3")
    box(3.2, 1.2, 2.6, 1.6, "gate logit\n(is it like the\noutcome rows?)", "#fce5cd")
    for y in (8.0, 5.0, 2.0):
        arrow(2.2, 5.0, 3.2, y)
    box(
        6.4,
        3.6,
        3.9,
        2.8,
        f"g = sigmoid(gate)\nlevel = (1-g) E[level]\n+ g outcome level\n"
        f"+ {length_weight:g} (ln(1+bytes) - {length_center:.2f})\n"
        f"score = sigmoid({a:g} (level - 2))",
        "#fff2cc",
    )
    left.text(8.35, 9.0, "query length\n(normalised bytes)", ha="center", va="center", fontsize=9)
    arrow(8.35, 8.4, 8.35, 6.4)
    arrow(5.8, 8.0, 6.4, 5.8)
    arrow(5.8, 5.0, 6.4, 5.0)
    arrow(5.8, 2.0, 6.4, 4.2)
    left.text(
        8.35,
        2.9,
        "thresholds on the score\npick the tier",
        ha="center",
        va="center",
        fontsize=9,
    )
    arrow(8.35, 3.6, 8.35, 3.3)
    left.set_title("one linear layer, seven heads, one monotone score", fontsize=11)

    levels = np.linspace(0.0, 4.0, 200)
    base = a * levels + b

    def sigmoid(x: np.ndarray) -> np.ndarray:
        return np.asarray(1.0 / (1.0 + np.exp(-x)))

    median_bytes = round(float(np.expm1(length_center)))
    label = f"gate shut, {median_bytes} bytes (the median length): the expected level alone"
    right.plot(levels, sigmoid(base), color="black", label=label)
    for n_bytes, style in ((30, ":"), (600, "--")):
        shift = length_weight * (query_length(n_bytes) - length_center)
        label = f"gate shut, {n_bytes} bytes: the expected level {shift:+.2f}"
        right.plot(levels, sigmoid(a * (levels + shift) + b), color="gray", ls=style, label=label)
    for k, style in ((-1.0, ":"), (0.0, "-"), (1.0, "--")):
        outcome = center + k * spread
        label = f"gate open: outcome level {outcome:g} (median gain {k:+g} spread)"
        curve = sigmoid(a * outcome + b + 0.0 * levels)
        right.plot(levels, curve, color="tab:green", linestyle=style, label=label)
    right.plot(
        levels,
        sigmoid(a * (levels + center) / 2 + b),
        color="tab:orange",
        label=f"gate half open, outcome level {center:g}",
    )
    for name, t in zip(model.tier_names[1:], model.thresholds, strict=True):
        right.axhline(t, color="tab:red", linewidth=0.8)
        right.text(0.05, t + 0.01, f"{name} from {t:.3f}", color="tab:red", fontsize=8)
    right.set_xlabel("expected level E[level] (0 simple factual ... 4 expert)")
    right.set_ylabel("score")
    right.set_xlim(0, 4)
    right.set_ylim(0, 1)
    right.grid(alpha=0.3)
    right.legend(loc="lower right", fontsize=8)
    right.set_title(f"{model.version}: score and tiers", fontsize=11)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    plt.close(fig)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
