"""Reading query rows: good files, and every malformed row named by file, line and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from router.training.data import (
    DEFAULT_STRONG_MODEL,
    DEFAULT_WEAK_MODEL,
    DataError,
    Row,
    iter_rows,
    outcome_arrays,
    read_rows,
)
from tests.unit.training.support import SAMPLE

WEAK, STRONG = DEFAULT_WEAK_MODEL, DEFAULT_STRONG_MODEL


def write_lines(path: Path, *lines: str | bytes) -> Path:
    """Write raw lines (str as UTF-8) to ``path``, each ended by a newline."""
    path.write_bytes(b"".join((x.encode() if isinstance(x, str) else x) + b"\n" for x in lines))
    return path


def outcome(weak: object, strong: object) -> dict[str, object]:
    return {WEAK: weak, STRONG: strong}


def test_reads_every_field(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "rows.jsonl",
        json.dumps({"id": "a", "text": "hello", "tier": 0, "source": "s1", "extra": [1]}),
        "",
        "   ",
        json.dumps({"id": 7, "text": "", "tier": None, "scores": outcome(0, 1.0)}),
        json.dumps({"text": "no id", "tier": 4, "scores": None, "cost": {"x": 1}}),
    )
    rows = read_rows(path)
    assert rows == [
        Row(line=1, id="a", text="hello", tier=0, source="s1"),
        Row(line=4, id=7, text="", weak=0.0, strong=1.0),
        Row(line=5, id=None, text="no id", tier=4),
    ]
    assert [r.has_outcome for r in rows] == [False, True, False]
    assert rows[1].weak == 0.0 and isinstance(rows[1].weak, float)


def test_ids_of_any_json_type_are_kept(tmp_path: Path) -> None:
    ids: list[Any] = ["x", 3, 2.5, None, [1, "a"], {"k": "v"}, "ü✓"]
    path = write_lines(tmp_path / "ids.jsonl", *(json.dumps({"id": i, "text": "t"}) for i in ids))
    assert [r.id for r in iter_rows(path, labels=False, require_id=True)] == ids


def test_crlf_lines_and_odd_texts(tmp_path: Path) -> None:
    texts = ["a\u2028b", "tab\there", "nul\x00", "\ud800 lone", "emoji 🤖"]
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b"".join(json.dumps({"text": t}).encode() + b"\r\n" for t in texts))
    assert [r.text for r in read_rows(path)] == texts
    assert [r.line for r in read_rows(path)] == [1, 2, 3, 4, 5]


def test_without_labels_tier_and_scores_are_not_read(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "q.jsonl", json.dumps({"id": 1, "text": "t", "tier": "high", "scores": 3})
    )
    (row,) = iter_rows(path, labels=False)
    assert (row.tier, row.weak, row.strong) == (None, None, None)
    with pytest.raises(DataError, match="tier"):
        read_rows(path)


def test_other_outcome_models(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "o.jsonl", json.dumps({"text": "t", "scores": {"small": 0.25, "big": 0.75}})
    )
    (row,) = read_rows(path, weak_model="small", strong_model="big")
    assert (row.weak, row.strong) == (0.25, 0.75)


def test_the_sample_fixture() -> None:
    rows = read_rows(SAMPLE)
    assert len(rows) == 300
    assert sum(r.has_outcome for r in rows) == 140
    assert {r.tier for r in rows} == {0, 1, 2, 3, 4}
    assert len({r.source for r in rows}) == 6
    assert all(r.id and r.text for r in rows)


def test_outcome_arrays_keep_only_rows_with_both() -> None:
    rows = [
        Row(1, 1, "a", weak=1.0, strong=0.0),
        Row(2, 2, "b", tier=3),
        Row(3, 3, "c", weak=0.0, strong=0.5),
    ]
    weak, strong = outcome_arrays(rows)
    assert weak.dtype == strong.dtype == np.float64
    assert weak.tolist() == [1.0, 0.0]
    assert strong.tolist() == [0.0, 0.5]
    empty_weak, empty_strong = outcome_arrays([Row(1, 1, "a")])
    assert len(empty_weak) == len(empty_strong) == 0


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"absent\.jsonl: cannot read: No such file"):
        read_rows(tmp_path / "absent.jsonl")


@pytest.mark.parametrize("content", [b"", b"\n\n   \n"], ids=["empty", "blank lines"])
def test_a_file_without_rows(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    assert list(iter_rows(path)) == []
    with pytest.raises(DataError, match=r"empty\.jsonl: no rows"):
        read_rows(path)


OK = json.dumps({"id": 1, "text": "fine", "tier": 1, "scores": outcome(1, 1)})

# (bad line, read_rows/iter_rows options, field named, problem)
MALFORMED: list[tuple[str | bytes, dict[str, Any], str, str]] = [
    ('{"text": "unterminated', {}, "(line)", "not valid JSON"),
    ("text: yaml?", {}, "(line)", "not valid JSON"),
    ('{"text": "a"} trailing', {}, "(line)", "not valid JSON"),
    (b'{"text": "caf\xe9"}', {}, "(line)", "not valid UTF-8"),
    (b"\xff\xfe{}", {}, "(line)", "not valid UTF-8"),
    ("[1, 2]", {}, "(line)", "must be a JSON object"),
    ('"just text"', {}, "(line)", "must be a JSON object"),
    ("null", {}, "(line)", "must be a JSON object"),
    ('{"id": 3}', {}, "text", "missing or not a string"),
    ('{"text": null}', {}, "text", "missing or not a string"),
    ('{"text": 42}', {}, "text", "missing or not a string"),
    ('{"text": ["a"]}', {}, "text", "missing or not a string"),
    ('{"text": "t"}', {"require_id": True}, "id", "missing"),
    ('{"text": "t", "tier": 5}', {}, "tier", "must be null or an integer 0-4, got 5"),
    ('{"text": "t", "tier": -1}', {}, "tier", "got -1"),
    ('{"text": "t", "tier": "3"}', {}, "tier", "got '3'"),
    ('{"text": "t", "tier": 2.0}', {}, "tier", "got 2.0"),
    ('{"text": "t", "tier": true}', {}, "tier", "got True"),
    ('{"text": "t", "scores": [1, 0]}', {}, "scores", "must be null or an object"),
    ('{"text": "t", "scores": 1}', {}, "scores", "must be null or an object"),
    (
        json.dumps({"text": "t", "scores": {STRONG: 1}}),
        {},
        f"scores[{WEAK!r}]",
        f"missing (models in this row: {STRONG})",
    ),
    (
        json.dumps({"text": "t", "scores": {WEAK: 1}}),
        {},
        f"scores[{STRONG!r}]",
        f"missing (models in this row: {WEAK})",
    ),
    ('{"text": "t", "scores": {}}', {}, f"scores[{WEAK!r}]", "models in this row: none"),
    (
        json.dumps({"text": "t", "scores": outcome(1.5, 1)}),
        {},
        f"scores[{WEAK!r}]",
        "must be a number in [0, 1], got 1.5",
    ),
    (json.dumps({"text": "t", "scores": outcome(0, -0.1)}), {}, f"scores[{STRONG!r}]", "-0.1"),
    (json.dumps({"text": "t", "scores": outcome("1", 1)}), {}, f"scores[{WEAK!r}]", "got '1'"),
    (json.dumps({"text": "t", "scores": outcome(1, True)}), {}, f"scores[{STRONG!r}]", "True"),
    (json.dumps({"text": "t", "scores": outcome(None, 1)}), {}, f"scores[{WEAK!r}]", "None"),
]


@pytest.mark.parametrize(
    ("bad", "options", "field", "problem"), MALFORMED, ids=[repr(m[0])[:40] for m in MALFORMED]
)
def test_a_malformed_row_names_file_line_and_field(
    tmp_path: Path, bad: str | bytes, options: dict[str, Any], field: str, problem: str
) -> None:
    path = write_lines(tmp_path / "rows.jsonl", OK, "", bad, OK)
    with pytest.raises(DataError) as info:
        read_rows(path, **options)
    message = str(info.value)
    assert message.startswith(f"{path}:3: {field}: "), message
    assert problem in message


def test_the_first_malformed_row_stops_the_read(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "rows.jsonl", OK, '{"text": 1}', "{bad", OK)
    rows = iter_rows(path)
    assert next(rows).line == 1
    with pytest.raises(DataError, match=r"rows\.jsonl:2: text: "):
        next(rows)
