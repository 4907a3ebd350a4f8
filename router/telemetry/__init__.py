"""Observability: Prometheus metrics (multiprocess) and OpenTelemetry traces.

``metrics`` holds the metric definitions and the per-process counters the hot paths bump;
``exporter`` prepares the multiprocess directory and serves ``/metrics`` on its own port;
``tracing`` (imported only when tracing is configured) sets up OpenTelemetry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from router.telemetry.tracing import Tracing

_tracing: Tracing | None = None


def current_tracing() -> Tracing | None:
    """Return this process's tracer, or None when tracing is off."""
    return _tracing


def install_tracing(tracing: Tracing | None) -> None:
    """Make ``tracing`` this process's tracer (None turns tracing off)."""
    global _tracing
    _tracing = tracing
