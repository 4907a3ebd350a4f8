"""modelrouter: route each LLM query to the right model tier in microseconds.

``Router.default().route("What are your business hours?")`` returns a ``Decision``.
"""

from router.routing import Decision, Router, Scored

__all__ = ["Decision", "Router", "Scored"]
