"""Waiting on a job from inside a request: until its first event, or until its end.

Both follow the job through the relay hub (one pub/sub connection per gateway), so a wait costs
no polling; the job's log is the truth they read from.
"""

import asyncio
from typing import Any

import orjson

from factory.jobs import JobRecord
from factory.store import keys
from gateway.deps import GatewayState
from gateway.relay import KEEPALIVE, EventStream, ReaderLimits


def _stream(state: GatewayState, job_id: str) -> EventStream:
    limits = ReaderLimits(state.settings.keepalive_s, float("inf"), state.settings.redis_outage_s)
    return EventStream(state.wire, state.hub, job_id, 0, limits)


async def wait_for_end(state: GatewayState, job_id: str, timeout_s: float) -> JobRecord | None:
    """Follow the job to its terminal event; its record then, or None if it did not end within ``timeout_s``."""
    subscriber = await state.hub.subscribe(job_id)
    frames = _stream(state, job_id).frames(subscriber)
    try:
        async with asyncio.timeout(timeout_s):
            async for _ in frames:
                pass
    except TimeoutError:
        return None
    finally:
        await frames.aclose()
    record, _ = await state.jobs.get(job_id)
    return record


async def first_event(state: GatewayState, job_id: str, timeout_s: float) -> dict[str, Any] | None:
    """The job's first event once it exists; None if there is none within ``timeout_s``."""
    subscriber = await state.hub.subscribe(job_id)
    frames = _stream(state, job_id).frames(subscriber)
    try:
        async with asyncio.timeout(timeout_s):
            async for write in frames:
                if write != KEEPALIVE:
                    break
    except TimeoutError:
        return None
    finally:
        await frames.aclose()
    raw: bytes | None = await state.redis.lindex(keys.events_key(job_id), 0)  # type: ignore[assignment]
    if raw is None:
        return None
    event: dict[str, Any] = orjson.loads(raw)
    return event
