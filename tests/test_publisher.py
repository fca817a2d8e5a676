"""The event publisher's batching and limits, against the real Redis.

What a batch is shows on the job's channel: each append publishes its events as one message
(``<first seq>\\n<event>\\n...``). A write is kept in flight by holding writes at the server
(``tests.job_log_kit.held_writes``), so what queues up behind it is known, not guessed.
"""

import threading
import time
from collections.abc import Iterator

import orjson
import pytest
import redis

from factory.events import EVENT_LIMIT, TERMINAL_TYPES, split_batch
from factory.jobs import JobStatus, now_ms, terminal_fields
from factory.store import executions, keys
from factory.store.eventlog import Outcome
from factory.store.wire import Wire
from tests.job_log_kit import (
    event,
    held_writes,
    is_waiting_on_a_write,
    log_of,
    new_job,
    record_of,
    wait_for_log_length,
    wait_until,
)
from worker.publisher import MAX_BATCH, EventPublisher

PUBLISHER = "publisher-under-test"
DONE = orjson.dumps({"type": "done", "data": {"ok": True}})


@pytest.fixture
def admin(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def client(redis_url: str) -> Iterator[Wire]:
    """The publisher's own connection, named so that ``CLIENT LIST`` tells it apart."""
    client = Wire(f"{redis_url}?client_name={PUBLISHER}")
    yield client
    client.close()


class Channel:
    """The job's channel, subscribed before anything is published: one entry per append."""

    def __init__(self, admin: redis.Redis, job_id: str) -> None:
        self.pubsub = admin.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self.pubsub.subscribe(keys.events_channel(job_id))

    def batches(self, timeout_s: float = 30.0) -> list[tuple[int, int]]:
        """``(first seq, events)`` of each message, up to the one with the terminal event."""
        batches: list[tuple[int, int]] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            first_seq, events = split_batch(message["data"])
            batches.append((first_seq, len(events)))
            if orjson.loads(events[-1])["type"] in TERMINAL_TYPES:
                self.pubsub.close()
                return batches
        raise AssertionError(f"no terminal event on the channel; batches so far: {batches}")


def publisher(client: Wire, admin: redis.Redis, job_id: str, max_events: int = 0) -> EventPublisher:
    """The publisher of an execution of the job (every write of one carries its token)."""
    claim = executions.claim(admin, job_id, 1, lost_after_s=600)
    assert claim is not None
    return EventPublisher(client, job_id, max_events=max_events, retention_s=600, redis_outage_s=10, token=claim.token)


def done_fields() -> dict[str, bytes]:
    return terminal_fields(JobStatus.FINISHED, now_ms(), {"ok": True}, None)


def test_first_and_lone_events_are_written_without_waiting_for_more(client: Wire, admin: redis.Redis) -> None:
    """The first event is in the log once ``publish`` returns; a lone later one reaches it while the producer
    publishes nothing else: no event waits for company."""
    job_id = new_job(admin)
    channel = Channel(admin, job_id)
    events = publisher(client, admin, job_id)
    events.publish(event(1))
    assert log_of(admin, job_id) == [event(1)]  # written on the caller's thread, at once
    events.publish(event(2))  # a lone event after a quiet spell
    wait_until(lambda: log_of(admin, job_id) == [event(1), event(2)], "the lone event in the log")
    result = events.finish(DONE, done_fields())
    assert result is not None and result.outcome is Outcome.APPENDED and result.last_seq == 3
    assert log_of(admin, job_id) == [event(1), event(2), DONE]
    assert channel.batches() == [(1, 1), (2, 1), (3, 1)]
    assert record_of(admin, job_id).status is JobStatus.FINISHED


def test_a_terminal_event_alone_is_written_at_once(client: Wire, admin: redis.Redis) -> None:
    """A plain function's only event, its terminal one, is written by ``finish`` itself."""
    job_id = new_job(admin)
    result = publisher(client, admin, job_id).finish(DONE, done_fields())
    assert result is not None and result.outcome is Outcome.APPENDED and result.last_seq == 1
    assert log_of(admin, job_id) == [DONE]
    assert record_of(admin, job_id).status is JobStatus.FINISHED


def test_events_queued_behind_a_write_go_in_batches_of_at_most_max_batch(client: Wire, admin: redis.Redis) -> None:
    job_id = new_job(admin)
    channel = Channel(admin, job_id)
    events = publisher(client, admin, job_id)
    count = 2 + 2 * MAX_BATCH + 5
    events.publish(event(1))  # written at once, on this thread
    with held_writes(admin):
        events.publish(event(2))  # the publisher thread's first write, held at the server
        wait_until(lambda: is_waiting_on_a_write(admin, PUBLISHER), "the second event's write in flight")
        for n in range(3, count + 1):
            events.publish(event(n))  # they queue up behind the write in flight
    result = events.finish(DONE, done_fields())
    assert result is not None and result.outcome is Outcome.APPENDED and result.last_seq == count + 1
    assert log_of(admin, job_id) == [event(n) for n in range(1, count + 1)] + [DONE]
    batches = channel.batches()
    # The first two went alone; what queued behind the second went MAX_BATCH at a time, then the rest.
    assert batches[:4] == [(1, 1), (2, 1), (3, MAX_BATCH), (3 + MAX_BATCH, MAX_BATCH)]
    assert sum(size for _, size in batches[4:]) == 5 + 1


@pytest.mark.parametrize("own_events", [5, 6])
@pytest.mark.parametrize("batched", [False, True], ids=["one-per-write", "one-batch"])
def test_the_event_limit_is_exact_however_events_are_batched(
    client: Wire, admin: redis.Redis, own_events: int, batched: bool
) -> None:
    """``max_events`` of a job's own events are kept and its terminal event follows; one more ends the job
    with ``EVENT_LIMIT_EXCEEDED`` as event ``max_events + 1``, whether the limit falls inside a batch or not."""
    job_id = new_job(admin)
    events = publisher(client, admin, job_id, max_events=5)
    if batched:
        events.publish(event(1))
        with held_writes(admin):
            events.publish(event(2))
            wait_until(lambda: is_waiting_on_a_write(admin, PUBLISHER), "the second event's write in flight")
            for n in range(3, own_events + 1):
                events.publish(event(n))  # all of them in the one batch behind the second write
    else:
        for n in range(1, own_events + 1):
            events.publish(event(n))
            wait_for_log_length(admin, job_id, min(n, 6))  # the sixth: the limit's error in its place
    result = events.finish(DONE, done_fields())
    log = log_of(admin, job_id)
    assert log[:5] == [event(n) for n in range(1, 6)]
    assert result is not None and result.last_seq == 6 == len(log)
    if own_events == 5:
        assert log[5] == DONE and result.outcome is Outcome.APPENDED
        assert record_of(admin, job_id).status is JobStatus.FINISHED
    else:
        last = orjson.loads(log[5])
        assert last["type"] == "error" and last["error_code"] == EVENT_LIMIT
        record = record_of(admin, job_id)
        assert record.status is JobStatus.FAILED and record.error is not None and record.error.code == EVENT_LIMIT


def test_publish_only_queues_while_a_write_waits_on_redis(client: Wire, admin: redis.Redis) -> None:
    """While a write waits on Redis, ``publish`` only queues: the producer goes on at its own pace."""
    job_id = new_job(admin)
    events = publisher(client, admin, job_id)

    def produce() -> None:
        for n in range(3, 1001):
            events.publish(event(n))

    events.publish(event(1))
    with held_writes(admin):
        events.publish(event(2))
        wait_until(lambda: is_waiting_on_a_write(admin, PUBLISHER), "the second event's write in flight")
        producer = threading.Thread(target=produce)
        producer.start()
        producer.join(30)
        assert not producer.is_alive(), "publish waited on Redis although its queue had room"
        assert log_of(admin, job_id) == [event(1)]  # reads go on: nothing was written while writes are held
    events.finish(DONE, done_fields())
    assert len(log_of(admin, job_id)) == 1001


def test_a_superseded_execution_stops_publishing_and_writes_nothing(client: Wire, admin: redis.Redis) -> None:
    """Once the job belongs to another execution, the publisher's first write is refused and it closes."""
    job_id = new_job(admin)
    first = executions.claim(admin, job_id, 1, lost_after_s=30)
    second = executions.claim(admin, job_id, 1, lost_after_s=30)  # the first was declared lost meanwhile
    assert first is not None and second is not None
    events = EventPublisher(client, job_id, max_events=0, retention_s=600, redis_outage_s=10, token=first.token)
    events.publish(event(1))
    assert events.ended.wait(30), "the publisher did not close"
    result = events.finish(DONE, done_fields())
    assert result is not None and result.outcome is Outcome.SUPERSEDED
    assert log_of(admin, job_id) == []
    assert record_of(admin, job_id).status is JobStatus.STARTED  # left to the execution that owns it
