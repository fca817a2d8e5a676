"""Quotas per caller, enforced across every gateway through Redis: calls per minute and jobs at once.

Limits come from the settings: ``quota_calls_per_minute`` / ``quota_max_running`` for everyone,
overridden per API key by ``quotas`` (0: no limit). Exceeding one is :class:`QuotaExceeded`
(429, with ``limit``, ``used`` and ``quota_type``).

* Calls per minute: one counter per caller and clock minute (``keys.quota_rate_key``, expiring
  after two minutes). A refused batch gives its increment back, so refusals do not use the quota.
* Jobs at once: the caller's jobs that may still run, in a sorted set (``keys.quota_running_key``)
  scored by when each must have ended (its timeout, plus a margin). A job is counted from before
  its enqueue until its record says it ended (or its deadline passed). Admission adds the job
  first and counts after, so two gateways racing for the last slot may both refuse, never both admit.
"""

import time
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis

from factory.errors import QuotaExceeded
from factory.jobs import JobStatus
from factory.settings import Settings
from factory.store import keys
from gateway.auth import caller_id

RATE_WINDOW_S = 60
RUNNING_MARGIN_S = 60


@dataclass(frozen=True)
class Limits:
    max_running: int
    calls_per_minute: int


class Quotas:
    def __init__(self, settings: Settings, client: aioredis.Redis) -> None:
        self.client = client
        self.default = Limits(settings.quota_max_running, settings.quota_calls_per_minute)
        self.per_caller = {
            caller_id(key): Limits(
                limits.get("max_running", self.default.max_running),
                limits.get("calls_per_minute", self.default.calls_per_minute),
            )
            for key, limits in settings.quotas.items()
        }

    def limits(self, caller: str) -> Limits:
        return self.per_caller.get(caller, self.default)

    async def take_calls(self, caller: str, count: int) -> None:
        """Count ``count`` calls in this minute, or refuse them all."""
        limit = self.limits(caller).calls_per_minute
        if not limit:
            return
        key = keys.quota_rate_key(caller, int(time.time()) // RATE_WINDOW_S)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.incrby(key, count)
            pipe.expire(key, 2 * RATE_WINDOW_S)
            used, _ = await pipe.execute()
        if int(used) > limit:
            await self.client.decrby(key, count)
            raise QuotaExceeded(
                f"calls per minute: {limit} allowed",
                {"limit": limit, "used": int(used) - count, "quota_type": "calls_per_minute"},
            )

    async def start_job(self, caller: str, job_id: str, timeout_s: float) -> None:
        """Count the job among the caller's running ones, or refuse it."""
        limit = self.limits(caller).max_running
        if not limit:
            return
        key = keys.quota_running_key(caller)
        now_ms = int(time.time() * 1000)
        deadline_ms = now_ms + int((timeout_s + RUNNING_MARGIN_S) * 1000)
        await self.client.zremrangebyscore(key, "-inf", now_ms)
        await self._forget_ended(key)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {job_id: deadline_ms})
            pipe.zrange(key, -1, -1, withscores=True)
            pipe.zcard(key)
            _, last, running = await pipe.execute()
        # The set lives as long as its latest deadline (every member's entry is stale by then).
        await self.client.pexpireat(key, int(last[0][1]) + 1000)
        if int(running) > limit:
            await self.client.zrem(key, job_id)
            raise QuotaExceeded(
                f"jobs at once: {limit} allowed",
                {"limit": limit, "used": int(running) - 1, "quota_type": "max_running"},
            )

    async def end_job(self, caller: str, job_id: str) -> None:
        """The job ended (or never started): it no longer counts."""
        if self.limits(caller).max_running:
            await self.client.zrem(keys.quota_running_key(caller), job_id)

    async def _forget_ended(self, key: str) -> None:
        members: list[bytes] = await self.client.zrange(key, 0, -1)  # type: ignore[assignment]
        if not members:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for member in members:
                pipe.hget(keys.job_key(member.decode()), "status")
            statuses = await pipe.execute()
        ended = [m for m, raw in zip(members, statuses, strict=True) if raw is None or _is_final(raw)]
        if ended:
            await self.client.zrem(key, *ended)


def _is_final(raw: bytes) -> bool:
    return JobStatus(orjson.loads(raw)).is_final
