"""Helpers of the training tests: the sample fixture and small training options."""

from __future__ import annotations

from pathlib import Path

from tests.support import REPO

SAMPLE = REPO / "tests" / "fixtures" / "routing_sample.jsonl"


def fixture_path(name: str) -> Path:
    """Return the path of a file in tests/fixtures."""
    return REPO / "tests" / "fixtures" / name
