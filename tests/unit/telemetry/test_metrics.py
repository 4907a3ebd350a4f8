"""The pending counts behind the metrics: a flush gives what prometheus-client would have."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, multiprocess, values

from router.controller import Snapshot, Target
from router.telemetry.exporter import MULTIPROC_ENV, use_process_values
from router.telemetry.metrics import DECISION_BUCKETS, Metrics, Observations


def samples(
    registry: CollectorRegistry, name: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return every sample of a metric family: (sample name, labels) -> value."""
    [family] = [f for f in registry.collect() if f.name == name]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}


def test_pending_observations_flush_to_what_observe_gives() -> None:
    use_process_values()
    direct_registry, pending_registry = CollectorRegistry(), CollectorRegistry()
    direct = Histogram("h", "h", ["tier"], buckets=DECISION_BUCKETS, registry=direct_registry)
    pending = Observations(
        Histogram("h", "h", ["tier"], buckets=DECISION_BUCKETS, registry=pending_registry).labels(
            "cheap"
        ),
        DECISION_BUCKETS,
    )
    rng = random.Random(3)
    # Values on the bounds too: a bucket holds the values <= its bound.
    values = [rng.choice(DECISION_BUCKETS) for _ in range(50)] + [
        rng.uniform(0, 2e-3) for _ in range(200)
    ]
    for i, value in enumerate(values):
        direct.labels("cheap").observe(value)
        pending.observe(value)
        if i % 70 == 0:
            pending.flush()
    pending.flush()
    pending.flush()  # nothing pending: a no-op
    got, want = samples(pending_registry, "h"), samples(direct_registry, "h")
    sums = [key for key in want if key[0] == "h_sum"]
    assert got.pop(sums[0]) == pytest.approx(want.pop(sums[0]), rel=1e-12)
    created = [key for key in want if key[0] == "h_created"]
    for key in created:
        del got[key], want[key]
    assert got == want and len(got) == len(DECISION_BUCKETS) + 2  # the buckets, +Inf, count
    assert pending.counts == [0] * (len(DECISION_BUCKETS) + 1) and pending.total == 0.0


def test_counts_wait_for_the_flush_and_gauges_are_sampled_then() -> None:
    use_process_values()
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    value = registry.get_sample_value
    metrics.decided("cheap", 4e-6, 0.2)
    metrics.decided("cheap", 5e-6, 0.3)
    metrics.feedback("unknown")
    assert value("modelrouter_route_decisions_total", {"tier": "cheap"}) == 0  # bound, unflushed
    metrics.flush(3, "model-a", [("demo", False), ("openai", True)])
    assert value("modelrouter_route_decisions_total", {"tier": "cheap"}) == 2
    assert value("modelrouter_decision_seconds_count") == 2
    assert value("modelrouter_decision_seconds_bucket", {"le": "5e-06"}) == 2
    assert value("modelrouter_route_score_sum") == 0.5
    assert value("modelrouter_feedback_total", {"tier": "unknown"}) == 1
    assert value("modelrouter_inflight_rpcs") == 3
    assert value("modelrouter_model_info", {"version": "model-a"}) == 1
    assert value("modelrouter_backend_circuit_open", {"backend": "openai"}) == 1
    assert value("modelrouter_backend_circuit_open", {"backend": "demo"}) == 0
    # A reload: another model, the openai backend gone.
    metrics.decided("strong", 5e-6, 0.9)
    metrics.flush(0, "model-b", [("demo", False)])
    assert value("modelrouter_route_decisions_total", {"tier": "cheap"}) == 2
    assert value("modelrouter_route_decisions_total", {"tier": "strong"}) == 1
    assert value("modelrouter_model_info", {"version": "model-a"}) == 0
    assert value("modelrouter_model_info", {"version": "model-b"}) == 1
    assert value("modelrouter_backend_circuit_open", {"backend": "openai"}) == 0
    assert value("modelrouter_inflight_rpcs") == 0


def test_completion_counts_tokens_cost_and_the_baseline() -> None:
    use_process_values()
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    value = registry.get_sample_value
    metrics.attempt("cheap", "local", "timeout", None, 0, 0, 0.0)
    metrics.escalated("cheap", "strong", "timeout")
    metrics.attempt("strong", "openai", "ok", 0.2, 12, 30, 0.00033)
    metrics.completed("strong", 1.5, 0.0024)
    metrics.reloaded(True)
    metrics.reloaded(False)
    metrics.flush(0, "m", [])
    attempts = "modelrouter_completion_attempts_total"
    assert value(attempts, {"tier": "cheap", "backend": "local", "outcome": "timeout"}) == 1
    assert value(attempts, {"tier": "strong", "backend": "openai", "outcome": "ok"}) == 1
    assert (
        value(
            "modelrouter_escalations_total",
            {"from_tier": "cheap", "to_tier": "strong", "reason": "timeout"},
        )
        == 1
    )
    assert value("modelrouter_tokens_total", {"tier": "strong", "kind": "input"}) == 12
    assert value("modelrouter_tokens_total", {"tier": "strong", "kind": "output"}) == 30
    assert value("modelrouter_tokens_total", {"tier": "cheap", "kind": "input"}) is None
    assert value("modelrouter_cost_usd_total", {"tier": "strong"}) == 0.00033
    assert value("modelrouter_cost_baseline_usd_total") == 0.0024
    assert value("modelrouter_time_to_first_token_seconds_count", {"tier": "strong"}) == 1
    assert value("modelrouter_time_to_first_token_seconds_count", {"tier": "cheap"}) is None
    assert value("modelrouter_completion_seconds_sum", {"tier": "strong"}) == 1.5
    assert value("modelrouter_config_reloads_total", {"result": "success"}) == 1
    assert value("modelrouter_config_reloads_total", {"result": "failure"}) == 1


def test_store_counts_follow_the_writer_and_restart_with_a_new_one() -> None:
    use_process_values()
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    value = registry.get_sample_value
    first, second = object(), object()
    metrics.store(first, written=10, dropped=0, queued=4)
    metrics.store(first, written=25, dropped=3, queued=0)
    assert value("modelrouter_store_records_total", {"result": "written"}) == 25
    assert value("modelrouter_store_records_total", {"result": "dropped"}) == 3
    assert value("modelrouter_store_queued_records") == 0
    # A reload's new writer counts from zero: its totals add to the earlier ones.
    metrics.store(second, written=5, dropped=0, queued=2)
    assert value("modelrouter_store_records_total", {"result": "written"}) == 30
    assert value("modelrouter_store_queued_records") == 2


def test_each_tenant_controller_is_a_set_of_gauges() -> None:
    use_process_values()
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    value = registry.get_sample_value
    share = Snapshot("acme", Target("strong_share", 0.3), 1.5, (0.5, 0.9), 0.31, 500, 12, False)
    spend = Snapshot("default", Target("usd_per_hour", 5.0), -6.0, (0.1, 0.2), None, 0, 0, True)
    metrics.flush(0, "m-1", (), (share, spend))
    assert value("modelrouter_controller_target", {"tenant": "acme", "kind": "strong_share"}) == 0.3
    assert (
        value("modelrouter_controller_realised", {"tenant": "acme", "kind": "strong_share"}) == 0.31
    )
    assert value("modelrouter_controller_offset_logits", {"tenant": "acme"}) == 1.5
    assert value("modelrouter_controller_saturated", {"tenant": "acme"}) == 0
    assert (
        value("modelrouter_controller_target", {"tenant": "default", "kind": "usd_per_hour"}) == 5.0
    )
    # No realised value before the window has one.
    assert (
        value("modelrouter_controller_realised", {"tenant": "default", "kind": "usd_per_hour"})
        is None
    )
    assert value("modelrouter_controller_saturated", {"tenant": "default"}) == 1


def test_each_worker_has_its_own_controller_series_in_multiprocess_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers' controllers hold different offsets: the exporter shows both, by pid."""
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    try:
        for pid, offset, realised in ((101, 1.5, 0.31), (202, -0.5, 0.27)):
            values.ValueClass = values.MultiProcessValue(lambda pid=pid: pid)  # type: ignore[no-untyped-call]
            worker = Metrics(CollectorRegistry())
            snapshot = Snapshot(
                "acme", Target("strong_share", 0.3), offset, (0.5, 0.9), realised, 500, 12, False
            )
            worker.flush(0, "m-1", (), (snapshot,))
    finally:
        use_process_values()
    exported = CollectorRegistry()
    multiprocess.MultiProcessCollector(exported, str(tmp_path))  # type: ignore[no-untyped-call]
    value = exported.get_sample_value
    share = {"tenant": "acme", "kind": "strong_share"}
    for label, offset, realised in (("101", 1.5, 0.31), ("202", -0.5, 0.27)):
        assert (
            value("modelrouter_controller_offset_logits", {"tenant": "acme", "pid": label})
            == offset
        )
        assert value("modelrouter_controller_realised", {**share, "pid": label}) == realised
        assert value("modelrouter_controller_saturated", {"tenant": "acme", "pid": label}) == 0
    # The target is the tenant's, the same in every worker: one series.
    assert value("modelrouter_controller_target", share) == 0.3
