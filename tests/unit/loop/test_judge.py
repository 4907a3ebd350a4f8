"""The judge's prompt and the strict reading of its grade."""

from __future__ import annotations

import argparse

import pytest

from router.loop.cli import parse_since
from router.loop.judge import judge_prompt, parse_grade


@pytest.mark.parametrize(
    ("reply", "grade"),
    [
        ("PASS", 1.0),
        ("FAIL", 0.0),
        ("  pass\n", 1.0),
        ("Fail.", 0.0),
        ("PASS!", None),
        ("PASS FAIL", None),
        ("I think PASS", None),
        ("PASS\nThe answer is right.", None),
        ("", None),
        ("P A S S", None),
        ("yes", None),
        ("1", None),
    ],
)
def test_only_a_single_word_grade_parses(reply: str, grade: float | None) -> None:
    assert parse_grade(reply) == grade


def test_the_prompt_carries_the_request_and_the_answer_verbatim() -> None:
    prompt = judge_prompt("What is 2+2? {braces}", "It is 4.")
    assert "<<<\nWhat is 2+2? {braces}\n>>>" in prompt
    assert "<<<\nIt is 4.\n>>>" in prompt
    assert prompt.endswith("Reply with exactly one word: PASS if it is, FAIL if it is not.")


def test_since_takes_durations_dates_and_seconds() -> None:
    now = 1_000_000.0
    assert parse_since("2d", now) == now - 2 * 86400
    assert parse_since("90s", now) == now - 90
    assert parse_since("1.5h", now) == now - 5400
    assert parse_since("1700000000", now) == 1_700_000_000.0
    assert parse_since("1970-01-02", now) == 86400.0
    assert parse_since("1970-01-01T01:00:00+01:00", now) == 0.0
    with pytest.raises(argparse.ArgumentTypeError, match="give a duration back"):
        parse_since("yesterday", now)
