"""The gateway's one Redis pub/sub connection, shared by every job channel it serves, and each
reader's mailbox on it.

A reader subscribes and waits for Redis to confirm before it reads the log (see
``gateway.relay``), so every event is in the log it reads or arrives here after. A mailbox is
bounded in bytes; overflowing it, or a reconnect of the hub, only sends its reader back to the
log, so a slow reader never slows the hub or the other readers.

The connection is an asyncio protocol over hiredis (``factory.store.wire`` says why redis-py's
clients are not used on the path of an event): a channel message is parsed and put in its
readers' mailboxes in the callback that received its bytes, with no task of the hub in between.
What redis-py's pub/sub did for the hub is done here: the connection says the URL's greeting
(AUTH, CLIENT SETNAME) first; once lost, every reader is sent back to the log and the hub
connects again with backoff and subscribes again to every channel it serves; a PING every
:data:`HEALTH_CHECK_S` finds a connection that died without a word.

Invariant: a reader's subscription is confirmed by the answer to the last SUBSCRIBE sent for
its channel on the current connection (each SUBSCRIBE is answered once per channel, in order),
never by the answer to an earlier one that an UNSUBSCRIBE followed.
"""

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from factory.store import keys
from factory.store.wire import Attempts, Endpoint, failure, open_connection

logger = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT_S = 5.0
HEALTH_CHECK_S = 10.0  # a PING unanswered for this long drops the connection
RETRY_FIRST_S = 0.1  # the wait before reconnecting a connection that answered before it was lost
RETRY_MAX_S = 2.0


@dataclass(eq=False)
class Subscriber:
    """One reader's mailbox for its job's channel messages, bounded in bytes.

    A message that would take it past ``capacity_bytes`` empties it and marks it overflowed: the
    reader then reads the log again from its last ``seq``, a page at a time.
    """

    channel: str
    capacity_bytes: int
    messages: deque[bytes] = field(default_factory=deque)
    size_bytes: int = 0
    overflowed: bool = False
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    confirmed: "asyncio.Future[None] | None" = None  # the channel's subscription, once Redis confirms it

    def deliver(self, message: bytes) -> None:
        if self.size_bytes + len(message) > self.capacity_bytes:
            self.clear()
            self.overflowed = True
        else:
            self.messages.append(message)
            self.size_bytes += len(message)
        self.wakeup.set()

    def take(self) -> bytes:
        message = self.messages.popleft()
        self.size_bytes -= len(message)
        return message

    def clear(self) -> None:
        self.messages.clear()
        self.size_bytes = 0

    def resync(self) -> None:
        self.overflowed = True
        self.wakeup.set()


class _PubSub(asyncio.Protocol):
    """One pub/sub connection: its greeting's answers first, then what Redis pushes, to the hub."""

    def __init__(self, hub: "RelayHub", greeting: int) -> None:
        self.hub = hub
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.transport: asyncio.Transport | None = None
        self.greeted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._greeting_left = greeting
        self.asked: dict[str, int] = {}  # SUBSCRIBEs sent per channel and not answered yet
        self.initial: set[str] = set()  # the channels subscribed as it connected
        self.pinged = False  # a PING is unanswered
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self._greeting_left == 0:
            self.greeted.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
            while (reply := self.reader.gets()) is not False:
                if self._greeting_left > 0:
                    self._greeting_answer(reply)
                elif isinstance(reply, list) and len(reply) >= 2:
                    self.hub._pushed(self, reply)
                elif reply == b"PONG":  # a PING's answer while no channel is subscribed
                    self.hub._alive(self)
                elif isinstance(reply, ResponseError):  # a SUBSCRIBE refused (by an ACL, say)
                    self.hub._refused(self, reply)
        except hiredis.ProtocolError as exc:
            self.drop(f"unreadable reply from Redis: {exc}")

    def _greeting_answer(self, reply: object) -> None:
        self._greeting_left -= 1
        if isinstance(reply, ResponseError):
            if not self.greeted.done():
                self.greeted.set_exception(RedisConnectionError(f"Redis refused the connection: {reply}"))
            self.drop(str(reply))
        elif self._greeting_left == 0 and not self.greeted.done():
            self.greeted.set_result(None)

    def write(self, *command: Any) -> None:
        if self.lost or self.transport is None:
            raise RedisConnectionError("the pub/sub connection is lost")
        self.transport.write(hiredis.pack_command(command))

    def subscribe(self, channels: list[str]) -> None:
        self.write("SUBSCRIBE", *channels)
        for channel in channels:
            self.asked[channel] = self.asked.get(channel, 0) + 1

    def drop(self, reason: str) -> None:
        if self.transport is not None:
            self.transport.abort()  # connection_lost follows
        else:
            self.connection_lost(RedisConnectionError(reason))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost:
            return
        self.lost = True
        if not self.greeted.done():
            self.greeted.set_exception(RedisConnectionError(f"connection to Redis lost: {exc}"))
            self.greeted.exception()  # retrieved: whoever connects may have given up already
        self.hub._lost(self, exc)


class RelayHub:
    """Owns the gateway's pub/sub connection and routes channel messages to subscribers."""

    def __init__(
        self,
        url: str,
        *,
        buffer_bytes: int = 512 * 1024,
        on_redis_error: Callable[[], None] | None = None,
    ) -> None:
        self._endpoint = Endpoint.from_url(url)
        self._on_redis_error = on_redis_error or (lambda: None)  # counted in the gateway's metrics
        self._subscribers: dict[str, set[Subscriber]] = {}
        self._confirmed: dict[str, asyncio.Future[None]] = {}  # each channel asked of Redis, and its confirmation
        self._buffer = buffer_bytes
        self._protocol: _PubSub | None = None
        self._attempts = Attempts(self._connect, "relay-hub-connect")
        self._retry_s = RETRY_FIRST_S  # the wait before the next reconnect: reset once a connection answers
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconnecting: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def stream_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    def readers_of(self, job_id: str) -> int:
        return len(self._subscribers.get(keys.events_channel(job_id), ()))

    async def start(self) -> None:
        try:
            await self._connected()
        except (RedisError, OSError) as exc:  # Redis may come later; the first subscribe connects then
            logger.warning("pub/sub connection not open yet: %s", exc)
        self._spawn(self._check_health(), "relay-hub-health")

    async def close(self) -> None:
        self._closing = True
        self._attempts.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._protocol is not None:
            self._protocol.drop("closed")

    async def subscribe(self, job_id: str) -> Subscriber:
        """Join the job's channel; returns once Redis confirmed the subscription (else leaves it, and raises)."""
        subscriber = self.join(job_id)
        try:
            await self.confirmation(subscriber)
        except BaseException:
            await self.unsubscribe(subscriber)
            raise
        return subscriber

    def join(self, job_id: str) -> Subscriber:
        """A reader's mailbox on the job's channel, counted at once; the channel is subscribed (when
        it is not yet) by its :meth:`confirmation`, so a reader with events to send first sends them
        before that round trip. Whatever is published before the confirmation is in the log."""
        channel = keys.events_channel(job_id)
        subscriber = Subscriber(channel, self._buffer)
        self._subscribers.setdefault(channel, set()).add(subscriber)
        return subscriber

    def detached(self, job_id: str) -> Subscriber:
        """A mailbox on no channel, for a reader that has read its stream's end already: nothing is
        subscribed, and unsubscribing it changes nothing."""
        return Subscriber(keys.events_channel(job_id), self._buffer)

    async def confirmation(self, subscriber: Subscriber) -> None:
        """Subscribe the subscriber's channel if nobody did (or the last ask failed), and wait until
        Redis confirmed it: :class:`TimeoutError` past :data:`SUBSCRIBE_TIMEOUT_S`, Redis' error when
        the subscribe could not be sent. The subscriber stays joined either way: it can ask again, and
        its reader unsubscribes it when done."""
        confirmed = subscriber.confirmed
        if confirmed is None or (confirmed.done() and (confirmed.cancelled() or confirmed.exception() is not None)):
            confirmed = subscriber.confirmed = await self._ask(subscriber.channel)
        if confirmed.done():  # answered while it was being asked: refused, maybe
            confirmed.result()
            return
        await asyncio.wait_for(asyncio.shield(confirmed), SUBSCRIBE_TIMEOUT_S)

    async def _ask(self, channel: str) -> "asyncio.Future[None]":
        """The subscription of ``channel``, asked of Redis by its first reader."""
        confirmed = self._confirmed.get(channel)
        if confirmed is not None:
            return confirmed
        confirmed = asyncio.get_running_loop().create_future()
        self._confirmed[channel] = confirmed
        try:
            await self._send_subscribe(channel)
        except BaseException as exc:
            # Nothing was subscribed: the channel's next reader asks again, and those waiting fail now.
            if self._confirmed.get(channel) is confirmed:
                del self._confirmed[channel]
            failure = exc if isinstance(exc, RedisError | OSError) else RedisConnectionError(str(exc))
            confirmed.set_exception(failure)
            confirmed.exception()  # retrieved here: the channel may have no other reader waiting
            raise
        return confirmed

    async def _send_subscribe(self, channel: str) -> None:
        existing = self._protocol
        protocol = await self._connected()
        if protocol is existing or channel not in protocol.initial:  # else its connect asked for it already
            protocol.subscribe([channel])

    async def unsubscribe(self, subscriber: Subscriber) -> None:
        readers = self._subscribers.get(subscriber.channel)
        if readers is None:
            return
        readers.discard(subscriber)
        if readers:
            return
        del self._subscribers[subscriber.channel]
        confirmed = self._confirmed.pop(subscriber.channel, None)
        if confirmed is None:
            return  # its readers left before any of them asked Redis for it
        if not confirmed.done():
            confirmed.cancel()
        protocol = self._protocol
        if protocol is None or protocol.lost:
            return  # nothing is subscribed on a lost connection, and a reconnect asks only for channels served
        try:
            protocol.write("UNSUBSCRIBE", subscriber.channel)
        except RedisError:
            self._on_redis_error()

    async def _connected(self) -> _PubSub:
        """The live connection; made (greeted, and every channel served subscribed) if there is none,
        by one attempt that every caller meanwhile shares."""
        protocol = self._protocol
        if protocol is not None and not protocol.lost:
            return protocol
        return await self._attempts.wait()

    async def _connect(self) -> _PubSub:
        greeting = len(self._endpoint.greeting)

        async def greeted(protocol: _PubSub) -> None:
            assert protocol.transport is not None
            for command in self._endpoint.greeting:
                protocol.transport.write(hiredis.pack_command(command))
            await protocol.greeted

        protocol = await open_connection(self._endpoint, lambda: _PubSub(self, greeting), greeted)
        self._protocol = protocol
        if self._confirmed:
            protocol.initial = set(self._confirmed)
            protocol.subscribe(list(self._confirmed))  # confirmed ones resync their readers on the answer
        return protocol

    def _refused(self, protocol: _PubSub, reply: ResponseError) -> None:
        """Redis refused a SUBSCRIBE (which one, its error does not say): every subscription still
        waiting for its answer fails, so its readers ask again (``gateway.relay``) and, refused each
        time, end once their outage bound has passed, instead of waiting on an answer that never comes."""
        self._on_redis_error()
        logger.warning("Redis refused a pub/sub command: %s", reply)
        for channel, confirmed in list(self._confirmed.items()):
            if not confirmed.done():
                del self._confirmed[channel]
                protocol.asked.pop(channel, None)
                confirmed.set_exception(failure(reply))
                confirmed.exception()  # retrieved here: its readers may have given up waiting

    def _alive(self, protocol: _PubSub) -> None:
        """The connection answered: it is no longer suspect, and a later loss reconnects at once."""
        protocol.pinged = False
        self._retry_s = RETRY_FIRST_S

    def _pushed(self, protocol: _PubSub, reply: list[object]) -> None:
        """What Redis pushed on the connection: a channel message, a subscription's answer, a PING's."""
        kind = reply[0]
        if kind == b"message" and len(reply) == 3:
            data, name = reply[2], reply[1]
            assert isinstance(data, bytes) and isinstance(name, bytes)
            for subscriber in self._subscribers.get(name.decode(), ()):
                subscriber.deliver(data)
        elif kind == b"subscribe":
            name = reply[1]
            assert isinstance(name, bytes)
            self._alive(protocol)
            self._subscribed(protocol, name.decode())
        elif kind == b"pong":
            self._alive(protocol)

    def _subscribed(self, protocol: _PubSub, channel: str) -> None:
        left = protocol.asked.get(channel, 0) - 1
        if left > 0:
            protocol.asked[channel] = left
            return  # a later SUBSCRIBE of the channel is on its way: its answer confirms
        protocol.asked.pop(channel, None)
        confirmed = self._confirmed.get(channel)
        if confirmed is not None and not confirmed.done():
            confirmed.set_result(None)  # a first subscription: its readers read the log next anyway
            return
        # Subscribed again after a reconnect: whatever was published meanwhile is in the log.
        for subscriber in self._subscribers.get(channel, ()):
            subscriber.resync()

    def _lost(self, protocol: _PubSub, exc: Exception | None) -> None:
        if protocol is not self._protocol or self._closing:
            return
        self._on_redis_error()
        logger.warning("pub/sub connection lost (%s); readers fall back to the log", exc or "closed by Redis")
        for readers in self._subscribers.values():
            for subscriber in readers:
                subscriber.resync()
        if self._confirmed and (self._reconnecting is None or self._reconnecting.done()):
            self._reconnecting = self._spawn(self._reconnect(), "relay-hub-reconnect")

    async def _reconnect(self) -> None:
        """Connect again while any channel is served (a subscribe connects by itself), after a wait that
        doubles with each connection lost or refused before it answered anything (a server that accepts
        and hangs up at once must not be hammered), and starts again at :data:`RETRY_FIRST_S`."""
        while self._confirmed and not self._closing:
            delay_s, self._retry_s = self._retry_s, min(self._retry_s * 2, RETRY_MAX_S)
            await asyncio.sleep(delay_s)
            try:
                await self._connected()
                return
            except (RedisError, OSError) as exc:
                self._on_redis_error()
                logger.warning("cannot reconnect the pub/sub connection (%s); again in %.1f s", exc, self._retry_s)

    async def _check_health(self) -> None:
        """PING the connection every :data:`HEALTH_CHECK_S`; one unanswered by the next drops it."""
        while True:
            await asyncio.sleep(HEALTH_CHECK_S)
            protocol = self._protocol
            if protocol is None or protocol.lost:
                continue
            if protocol.pinged:
                protocol.drop(f"no answer to a PING within {HEALTH_CHECK_S:g} s")
                continue
            try:
                protocol.write("PING")
                protocol.pinged = True
            except RedisError:
                continue

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
