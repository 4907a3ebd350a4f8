"""The ``--since`` of ``modelrouter stats``, ``export`` and ``label``: one parser for all."""

from __future__ import annotations

import argparse
import datetime
import math
import re
import time

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

# A date or time without an offset is UTC, not the shell's local time: the same command
# then selects the same rows on every machine (and the store keeps Unix seconds).
SINCE_HELP = (
    "a duration back (90s, 30m, 12h, 7d, 2w), Unix seconds (1767225600), or an ISO date or "
    "time (2026-01-01, 2026-01-01T09:00), which is UTC unless it gives an offset (+09:00)"
)


def parse_since(text: str, now: float | None = None) -> float:
    """Return the Unix time a ``--since`` value names; raise ArgumentTypeError if none."""
    value = text.strip()
    match = _DURATION.match(value)
    if match:
        now = time.time() if now is None else now
        since = now - float(match.group(1)) * _SECONDS[match.group(2)]
    else:
        since = _absolute(text, value)
    if not math.isfinite(since):
        raise argparse.ArgumentTypeError(f"{text!r}: not a time (give finite Unix seconds)")
    return since


def _absolute(text: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give {SINCE_HELP}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()
