"""One circuit breaker per backend: closed -> open after K failures -> half-open probe."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import structlog

from router.config import CircuitBreakerConfig
from router.domain import BackendState, CircuitState

log = structlog.get_logger()


class CircuitBreaker:
    """Skip a backend that failed ``failures`` times in ``window_s`` for ``cooldown_s``.

    After the cool-down one probe request is let through (half-open): its success closes
    the circuit, its failure opens it again. An attempt that ends without a verdict
    (the caller cancelled, or the provider refused the request itself with a 4xx other
    than 408 or 429) frees the probe slot for the next request.
    """

    def __init__(
        self,
        backend: str,
        kind: str,
        settings: CircuitBreakerConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.kind = kind
        self.settings = settings
        self._clock = clock
        self._failures: deque[float] = deque()
        self._state = CircuitState.CLOSED
        self._opened_at = 0.0
        self._probing = False

    def allow(self) -> bool:
        """Return whether a request may use the backend now (taking the probe slot if so)."""
        if self._state is CircuitState.CLOSED:
            return True
        if self._state is CircuitState.OPEN:
            if self._clock() - self._opened_at < self.settings.cooldown_s:
                return False
            self._transition(CircuitState.HALF_OPEN)
        if self._probing:
            return False
        self._probing = True
        return True

    def available(self) -> bool:
        """Return whether ``allow`` would let a request through now, without taking a slot."""
        if self._state is CircuitState.CLOSED:
            return True
        if self._state is CircuitState.OPEN:
            return self._clock() - self._opened_at >= self.settings.cooldown_s
        return not self._probing

    def record_success(self) -> None:
        """Note that the backend answered."""
        self._probing = False
        if self._state is not CircuitState.CLOSED:
            self._failures.clear()
            self._transition(CircuitState.CLOSED)

    def record_failure(self) -> None:
        """Note a backend failure; open the circuit at the threshold or on a failed probe."""
        now = self._clock()
        self._probing = False
        failures = self._failures
        failures.append(now)
        horizon = now - self.settings.window_s
        while failures and failures[0] < horizon:
            failures.popleft()
        if self._state is CircuitState.HALF_OPEN or (
            self._state is CircuitState.CLOSED and len(failures) >= self.settings.failures
        ):
            self._opened_at = now
            self._transition(CircuitState.OPEN)

    def release(self) -> None:
        """Note an attempt that ended without saying anything about the backend."""
        self._probing = False

    def state(self) -> BackendState:
        """Return the state GetConfig reports."""
        now = self._clock()
        horizon = now - self.settings.window_s
        recent = sum(1 for t in self._failures if t >= horizon)
        state = self._state
        left = 0.0
        if state is CircuitState.OPEN:
            left = max(0.0, self.settings.cooldown_s - (now - self._opened_at))
            if left == 0.0:
                state = CircuitState.HALF_OPEN  # the next request will be the probe
        return BackendState(self.backend, self.kind, state, recent, left)

    def _transition(self, state: CircuitState) -> None:
        previous, self._state = self._state, state
        emit = log.warning if state is CircuitState.OPEN else log.info
        emit(
            "circuit_" + state.value,
            backend=self.backend,
            previous=previous.value,
            recent_failures=len(self._failures),
            cooldown_s=self.settings.cooldown_s,
        )
