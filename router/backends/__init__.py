"""Backends: one small async interface, a kind -> class registry, one module per provider.

Importing this package registers every built-in kind ("openai", "anthropic", "demo").
"""

from router.backends import anthropic, demo, openai
from router.backends.base import (
    BACKENDS,
    Backend,
    BackendRequest,
    Chunk,
    TokenUsage,
    create_backend,
    register,
)
from router.backends.errors import (
    BackendError,
    BackendTimeout,
    ConnectFailed,
    ErrorEvent,
    HTTPStatusFailed,
    MalformedStream,
    RateLimited,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendError",
    "BackendRequest",
    "BackendTimeout",
    "Chunk",
    "ConnectFailed",
    "ErrorEvent",
    "HTTPStatusFailed",
    "MalformedStream",
    "RateLimited",
    "TokenUsage",
    "anthropic",
    "create_backend",
    "demo",
    "openai",
    "register",
]
