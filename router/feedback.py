"""A bounded in-memory store of caller feedback and of the request ids recently served.

Both forget their oldest entries first, so memory stays flat however long the process runs.
A later issue persists feedback; until then it lives as long as the worker.
"""

from __future__ import annotations

from collections import OrderedDict

from router.domain import Feedback


class FeedbackStore:
    """Keep the last ``capacity`` feedback records and served request ids."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._served: OrderedDict[str, str] = OrderedDict()
        self._feedback: OrderedDict[str, Feedback] = OrderedDict()

    def remember(self, request_id: str, tier: str) -> None:
        """Record that ``request_id`` was answered at ``tier``."""
        served = self._served
        served[request_id] = tier
        if len(served) > self.capacity:
            served.popitem(last=False)

    def served_tier(self, request_id: str) -> str | None:
        """Return the tier a recent request was routed to, or None if it is not known."""
        return self._served.get(request_id)

    def add(self, feedback: Feedback) -> bool:
        """Store feedback (the latest per request id); return whether the request is known."""
        records = self._feedback
        records.pop(feedback.request_id, None)
        records[feedback.request_id] = feedback
        if len(records) > self.capacity:
            records.popitem(last=False)
        return feedback.request_id in self._served

    def get(self, request_id: str) -> Feedback | None:
        """Return the feedback stored for a request id, if any."""
        return self._feedback.get(request_id)

    def __len__(self) -> int:
        return len(self._feedback)
