"""Read labelled and unlabelled query rows from JSONL, naming the line and field of any error."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from router.fastpath import LEVELS

# The weak and strong models of the outcome data in ../shared/data (see DATA.md).
DEFAULT_WEAK_MODEL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
DEFAULT_STRONG_MODEL = "gpt-4-1106-preview"


class DataError(ValueError):
    """A row of an input file is malformed; the message names the file, line and field."""


@dataclass(frozen=True, slots=True)
class Row:
    """One query, with its complexity level and weak/strong outcomes when known."""

    line: int
    id: Any
    text: str
    tier: int | None = None
    weak: float | None = None
    strong: float | None = None
    source: str = ""
    # How much the row counts in training relative to others of its source (the weight
    # of the file it came from: ``train --data FILE:WEIGHT``).
    weight: float = 1.0

    @property
    def has_outcome(self) -> bool:
        return self.weak is not None and self.strong is not None


def _fail(path: Path, line: int, field: str, problem: str) -> DataError:
    return DataError(f"{path}:{line}: {field}: {problem}")


def _outcome(path: Path, line: int, scores: Any, model: str) -> float:
    if model not in scores:
        known = ", ".join(sorted(map(str, scores))) or "none"
        raise _fail(path, line, f"scores[{model!r}]", f"missing (models in this row: {known})")
    value = scores[model]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise _fail(path, line, f"scores[{model!r}]", f"must be a number in [0, 1], got {value!r}")
    return float(value)


def _outcome_if(path: Path, line: int, scores: Any, model: str) -> float | None:
    """Return a model's outcome when the row has one, else None."""
    return _outcome(path, line, scores, model) if model in scores else None


def _model_name(path: Path, line: int, obj: dict[str, Any], field: str, default: str) -> str:
    """Return the model a row names in ``field`` for its outcome, or the default."""
    name = obj.get(field)
    if name is None:
        return default
    if not isinstance(name, str) or not name:
        raise _fail(path, line, field, f"must be a model name (a non-empty string), got {name!r}")
    return name


def _json_problem(exc: ValueError | RecursionError) -> str:
    """Say why json.loads refused a line: a syntax error, or a number or nesting too big."""
    if isinstance(exc, json.JSONDecodeError):
        return exc.msg
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    # "Exceeds the limit (4300 digits) for integer string conversion: value has ... digits"
    return str(exc).partition(";")[0]


def iter_rows(
    path: str | Path,
    *,
    labels: bool = True,
    require_id: bool = False,
    weak_model: str = DEFAULT_WEAK_MODEL,
    strong_model: str = DEFAULT_STRONG_MODEL,
    default_source: str = "",
    weight: float = 1.0,
) -> Iterator[Row]:
    """Yield the rows of a JSONL file; with ``labels``, also parse ``tier`` and ``scores``.

    Every row needs a string ``text`` (and an ``id`` with ``require_id``). ``tier`` is
    null or an integer level 0-4;
    ``scores`` is null or an object holding both models' outcomes in [0, 1]: those of
    ``weak_model`` and ``strong_model``, unless the row names its own pair in
    ``weak_model`` and ``strong_model`` fields (as ``modelrouter export`` writes: the
    models of its cheapest and strongest tiers); such a row may hold the outcome of one
    of them only (not neither), and then has no outcome. A row without ``source`` gets
    ``default_source``; every row gets ``weight``. Other fields are ignored. The first
    malformed row raises DataError.
    """
    path = Path(path)
    try:
        # Binary, decoded line by line: a text-mode file decodes in chunks, so a bad byte
        # would escape as a UnicodeDecodeError without its line number.
        fh = path.open("rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
    with fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _fail(path, line_no, "(line)", f"not valid UTF-8 ({exc.reason})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError) as exc:
                raise _fail(
                    path, line_no, "(line)", f"not valid JSON ({_json_problem(exc)})"
                ) from None
            if not isinstance(obj, dict):
                raise _fail(path, line_no, "(line)", "must be a JSON object")
            text = obj.get("text")
            if not isinstance(text, str):
                raise _fail(path, line_no, "text", "missing or not a string")
            if require_id and "id" not in obj:
                raise _fail(path, line_no, "id", "missing")
            row = Row(
                line=line_no,
                id=obj.get("id"),
                text=text,
                source=str(obj.get("source") or default_source),
                weight=weight,
            )
            if not labels:
                yield row
                continue
            tier = obj.get("tier")
            if tier is not None and (
                isinstance(tier, bool) or not isinstance(tier, int) or not 0 <= tier < LEVELS
            ):
                raise _fail(
                    path,
                    line_no,
                    "tier",
                    f"must be null or an integer 0-{LEVELS - 1}, got {tier!r}",
                )
            scores = obj.get("scores")
            weak = strong = None
            if scores is not None:
                if not isinstance(scores, dict):
                    raise _fail(
                        path, line_no, "scores", "must be null or an object of model -> outcome"
                    )
                row_weak = _model_name(path, line_no, obj, "weak_model", weak_model)
                row_strong = _model_name(path, line_no, obj, "strong_model", strong_model)
                if ("weak_model" in obj or "strong_model" in obj) and (
                    row_weak in scores or row_strong in scores
                ):
                    # A row that names its own pair may hold one model's outcome only (a
                    # rating of one answer): no outcome for training, not an error.
                    weak = _outcome_if(path, line_no, scores, row_weak)
                    strong = _outcome_if(path, line_no, scores, row_strong)
                else:
                    weak = _outcome(path, line_no, scores, row_weak)
                    strong = _outcome(path, line_no, scores, row_strong)
            yield Row(
                line=line_no,
                id=row.id,
                text=text,
                tier=tier,
                weak=weak,
                strong=strong,
                source=row.source,
                weight=weight,
            )


def outcome_arrays(rows: Sequence[Row]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Return the weak and strong outcomes of the rows that have both."""
    pairs = [(r.weak, r.strong) for r in rows if r.weak is not None and r.strong is not None]
    weak = np.array([w for w, _ in pairs], dtype=np.float64)
    strong = np.array([s for _, s in pairs], dtype=np.float64)
    return weak, strong


def read_rows(path: str | Path, **kwargs: Any) -> list[Row]:
    """Return every row of a JSONL file (see iter_rows); an empty file is an error."""
    rows = list(iter_rows(path, **kwargs))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows
