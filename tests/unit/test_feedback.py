"""The bounded feedback store."""

from __future__ import annotations

from router.domain import Feedback
from router.feedback import FeedbackStore


def test_feedback_knows_served_requests_and_forgets_the_oldest() -> None:
    store = FeedbackStore(capacity=2)
    store.remember("a", "cheap")
    store.remember("b", "strong")
    store.remember("c", "expert")
    assert store.served_tier("a") is None
    assert (store.served_tier("b"), store.served_tier("c")) == ("strong", "expert")
    assert store.add(Feedback("c", 1.0))
    assert not store.add(Feedback("zzz", 0.0))
    assert store.add(Feedback("c", 0.5))  # the latest rating replaces the earlier one
    assert len(store) == 2
    stored = store.get("c")
    assert stored is not None and stored.rating == 0.5
    store.add(Feedback("d", 0.1))
    assert store.get("zzz") is None and len(store) == 2
