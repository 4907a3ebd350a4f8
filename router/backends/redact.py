"""Mask secrets in text a provider sent back, before it goes into a log line.

A provider or a proxy may quote the request in an error body (``Incorrect API key provided:
Bearer sk-...``). The log keeps an excerpt of it for operators, with every configured
secret (backend API keys, header values) and anything that looks like a credential masked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from router.config import Config

MASK = "***"
# Excerpts are cut to this many characters, after masking (so no secret is cut in half).
EXCERPT_CHARS = 200
# Shorter configured values ("1", "on") are not secrets; masking them would garble the text.
MIN_SECRET_CHARS = 4

_CREDENTIAL_PATTERNS = (
    # Authorization schemes, wherever they appear: "Bearer sk-...", "Basic dXNlcjpw...".
    (re.compile(r"(?i)\b(bearer|basic|token)\s+[^\s\"',;}]+"), rf"\1 {MASK}"),
    # Provider key formats: OpenAI and Anthropic keys start with sk-, others pk-, rk-.
    (re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{8,}"), MASK),
    # A named credential: "api_key": "...", x-api-key: ..., password=...
    (
        re.compile(
            r"(?i)((?:api[_-]?key|x-api-key|(?:proxy-)?authorization|access[_-]?token|secret|"
            r"password)[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token)\s+)?)"
            r"(?!\*\*\*|(?:bearer|basic|token)\s)[^\s\"',;}]+"
        ),
        rf"\1{MASK}",
    ),
)


class Redactor:
    """Mask configured secrets and credential patterns in upstream text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first: a secret that contains another is masked whole.
        self._secrets = sorted(
            {s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True
        )

    @classmethod
    def for_config(cls, config: Config) -> Redactor:
        """Return a redactor of every backend's API key and header values."""
        secrets: list[str] = []
        for backend in config.backends.values():
            secrets.append(getattr(backend, "api_key", ""))
            secrets.extend(getattr(backend, "headers", {}).values())
        return cls(secrets)

    def excerpt(self, text: str) -> str:
        """Return the text masked, on one line, cut to ``EXCERPT_CHARS`` characters."""
        text = text.rstrip()
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        # An error body is read up to a limit: it may end inside a secret.
        for secret in self._secrets:
            for size in range(len(secret) - 1, MIN_SECRET_CHARS - 1, -1):
                if text.endswith(secret[:size]):
                    text = text[:-size] + MASK
                    break
        for pattern, replacement in _CREDENTIAL_PATTERNS:
            text = pattern.sub(replacement, text)
        text = " ".join(text.split())
        return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."
