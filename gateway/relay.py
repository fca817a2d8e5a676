"""The relay: each SSE reader replays the job's log and then follows the job's channel, through
the gateway's one pub/sub connection (``gateway.relay_hub``).

Exactly-once, in order, with no gap: a reader subscribes and waits for Redis to confirm
before it reads the log, so every event is in the log it reads or arrives on the channel
after; the overlap is dropped by ``seq``. A reader may be handed a first page read before its
subscription was confirmed (``GET /jobs/{id}/events`` reads it with the job's record, so a job's
first events cost one round trip): it sends that page, then waits for the confirmation and reads
the log again from where the page ended, so the rule above still holds for everything after (a
page that holds the terminal event needs no subscription at all).
The log is the truth and the channel only a fast path: a reader that sees a gap, falls too far
behind (its buffer overflowed because its client reads slowly) or hears nothing for a while
reads the log again from its last ``seq``.
So a slow reader never slows the hub, the other readers or the worker, and a pub/sub message
lost to a Redis restart costs latency, not data.

Redis outages: the hub reconnects by itself (redis-py subscribes again, and every reader then
reads the log), and a reader whose log read fails keeps its stream open, retrying with backoff,
for up to ``ReaderLimits.outage_s`` (keep-alive comments go on meanwhile); past that its stream
ends cleanly with a comment saying why, and the client resumes by ``Last-Event-ID``, on any
gateway.

Memory: a reader never holds more than about ``ReaderLimits.buffer_bytes`` of events, however
long the log or slow the client. The log is replayed a page at a time, each page's writes handed
on (and sent, once the socket has room) before the next page is read; the channel mailbox is
bounded in bytes, and overflowing it only sends the reader back to the log.

Frames are pre-encoded bytes (``id: <seq>\\ndata: <event>\\n\\n``), packed several per write
when a batch arrives, up to :data:`WRITE_BYTES`: every write holds whole events only and fits
one TCP segment, which is what the seed's JavaScript client needs, at a fraction of the cost
of sending each event separately. (A deliberate divergence from yielding one
``ServerSentEvent`` per event, which costs a send per event.)
"""

import asyncio
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from factory.events import TERMINAL_TYPES, split_batch
from factory.store import keys
from factory.store.wire import AsyncWire
from gateway.relay_hub import RelayHub, Subscriber

logger = logging.getLogger(__name__)

# The log is replayed in pages: the first of FIRST_PAGE events, the next ones sized from the events
# seen so far to hold about ``ReaderLimits.buffer_bytes``, never more than MAX_PAGE events.
FIRST_PAGE = 64
MAX_PAGE = 1000
# Live messages are handed on once this many bytes of frames have gathered (or the mailbox is empty).
LIVE_FLUSH_BYTES = 64 * 1024
# Frames are packed into writes of at most this many bytes (a frame never splits): below one TCP
# segment on common networks, so a client that splits each read on newlines without buffering
# (the seed's JavaScript client) still gets whole events, while small events share a write.
WRITE_BYTES = 1400


KEEPALIVE = b": ping\n\n"  # an SSE comment, sent on a stream quiet for ``ReaderLimits.poll_s``


def sse_frame(seq: int, raw: bytes) -> bytes:
    """One SSE event: its ``seq`` as the id and the event JSON as a single data line."""
    return b"id: %d\ndata: %s\n\n" % (seq, raw)


def pack_writes(frames: list[bytes]) -> list[bytes]:
    """Group consecutive frames into writes of at most :data:`WRITE_BYTES` (a bigger frame alone)."""
    writes: list[bytes] = []
    pending: list[bytes] = []
    size = 0
    for frame in frames:
        if pending and size + len(frame) > WRITE_BYTES:
            writes.append(b"".join(pending))
            pending, size = [], 0
        pending.append(frame)
        size += len(frame)
    if pending:
        writes.append(b"".join(pending))
    return writes


def _is_terminal(raw: bytes) -> bool:
    return bool(orjson.loads(raw).get("type") in TERMINAL_TYPES)


def ends_stream(log_tail: list[bytes]) -> bool:
    """Whether these last events of a log (the terminal event is always a log's last) end its stream."""
    return bool(log_tail) and _is_terminal(log_tail[-1])


@dataclass
class ReaderLimits:
    poll_s: float
    idle_timeout_s: float
    outage_s: float = 30.0
    buffer_bytes: int = 512 * 1024  # the most a reader holds: a log page, or its channel mailbox


class StoreUnreachable(Exception):
    """Redis stayed unreachable for longer than the reader's ``outage_s``."""


class EventStream:
    """One reader's events of one job, from after ``last_seq`` to the terminal event."""

    def __init__(
        self,
        wire: AsyncWire,
        hub: RelayHub,
        job_id: str,
        last_seq: int,
        limits: ReaderLimits,
        read_ahead: list[bytes] | None = None,
    ):
        self.wire = wire  # the log's reads
        self.hub = hub
        self.job_id = job_id
        self.last_seq = last_seq
        self.limits = limits
        self.finished = False
        self.closing = False  # set on gateway shutdown: end without the terminal event
        # The log after ``last_seq``, read before the subscription was confirmed (at most FIRST_PAGE events).
        self.read_ahead = read_ahead

    async def frames(self, subscriber: Subscriber) -> AsyncGenerator[bytes, None]:
        """Yield writes of whole SSE frames until the terminal event; then stop. A stream quiet for
        ``poll_s`` gets a :data:`KEEPALIVE` comment.

        Nothing is read ahead of the client: each write is handed on (and, under uvicorn, sent
        once the socket has room) before the next page of the log is read.
        """
        try:
            if self.read_ahead:
                read_ahead, self.read_ahead = self.read_ahead, None
                for write in pack_writes(self._frames(self.last_seq + 1, read_ahead)):
                    yield write
            if not self.finished:
                await self._confirmed(subscriber)
            async for write in self._replay():
                yield write
            idle_s = 0.0
            while not self.finished and not self.closing:
                quiet = False
                try:
                    async with asyncio.timeout(self.limits.poll_s):
                        await subscriber.wakeup.wait()
                except TimeoutError:
                    idle_s += self.limits.poll_s
                    if idle_s >= self.limits.idle_timeout_s:
                        logger.info("closing an idle reader", extra={"job_id": self.job_id})
                        return
                    quiet = True
                    subscriber.overflowed = True  # nothing heard for a while: check the log
                subscriber.wakeup.clear()
                if self.closing:
                    return
                if subscriber.overflowed:
                    subscriber.overflowed = False
                    subscriber.clear()
                    source = self._replay()
                else:
                    source = self._live(subscriber)
                async for write in source:
                    idle_s = 0.0
                    quiet = False
                    yield write
                if quiet and not self.finished:
                    yield KEEPALIVE  # keeps proxies from closing a quiet stream
        except StoreUnreachable as exc:
            logger.warning("closing a reader: %s; it resumes by Last-Event-ID", exc, extra={"job_id": self.job_id})
            yield b": the event store is unreachable; reconnect with Last-Event-ID\n\n"
        finally:
            await self.hub.unsubscribe(subscriber)

    async def _confirmed(self, subscriber: Subscriber) -> None:
        """The subscription, confirmed; rides out a Redis outage up to ``outage_s``, as reading the log does."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.outage_s
        delay_s = 0.1
        while True:
            try:
                await self.hub.confirmation(subscriber)
                return
            except TimeoutError as exc:  # not yet answered (the hub may be reconnecting): wait on, within the bound
                if loop.time() > deadline:
                    raise StoreUnreachable("Redis did not confirm the subscription") from exc
                continue
            except (RedisError, OSError) as exc:
                if loop.time() + delay_s > deadline:
                    raise StoreUnreachable(f"Redis unreachable for {self.limits.outage_s:g} s ({exc})") from exc
                logger.warning("cannot subscribe (%s); retrying in %.1f s", exc, delay_s, extra={"job_id": self.job_id})
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 2.0)

    async def _replay(self) -> AsyncGenerator[bytes, None]:
        """The log after ``last_seq``, a page at a time, each page sized to ``buffer_bytes``."""
        page = FIRST_PAGE
        while not self.finished:
            start = self.last_seq
            entries = await self._read_page(start, page)
            if not entries:
                return
            for write in pack_writes(self._frames(start + 1, entries)):
                yield write
            if len(entries) < page:
                return
            mean_bytes = max(1, sum(len(entry) for entry in entries) // len(entries))
            page = max(1, min(MAX_PAGE, self.limits.buffer_bytes // mean_bytes))

    async def _read_page(self, start: int, count: int) -> list[bytes]:
        """``count`` entries of the log from index ``start``; rides out a Redis outage up to ``outage_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.outage_s
        delay_s = 0.1
        while True:
            try:
                entries: list[bytes] = await self.wire.call(
                    "LRANGE", keys.events_key(self.job_id), start, start + count - 1
                )
                return entries
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if loop.time() + delay_s > deadline:
                    raise StoreUnreachable(f"Redis unreachable for {self.limits.outage_s:g} s ({exc})") from exc
                logger.warning(
                    "cannot read the log (%s); retrying in %.1f s", exc, delay_s, extra={"job_id": self.job_id}
                )
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 2.0)

    async def _live(self, subscriber: Subscriber) -> AsyncGenerator[bytes, None]:
        """The mailbox's messages as writes; a gap (a lost message) reads the log instead."""
        frames: list[bytes] = []
        pending_bytes = 0
        while subscriber.messages and not self.finished:
            first_seq, events = split_batch(subscriber.take())
            skip = self.last_seq + 1 - first_seq
            if skip < 0:  # a gap: the messages in between went missing, the log has them
                subscriber.clear()
                for write in pack_writes(frames):
                    yield write
                frames = []
                async for write in self._replay():
                    yield write
                return
            if skip < len(events):
                new = self._frames(first_seq + skip, events[skip:])
                frames.extend(new)
                pending_bytes += sum(len(frame) for frame in new)
            if pending_bytes >= LIVE_FLUSH_BYTES:
                for write in pack_writes(frames):
                    yield write
                frames, pending_bytes = [], 0
        for write in pack_writes(frames):
            yield write

    def _frames(self, first_seq: int, events: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        for offset, raw in enumerate(events):
            out.append(sse_frame(first_seq + offset, raw))
            if _is_terminal(raw):
                self.finished = True
                break
        self.last_seq = first_seq + len(out) - 1
        return out
