"""Helpers of the training tests: the sample fixture and small, fast training options."""

from __future__ import annotations

from router.training.fit import TrainOptions
from tests.support import REPO

# 300 rows of ../shared/data/routing_train.jsonl (tests/fixtures/README.md).
SAMPLE = REPO / "tests" / "fixtures" / "routing_sample.jsonl"
TIERS = ("cheap", "strong", "expert")


def small_options(**changes: object) -> TrainOptions:
    """Return training options with a tiny feature space (2**10 buckets), shipped rules."""
    return TrainOptions(buckets_log2=10, **changes)  # type: ignore[arg-type]


def quiet(_message: str) -> None:
    """Drop a training log line."""
