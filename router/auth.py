"""API keys: who is calling (the key's tenant) and what it may call.

A caller sends ``authorization: Bearer <key>``. The configuration lists only the SHA-256
digest of each key, so a leaked configuration leaks no key. The presented key is hashed and
compared with every configured digest in constant time (no early exit), so the time taken
says nothing about which digest, or how much of one, matched. Keys are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from router.config import AuthConfig
from router.domain import PermissionDenied, Unauthenticated

AUTHORIZATION_HEADER = "authorization"
BEARER = "bearer "
# Keys made by `modelrouter keys new`: a recognisable prefix (secret scanners look for such
# prefixes) and 256 random bits.
KEY_PREFIX = "mrk_"
KEY_BYTES = 32
# A longer header is not a key of ours; refusing it early bounds the hashing work.
MAX_KEY_CHARS = 512


def digest(key: str) -> str:
    """Return the hex SHA-256 digest of a key's UTF-8 bytes, as the configuration lists it."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_key() -> tuple[str, str]:
    """Return a new random key and its digest."""
    key = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
    return key, digest(key)


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller a key identifies: its tenant and the methods it may call."""

    tenant: str
    methods: frozenset[str]

    def tenant_for(self, requested: str) -> str:
        """Return the request's tenant: the key's, which a non-empty tenant field must match."""
        if requested and requested != self.tenant:
            raise PermissionDenied(
                "tenant_mismatch",
                f"tenant: the API key belongs to tenant {_quote(self.tenant)}, the request names "
                f"{_quote(requested)}; leave tenant empty or set it to the key's tenant",
            )
        return self.tenant


def _quote(text: str, limit: int = 64) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


class KeyRing:
    """The configured keys, by digest; checks the ``authorization`` metadata of a call."""

    def __init__(self, config: AuthConfig) -> None:
        self.protect_health = config.protect_health
        self._keys = tuple(
            (bytes.fromhex(key.sha256), Principal(key.tenant, frozenset(key.methods)))
            for key in config.keys
        )

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Principal:
        """Return the caller a call's metadata identifies; raise Unauthenticated otherwise."""
        header = None
        for name, value in metadata or ():
            if name == AUTHORIZATION_HEADER:
                header = value if isinstance(value, str) else value.decode("latin-1")
                break
        if header is None:
            raise Unauthenticated(
                "missing_key", "missing authorization metadata: send 'authorization: Bearer KEY'"
            )
        if header[: len(BEARER)].lower() != BEARER or len(header) > MAX_KEY_CHARS:
            raise Unauthenticated("malformed", "authorization metadata must be 'Bearer KEY'")
        key = header[len(BEARER) :].strip()
        presented = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        found = None
        for expected, principal in self._keys:
            # Every digest is compared, whatever matched before.
            if hmac.compare_digest(presented, expected):
                found = principal
        if found is None:
            raise Unauthenticated("unknown_key", "unknown API key")
        return found

    def authorize(
        self, metadata: Iterable[tuple[str, str | bytes]] | None, method: str
    ) -> Principal:
        """Return the caller if its key may call ``method``; raise otherwise."""
        principal = self.authenticate(metadata)
        if method not in principal.methods:
            allowed = ", ".join(sorted(principal.methods))
            raise PermissionDenied(
                "method_denied",
                f"the API key of tenant {_quote(principal.tenant)} may not call {method} "
                f"(allowed: {allowed})",
            )
        return principal


def key_ring(config: AuthConfig) -> KeyRing | None:
    """Return the key ring of an auth configuration, or None when auth is off."""
    return KeyRing(config) if config.enabled else None
