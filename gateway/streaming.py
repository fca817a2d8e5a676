"""Builds the SSE response of one job for one reader, enforcing the reader limits.

On gateway shutdown sse-starlette sets each stream's ``shutdown_event``; the stream then ends
by itself, so its response completes cleanly (a proper end of the chunked body) and the client
resumes on another gateway, instead of having its connection cut mid-response.
"""

import asyncio
from collections.abc import AsyncIterator

import anyio
from sse_starlette import EventSourceResponse

from factory.errors import ServiceUnavailable
from gateway.deps import GatewayState
from gateway.relay import EventStream, ReaderLimits, Subscriber

# Tell EventSource clients how soon to reconnect after a drop (milliseconds).
RETRY_MS = 1000
# How long a stream has to end by itself once the gateway shuts down (it takes milliseconds).
SHUTDOWN_GRACE_S = 2.0


def check_capacity(state: GatewayState, job_id: str) -> None:
    """Refuse with 503 when this gateway already serves its maximum of streams, or of this job's readers."""
    settings = state.settings
    if state.hub.stream_count >= settings.max_streams_per_gateway:
        raise ServiceUnavailable(
            f"this gateway serves its maximum of {settings.max_streams_per_gateway} SSE streams", retry_after_s=2
        )
    if state.hub.readers_of(job_id) >= settings.max_readers_per_job:
        raise ServiceUnavailable(
            f"this job has its maximum of {settings.max_readers_per_job} readers on this gateway", retry_after_s=2
        )


async def open_stream(
    state: GatewayState, job_id: str, last_seq: int, headers: dict[str, str], *, checked: bool = False
) -> EventSourceResponse:
    """Subscribe now (so nothing published from here on is missed) and return the stream.

    ``checked``: the caller ran :func:`check_capacity` already (before enqueueing a job whose
    only reader this is, so a refusal never leaves a job nobody knows the id of).
    """
    settings = state.settings
    if not checked:
        check_capacity(state, job_id)
    subscriber = await state.hub.subscribe(job_id)
    limits = ReaderLimits(
        poll_s=settings.keepalive_s,
        idle_timeout_s=settings.idle_reader_timeout_s,
        outage_s=settings.redis_outage_s,
        buffer_bytes=settings.reader_buffer_bytes,
    )
    stream = EventStream(state.redis, state.hub, job_id, last_seq, limits)
    shutdown = anyio.Event()
    return EventSourceResponse(
        _counted(state, stream, subscriber, shutdown),
        shutdown_event=shutdown,
        shutdown_grace_period=SHUTDOWN_GRACE_S,
        ping=settings.keepalive_s,
        sep="\n",  # the frames' own line ending, so every chunk (pings too) ends in a blank line
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no", **headers},
        send_timeout=60,
    )


async def _end_on_shutdown(shutdown: anyio.Event, stream: EventStream, subscriber: Subscriber) -> None:
    await shutdown.wait()
    stream.closing = True
    subscriber.wakeup.set()


async def _counted(
    state: GatewayState, stream: EventStream, subscriber: Subscriber, shutdown: anyio.Event
) -> AsyncIterator[bytes]:
    state.metrics.streams_open.inc()
    watcher = asyncio.create_task(_end_on_shutdown(shutdown, stream, subscriber))
    try:
        yield b"retry: %d\n\n" % RETRY_MS
        async for chunk in stream.frames(subscriber):
            yield chunk
    finally:
        watcher.cancel()
        state.metrics.streams_open.dec()
