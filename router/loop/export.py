"""``modelrouter export``: stored traffic as training rows in the format ``train`` reads.

One row per stored request that kept its text (``store.keep_text: true``; the latest record
of a request id): ``text`` always, and ``scores`` per tier model where the request has
outcomes. Outcomes come from the judge's grades of ``modelrouter label`` (the cheapest and
the strongest tier's answers) and from callers' ratings (Feedback), a rating taking the
place of the judge's grade of the model it rated. ``weak_model`` and ``strong_model`` name
the pair of models the row's outcome is for: the labelled pair, else the cheapest and
strongest tiers of ``--config``; a row with a rating and no known pair carries the rating
(``rating``, ``answered_model``) but no ``scores``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from router.loop.label import LABEL_KEY, STATE_VERSION
from router.store import Store

SOURCE = "traffic"


@dataclass
class ExportCounts:
    """What an export found."""

    rows: int = 0
    with_scores: int = 0
    labelled: int = 0
    rated: int = 0
    without_text: int = 0


def export_rows(
    store: Store,
    *,
    since: float | None = None,
    tenant: str | None = None,
    pair: tuple[str, str] | None = None,
    counts: ExportCounts | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the training rows of the stored requests, oldest first."""
    counts = counts if counts is not None else ExportCounts()
    latest: dict[str, dict[str, Any]] = {}
    for r in store.requests(since=since, tenant=tenant):
        if r.prompt is None and not r.messages:
            counts.without_text += 1
            continue
        text = r.prompt
        if text is None:
            text = next((c for role, c in reversed(r.messages or ()) if role == "user"), "")
        latest.pop(r.request_id, None)  # keep the latest, in time order
        latest[r.request_id] = {
            "id": r.request_id,
            "text": text,
            "source": SOURCE,
            "tenant": r.tenant,
            "time": r.time,
            "routed_tier": r.tier,
            "answered_model": r.answered_model or r.model,
            "rating": r.rating,
        }
    for request_id, row in latest.items():
        scores: dict[str, float] = {}
        weak_strong = pair
        label = store.state(LABEL_KEY + request_id)
        if isinstance(label, dict) and label.get("version") == STATE_VERSION:
            models = [label.get(side, {}).get("model") for side in ("cheap", "strong")]
            if all(isinstance(m, str) for m in models):
                weak_strong = (models[0], models[1])
                for side, model in zip(("cheap", "strong"), models, strict=True):
                    grade = label.get(f"judge_{side}", {}).get("grade")
                    if grade is not None:
                        scores[model] = grade
                counts.labelled += 1
        rating = row.pop("rating")
        if rating is not None:
            counts.rated += 1
            row["rating"] = rating
            if weak_strong is not None and row["answered_model"] in weak_strong:
                scores[row["answered_model"]] = rating
        if weak_strong is not None:
            row["weak_model"], row["strong_model"] = weak_strong
            if scores:
                row["scores"] = scores
                counts.with_scores += 1
        counts.rows += 1
        yield row


__all__ = ["ExportCounts", "export_rows"]
