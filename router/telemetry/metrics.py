"""Prometheus metrics: their names, labels and buckets, and the per-process counts behind them.

The request paths never touch prometheus-client: they bump plain numbers on objects bound
once per label set (``Count``, ``Observations``), which costs tens of nanoseconds and
allocates nothing. ``Metrics.flush`` (about once a second, and when the process stops)
moves what accumulated into prometheus-client's values. In multiprocess mode each of those
writes is a locked write to a memory-mapped file, several microseconds each, and a Route
would make eleven of them (bench/README.md). The price is that a worker killed with SIGKILL
loses what it counted since its last flush (at most a second); a graceful stop flushes.
Gauges (in-flight RPCs, circuit states, the model version) are sampled at flush.

Every label takes values from a bounded set: gRPC method names and status codes, tier and
backend names from the configuration, attempt outcomes, token kinds, reload results, and
tenant names only where they come from the configuration (the tenants with limits).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from router.controller import Snapshot

# Seconds. Route takes well under a millisecond and a Complete stream up to minutes.
HANDLING_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip
DECISION_BUCKETS = (1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3)
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
COMPLETION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")
_OK = grpc.StatusCode.OK
UNARY = "unary"
SERVER_STREAM = "server_stream"


class Count:
    """Increments of one counter child, waiting for the next flush."""

    __slots__ = ("_child", "n")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.n: float = 0

    def flush(self) -> None:
        """Add the pending increments to the child."""
        n = self.n
        if n:
            self.n = 0
            self._child.inc(n)


class Observations:
    """Observations of one histogram child, bucketed, waiting for the next flush."""

    __slots__ = ("_bounds", "_child", "counts", "total")

    def __init__(self, child: Any, bounds: Sequence[float]) -> None:
        self._child = child
        self._bounds = tuple(bounds)
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count a value in its bucket (the first whose bound is >= the value)."""
        self.counts[bisect_left(self._bounds, value)] += 1
        self.total += value

    def flush(self) -> None:
        """Add the pending observations to the child's buckets and sum."""
        counts = self.counts
        if not any(counts):
            return
        # prometheus-client has no public call for "n observations in bucket i"; its
        # histogram keeps one value per bucket (not cumulative) and one for the sum.
        # tests/unit/telemetry/test_metrics.py checks the result against observe().
        buckets = self._child._buckets
        for i, n in enumerate(counts):
            if n:
                buckets[i].inc(n)
                counts[i] = 0
        total, self.total = self.total, 0.0
        self._child._sum.inc(total)


class RpcMetrics:
    """The counters of one gRPC method, bound once when the interceptor wraps it."""

    __slots__ = ("_handled", "_labels", "_metrics", "handled", "ok", "seconds", "started")

    def __init__(self, metrics: Metrics, labels: tuple[str, str, str]) -> None:
        self._metrics = metrics
        self._labels = labels
        self.started = metrics.count(metrics.grpc_started, labels)
        self.seconds = metrics.observations(metrics.grpc_seconds, labels, HANDLING_BUCKETS)
        self.handled: dict[grpc.StatusCode, Count] = {}
        self.ok = self.handled_count(grpc.StatusCode.OK)

    def handled_count(self, code: grpc.StatusCode) -> Count:
        """Return the handled counter of a status code (bound on first use)."""
        count = self.handled.get(code)
        if count is None:
            count = self.handled[code] = self._metrics.count(
                self._metrics.grpc_handled, (*self._labels, code.name)
            )
        return count

    def done(self, code: grpc.StatusCode, seconds: float) -> None:
        """Count a finished RPC and its duration."""
        # OK without a dictionary look-up: hashing a StatusCode runs Enum.__hash__ in Python.
        count = self.ok if code is _OK else self.handled_count(code)
        count.n += 1
        self.seconds.observe(seconds)


class Metrics:
    """The service's metrics in one process, and the pending counts of its request paths."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Define the metrics; ``registry`` None suits multiprocess mode (files, no registry)."""
        r = registry
        self.grpc_started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", GRPC_LABELS, registry=r
        )
        self.grpc_handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            (*GRPC_LABELS, "grpc_code"),
            registry=r,
        )
        self.grpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status (a stream's whole length).",
            GRPC_LABELS,
            buckets=HANDLING_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "modelrouter_route_decisions_total",
            "Routing decisions (Route, RouteBatch and Complete), by the tier chosen.",
            ("tier",),
            registry=r,
        )
        self.decision_seconds = Histogram(
            "modelrouter_decision_seconds",
            "Time to featurize, score and pick the tier of one request.",
            buckets=DECISION_BUCKETS,
            registry=r,
        )
        self.route_score = Histogram(
            "modelrouter_route_score",
            "The difficulty score of routed requests, in [0, 1].",
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.batch_items = Counter(
            "modelrouter_route_batch_items_total",
            "Requests of RouteBatch calls, by the status code of each one's result.",
            ("grpc_code",),
            registry=r,
        )
        self.attempts = Counter(
            "modelrouter_completion_attempts_total",
            "Attempts at a tier during Complete, by how they ended.",
            ("tier", "backend", "outcome"),
            registry=r,
        )
        self.escalations = Counter(
            "modelrouter_escalations_total",
            "Climbs to a stronger tier during Complete; reason is the failed attempt's outcome.",
            ("from_tier", "to_tier", "reason"),
            registry=r,
        )
        self.first_token_seconds = Histogram(
            "modelrouter_time_to_first_token_seconds",
            "Time from an attempt's start to its first token from the backend.",
            ("tier",),
            buckets=FIRST_TOKEN_BUCKETS,
            registry=r,
        )
        self.completion_seconds = Histogram(
            "modelrouter_completion_seconds",
            "Whole Complete run (every attempt) that produced an answer, by answering tier.",
            ("tier",),
            buckets=COMPLETION_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "modelrouter_tokens_total",
            "Tokens of every attempt, by tier and kind (input, output).",
            ("tier", "kind"),
            registry=r,
        )
        self.cost = Counter(
            "modelrouter_cost_usd_total",
            "US dollars spent on every attempt, by tier.",
            ("tier",),
            registry=r,
        )
        self.cost_baseline = Counter(
            "modelrouter_cost_baseline_usd_total",
            "US dollars the answers would have cost on the strongest tier.",
            registry=r,
        )
        self.feedback_ratings = Counter(
            "modelrouter_feedback_total",
            "Feedback received, by the tier that served the rated request (unknown if none).",
            ("tier",),
            registry=r,
        )
        self.config_reloads = Counter(
            "modelrouter_config_reloads_total",
            "Configuration reloads (SIGHUP), by result (success, failure).",
            ("result",),
            registry=r,
        )
        self.auth_failures = Counter(
            "modelrouter_auth_failures_total",
            "Calls refused by API key checks, by method and reason (missing_key, malformed, "
            "unknown_key, method_denied, tenant_mismatch).",
            ("grpc_method", "reason"),
            registry=r,
        )
        self.limit_rejections = Counter(
            "modelrouter_limit_rejections_total",
            "Calls refused by a tenant's limit, by tenant (configured) and limit "
            "(requests_per_s, tokens_per_minute, usd_per_day, usd_per_month).",
            ("tenant", "limit"),
            registry=r,
        )
        self.limit_store_errors = Counter(
            "modelrouter_limit_store_errors_total",
            "Limit checks that could not reach Redis, by the policy applied (fail_open, "
            "fail_closed).",
            ("policy",),
            registry=r,
        )
        self.circuit_open = Gauge(
            "modelrouter_backend_circuit_open",
            "1 while a backend's circuit breaker skips it (open or half-open) in any worker.",
            ("backend",),
            multiprocess_mode="livemax",
            registry=r,
        )
        self.model_info = Gauge(
            "modelrouter_model_info",
            "1 for the routing model version in force (0 for one replaced by a reload).",
            ("version",),
            multiprocess_mode="livemax",
            registry=r,
        )
        self.inflight = Gauge(
            "modelrouter_inflight_rpcs",
            "ModelRouter RPCs being handled, summed over the live workers.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.store_records = Counter(
            "modelrouter_store_records_total",
            "Records for the store, by result: written, or dropped (queue full, or the store "
            "unwritable while stopping).",
            ("result",),
            registry=r,
        )
        self.store_queue = Gauge(
            "modelrouter_store_queued_records",
            "Records waiting to be written to the store, summed over the live workers.",
            multiprocess_mode="livesum",
            registry=r,
        )
        # The store writer last flushed, and its counts then (a reload may swap it).
        self._store_writer: object = None
        self._store_counts = (0, 0)
        # The online cost controllers, per tenant with a target (a configured, bounded set).
        # Each worker runs its own over the requests it serves: the target is the same in
        # all of them (the most recent value), what each realised and the offset it holds are
        # its own, one series per live worker (multiprocess mode adds a ``pid`` label).
        self.controller_target = Gauge(
            "modelrouter_controller_target",
            "A tenant's cost target: a share of requests above the cheapest tier, or USD/hour.",
            ("tenant", "kind"),
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.controller_realised = Gauge(
            "modelrouter_controller_realised",
            "What the tenant's window of requests was served: the target's quantity.",
            ("tenant", "kind"),
            multiprocess_mode="liveall",
            registry=r,
        )
        self.controller_offset = Gauge(
            "modelrouter_controller_offset_logits",
            "The offset the controller adds to the logit of each of the tenant's thresholds.",
            ("tenant",),
            multiprocess_mode="liveall",
            registry=r,
        )
        self.controller_saturated = Gauge(
            "modelrouter_controller_saturated",
            "1 while the tenant's offset sits at a limit and the target is still not met.",
            ("tenant",),
            multiprocess_mode="liveall",
            registry=r,
        )
        self._pending: list[Count | Observations] = []
        self._counts: dict[tuple[Any, tuple[str, ...]], Count] = {}
        self._by_tier: dict[tuple[Any, str], Observations] = {}
        self._decisions: dict[str, Count] = {}
        self._batch_items: dict[str, Count] = {}
        self._circuits: dict[str, bool] = {}
        self._model_version = ""
        self.decision_time = self.observations(self.decision_seconds, (), DECISION_BUCKETS)
        self.score = self.observations(self.route_score, (), SCORE_BUCKETS)
        self.baseline_cost = self.count(self.cost_baseline, ())

    # -- binding -----------------------------------------------------------------------

    def count(self, family: Counter, labels: tuple[str, ...]) -> Count:
        """Return the pending counter of a label set, bound on first use."""
        key = (family, labels)
        count = self._counts.get(key)
        if count is None:
            child = family.labels(*labels) if labels else family
            count = self._counts[key] = Count(child)
            self._pending.append(count)
        return count

    def observations(
        self, family: Histogram, labels: tuple[str, ...], bounds: Sequence[float]
    ) -> Observations:
        """Return a new pending histogram for a label set (bind it once and keep it)."""
        child = family.labels(*labels) if labels else family
        observations = Observations(child, bounds)
        self._pending.append(observations)
        return observations

    def rpc(self, grpc_type: str, service: str, method: str) -> RpcMetrics:
        """Return the counters of one gRPC method."""
        return RpcMetrics(self, (grpc_type, service, method))

    # -- events that are not per-call hot ----------------------------------------------

    def decided(self, tier: str, seconds: float, score: float) -> None:
        """Count a routing decision."""
        count = self._decisions.get(tier)
        if count is None:
            count = self._decisions[tier] = self.count(self.decisions, (tier,))
        count.n += 1
        self.decision_time.observe(seconds)
        self.score.observe(score)

    def batch_item(self, code_name: str) -> None:
        """Count one request of a RouteBatch by its result's status code (OK: a decision)."""
        count = self._batch_items.get(code_name)
        if count is None:
            count = self._batch_items[code_name] = self.count(self.batch_items, (code_name,))
        count.n += 1

    def attempt(
        self,
        tier: str,
        backend: str,
        outcome: str,
        first_token_s: float | None,
        input_tokens: int,
        output_tokens: int,
        cost_usd: float,
    ) -> None:
        """Count one attempt of a Complete, its tokens and its cost."""
        self.count(self.attempts, (tier, backend, outcome)).n += 1
        if first_token_s is not None:
            self.tier_observations(self.first_token_seconds, tier, FIRST_TOKEN_BUCKETS).observe(
                first_token_s
            )
        if input_tokens:
            self.count(self.tokens, (tier, "input")).n += input_tokens
        if output_tokens:
            self.count(self.tokens, (tier, "output")).n += output_tokens
        if cost_usd:
            self.count(self.cost, (tier,)).n += cost_usd

    def escalated(self, from_tier: str, to_tier: str, reason: str) -> None:
        """Count a climb to a stronger tier."""
        self.count(self.escalations, (from_tier, to_tier, reason)).n += 1

    def completed(self, tier: str, seconds: float, baseline_cost_usd: float) -> None:
        """Count a Complete that produced an answer."""
        self.tier_observations(self.completion_seconds, tier, COMPLETION_BUCKETS).observe(seconds)
        self.baseline_cost.n += baseline_cost_usd

    def feedback(self, tier: str) -> None:
        """Count one feedback record."""
        self.count(self.feedback_ratings, (tier,)).n += 1

    def auth_failed(self, method: str, reason: str) -> None:
        """Count a call refused by the API key checks."""
        self.count(self.auth_failures, (method, reason)).n += 1

    def limit_rejected(self, tenant: str, limit: str) -> None:
        """Count a call refused by a tenant's limit."""
        self.count(self.limit_rejections, (tenant, limit)).n += 1

    def limit_store_failed(self, policy: str) -> None:
        """Count a limit check that could not reach Redis, by the policy applied."""
        self.count(self.limit_store_errors, (policy,)).n += 1

    def reloaded(self, success: bool) -> None:
        """Count a configuration reload (written at once: reloads are rare)."""
        self.config_reloads.labels("success" if success else "failure").inc()

    def tier_observations(
        self, family: Histogram, tier: str, bounds: Sequence[float]
    ) -> Observations:
        """Return the pending histogram of a tier, bound on first use."""
        key = (family, tier)
        found = self._by_tier.get(key)
        if found is None:
            found = self._by_tier[key] = self.observations(family, (tier,), bounds)
        return found

    # -- flush -------------------------------------------------------------------------

    def store(self, writer: object, written: int, dropped: int, queued: int) -> None:
        """Count what a store writer wrote and dropped since the last flush (its totals)."""
        if writer is not self._store_writer:
            self._store_writer, self._store_counts = writer, (0, 0)
        last_written, last_dropped = self._store_counts
        if written > last_written:
            self.store_records.labels("written").inc(written - last_written)
        if dropped > last_dropped:
            self.store_records.labels("dropped").inc(dropped - last_dropped)
        self._store_counts = (written, dropped)
        self.store_queue.set(queued)

    def flush(
        self,
        inflight: int,
        model_version: str,
        circuits_open: Iterable[tuple[str, bool]],
        controllers: Iterable[Snapshot] = (),
    ) -> None:
        """Move the pending counts into prometheus-client and sample the gauges."""
        for pending in self._pending:
            pending.flush()
        self.inflight.set(inflight)
        if model_version != self._model_version:
            if self._model_version:
                self.model_info.labels(self._model_version).set(0)
            self.model_info.labels(model_version).set(1)
            self._model_version = model_version
        seen = set()
        for backend, is_open in circuits_open:
            seen.add(backend)
            if self._circuits.get(backend) != is_open:
                self.circuit_open.labels(backend).set(1 if is_open else 0)
                self._circuits[backend] = is_open
        for c in controllers:
            kind = c.target.kind
            self.controller_target.labels(c.tenant, kind).set(c.target.value)
            if c.realised is not None:
                self.controller_realised.labels(c.tenant, kind).set(c.realised)
            self.controller_offset.labels(c.tenant).set(c.offset)
            self.controller_saturated.labels(c.tenant).set(1 if c.saturated else 0)
        for backend in [b for b in self._circuits if b not in seen]:
            # A backend a reload removed: its circuit is no longer open anywhere here.
            self.circuit_open.labels(backend).set(0)
            del self._circuits[backend]


_current: Metrics | None = None


def current() -> Metrics | None:
    """Return this process's metrics, or None when metrics are off."""
    return _current


def install(metrics: Metrics | None) -> None:
    """Make ``metrics`` this process's metrics (None turns them off)."""
    global _current
    _current = metrics
