"""Builds the SSE response of one job for one reader, enforcing the reader limits.

On gateway shutdown sse-starlette sets each stream's ``shutdown_event``; the stream then ends
by itself, so its response completes cleanly (a proper end of the chunked body) and the client
resumes on another gateway, instead of having its connection cut mid-response.

Every end the server chooses is an expected one and ends the same clean way, without a
traceback: the relay ends a stream whose Redis stayed away with a comment, and a reader that
takes longer than ``FACTORY_READER_SEND_TIMEOUT_S`` to take one write is cut by
:class:`RelayResponse` with a comment and the end of the body, once its socket drains (or, if
it never does, by aborting the connection through the server's ``gateway.abort`` extension).
"""

import asyncio
import logging
from collections.abc import AsyncIterator

import anyio
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from factory.errors import ServiceUnavailable
from gateway.deps import GatewayState
from gateway.relay import EventStream, ReaderLimits
from gateway.relay_hub import Subscriber

# Tell EventSource clients how soon to reconnect after a drop (milliseconds).
RETRY_MS = 1000
# How long a stream has to end by itself once the gateway shuts down (it takes milliseconds).
SHUTDOWN_GRACE_S = 2.0
# How long a cut reader's socket may take to drain for the last comment and the end of the body.
END_GRACE_S = 10.0
SLOW_READER_END = b": this reader took too long to read; reconnect with Last-Event-ID\n\n"
# The ASGI scope extension through which the gateway's server lets a response drop its connection.
ABORT_EXTENSION = "gateway.abort"

logger = logging.getLogger(__name__)


class RelayResponse(EventSourceResponse):
    """An SSE response whose cut for a slow reader is an orderly end, not an exception."""

    def __init__(self, *args: object, job_id: str, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.job_id = job_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            logger.info(
                "cut a slow reader: a write waited over %g s; it resumes by Last-Event-ID",
                self.send_timeout,
                extra={"job_id": self.job_id},
            )
            await self._end(scope, send)

    async def _end(self, scope: Scope, send: Send) -> None:
        with anyio.move_on_after(END_GRACE_S):
            await send({"type": "http.response.body", "body": SLOW_READER_END, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        abort = (scope.get("extensions") or {}).get(ABORT_EXTENSION, {}).get("abort")
        if callable(abort):
            abort()
            await asyncio.sleep(0)  # let the server see the connection gone before this response returns


def count_frames(chunk: bytes) -> int:
    """Event frames in a chunk the relay writes: each starts a line with ``id:`` (data lines start ``data:``)."""
    return chunk.count(b"\nid:") + chunk.startswith(b"id:")


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
    if last_seq > 0:
        state.metrics.resumes.inc()
    limits = ReaderLimits(
        poll_s=settings.keepalive_s,
        idle_timeout_s=settings.idle_reader_timeout_s,
        outage_s=settings.redis_outage_s,
        buffer_bytes=settings.reader_buffer_bytes,
    )
    stream = EventStream(state.redis, state.hub, job_id, last_seq, limits)
    shutdown = anyio.Event()
    return RelayResponse(
        _counted(state, stream, subscriber, shutdown),
        job_id=job_id,
        shutdown_event=shutdown,
        shutdown_grace_period=SHUTDOWN_GRACE_S,
        ping=settings.keepalive_s,
        sep="\n",  # the frames' own line ending, so every chunk (pings too) ends in a blank line
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no", **headers},
        send_timeout=settings.reader_send_timeout_s,
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
            state.metrics.frames_sent.inc(count_frames(chunk))
            state.metrics.bytes_sent.inc(len(chunk))
            yield chunk
    finally:
        watcher.cancel()
        state.metrics.streams_open.dec()
