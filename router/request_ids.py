"""Request ids: the caller's, checked once at the edge, or a fresh one."""

from __future__ import annotations

import itertools
import os

from router.validation import check_id


class RequestIds:
    """Hand out fresh request ids and accept the callers' own."""

    def __init__(self) -> None:
        # A random per-process prefix and a counter: unique across workers and restarts
        # without the cost of a UUID per request.
        self._prefix = os.urandom(5).hex()
        self._counter = itertools.count(1)

    def new(self) -> str:
        """Return a fresh request id."""
        return f"{self._prefix}{next(self._counter):08x}"

    def assign(self, given: str) -> str:
        """Return the caller's request id after checking it, or a fresh one when it is empty."""
        if not given:
            return self.new()
        check_id("request_id", given)
        return given
