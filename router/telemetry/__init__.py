"""Observability: Prometheus metrics (multiprocess) and OpenTelemetry traces.

``metrics`` holds the metric definitions and the per-process counters the hot paths bump;
``exporter`` prepares the multiprocess directory and serves ``/metrics`` on its own port;
``tracing`` (imported only when tracing is configured) sets up OpenTelemetry.
"""
