"""Each tier's recent times to first token, for deadline-aware escalation.

The engine notes how long every attempt it started took to its first token; an attempt
whose first token never came before ``timeouts.first_token_s`` counts with the time it
waited (a censored observation: the tier is at least that slow). Before a climb the engine
asks whether the tier's 95th percentile fits in the caller's remaining time.
"""

from __future__ import annotations

import math
from collections import deque

# The observations kept per tier: enough for a stable p95, few enough to follow a change.
WINDOW = 100
# Below this many observations the percentile is not trusted and a climb is attempted.
MIN_OBSERVATIONS = 5


class FirstTokenTimes:
    """The last ``window`` times to first token of one tier, in seconds."""

    __slots__ = ("_min_observations", "_times")

    def __init__(self, window: int = WINDOW, min_observations: int = MIN_OBSERVATIONS) -> None:
        self._times: deque[float] = deque(maxlen=window)
        self._min_observations = min_observations

    def __len__(self) -> int:
        return len(self._times)

    def observe(self, seconds: float) -> None:
        """Note one attempt's time to its first token (or to its first-token timeout)."""
        self._times.append(seconds)

    def p95(self) -> float | None:
        """Return the 95th percentile, or None with too few observations to trust one."""
        count = len(self._times)
        if count < self._min_observations:
            return None
        return sorted(self._times)[math.ceil(0.95 * count) - 1]
