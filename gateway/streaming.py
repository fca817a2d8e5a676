"""The SSE response of one job for one reader, and the reader limits it enforces.

:class:`RelayResponse` is a plain ASGI response over the relay's pre-encoded frames, written for
this one job rather than taken from sse-starlette: per stream it starts no task (sse-starlette
starts four in a task group: the stream, a pinger, a shutdown listener and a disconnect
listener, and wraps every write in a cancel scope), which was a fifth of the gateway's CPU per
call. What those tasks did is kept, each where it costs least:

- keep-alive comments come from the relay, which wakes every ``keepalive_s`` anyway;
- a client's disconnect and the server's graceful shutdown reach the stream through
  ``gateway.connection``'s hooks (the gateway's own protocol calls them), and the stream then
  ends at once; under another server one task watches ``receive()`` instead;
- a write that waits longer than ``FACTORY_READER_SEND_TIMEOUT_S`` (a reader that stopped
  reading) cuts the reader with a comment and the end of the body once its socket drains, or,
  if it never does, by aborting the connection.

Every end the server chooses is an expected one and ends the same clean way, without a
traceback: a proper end of the chunked body, so the client resumes by ``Last-Event-ID`` on any
gateway. A stream that ends on shutdown ends without its terminal event; the relay ends a stream
whose Redis stayed away with a comment.
"""

import asyncio
import logging
from collections.abc import Mapping
from contextlib import aclosing

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from factory.errors import ServiceUnavailable
from gateway.connection import hooks_of
from gateway.deps import GatewayState
from gateway.relay import EventStream, ReaderLimits, ends_stream
from gateway.relay_hub import Subscriber

# Tell EventSource clients how soon to reconnect after a drop (milliseconds).
RETRY_MS = 1000
# How long a cut reader's socket may take to drain for the last comment and the end of the body.
END_GRACE_S = 10.0
SLOW_READER_END = b": this reader took too long to read; reconnect with Last-Event-ID\n\n"

logger = logging.getLogger(__name__)


class RelayResponse(Response):
    """``text/event-stream`` of one reader: the relay's writes, sent as they come, until its end."""

    # Set per instance: FastAPI documents a route's other responses (the JSON errors) in its
    # response class's media type, when the class has one.
    media_type = None

    def __init__(
        self,
        stream: EventStream,
        subscriber: Subscriber,
        *,
        state: GatewayState,
        headers: Mapping[str, str],
        send_timeout_s: float,
        status_code: int = 200,  # FastAPI reads the documented status from this default
        background: BackgroundTask | None = None,
    ) -> None:
        # As Starlette's StreamingResponse: no ``Response.__init__``, which would declare a body of 0 bytes.
        self.status_code = status_code
        self.media_type = "text/event-stream"
        self.background = background
        self.init_headers(
            {"Cache-Control": "no-store", "Connection": "keep-alive", "X-Accel-Buffering": "no", **headers}
        )
        self.stream = stream
        self.subscriber = subscriber
        self.state = state
        self.send_timeout_s = send_timeout_s

    def end(self, reason: str = "") -> None:
        """End the stream at its next write or wait (the client left, or the server shuts down)."""
        self.stream.closing = True
        self.subscriber.wakeup.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if scope["method"] == "HEAD":  # headers only: a stream for nobody would never end
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                await self._stream(scope, receive, send)
        finally:
            await self.stream.hub.unsubscribe(self.subscriber)  # also when the relay never started
        if self.background is not None:
            await self.background()

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        hooks = hooks_of(scope)
        watcher = None
        if hooks is not None:
            hooks.on_end(self.end)
        else:
            watcher = asyncio.create_task(self._watch(receive))
        metrics = self.state.metrics
        metrics.streams_open.inc()
        slow = False
        try:
            # The reconnection delay goes out at once, or with the events already read (the read-ahead)
            # when there are some: they leave in the same write as the stream's first bytes.
            first = b"retry: %d\n\n" % RETRY_MS
            async with aclosing(self.stream.frames(self.subscriber)) as frames:
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                if not self.stream.read_ahead:
                    await send({"type": "http.response.body", "body": first, "more_body": True})
                    first = b""
                async for chunk in frames:
                    if self.stream.closing:
                        break
                    try:
                        async with asyncio.timeout(self.send_timeout_s):
                            await send({"type": "http.response.body", "body": first + chunk, "more_body": True})
                    except TimeoutError:
                        slow = True
                        break
                    first = b""
                    metrics.frames_sent.inc(count_frames(chunk))
                    metrics.bytes_sent.inc(len(chunk))
            if slow:
                logger.info(
                    "cut a slow reader: a write waited over %g s; it resumes by Last-Event-ID",
                    self.send_timeout_s,
                    extra={"job_id": self.stream.job_id},
                )
                await self._cut(scope, send)
            else:
                await send({"type": "http.response.body", "body": first, "more_body": False})
        finally:
            metrics.streams_open.dec()
            if hooks is not None:
                hooks.discard(self.end)
            if watcher is not None:
                watcher.cancel()

    async def _watch(self, receive: Receive) -> None:
        """Without the gateway's protocol: wait for the client's disconnect on ``receive()``."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self.end("disconnect")

    async def _cut(self, scope: Scope, send: Send) -> None:
        """A comment and the end of the body once the socket drains; else drop the connection."""
        try:
            async with asyncio.timeout(END_GRACE_S):
                await send({"type": "http.response.body", "body": SLOW_READER_END, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
        except TimeoutError:
            pass
        hooks = hooks_of(scope)
        if hooks is not None:
            hooks.abort()
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
    state: GatewayState,
    job_id: str,
    last_seq: int,
    headers: dict[str, str],
    *,
    checked: bool = False,
    read_ahead: list[bytes] | None = None,
) -> RelayResponse:
    """Subscribe (so nothing published from then on is missed) and return the stream.

    ``checked``: the caller ran :func:`check_capacity` already (before enqueueing a job whose
    only reader this is, so a refusal never leaves a job nobody knows the id of).

    ``read_ahead``: the log after ``last_seq`` as far as the caller read it already (with the
    job's record). Those events go out before the job's channel is asked for; the stream then
    subscribes, waits for the confirmation and reads the log again from there (``gateway.relay``).
    When they end the stream (a job that ended), nothing is subscribed at all: the stream is one write.
    """
    if not checked:
        check_capacity(state, job_id)
    if read_ahead is None:
        subscriber = await state.hub.subscribe(job_id)
    elif ends_stream(read_ahead):
        subscriber = state.hub.detached(job_id)
    else:
        subscriber = state.hub.join(job_id)  # subscribed once the read-ahead is sent (gateway.relay)
    settings = state.settings
    if last_seq > 0:
        state.metrics.resumes.inc()
    limits = ReaderLimits(
        poll_s=settings.keepalive_s,
        idle_timeout_s=settings.idle_reader_timeout_s,
        outage_s=settings.redis_outage_s,
        buffer_bytes=settings.reader_buffer_bytes,
    )
    stream = EventStream(state.wire, state.hub, job_id, last_seq, limits, read_ahead)
    return RelayResponse(
        stream, subscriber, state=state, headers=headers, send_timeout_s=settings.reader_send_timeout_s
    )
