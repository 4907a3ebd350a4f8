"""Typed backend failures, each carrying the attempt outcome it maps to.

The message of a failure is the router's own words (a status, a phase, a field name): it
goes to callers in ``Attempt.detail`` and the UNAVAILABLE message. What the provider said
(an error body, a bad value, an error event) goes into ``upstream`` only, for the log,
because a provider or proxy may echo the request's credentials in it.
"""

from __future__ import annotations

from http import HTTPStatus

from router.domain import AttemptOutcome


class BackendError(Exception):
    """A backend attempt failed; ``outcome`` says how, the message gives the detail."""

    outcome: AttemptOutcome = AttemptOutcome.HTTP_ERROR

    def __init__(self, reason: str, upstream: str = "") -> None:
        super().__init__(reason)
        self.upstream = upstream

    @property
    def backend_unhealthy(self) -> bool:
        """Whether the failure speaks against the backend (and counts for its circuit)."""
        return True


class ConnectFailed(BackendError):
    """The connection could not be made (refused, DNS, TLS, connect timeout)."""

    outcome = AttemptOutcome.CONNECT_ERROR


class BackendTimeout(BackendError):
    """A time limit passed: ``phase`` is first_token, idle or total."""

    outcome = AttemptOutcome.TIMEOUT

    def __init__(self, phase: str, limit_s: float) -> None:
        super().__init__(f"{phase} timeout after {limit_s:g} s")
        self.phase = phase
        self.limit_s = limit_s


class HTTPStatusFailed(BackendError):
    """The provider answered with a non-success HTTP status."""

    outcome = AttemptOutcome.HTTP_ERROR

    def __init__(self, status: int, body: str) -> None:
        try:
            reason = f"HTTP {status} {HTTPStatus(status).phrase}"
        except ValueError:
            reason = f"HTTP {status}"
        super().__init__(reason, upstream=body)
        self.status = status

    @property
    def backend_unhealthy(self) -> bool:
        """Whether the status speaks against the backend: not a 4xx other than 408 or 429.

        A 400, 401, 404 or 422 says the request or the configuration (model name, API
        key) is wrong; the backend itself is up, so its circuit must not open over it.
        """
        return not 400 <= self.status < 500 or self.status in _UNHEALTHY_4XX


class RateLimited(HTTPStatusFailed):
    """The provider answered HTTP 429."""

    outcome = AttemptOutcome.RATE_LIMITED


class MalformedStream(BackendError):
    """The stream could not be parsed, or ended before it said it was finished."""

    outcome = AttemptOutcome.MALFORMED_STREAM


class ErrorEvent(BackendError):
    """The provider sent an error event inside the stream."""

    outcome = AttemptOutcome.ERROR_EVENT


# 408 Request Timeout and 429 Too Many Requests: the backend is slow or overloaded.
_UNHEALTHY_4XX = frozenset({408, 429})


def status_error(status: int, body: str) -> HTTPStatusFailed:
    """Return the typed error for a non-success HTTP status."""
    return RateLimited(status, body) if status == 429 else HTTPStatusFailed(status, body)
