"""The limiter over both stores (this process's memory, a real Redis) and an unreachable Redis."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import structlog
import yaml
from prometheus_client import CollectorRegistry

from router.config import DEFAULT_CONFIG_YAML, Config, parse_config
from router.domain import LimitExceeded, LimitsUnavailable, LimitTooSmall, Retryable
from router.limits import Limiter
from router.server.interceptor import status_for
from router.telemetry import metrics
from tests.redis_server import RedisServer

# 2031-03-31 23:59:00 UTC: a minute before a new day and a new month.
END_OF_MARCH = datetime.datetime(2031, 3, 31, 23, 59, tzinfo=datetime.UTC).timestamp()


def config(limits: dict[str, Any], *, redis_url: str = "", **settings: Any) -> Config:
    data = yaml.safe_load(DEFAULT_CONFIG_YAML)
    data["tenants"] = {"acme": {"limits": limits}}
    # A loaded two-core machine with a Redis that fsyncs every write needs more than the
    # default half second now and then.
    data["limits"] = {"redis_url": redis_url, "redis_timeout_s": 3.0, **settings}
    return parse_config(data, environ={})


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> str:
    """Each store in turn: "" (this process's memory), then a real Redis's URL."""
    if request.param == "memory":
        return ""
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
async def limiters() -> AsyncIterator[Callable[..., Limiter]]:
    made: list[Limiter] = []

    def make(cfg: Config, **clocks: Callable[[], float]) -> Limiter:
        limiter = Limiter(cfg, **clocks)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.aclose()


async def admit(limiter: Limiter, tenant: str = "acme") -> None:
    check = limiter.admit(tenant)
    assert check is not None
    await check


async def test_a_rate_admits_its_burst_then_says_how_long_to_wait(
    store: str, limiters: Callable[..., Limiter]
) -> None:
    # Slow enough that a loaded machine does not refill the bucket between the calls.
    limiter = limiters(config({"requests_per_s": 0.5, "burst": 3}, redis_url=store))
    for _ in range(3):
        await admit(limiter)
    with pytest.raises(LimitExceeded) as refused:
        await admit(limiter)
    assert refused.value.limit == "requests_per_s"
    assert 0 < refused.value.retry_after_s <= 2.0
    await asyncio.sleep(refused.value.retry_after_s + 0.02)
    await admit(limiter)
    assert limiter.admit("globex") is None  # no limits configured for it


async def test_a_budget_holds_the_most_and_settles_to_the_real_cost(
    store: str, limiters: Callable[..., Limiter]
) -> None:
    wall = Clock(END_OF_MARCH - 3600)
    limiter = limiters(config({"usd_per_day": 1.0}, redis_url=store), wall=wall)
    first = await limiter.reserve("acme", 10, 0.6)
    assert first is not None
    with pytest.raises(LimitExceeded) as refused:
        await limiter.reserve("acme", 10, 0.6)  # 1.2 would pass the day's $1
    assert refused.value.limit == "usd_per_day"
    assert refused.value.retry_after_s == pytest.approx(3660, abs=1)
    assert "budget of $1 per day (UTC)" in str(refused.value)
    await limiter.settle(first, 100, 0.1)  # it cost far less than its most
    second = await limiter.reserve("acme", 10, 0.6)
    assert second is not None
    await limiter.settle(second, 100, 0.6)
    with pytest.raises(LimitExceeded):
        await limiter.reserve("acme", 10, 0.31)  # 0.7 spent
    assert await limiter.reserve("acme", 10, 0.3) is not None


async def test_a_new_utc_day_and_month_start_afresh(
    store: str, limiters: Callable[..., Limiter]
) -> None:
    wall = Clock(END_OF_MARCH)
    limiter = limiters(
        config({"usd_per_day": 1.0, "usd_per_month": 1.5}, redis_url=store), wall=wall
    )
    await limiter.reserve("acme", 1, 1.0)
    with pytest.raises(LimitExceeded) as refused:
        await limiter.reserve("acme", 1, 0.01)
    assert refused.value.limit == "usd_per_day"
    assert refused.value.retry_after_s == pytest.approx(60, abs=1)
    wall.now += 120  # 1 April: a new day and a new month
    await limiter.reserve("acme", 1, 1.0)
    wall.now += 86_400  # 2 April: a new day, the same month
    with pytest.raises(LimitExceeded) as refused:
        await limiter.reserve("acme", 1, 0.6)
    assert refused.value.limit == "usd_per_month"
    # Refused by the month, the day's counter took nothing: the day still has its $1.
    await limiter.reserve("acme", 1, 0.5)


async def test_replicas_reserving_at_once_never_spend_a_budget_twice(
    redis_server: RedisServer, limiters: Callable[..., Limiter]
) -> None:
    url = redis_server.url
    replicas = [limiters(config({"usd_per_day": 1.0}, redis_url=url)) for _ in range(3)]

    async def try_reserve(i: int) -> bool:
        try:
            await replicas[i % 3].reserve("acme", 1, 0.03)
        except LimitExceeded:
            return False
        return True

    admitted = sum(await asyncio.gather(*(try_reserve(i) for i in range(90))))
    assert admitted == 33  # 33 * 0.03 = 0.99; a 34th would pass $1


async def test_tokens_per_minute_admit_while_the_bucket_holds_the_prompt(
    store: str, limiters: Callable[..., Limiter]
) -> None:
    limiter = limiters(config({"tokens_per_minute": 600}, redis_url=store))
    held = await limiter.reserve("acme", 50, 0.0)
    assert held is not None
    await limiter.settle(held, 590, 0.0)  # the answer was long: 10 tokens left
    with pytest.raises(LimitExceeded) as refused:
        await limiter.reserve("acme", 50, 0.0)
    assert refused.value.limit == "tokens_per_minute"
    # 40 tokens short at 10 a second (less whatever refilled while the test ran).
    assert 2.0 <= refused.value.retry_after_s <= 4.1


def refused_for_good(error: LimitTooSmall, limit: str) -> None:
    """Assert a refusal that no retry can turn: FAILED_PRECONDITION, without a RetryInfo."""
    assert status_for(error) is grpc.StatusCode.FAILED_PRECONDITION
    assert not isinstance(error, Retryable)
    assert error.limit == limit
    assert "retry" not in str(error)


async def test_a_prompt_over_tokens_per_minute_is_refused_for_good(
    store: str, limiters: Callable[..., Limiter]
) -> None:
    limiter = limiters(config({"tokens_per_minute": 600}, redis_url=store))
    with pytest.raises(LimitTooSmall) as refused:
        await limiter.reserve("acme", 601, 0.0)  # the bucket never holds 601
    refused_for_good(refused.value, "tokens_per_minute")
    message = str(refused.value)
    assert "601 tokens" in message
    assert "tokens_per_minute of 600" in message
    assert "tenants.acme.limits.tokens_per_minute" in message
    # Nothing was taken: the whole minute's tokens are still there.
    assert await limiter.reserve("acme", 600, 0.0) is not None


async def test_a_request_whose_most_cost_passes_a_whole_budget_is_refused_for_good(
    store: str, limiters: Callable[..., Limiter]
) -> None:
    wall = Clock(END_OF_MARCH - 3600)
    limits = {"tokens_per_minute": 600, "usd_per_day": 1.0, "usd_per_month": 5.0}
    limiter = limiters(config(limits, redis_url=store), wall=wall)
    with pytest.raises(LimitTooSmall) as refused:
        await limiter.reserve("acme", 600, 1.01)  # a new day would not hold it either
    refused_for_good(refused.value, "usd_per_day")
    message = str(refused.value)
    assert "$1.010000" in message
    assert "usd_per_day of $1" in message
    # Neither the minute's tokens nor the day's dollars were taken.
    assert await limiter.reserve("acme", 600, 1.0) is not None


async def test_a_request_that_can_never_fit_is_refused_for_good_while_redis_is_down(
    redis_server: RedisServer, limiters: Callable[..., Limiter]
) -> None:
    limiter = limiters(
        config(
            {"tokens_per_minute": 600},
            redis_url=redis_server.url,
            on_redis_error="fail_closed",
        )
    )
    redis_server.kill()
    with pytest.raises(LimitTooSmall) as refused:
        await limiter.reserve("acme", 601, 0.0)  # not UNAVAILABLE: Redis cannot change it
    refused_for_good(refused.value, "tokens_per_minute")


# -- Redis unreachable ---------------------------------------------------------------


def store_errors(registry: CollectorRegistry, policy: str) -> float:
    current = metrics.current()
    assert current is not None
    current.flush(0, "", [])
    value = registry.get_sample_value("modelrouter_limit_store_errors_total", {"policy": policy})
    return value or 0.0


async def test_fail_closed_refuses_at_once_while_redis_is_down(
    redis_server: RedisServer, limiters: Callable[..., Limiter], registry: CollectorRegistry
) -> None:
    limiter = limiters(
        config({"requests_per_s": 100}, redis_url=redis_server.url, on_redis_error="fail_closed")
    )
    await admit(limiter)
    redis_server.kill()
    started = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        for _ in range(20):
            with pytest.raises(LimitsUnavailable) as refused:
                await admit(limiter)
    assert time.monotonic() - started < 2.0  # no call waits on the dead Redis for long
    assert refused.value.retry_after_s == 1.0
    assert "limits.on_redis_error is fail_closed" in str(refused.value)
    (line,) = [entry for entry in logs if entry["event"] == "limits store unreachable"]
    assert line["policy"] == "fail_closed"
    assert store_errors(registry, "fail_closed") == 20
    redis_server.start()
    await asyncio.sleep(1.1)  # the limiter leaves Redis alone for a second after a failure
    with structlog.testing.capture_logs() as logs:
        await admit(limiter)
    assert any(entry["event"] == "limits store reachable again" for entry in logs)


async def test_fail_open_admits_and_records_the_spend_once_redis_is_back(
    redis_server: RedisServer, limiters: Callable[..., Limiter], registry: CollectorRegistry
) -> None:
    settings = {"usd_per_day": 1.0, "requests_per_s": 100}
    limiter = limiters(config(settings, redis_url=redis_server.url, on_redis_error="fail_open"))
    other = limiters(config(settings, redis_url=redis_server.url, on_redis_error="fail_open"))
    held = await limiter.reserve("acme", 1, 0.2)
    assert held is not None
    redis_server.kill()
    await admit(limiter)  # admitted without a count
    during = await limiter.reserve("acme", 1, 0.3)
    assert during is not None
    await limiter.settle(held, 1, 0.15)
    await limiter.settle(during, 1, 0.25)
    assert store_errors(registry, "fail_open") == 4
    redis_server.start()
    await asyncio.sleep(1.1)
    await admit(limiter)  # Redis answers: what was spent meanwhile is recorded
    # 0.15 + 0.25 of $1 are spent, as another replica sees.
    with pytest.raises(LimitExceeded):
        await other.reserve("acme", 1, 0.61)
    assert await other.reserve("acme", 1, 0.59) is not None


async def test_a_hung_redis_costs_a_request_at_most_the_timeout(
    redis_server: RedisServer, limiters: Callable[..., Limiter], registry: CollectorRegistry
) -> None:
    limiter = limiters(
        config(
            {"requests_per_s": 100},
            redis_url=redis_server.url,
            on_redis_error="fail_open",
            redis_timeout_s=0.2,
        )
    )
    await admit(limiter)
    redis_server.pause()
    try:
        started = time.monotonic()
        await admit(limiter)  # times out, then fail_open admits
        assert time.monotonic() - started < 1.0
        started = time.monotonic()
        await admit(limiter)  # Redis is left alone for a second: no wait at all
        assert time.monotonic() - started < 0.1
    finally:
        redis_server.resume()
    assert store_errors(registry, "fail_open") == 2
