from router.completion.circuit import CircuitBreaker
from router.config import CircuitBreakerConfig
from router.domain import CircuitState
from tests.fakes.support import FakeClock as Clock


def _breaker(clock: Clock) -> CircuitBreaker:
    settings = CircuitBreakerConfig(failures=3, window_s=10, cooldown_s=5)
    return CircuitBreaker("fake", "openai", settings, clock)


def test_k_failures_in_the_window_open_the_circuit() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state().circuit is CircuitState.CLOSED
    assert breaker.state().recent_failures == 2
    breaker.record_failure()
    state = breaker.state()
    assert state.circuit is CircuitState.OPEN and state.open_seconds_left == 5
    assert not breaker.allow()


def test_failures_outside_the_window_do_not_count() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.now += 11
    breaker.record_failure()
    assert breaker.state().circuit is CircuitState.CLOSED
    assert breaker.state().recent_failures == 1


def test_after_the_cooldown_one_probe_decides() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 4.9
    assert not breaker.available() and not breaker.allow()
    clock.now += 0.2
    assert breaker.available()
    assert breaker.state().circuit is CircuitState.HALF_OPEN
    assert breaker.allow()  # the probe
    assert not breaker.available() and not breaker.allow()  # only one at a time
    breaker.record_failure()  # the probe failed: open again for a full cool-down
    assert breaker.state().circuit is CircuitState.OPEN
    clock.now += 5.1
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state().circuit is CircuitState.CLOSED
    assert breaker.state().recent_failures == 0
    assert breaker.allow() and breaker.allow()


def test_a_cancelled_probe_frees_the_slot() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 6
    assert breaker.allow()
    breaker.release()
    assert breaker.state().circuit is CircuitState.HALF_OPEN
    assert breaker.allow()
