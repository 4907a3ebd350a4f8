"""Helpers shared by the tests: paths, the compiled module if built, small real models."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np

from router.fastpath import HEADS, SCORE_GATED_LEVEL, SCORE_LEVEL_GAIN, SCORE_PLACEMENT_GAIN
from router.model import FeaturizerSpec, RouterModel, Rule, ScoreFormula

_fastpath_c: ModuleType | None
try:
    from router import _fastpath as _fastpath_c
except ImportError:  # optional; tests/unit/test_fastpath.py says when it must exist
    _fastpath_c = None

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


TEST_RULES = (
    Rule("code", ("```", "def", "function", "stack trace", "traceback")),
    Rule("contract", ("contract", "clause", "compliance")),
    Rule("step_by_step", ("step by step",)),
)


# The score formulas a model file can name, with parameters a test can check by hand.
GATED_LEVEL = ScoreFormula(
    SCORE_GATED_LEVEL, level_weight=1.5, bias=-3.0, length_weight=0.3, length_center=4.0
)
LEVEL_GAIN = ScoreFormula(SCORE_LEVEL_GAIN, level_weight=1.5, bias=-3.0)
PLACEMENT_GAIN = ScoreFormula(SCORE_PLACEMENT_GAIN, placement_weight=3.0)


def random_model(
    seed: int = 7,
    buckets_log2: int = 12,
    name: str = "test",
    score: ScoreFormula = GATED_LEVEL,
) -> RouterModel:
    """Return a small model with seeded random weights and a three-tier operating point."""
    spec = FeaturizerSpec(buckets_log2=buckets_log2, rules=TEST_RULES)
    rng = np.random.default_rng(seed)
    return RouterModel(
        spec=spec,
        weights=rng.normal(scale=0.5, size=(spec.n_features, HEADS)).astype(np.float32),
        bias=rng.normal(size=HEADS),
        score=score,
        tier_names=("cheap", "strong", "expert"),
        thresholds=(0.4, 0.7),
        name=name,
    )
