"""The gateway's one Redis pub/sub connection, shared by every job channel it serves, and each
reader's mailbox on it.

A reader subscribes and waits for Redis to confirm before it reads the log (see
``gateway.relay``), so every event is in the log it reads or arrives here after. A mailbox is
bounded in bytes; overflowing it, or a reconnect of the hub (redis-py subscribes again), only
sends its reader back to the log, so a slow reader never slows the hub or the other readers.
"""

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from factory.store import keys

logger = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT_S = 5.0


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


class RelayHub:
    """Owns the gateway's pub/sub connection and routes channel messages to subscribers."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        buffer_bytes: int = 512 * 1024,
        on_redis_error: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._on_redis_error = on_redis_error or (lambda: None)  # counted in the gateway's metrics
        self._pubsub = client.pubsub(ignore_subscribe_messages=False)
        self._subscribers: dict[str, set[Subscriber]] = {}
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._buffer = buffer_bytes
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._has_channels = asyncio.Event()
        # One (un)subscribe at a time: concurrent first commands would each open a connection.
        self._commands = asyncio.Lock()

    @property
    def stream_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    def readers_of(self, job_id: str) -> int:
        return len(self._subscribers.get(keys.events_channel(job_id), ()))

    async def start(self) -> None:
        try:
            await self._pubsub.connect()  # type: ignore[no-untyped-call]
        except (RedisError, OSError) as exc:  # Redis may come later; the first subscribe connects then
            logger.warning("pub/sub connection not open yet: %s", exc)
        self._task = asyncio.create_task(self._listen(), name="relay-hub")

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]

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

    async def _ask(self, subscriber: Subscriber) -> "asyncio.Future[None]":
        """The subscription of the subscriber's channel, asked of Redis by its first reader."""
        channel = subscriber.channel
        confirmed = self._confirmed.get(channel)
        if confirmed is None:
            confirmed = asyncio.get_running_loop().create_future()
            self._confirmed[channel] = confirmed
            try:
                async with self._commands:
                    await self._pubsub.subscribe(channel)
                self._has_channels.set()
            except BaseException as exc:
                # Nothing was subscribed: the channel's next reader asks again, and those waiting fail now.
                if self._confirmed.get(channel) is confirmed:
                    del self._confirmed[channel]
                failure = exc if isinstance(exc, RedisError | OSError) else RedisConnectionError(str(exc))
                confirmed.set_exception(failure)
                confirmed.exception()  # retrieved here: the channel may have no other reader waiting
                raise
        return confirmed

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
            confirmed = subscriber.confirmed = await self._ask(subscriber)
        if not confirmed.done():
            await asyncio.wait_for(asyncio.shield(confirmed), SUBSCRIBE_TIMEOUT_S)

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
        try:
            async with self._commands:
                await self._pubsub.unsubscribe(subscriber.channel)
        except (RedisError, OSError):
            self._on_redis_error()
            logger.warning("could not unsubscribe from %s; Redis will drop it on reconnect", subscriber.channel)

    async def _listen(self) -> None:
        delay_s = 0.1
        while not self._closing:
            try:
                if not self._pubsub.subscribed:
                    # Nothing to listen to: sleep until a subscribe, which must be confirmed at once.
                    self._has_channels.clear()
                    await self._has_channels.wait()
                    continue
                message = await self._pubsub.get_message(timeout=1.0)
                delay_s = 0.1
                if message is not None:
                    self._route(message)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._on_redis_error()
                logger.warning("pub/sub connection lost (%s); readers fall back to the log", exc)
                for readers in self._subscribers.values():
                    for subscriber in readers:
                        subscriber.resync()
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 2.0)

    def _route(self, message: dict[str, object]) -> None:
        kind = message["type"]
        channel = message["channel"]
        name = channel.decode() if isinstance(channel, bytes) else str(channel)
        if kind == "message":
            data = message["data"]
            assert isinstance(data, bytes)
            for subscriber in self._subscribers.get(name, ()):
                subscriber.deliver(data)
        elif kind == "subscribe":
            confirmed = self._confirmed.get(name)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)  # a first subscription: its readers read the log next anyway
                return
            # After a reconnect redis-py re-subscribes: whatever was published meanwhile is in the log.
            for subscriber in self._subscribers.get(name, ()):
                subscriber.resync()
