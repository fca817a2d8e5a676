"""The relay's way back to the log, against the real Redis: a reader whose mailbox overflows, that
sees a gap in the channel's seqs, whose hub lost its connection or that hears nothing reads the
log again from its last ``seq``, and gets every event exactly once, in order.

Each test drives one reader's :class:`~gateway.relay.EventStream` by hand: a write the test does
not take is a client that does not read. Events are appended with the append script, as the
worker does (published on the job's channel); an event pushed onto the log alone stands for a
channel message that got lost.
"""

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from contextlib import suppress
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from fastapi.testclient import TestClient
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from factory.settings import Settings
from factory.store import keys
from factory.store.eventlog import append_args, append_keys
from factory.store.scripts import APPEND_LUA
from factory.store.wire import AsyncWire
from gateway.app import create_app
from gateway.relay import FIRST_PAGE, EventStream, ReaderLimits
from gateway.relay_hub import SUBSCRIBE_TIMEOUT_S, RelayHub, Subscriber
from tests.job_log_kit import event, log_of, log_reads, new_job

HUB = "relay-hub-under-test"
DONE = orjson.dumps({"type": "done", "data": None})


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


async def eventually(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll ``condition`` (letting the hub run meanwhile) until it holds, within a generous deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.01)


def parse(writes: list[bytes]) -> list[tuple[int, bytes]]:
    """The ``(seq, event)`` of every SSE frame in the writes, in order (comments, keep-alives, left out)."""
    frames = []
    for block in b"".join(writes).split(b"\n\n"):
        if block and not block.startswith(b":"):
            head, data = block.split(b"\n")
            assert head.startswith(b"id: ") and data.startswith(b"data: "), block
            frames.append((int(head[4:]), data[6:]))
    return frames


class Reader:
    """One SSE reader of one job on a hub of its own, taking writes only when the test says so.

    ``open`` leaves it as a reader that has caught up: the initial replay done, waiting on its
    channel. With
    ``started=False`` it has only subscribed, as a response that has not sent anything yet.
    """

    def __init__(self, client: aioredis.Redis, hub: RelayHub, subscriber: Subscriber, stream: EventStream) -> None:
        self.client = client
        self.hub = hub
        self.subscriber = subscriber
        self.wire = stream.wire
        self.writes = stream.frames(subscriber)
        self._next: asyncio.Task[bytes] | None = None

    @classmethod
    async def open(
        cls, redis_url: str, job_id: str, *, buffer_bytes: int = 64 * 1024, poll_s: float = 60.0, started: bool = True
    ) -> "Reader":
        client = aioredis.Redis.from_url(redis_url)
        hub = RelayHub(f"{redis_url}?client_name={HUB}", buffer_bytes=buffer_bytes)
        await hub.start()
        subscriber = await hub.subscribe(job_id)  # what the gateway does before its response starts
        limits = ReaderLimits(poll_s=poll_s, idle_timeout_s=3600, buffer_bytes=buffer_bytes)
        reader = cls(client, hub, subscriber, EventStream(AsyncWire(redis_url), hub, job_id, 0, limits))
        if started:
            reader._next = asyncio.create_task(reader._write())
            await eventually(
                lambda: not (subscriber.overflowed or subscriber.wakeup.is_set()), "the reader waits on its channel"
            )
        return reader

    async def _write(self) -> bytes:
        return await anext(self.writes)

    async def _take_writes(self, enough: Callable[[list[bytes]], bool], what: str) -> list[bytes]:
        writes: list[bytes] = []
        try:
            async with asyncio.timeout(30):
                while not enough(writes):
                    next_write, self._next = self._next or asyncio.create_task(self._write()), None
                    writes.append(await next_write)
        except TimeoutError:
            raise AssertionError(f"never came: {what}; got {parse(writes)}") from None
        except StopAsyncIteration:
            pass
        return writes

    async def take(self, count: int) -> list[tuple[int, bytes]]:
        """Take writes until they hold ``count`` more frames."""
        return parse(await self._take_writes(lambda writes: len(parse(writes)) >= count, f"{count} frames"))

    async def rest(self) -> list[tuple[int, bytes]]:
        """Take writes to the end of the stream (the terminal event)."""
        return parse(await self._take_writes(lambda _: False, "the end of the stream"))

    async def close(self) -> None:
        if self._next is not None:
            self._next.cancel()
            await asyncio.gather(self._next, return_exceptions=True)
        await self.writes.aclose()
        await self.hub.close()
        self.wire.close()
        await self.client.aclose()


async def append(client: aioredis.Redis, job_id: str, *events: bytes) -> None:
    """One batch through the append script: logged and published, as a worker's."""
    script = client.register_script(APPEND_LUA)
    await script(keys=append_keys(job_id), args=append_args(list(events), retention_s=600))


def lose(admin: redis.Redis, job_id: str, *events: bytes) -> None:
    """Events in the log whose channel message never reached the gateway."""
    admin.rpush(keys.events_key(job_id), *events)


def numbered(log: list[bytes]) -> list[tuple[int, bytes]]:
    return list(enumerate(log, start=1))


def test_a_reader_whose_mailbox_overflows_reads_the_log_again(redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    job_id = new_job(admin)
    big = [event(n, payload="x" * 500) for n in range(2, 42)]  # ~20 KiB: five times the mailbox

    async def scenario() -> None:
        reader = await Reader.open(redis_url, job_id, buffer_bytes=4096)
        try:
            await append(reader.client, job_id, event(1))
            assert await reader.take(1) == [(1, event(1))]
            assert not reader.subscriber.overflowed
            for one in big:  # one message each, while the client reads nothing
                await append(reader.client, job_id, one)
            await eventually(lambda: reader.subscriber.overflowed, "the mailbox overflowed")
            assert reader.subscriber.size_bytes <= 4096
            await append(reader.client, job_id, DONE)
            received = [(1, event(1)), *await reader.rest()]
        finally:
            await reader.close()
        assert received == numbered(log_of(admin, job_id)) == numbered([event(1), *big, DONE])

    run(scenario)


def test_a_new_reader_reads_the_log_once_then_follows_the_channel(redis_url: str) -> None:
    """A first subscription's confirmation sends no reader back to the log: only a re-subscription does."""
    admin = redis.Redis.from_url(redis_url)
    job_id = new_job(admin)

    async def scenario() -> None:
        reads_before = log_reads(admin)
        reader = await Reader.open(redis_url, job_id)
        try:
            await append(reader.client, job_id, event(1))
            assert await reader.take(1) == [(1, event(1))]
            assert log_reads(admin) - reads_before == 1  # the replay; the event came on the channel
        finally:
            await reader.close()

    run(scenario)


def test_a_late_reader_reads_the_log_a_page_at_a_time_as_its_client_takes_it(redis_url: str) -> None:
    """However long the log, a reader holds about ``buffer_bytes`` of it, and reads no page ahead of its client."""
    admin = redis.Redis.from_url(redis_url)
    job_id = new_job(admin)
    events = [event(n, payload="z" * 500) for n in range(1, 2001)]  # ~1 MB
    admin.rpush(keys.events_key(job_id), *events, DONE)
    buffer_bytes = 16 * 1024
    per_page = buffer_bytes // len(events[-1])  # the pages after the first: a buffer's worth of events

    async def scenario() -> None:
        reader = await Reader.open(redis_url, job_id, buffer_bytes=buffer_bytes, started=False)
        try:
            reads_before = log_reads(admin)
            received = await reader.take(FIRST_PAGE + 2 * per_page)
            # The first page, then two of a buffer's size (a write never holds frames of two pages).
            assert log_reads(admin) - reads_before <= 3
            received += await reader.rest()
            assert log_reads(admin) - reads_before >= 1 + (len(events) - FIRST_PAGE) // (per_page + 1)
        finally:
            await reader.close()
        assert received == numbered([*events, DONE])

    run(scenario)


def test_a_gap_in_the_channels_seqs_is_filled_from_the_log(redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    job_id = new_job(admin)

    async def scenario() -> None:
        reader = await Reader.open(redis_url, job_id)
        try:
            await append(reader.client, job_id, event(1))
            assert await reader.take(1) == [(1, event(1))]
            lose(admin, job_id, event(2), event(3))
            await append(reader.client, job_id, event(4))  # arrives as seq 4 after seq 1: a gap
            assert await reader.take(3) == [(2, event(2)), (3, event(3)), (4, event(4))]
            await append(reader.client, job_id, DONE)
            assert await reader.rest() == [(5, DONE)]
        finally:
            await reader.close()

    run(scenario)


def test_events_both_in_the_log_and_on_the_channel_are_sent_once(redis_url: str) -> None:
    """Events appended between the subscribe and the first read of the log are in both; each is sent once."""
    admin = redis.Redis.from_url(redis_url)
    job_id = new_job(admin)

    async def scenario() -> None:
        reader = await Reader.open(redis_url, job_id, started=False)
        try:
            await append(reader.client, job_id, event(1), event(2))
            await eventually(lambda: bool(reader.subscriber.messages), "the batch in the mailbox")
            assert await reader.take(2) == [(1, event(1)), (2, event(2))]  # from the log
            assert reader.subscriber.messages  # and their copy from the channel still waits
            await append(reader.client, job_id, event(3), DONE)
            assert await reader.rest() == [(3, event(3)), (4, DONE)]  # the mailbox's copy of 1 and 2 dropped
        finally:
            await reader.close()

    run(scenario)


def test_a_message_partly_sent_already_adds_only_its_new_events(redis_url: str) -> None:
    """A channel message whose first events the reader sent already (from the log) is cut by ``seq``."""
    admin = redis.Redis.from_url(redis_url)
    job_id = new_job(admin)

    async def scenario() -> None:
        reader = await Reader.open(redis_url, job_id)
        try:
            await append(reader.client, job_id, event(1))
            assert await reader.take(1) == [(1, event(1))]
            lose(admin, job_id, event(2))
            admin.publish(keys.events_channel(job_id), b"\n".join([b"1", event(1), event(2)]))
            assert await reader.take(1) == [(2, event(2))]
            await append(reader.client, job_id, DONE)
            assert await reader.rest() == [(3, DONE)]
        finally:
            await reader.close()

    run(scenario)


def test_events_published_while_the_hub_was_disconnected_come_from_the_log(redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    job_id = new_job(admin)
    script = admin.register_script(APPEND_LUA)

    async def scenario() -> None:
        reader = await Reader.open(redis_url, job_id)
        try:
            await append(reader.client, job_id, event(1))
            assert await reader.take(1) == [(1, event(1))]
            # With the event loop held (blocking calls), the hub cannot reconnect before the publish:
            # the channel message has no subscriber and is gone.
            (hub,) = [c for c in admin.client_list() if c["name"] == HUB and "P" in c["flags"]]
            assert admin.client_kill_filter(_id=hub["id"]) == 1
            script(keys=append_keys(job_id), args=append_args([event(2)], retention_s=600))
            assert await reader.take(1) == [(2, event(2))]
            await append(reader.client, job_id, DONE)  # and the channel works again
            assert await reader.rest() == [(3, DONE)]
        finally:
            await reader.close()

    run(scenario)


def test_a_reader_that_hears_nothing_checks_the_log(redis_url: str) -> None:
    """A lost channel message with nothing after it is found by the reader's periodic look at the log."""
    admin = redis.Redis.from_url(redis_url)
    job_id = new_job(admin)

    async def scenario() -> None:
        reader = await Reader.open(redis_url, job_id, poll_s=0.05)
        try:
            await append(reader.client, job_id, event(1))
            assert await reader.take(1) == [(1, event(1))]
            lose(admin, job_id, event(2), DONE)
            assert await reader.rest() == [(2, event(2)), (3, DONE)]
        finally:
            await reader.close()

    run(scenario)


def test_events_read_ahead_go_out_before_the_subscription_and_the_log_is_read_after_it(redis_url: str) -> None:
    """``GET /jobs/{id}/events`` reads a first page with the job's record: that page is sent before
    the job's channel is even asked of Redis, and once the subscription is confirmed the log is read
    again from where the page ended, so an event published before the subscription took effect is
    not missed."""
    admin = redis.Redis.from_url(redis_url)
    job_id = new_job(admin)
    lose(admin, job_id, event(1))
    read_ahead = log_of(admin, job_id)
    lose(admin, job_id, event(2))  # appended after the read, before the subscription took effect
    channel = keys.events_channel(job_id)

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        hub = RelayHub(f"{redis_url}?client_name={HUB}")
        await hub.start()
        subscriber = hub.join(job_id)
        limits = ReaderLimits(poll_s=60.0, idle_timeout_s=3600)
        reader = Reader(client, hub, subscriber, EventStream(AsyncWire(redis_url), hub, job_id, 0, limits, read_ahead))
        try:
            reads_before = log_reads(admin)
            assert await reader.take(1) == [(1, event(1))]
            assert log_reads(admin) == reads_before  # sent without reading the log
            assert admin.pubsub_numsub(channel) == [(channel.encode(), 0)]  # nor asking for the channel
            assert await reader.take(1) == [(2, event(2))]  # the log, read after the confirmation
            assert admin.pubsub_numsub(channel) == [(channel.encode(), 1)] and log_reads(admin) > reads_before
            await append(client, job_id, DONE)  # and then the channel
            assert await reader.rest() == [(3, DONE)]
        finally:
            await reader.close()

    run(scenario)


def test_a_reader_of_an_ended_job_reads_it_in_one_round_trip_and_subscribes_to_nothing(settings: Settings) -> None:
    """``GET /jobs/{id}/events`` reads the log's first page with the job's record: when that page holds
    the end, the stream is that one read, with no subscription and no second read."""
    admin = redis.Redis.from_url(settings.redis_url)

    def calls(command: str) -> int:
        return int(admin.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))

    with TestClient(create_app(settings)) as client:
        job_id = client.post("/invoke", json={"function_name": "typed", "inputs": {"text": "a"}}).json()["job_id"]
        assert client.post(f"/jobs/{job_id}/cancel").json()["status"] == "canceled"
        subscribes, reads = calls("subscribe"), log_reads(admin)
        response = client.get(f"/jobs/{job_id}/events")
        assert response.status_code == 200
        assert [orjson.loads(data)["type"] for _, data in parse([response.content.partition(b"\n\n")[2]])] == ["error"]
        assert calls("subscribe") == subscribes and log_reads(admin) == reads + 1


def test_a_subscribe_that_fails_is_asked_again_and_nothing_is_lost(redis_url: str) -> None:
    """The channel's first SUBSCRIBE fails (a connection error injected into the hub's subscribe):
    the stream, its read-ahead already sent, asks again instead of ending, and then reads the log
    and the channel as usual. Another reader of the job arriving meanwhile is not left waiting on the
    failed ask."""
    admin = redis.Redis.from_url(redis_url)
    job_id = new_job(admin)
    lose(admin, job_id, event(1))
    read_ahead = log_of(admin, job_id)
    lose(admin, job_id, event(2))

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        hub = RelayHub(f"{redis_url}?client_name={HUB}")
        await hub.start()
        real_subscribe = hub._send_subscribe
        refused: list[str] = []

        async def refuse_once(channel: str) -> None:
            if not refused:
                refused.append(channel)
                raise RedisConnectionError("Connection reset by peer")
            await real_subscribe(channel)

        hub._send_subscribe = refuse_once  # type: ignore[method-assign]
        subscriber = hub.join(job_id)
        limits = ReaderLimits(poll_s=60.0, idle_timeout_s=3600, outage_s=30.0)
        reader = Reader(client, hub, subscriber, EventStream(AsyncWire(redis_url), hub, job_id, 0, limits, read_ahead))
        try:
            assert await reader.take(1) == [(1, event(1))]
            assert await reader.take(1) == [(2, event(2))]  # asked again, confirmed, the log read after
            assert refused == [keys.events_channel(job_id)]
            other = await hub.subscribe(job_id)  # confirmed at once: the failed ask left nothing behind
            await append(client, job_id, DONE)
            assert await reader.rest() == [(3, DONE)]
            await hub.unsubscribe(other)
        finally:
            await reader.close()

    run(scenario)


def test_a_subscription_is_confirmed_by_its_own_subscribe_not_by_one_an_unsubscribe_followed(redis_url: str) -> None:
    """A reader joins and leaves before Redis answered its SUBSCRIBE (an UNSUBSCRIBE follows it), and a
    second reader asks again: the first answer must not confirm the second reader, whose subscription
    is only in effect once Redis ran its own SUBSCRIBE, after the UNSUBSCRIBE."""
    job_id = new_job(redis.Redis.from_url(redis_url))
    channel = keys.events_channel(job_id)

    async def scenario() -> None:
        hub = RelayHub(redis_url)
        await hub.start()
        try:
            first = hub.join(job_id)
            await hub._ask(channel)  # sent; nothing in between lets the event loop read its answer
            await hub.unsubscribe(first)
            second = hub.join(job_id)
            confirmed = await hub._ask(channel)
            seen: list[bool] = []
            answered = hub._subscribed

            def spy(protocol: Any, name: str) -> None:
                answered(protocol, name)
                seen.append(confirmed.done())

            hub._subscribed = spy  # type: ignore[method-assign]
            second.confirmed = confirmed
            await hub.confirmation(second)
            assert seen == [False, True]  # the first answer left it waiting; its own confirmed it
            await hub.unsubscribe(second)
        finally:
            await hub.close()

    run(scenario)


def test_a_pub_sub_connection_that_stops_answering_is_replaced(redis_url: str, monkeypatch: Any) -> None:
    """Redis stops answering the hub (every client paused) without closing its connection: the hub's
    unanswered PING drops it, it connects again once Redis answers, subscribes again, and the reader
    reads what it missed from the log and the channel after."""
    monkeypatch.setattr("gateway.relay_hub.HEALTH_CHECK_S", 0.2)
    admin = redis.Redis.from_url(redis_url)
    job_id = new_job(admin)

    async def scenario() -> None:
        reader = await Reader.open(redis_url, job_id)
        try:
            await append(reader.client, job_id, event(1))
            assert await reader.take(1) == [(1, event(1))]
            before = reader.hub._protocol
            # PING included: the hub hears nothing back for 1.5 s (paused from a thread: the loop runs on)
            await asyncio.to_thread(admin.client_pause, 1500, True)
            await eventually(lambda: before is not None and before.lost, "the hub dropped the silent connection")
            await eventually(
                lambda: reader.hub._protocol not in (None, before) and not reader.hub._protocol.lost,
                "the hub connected again",
                timeout_s=60,
            )
            lose(admin, job_id, event(2))
            await append(reader.client, job_id, DONE)
            assert await reader.rest() == [(2, event(2)), (3, DONE)]
        finally:
            await reader.close()

    run(scenario)


def test_first_subscriptions_at_once_on_a_fresh_hub_share_one_connection(redis_url: str) -> None:
    """Readers of different jobs subscribing at once on a hub that has not connected yet are all
    confirmed, over the one connection the first of them opened."""
    admin = redis.Redis.from_url(redis_url)
    job_ids = [new_job(admin) for _ in range(20)]

    async def scenario() -> None:
        hub = RelayHub(f"{redis_url}?client_name={HUB}")  # not started: the first subscribe connects
        try:
            readers = await asyncio.gather(*(hub.subscribe(job_id) for job_id in job_ids))
            assert len([c for c in admin.client_list() if c["name"] == HUB]) == 1
            for job_id, reader in zip(job_ids, readers, strict=True):
                channel = keys.events_channel(job_id)
                assert admin.pubsub_numsub(channel) == [(channel.encode(), 1)]
                await hub.unsubscribe(reader)
        finally:
            await hub.close()

    run(scenario)


def test_a_server_that_hangs_up_at_once_is_not_hammered(redis_url: str) -> None:
    """Something that accepts the hub's connections and closes each at once (a proxy whose Redis is
    down): the hub reconnects after a wait that doubles, not in a tight loop."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def hang_up() -> None:
        with suppress(OSError):
            while True:
                listener.accept()[0].close()
                accepted.append(1)

    threading.Thread(target=hang_up, daemon=True).start()
    job_id = new_job(redis.Redis.from_url(redis_url))

    async def scenario() -> None:
        hub = RelayHub(f"redis://127.0.0.1:{listener.getsockname()[1]}/0")
        try:
            subscriber = hub.join(job_id)
            asking = asyncio.create_task(hub.confirmation(subscriber))  # sent, then the connection goes
            await asyncio.sleep(2.0)  # a rate over a fixed window: 0.1 + 0.2 + 0.4 + 0.8 s of waits fit in it
            assert len(accepted) <= 8, f"{len(accepted)} connections in 2 s"
            asking.cancel()
            await asyncio.gather(asking, return_exceptions=True)
        finally:
            await hub.close()

    try:
        run(scenario)
    finally:
        listener.close()


def test_a_subscribe_redis_refuses_fails_at_once(redis_url: str) -> None:
    """A user whose ACL allows no channel: the SUBSCRIBE's error reply fails the reader's subscription
    at once (its stream then asks again within its outage bound), instead of a 5 s wait for an answer."""
    admin = redis.Redis.from_url(redis_url)
    user, password = f"no-channels-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin.acl_setuser(
        user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"], reset_channels=True
    )
    job_id = new_job(admin)
    host_port = redis_url.removeprefix("redis://").rsplit("/", 1)[0]

    async def scenario() -> None:
        hub = RelayHub(f"redis://{user}:{password}@{host_port}/0")
        try:
            started = time.monotonic()
            with pytest.raises(ResponseError, match="channel"):
                await hub.subscribe(job_id)
            assert time.monotonic() - started < SUBSCRIBE_TIMEOUT_S
            assert hub.readers_of(job_id) == 0
        finally:
            await hub.close()

    try:
        run(scenario)
    finally:
        admin.acl_deluser(user)
