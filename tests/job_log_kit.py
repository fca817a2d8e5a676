"""Helpers for unit tests of a job's event log against the real Redis (the publisher, the relay).

A job here is only its record, as an enqueue leaves it: nothing takes it off a queue, the test
writes its events itself (``worker.publisher`` or the append script). ``held_writes`` holds every
write command at the server (``CLIENT PAUSE WRITE``), so a test can keep a write in flight for as
long as it needs and see, from ``CLIENT LIST``, that a given connection is waiting on one;
``log_reads`` counts, from the server's command statistics, how often the log was read.
"""

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import orjson
import redis

from factory.jobs import JobRecord, JobStatus, new_job_id, now_ms
from factory.store import keys

# Long enough for any slow machine; the block always ends with CLIENT UNPAUSE well before.
PAUSE_MS = 60_000


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after a generous deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def new_job(client: redis.Redis, status: JobStatus = JobStatus.STARTED) -> str:
    """A job record with no events yet; its id."""
    job_id = new_job_id()
    record = JobRecord(
        job_id=job_id, prefab_id="behaviours", function_name="counter", status=status, created_ms=now_ms()
    )
    client.hset(keys.job_key(job_id), mapping=record.to_hash())  # type: ignore[arg-type]
    return job_id


def event(n: int, payload: str = "") -> bytes:
    """The ``n``-th progress event, as a prefab's would be encoded."""
    return orjson.dumps({"type": "progress", "data": {"current": n, "payload": payload}})


def log_of(client: redis.Redis, job_id: str) -> list[bytes]:
    return list(client.lrange(keys.events_key(job_id), 0, -1))  # type: ignore[arg-type]


def wait_for_log_length(client: redis.Redis, job_id: str, length: int) -> None:
    wait_until(lambda: client.llen(keys.events_key(job_id)) == length, f"{length} events in the log")


def record_of(client: redis.Redis, job_id: str) -> JobRecord:
    return JobRecord.from_hash(client.hgetall(keys.job_key(job_id)))  # type: ignore[arg-type]


def log_reads(admin: redis.Redis) -> int:
    """How many list ranges the server has read, from any client (the relay reads a job's log no other way)."""
    return int(admin.info("commandstats").get("cmdstat_lrange", {}).get("calls", 0))


def is_waiting_on_a_write(admin: redis.Redis, client_name: str) -> bool:
    """Whether the connection named ``client_name`` has a command held by the pause."""
    return any(c["name"] == client_name and "b" in c["flags"] for c in admin.client_list())


@contextmanager
def held_writes(admin: redis.Redis) -> Iterator[None]:
    """Hold every client's write commands (scripts included) at the server until the block ends."""
    admin.client_pause(PAUSE_MS, all=False)
    try:
        yield
    finally:
        admin.client_unpause()
