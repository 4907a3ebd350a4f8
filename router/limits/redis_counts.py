"""Counts in Redis, shared by every worker and replica: one Lua script per operation.

A script runs atomically in Redis, so concurrent replicas never interleave a check with
its update. Buckets use Redis's own clock (``TIME``), so the replicas' clocks do not
matter; a budget's period (its key) comes from the replica's UTC date. A tenant's keys
carry the tenant in a hash tag (``{tenant}``), so on Redis Cluster a script's keys share a
slot. Needs the ``redis`` extra (redis-py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from router.limits.counts import Bucket, Budget

MICROS = 1_000_000
# Connections kept per process; more concurrent checks queue for one (within the timeout)
# rather than each opening its own.
MAX_CONNECTIONS = 32

# KEYS[1]: the bucket. ARGV: amount, microseconds per unit, capacity (units), force (1/0).
# Returns 0 when taken, else the microseconds until the amount would fit.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local amount = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local capacity = tonumber(ARGV[3])
local arrival = tonumber(redis.call('GET', KEYS[1]) or now)
if arrival < now then arrival = now end
arrival = arrival + amount * interval
if ARGV[4] ~= '1' then
  local wait = arrival - capacity * interval - now
  if wait > 0 then return math.ceil(wait) end
end
if arrival > now then
  redis.call('SET', KEYS[1], string.format('%.0f', arrival), 'PX',
             math.ceil((arrival - now) / 1000) + 1000)
else
  redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: a tenant's budget counters. ARGV[1]: nano-dollars; then per key its limit and TTL
# (seconds). Adds to all or none; returns 0, or the 1-based index of the counter refused.
_RESERVE = """
local amount = tonumber(ARGV[1])
for i = 1, #KEYS do
  local spent = tonumber(redis.call('GET', KEYS[i]) or '0')
  if spent + amount > tonumber(ARGV[2 * i]) then return i end
end
for i = 1, #KEYS do
  redis.call('INCRBY', KEYS[i], ARGV[1])
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[2 * i + 1]))
end
return 0
"""

# The same without the check (settling, or spend recorded while Redis was unreachable).
_SPEND = """
for i = 1, #KEYS do
  redis.call('INCRBY', KEYS[i], ARGV[1])
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[2 * i + 1]))
end
return 0
"""


class RedisCounts:
    """Counts in one Redis (or a Redis Cluster endpoint), over redis-py's asyncio client."""

    def __init__(self, url: str, timeout_s: float) -> None:
        # No retries inside redis-py: the limiter decides what an unreachable Redis means.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._client: Any = aioredis.Redis(connection_pool=pool)
        self._take = self._client.register_script(_TAKE)
        self._reserve = self._client.register_script(_RESERVE)
        self._spend = self._client.register_script(_SPEND)

    async def take(self, bucket: Bucket, amount: float) -> float:
        wait = await self._take(keys=[bucket.key], args=_bucket_args(bucket, amount, force=False))
        return int(wait) / MICROS

    async def give(self, bucket: Bucket, amount: float) -> None:
        await self._take(keys=[bucket.key], args=_bucket_args(bucket, amount, force=True))

    async def reserve(self, budgets: Sequence[Budget], amount: int) -> int:
        refused = await self._reserve(
            keys=[b.key for b in budgets], args=_budget_args(budgets, amount)
        )
        return int(refused) - 1

    async def spend(self, budgets: Sequence[Budget], amount: int) -> None:
        await self._spend(keys=[b.key for b in budgets], args=_budget_args(budgets, amount))

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._client.connection_pool.disconnect()


def _bucket_args(bucket: Bucket, amount: float, *, force: bool) -> list[str]:
    interval = bucket.interval_s * MICROS
    return [
        repr(float(amount)),
        repr(interval),
        repr(float(bucket.capacity)),
        "1" if force else "0",
    ]


def _budget_args(budgets: Sequence[Budget], amount: int) -> list[str]:
    args = [str(int(amount))]
    for budget in budgets:
        args.extend((str(budget.limit), str(max(1, math.ceil(budget.ttl_s)))))
    return args
