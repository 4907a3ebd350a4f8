"""Per-tenant limits: requests per second, tokens per minute, US dollars per day and month.

``admit`` takes one request from the tenant's rate (Route and Complete). For Complete,
``reserve`` sets aside, before the upstream call, the prompt's estimated tokens and the
most the attempt can cost (estimated prompt plus the tier's token limit, at the tier's
prices); ``extend`` does the same before each climb to a stronger tier, and ``settle``
replaces the reservation by what the attempts really used. So concurrent requests cannot
spend a budget twice: each holds its worst case until it knows its cost.

Over a limit is ``LimitExceeded`` (RESOURCE_EXHAUSTED with a RetryInfo). A Complete that no
wait can fit, its prompt over the whole tokens_per_minute or its most cost over a whole
budget, is ``LimitTooSmall`` (FAILED_PRECONDITION, no RetryInfo). When Redis cannot
be reached the configured policy applies: fail_open admits (and keeps the spend it could
not record, adding it once Redis answers again), fail_closed refuses with
``LimitsUnavailable`` (UNAVAILABLE with a RetryInfo). Either way the failure is logged and
counted, and after a failure Redis is left alone for ``REDIS_RETRY_S`` so that no request
waits on it again meanwhile.
"""

from __future__ import annotations

import asyncio
import calendar
import datetime
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from router.completion.cost import cost_usd
from router.config import DEFAULT_TENANT, Config, LimitsConfig, TenantLimitsConfig, TierConfig
from router.domain import (
    Attempt,
    GenerationOptions,
    LimitExceeded,
    LimitsUnavailable,
    LimitTooSmall,
)
from router.limits.counts import Bucket, Budget, Counts, MemoryCounts
from router.telemetry import metrics

log = structlog.get_logger()

NANO = 1_000_000_000
# After Redis failed, the policy applies without trying it for this long.
REDIS_RETRY_S = 1.0
# While Redis stays unreachable, one log line per this many seconds.
REDIS_LOG_EVERY_S = 10.0
DAY_S = 86_400
T = TypeVar("T")


def _nano(usd: float) -> int:
    return math.ceil(usd * NANO)


def max_output_tokens(generation: GenerationOptions, tier: TierConfig) -> int:
    """Return the most tokens an attempt on ``tier`` may generate for this request."""
    asked = generation.max_tokens
    return min(asked, tier.max_tokens) if asked > 0 else tier.max_tokens


def most_cost_usd(tier: TierConfig, prompt_tokens: int, generation: GenerationOptions) -> float:
    """Return the most an attempt on ``tier`` can cost: the prompt and its full token limit."""
    return cost_usd(tier.price, prompt_tokens, max_output_tokens(generation, tier))


@dataclass(frozen=True, slots=True)
class TenantRules:
    """One tenant's limits, with the store keys of its buckets."""

    tenant: str
    limits: TenantLimitsConfig
    # The prefix of the tenant's keys in the store.
    base: str
    requests: Bucket | None
    tokens: Bucket | None

    @property
    def has_budget(self) -> bool:
        return self.limits.usd_per_day is not None or self.limits.usd_per_month is not None

    @property
    def limits_complete(self) -> bool:
        return self.tokens is not None or self.has_budget


def _rules(prefix: str, tenant: str, limits: TenantLimitsConfig) -> TenantRules:
    # The hash tag keeps a tenant's keys in one Redis Cluster slot.
    base = f"{prefix}:{{{tenant}}}"
    requests = None
    burst = limits.burst_in_force  # None exactly when there is no rate
    if limits.requests_per_s is not None and burst is not None:
        requests = Bucket(f"{base}:requests", limits.requests_per_s, burst)
    tokens = None
    if limits.tokens_per_minute is not None:
        per_minute = limits.tokens_per_minute
        tokens = Bucket(f"{base}:tokens", per_minute / 60.0, per_minute)
    return TenantRules(tenant, limits, base, requests, tokens)


@dataclass
class Reservation:
    """What one Complete holds against its tenant's limits until it settles."""

    rules: TenantRules
    budgets: tuple[Budget, ...]
    tokens: int = 0
    nano_usd: int = 0
    settled: bool = False


@dataclass
class _RedisHealth:
    """Whether Redis answered lately, and what was logged about it."""

    down_until: float = 0.0
    down_since: float = 0.0
    failures: int = 0
    logged_at: float = 0.0
    unrecorded: dict[tuple[Budget, ...], int] = field(default_factory=dict)


class Limiter:
    """Enforce the tenants' limits against this process's counts or a shared Redis."""

    def __init__(
        self,
        config: Config,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._rules: dict[str, TenantRules] = {}
        self._settings = LimitsConfig()
        self._counts: Counts = MemoryCounts(monotonic, wall)
        self._redis = _RedisHealth()
        self._closing: list[Counts] = []
        # Per tenant: the UTC day number, the rules and their budget counters of that day.
        self._budget_cache: dict[str, tuple[int, TenantRules, tuple[Budget, ...]]] = {}
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Apply a (re)loaded configuration; counts survive unless the store changes."""
        settings = config.limits
        self._rules = {
            tenant: _rules(settings.key_prefix, tenant, entry.limits)
            for tenant, entry in config.tenants.items()
            if entry.limits.any
        }
        if settings.redis_url != self._settings.redis_url:
            self._closing.append(self._counts)
            self._counts = self._store(settings)
            self._redis = _RedisHealth()
        self._settings = settings

    def _store(self, settings: LimitsConfig) -> Counts:
        if not settings.redis_url:
            return MemoryCounts(self._monotonic, self._wall)
        from router.limits.redis_counts import RedisCounts

        return RedisCounts(settings.redis_url, settings.redis_timeout_s)

    @property
    def shared(self) -> bool:
        """Whether the counts are shared in Redis (else each process counts for itself)."""
        return bool(self._settings.redis_url)

    def rules(self, tenant: str) -> TenantRules | None:
        """Return a tenant's limits (an empty tenant is ``default``), or None."""
        return self._rules.get(tenant or DEFAULT_TENANT)

    # -- requests per second -----------------------------------------------------------

    def admit(self, tenant: str) -> Awaitable[None] | None:
        """Return the check of one request against the tenant's rate, or None if it has none."""
        rules = self.rules(tenant)
        if rules is None or rules.requests is None:
            return None
        return self._admit(rules, rules.requests)

    async def _admit(self, rules: TenantRules, bucket: Bucket) -> None:
        wait = await self._call(self._counts.take(bucket, 1), 0.0)
        if wait > 0:
            limits = rules.limits
            raise LimitExceeded(
                "requests_per_s",
                f"tenant {rules.tenant!r} is over its rate of {limits.requests_per_s:g} requests "
                f"per second (tenants.{rules.tenant}.limits.requests_per_s); retry in "
                f"{wait:.3f} s",
                wait,
            )

    async def refund(self, tenant: str) -> None:
        """Give back the unit of the rate an admitted request took: it was refused after,
        by its tokens or budget."""
        rules = self.rules(tenant)
        if rules is not None and rules.requests is not None:
            await self._call(self._counts.give(rules.requests, -1), None, refuse=False)

    # -- tokens and budgets of Complete --------------------------------------------------

    async def hold(self, tenant: str, prompt_tokens: int, most_usd: float) -> Hold | None:
        """Hold a Complete's estimated tokens and the most its first attempt can cost; None
        when the tenant has neither a token nor a budget limit."""
        reservation = await self.reserve(tenant, prompt_tokens, most_usd)
        return None if reservation is None else Hold(self, reservation, prompt_tokens, most_usd)

    async def reserve(self, tenant: str, prompt_tokens: int, most_usd: float) -> Reservation | None:
        """Hold estimated tokens and a most cost; None if the tenant has neither a token nor
        a budget limit."""
        rules = self.rules(tenant)
        if rules is None or not rules.limits_complete:
            return None
        reservation = Reservation(rules, self._budgets(rules))
        nano_usd = _nano(most_usd)
        # Before any count is touched, and whatever Redis's state: no wait would change it.
        _refuse_what_never_fits(rules, reservation.budgets, prompt_tokens, nano_usd)
        if rules.tokens is not None:
            await self._take_tokens(rules, rules.tokens, prompt_tokens)
            reservation.tokens = prompt_tokens
        if reservation.budgets:
            try:
                await self._reserve_budget(reservation, nano_usd)
            except BaseException:
                await self.settle(reservation, 0, 0.0)  # the tokens just taken
                raise
        return reservation

    async def extend(self, reservation: Reservation, most_usd: float) -> None:
        """Hold the most the next attempt (a climb to a stronger tier) can cost."""
        if reservation.budgets:
            await self._reserve_budget(reservation, _nano(most_usd))

    async def settle(self, reservation: Reservation, tokens: int, usd: float) -> None:
        """Replace what a Complete held by what it used (its tokens, its attempts' cost)."""
        if reservation.settled:
            return
        reservation.settled = True
        rules = reservation.rules
        if rules.tokens is not None and tokens != reservation.tokens:
            await self._call(self._counts.give(rules.tokens, tokens - reservation.tokens), None)
        delta = _nano(usd) - reservation.nano_usd if reservation.budgets else 0
        if delta:
            await self._spend(reservation.budgets, delta)

    async def _take_tokens(self, rules: TenantRules, bucket: Bucket, tokens: int) -> None:
        wait = await self._call(self._counts.take(bucket, tokens), 0.0)
        if wait > 0:
            per_minute = rules.limits.tokens_per_minute
            raise LimitExceeded(
                "tokens_per_minute",
                f"tenant {rules.tenant!r} is over its {per_minute} tokens per minute "
                f"(tenants.{rules.tenant}.limits.tokens_per_minute; this prompt is about "
                f"{tokens} tokens); retry in {wait:.3f} s",
                wait,
            )

    async def _reserve_budget(self, reservation: Reservation, nano_usd: int) -> None:
        budgets = reservation.budgets
        refused = await self._call(self._counts.reserve(budgets, nano_usd), -1)
        if refused < 0:
            reservation.nano_usd += nano_usd
            if self._redis.down_until:
                # Admitted without Redis (fail_open): record it once Redis is back.
                self._note_unrecorded(budgets, nano_usd)
            return
        rules = reservation.rules
        limit = budgets[refused].name
        period = "day" if limit == "usd_per_day" else "month"
        amount = getattr(rules.limits, limit)
        wait = max(0.0, self._period_end(limit) - self._wall())
        raise LimitExceeded(
            limit,
            f"tenant {rules.tenant!r}: this request could cost up to ${nano_usd / NANO:.6f} and "
            f"its budget of ${amount:g} per {period} (UTC) has less left "
            f"(tenants.{rules.tenant}.limits.{limit}); retry in {wait:.0f} s",
            wait,
        )

    async def _spend(self, budgets: tuple[Budget, ...], nano_usd: int) -> None:
        done = await self._call(self._counts.spend(budgets, nano_usd), None, refuse=False)
        if done is _FAILED:
            self._note_unrecorded(budgets, nano_usd)

    def _note_unrecorded(self, budgets: tuple[Budget, ...], nano_usd: int) -> None:
        unrecorded = self._redis.unrecorded
        unrecorded[budgets] = unrecorded.get(budgets, 0) + nano_usd

    # -- periods -----------------------------------------------------------------------

    def _budgets(self, rules: TenantRules) -> tuple[Budget, ...]:
        """Return a tenant's budget counters of the current UTC day and month (cached a day)."""
        now = self._wall()
        day = int(now // DAY_S)
        cached = self._budget_cache.get(rules.tenant)
        if cached is not None and cached[0] == day and cached[1] is rules:
            return cached[2]
        today = datetime.datetime.fromtimestamp(now, datetime.UTC)
        budgets = []
        for name, amount, period in (
            ("usd_per_day", rules.limits.usd_per_day, f"{today:%Y-%m-%d}"),
            ("usd_per_month", rules.limits.usd_per_month, f"{today:%Y-%m}"),
        ):
            if amount is not None:
                # Kept a day past its period, so that a late settle still finds the counter.
                ttl = max(1, math.ceil(self._period_end(name) - now)) + DAY_S
                budgets.append(Budget(f"{rules.base}:usd:{period}", _nano(amount), ttl, name))
        found = tuple(budgets)
        self._budget_cache[rules.tenant] = (day, rules, found)
        return found

    def _period_end(self, limit: str) -> float:
        """Return when the current UTC day (usd_per_day) or month ends, as a Unix time."""
        now = datetime.datetime.fromtimestamp(self._wall(), datetime.UTC)
        if limit == "usd_per_day":
            start = now.replace(hour=0, minute=0, second=0, microsecond=0)
            return (start + datetime.timedelta(days=1)).timestamp()
        days = calendar.monthrange(now.year, now.month)[1]
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        return (start + datetime.timedelta(days=days)).timestamp()

    # -- an unreachable store ----------------------------------------------------------

    async def _call(
        self, operation: Coroutine[Any, Any, T], when_open: Any, *, refuse: bool = True
    ) -> Any:
        """Run a store operation; when Redis fails, apply the policy.

        Returns the operation's result, or ``when_open`` under fail_open (or when
        ``refuse`` is False: settling must never fail a request that already ran; it
        returns ``_FAILED`` so the caller can keep what was not recorded).
        """
        if not self.shared:
            return await operation
        health = self._redis
        if health.down_until and self._monotonic() < health.down_until:
            operation.close()
            return self._unreachable(when_open, refuse, None)
        try:
            async with asyncio.timeout(self._settings.redis_timeout_s):
                result = await operation
        except Exception as exc:
            if not _is_store_error(exc):
                raise
            return self._unreachable(when_open, refuse, exc)
        if health.down_until:
            await self._recovered()
        return result

    def _unreachable(self, when_open: Any, refuse: bool, error: Exception | None) -> Any:
        health = self._redis
        now = self._monotonic()
        if error is not None:
            if not health.down_until:
                health.down_since = now
            health.down_until = now + REDIS_RETRY_S
        health.failures += 1
        policy = self._settings.on_redis_error
        current = metrics.current()
        if current is not None:
            current.limit_store_failed(policy)
        if error is not None and (
            health.failures == 1 or now - health.logged_at >= REDIS_LOG_EVERY_S
        ):
            health.logged_at = now
            log.error(
                "limits store unreachable",
                policy=policy,
                error=f"{type(error).__name__}: {error}",
                failed_checks=health.failures,
                down_s=round(now - health.down_since, 3),
            )
        if not refuse:
            return _FAILED
        if policy == "fail_closed":
            raise LimitsUnavailable(
                "the tenant limits cannot be checked: Redis (limits.redis_url) is unreachable "
                "and limits.on_redis_error is fail_closed; retry shortly",
                REDIS_RETRY_S,
            )
        return when_open

    async def _recovered(self) -> None:
        health, self._redis = self._redis, _RedisHealth()
        log.info(
            "limits store reachable again",
            failed_checks=health.failures,
            down_s=round(self._monotonic() - health.down_since, 3),
            unrecorded_budgets=len(health.unrecorded),
        )
        for budgets, nano_usd in health.unrecorded.items():
            await self._spend(budgets, nano_usd)

    async def aclose(self) -> None:
        """Close the store's connections (and those of stores a reload replaced)."""
        for counts in (*self._closing, self._counts):
            await counts.aclose()
        self._closing.clear()


_FAILED = object()


def _refuse_what_never_fits(
    rules: TenantRules, budgets: tuple[Budget, ...], tokens: int, nano_usd: int
) -> None:
    """Raise ``LimitTooSmall`` if even an unused bucket or budget cannot hold the request."""
    tenant = rules.tenant
    if rules.tokens is not None and tokens > rules.tokens.capacity:
        raise LimitTooSmall(
            "tokens_per_minute",
            f"this prompt needs about {tokens} tokens, more than the tokens_per_minute of "
            f"{rules.limits.tokens_per_minute} that tenant {tenant!r} has "
            f"(tenants.{tenant}.limits.tokens_per_minute): it can never fit; shorten the prompt",
        )
    for budget in budgets:
        if nano_usd > budget.limit:
            amount = getattr(rules.limits, budget.name)
            raise LimitTooSmall(
                budget.name,
                f"this request could cost up to ${nano_usd / NANO:.6f}, more than the whole "
                f"{budget.name} of ${amount:g} that tenant {tenant!r} has "
                f"(tenants.{tenant}.limits.{budget.name}): it can never fit; lower "
                "generation.max_tokens or shorten the prompt",
            )


class Hold:
    """One Complete's reservation, followed attempt by attempt until it settles."""

    def __init__(
        self, limiter: Limiter, reservation: Reservation, prompt_tokens: int, most_usd: float
    ) -> None:
        self._limiter = limiter
        self._reservation = reservation
        self._prompt_tokens = prompt_tokens
        # Every attempt with what it used, once the engine tells (its summary, or a failure).
        self.attempts: Sequence[Attempt] | None = None
        self._climbed: list[Attempt] = []
        # The most the attempt running now can cost; None while none runs.
        self._running_most_usd: float | None = most_usd

    async def climb(self, failed: Attempt, most_usd: float) -> None:
        """Note a failed attempt and hold the most the next one can cost before it starts."""
        self._climbed.append(failed)
        self._running_most_usd = None
        await self._limiter.extend(self._reservation, most_usd)
        self._running_most_usd = most_usd

    async def settle(self) -> None:
        """Settle with what the attempts used.

        Without the list of attempts (the caller cancelled mid-attempt), the attempts that
        climbed are known and the one cut short is charged the most it could have cost.
        """
        attempts = self.attempts
        if attempts is not None:
            tokens = sum(a.prompt_tokens + a.completion_tokens for a in attempts)
            usd = sum(a.cost_usd for a in attempts)
        else:
            tokens = sum(a.prompt_tokens + a.completion_tokens for a in self._climbed)
            usd = sum(a.cost_usd for a in self._climbed)
            if self._running_most_usd is not None:
                tokens += self._prompt_tokens
                usd += self._running_most_usd
        await self._limiter.settle(self._reservation, tokens, usd)


def _is_store_error(exc: BaseException) -> bool:
    """Return whether an exception means the store could not be reached or answer in time."""
    if isinstance(exc, TimeoutError | OSError | ConnectionError):
        return True
    try:
        from redis.exceptions import RedisError
    except ImportError:
        return False
    return isinstance(exc, RedisError)


__all__ = [
    "Hold",
    "Limiter",
    "Reservation",
    "TenantRules",
    "max_output_tokens",
    "most_cost_usd",
]
