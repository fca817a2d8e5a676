"""Every limit is a setting, answers with a clear error, and never costs another job its data.

Queue length and retention run in-process against the real Redis; the stream limits, keep-alive,
idle timeout and the worker's event limits run over real gateway and worker processes.
"""

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from factory.settings import Settings
from gateway.app import create_app
from tests.job_log_kit import log_reads
from tests.shapes import assert_error
from tests.stack import Stack, invoke, parse_frames, read_events, wait_status

GOOD = {"function_name": "typed", "inputs": {"text": "hello"}}


def wait_until_gone(status_of: Callable[[], int], timeout_s: float = 30.0) -> None:
    """Wait for a retention to pass: until the resource answers 404 (Redis expires keys on its own clock)."""
    deadline = time.monotonic() + timeout_s
    while status_of() != 404:
        assert time.monotonic() < deadline, "the job outlived its retention"
        time.sleep(0.1)


def test_full_queue_refuses_with_503_and_retry_after(settings: Settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"max_queue_length": 2}))) as client:
        first = client.post("/invoke", json=GOOD).json()["job_id"]
        second = client.post("/invoke", json=GOOD).json()["job_id"]
        refused = client.post("/invoke", json=GOOD)
        assert "queue is full" in assert_error(refused, 503, "SERVICE_UNAVAILABLE")["message"]
        assert int(refused.headers["Retry-After"]) > 0
        assert_error(client.post("/invoke/typed", json={"inputs": {"text": "a"}}), 503, "SERVICE_UNAVAILABLE")
        assert_error(client.post("/invoke/counter", json={"inputs": {"count": 1}}), 503, "SERVICE_UNAVAILABLE")
        jobs = client.get("/jobs").json()["jobs"]
        assert {job["job_id"] for job in jobs} == {first, second}  # nothing half-made by the refusals
        assert all(job["status"] == "queued" for job in jobs)
        client.post(f"/jobs/{first}/cancel")  # leaves the queue, so there is room again
        assert client.post("/invoke", json=GOOD).status_code == 202


def test_calls_racing_for_the_last_places_never_fill_the_queue_past_its_limit(settings: Settings) -> None:
    """The length check and the job's writes are one atomic step: however many calls race, the queue
    holds at most its limit, and every call past it is refused whole."""
    limit = 3
    with TestClient(create_app(settings.model_copy(update={"max_queue_length": limit}))) as client:
        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda _: client.post("/invoke", json=GOOD).status_code, range(48)))
        assert codes.count(202) == limit and codes.count(503) == len(codes) - limit
        assert len(client.get("/jobs").json()["jobs"]) == limit


def test_retention_ends_an_ended_job_only(settings: Settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"retention_s": 3}))) as client:
        ended = client.post("/invoke", json=GOOD).json()["job_id"]
        waiting = client.post("/invoke", json=GOOD).json()["job_id"]
        assert [job["job_id"] for job in client.get("/jobs").json()["jobs"]] == [waiting, ended]
        assert client.post(f"/jobs/{ended}/cancel").json()["status"] == "canceled"
        ended_at = time.monotonic()
        assert client.get(f"/jobs/{ended}/events").status_code == 200  # the log is replayable until retention ends
        wait_until_gone(lambda: client.get(f"/jobs/{ended}").status_code)
        assert time.monotonic() - ended_at > 2  # kept for its retention (expiry is in whole seconds)
        assert_error(client.get(f"/jobs/{ended}"), 404, "NOT_FOUND")
        assert_error(client.get(f"/jobs/{ended}/events"), 404, "NOT_FOUND")
        assert client.get(f"/jobs/{waiting}").json()["status"] == "queued"  # a job not ended is kept
        # GET /jobs lists the jobs created within the retention: the ended one has left it.
        assert ended not in [job["job_id"] for job in client.get("/jobs").json()["jobs"]]


@pytest.mark.e2e
def test_body_limit_over_a_real_socket(make_stack: Stack) -> None:
    """uvicorn and the limit together: a chunked upload is cut off early, and the gateway serves on."""
    gateway = make_stack.start_gateway(FACTORY_MAX_BODY_BYTES="1000")

    def chunks(count: int) -> Iterator[bytes]:
        yield b'{"function_name": "typed", "inputs": {"text": "'
        for _ in range(count):
            yield b"x" * 1000
        yield b'"}}'

    for count in (2, 3000):  # just over, and 3 MB the gateway never reads in full
        response = httpx.post(f"{gateway.url}/invoke", content=chunks(count), timeout=10)
        assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    declared = httpx.post(f"{gateway.url}/invoke", content=b"x" * 5000, headers={"Content-Type": "application/json"})
    assert_error(declared, 413, "PAYLOAD_TOO_LARGE")
    assert httpx.post(f"{gateway.url}/invoke", json=GOOD).status_code == 202


@pytest.mark.churn
@pytest.mark.e2e
def test_retention_after_a_finished_job(make_stack: Stack) -> None:
    make_stack.env["FACTORY_RETENTION_S"] = "1"
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    job_id = invoke(gateway.url, "counter", {"count": 2})
    _, events = read_events(f"{gateway.url}/jobs/{job_id}/events")
    assert events[-1].type == "done"
    assert wait_status(gateway.url, job_id, {"finished"})["output"] == {"count": 2}
    wait_until_gone(lambda: httpx.get(f"{gateway.url}/jobs/{job_id}").status_code)
    for path in ("", "/events"):
        assert_error(httpx.get(f"{gateway.url}/jobs/{job_id}{path}"), 404, "NOT_FOUND")


@contextmanager
def open_stream(url: str) -> Iterator[httpx.Response]:
    """An SSE response held open (its body not read) until the block ends."""
    with httpx.stream("GET", url, timeout=10) as response:
        assert response.status_code == 200, response.read()
        yield response


def _eventually_200(url: str) -> None:
    """The gateway notices a closed reader within moments; until then it may still count it."""
    deadline = time.monotonic() + 5
    while True:
        with httpx.stream("GET", url, timeout=10) as response:
            if response.status_code == 200:
                return
        assert time.monotonic() < deadline, "the reader slot was never freed"
        time.sleep(0.1)


@pytest.mark.e2e
def test_readers_per_job_limit(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway(FACTORY_MAX_READERS_PER_JOB="2")  # no worker: the jobs stay queued
    job_id, other = invoke(gateway.url, "counter", {"count": 1}), invoke(gateway.url, "counter", {"count": 1})
    url = f"{gateway.url}/jobs/{job_id}/events"
    with ExitStack() as readers:
        first = readers.enter_context(open_stream(url))
        readers.enter_context(open_stream(url))
        refused = httpx.get(url, timeout=10)
        assert "maximum of 2 readers" in assert_error(refused, 503, "SERVICE_UNAVAILABLE")["message"]
        assert int(refused.headers["Retry-After"]) > 0
        with open_stream(f"{gateway.url}/jobs/{other}/events"):
            pass  # another job's readers are counted apart
        first.close()
        _eventually_200(url)


@pytest.mark.e2e
def test_streams_per_gateway_limit(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway(FACTORY_MAX_STREAMS_PER_GATEWAY="2")
    jobs = [invoke(gateway.url, "counter", {"count": 1}) for _ in range(3)]
    with ExitStack() as readers:
        first = readers.enter_context(open_stream(f"{gateway.url}/jobs/{jobs[0]}/events"))
        readers.enter_context(open_stream(f"{gateway.url}/jobs/{jobs[1]}/events"))
        refused = httpx.get(f"{gateway.url}/jobs/{jobs[2]}/events", timeout=10)
        assert "maximum of 2 SSE streams" in assert_error(refused, 503, "SERVICE_UNAVAILABLE")["message"]
        # The seed's streaming form is refused before it enqueues: no job is left that nobody can follow.
        seed = httpx.post(f"{gateway.url}/invoke/counter", json={"inputs": {"count": 1}}, timeout=10)
        assert_error(seed, 503, "SERVICE_UNAVAILABLE")
        assert len(httpx.get(f"{gateway.url}/jobs").json()["jobs"]) == 3
        assert httpx.get(f"{gateway.url}/jobs/{jobs[2]}").status_code == 200  # plain reads are not streams
        first.close()
        _eventually_200(f"{gateway.url}/jobs/{jobs[2]}/events")


def _read_chunks(response: httpx.Response, seconds: float) -> list[bytes]:
    chunks: list[bytes] = []
    stop = time.monotonic() + seconds
    for chunk in response.iter_raw():
        chunks.append(chunk)
        if time.monotonic() > stop:
            break
    return chunks


@pytest.mark.e2e
def test_quiet_stream_gets_keepalive_comments(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway(FACTORY_KEEPALIVE_S="0.2")
    job_id = invoke(gateway.url, "counter", {"count": 1})  # no worker: the job stays quiet
    with open_stream(f"{gateway.url}/jobs/{job_id}/events") as response:
        chunks = _read_chunks(response, 1.2)
    lines = b"".join(chunks).split(b"\n")
    pings = [line for line in lines if line.startswith(b": ping")]
    assert len(pings) >= 3, chunks
    assert all(chunk.endswith(b"\n\n") for chunk in chunks)  # whole frames per write, pings too


@pytest.mark.e2e
def test_idle_reader_is_closed_and_may_come_back(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway(FACTORY_KEEPALIVE_S="0.2", FACTORY_IDLE_READER_TIMEOUT_S="1")
    job_id = invoke(gateway.url, "counter", {"count": 1})
    url = f"{gateway.url}/jobs/{job_id}/events"
    started = time.monotonic()
    status, events = read_events(url, timeout_s=10)
    assert status == 200 and events == []
    assert 0.9 <= time.monotonic() - started < 5
    assert httpx.get(f"{gateway.url}/jobs/{job_id}").json()["status"] == "queued"  # the job is untouched
    make_stack.start_worker()
    deadline = time.monotonic() + 120  # the worker builds the prefabs' environments first
    events = []
    while not events or events[-1].type != "done":  # the reader comes back (as often as it is closed)
        assert time.monotonic() < deadline
        _, more = read_events(url, last_event_id=events[-1].seq if events else None, timeout_s=10)
        events += more
    assert [e.type for e in events] == ["start", "progress", "done"]


@pytest.mark.e2e
def test_event_count_limit_ends_the_job_and_keeps_its_events(make_stack: Stack) -> None:
    make_stack.env["FACTORY_MAX_EVENTS_PER_JOB"] = "10"
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    make_stack.start_worker()
    chatty = invoke(gateway.url, "counter", {"count": 50, "delay_s": 0.01})
    quiet = invoke(gateway.url, "counter", {"count": 3, "delay_s": 0.05})
    _, events = read_events(f"{gateway.url}/jobs/{chatty}/events")
    assert [e.seq for e in events] == list(range(1, 12))
    assert [e.type for e in events] == ["start"] + ["progress"] * 9 + ["error"]
    assert [e.event["data"]["current"] for e in events[1:10]] == list(range(1, 10))
    assert events[-1].event["error_code"] == "EVENT_LIMIT_EXCEEDED"
    assert "limit of 10 events" in events[-1].event["data"]
    job = wait_status(gateway.url, chatty, {"failed"})
    assert job["error"]["code"] == "EVENT_LIMIT_EXCEEDED" and job["last_event_id"] == 11
    _, others = read_events(f"{gateway.url}/jobs/{quiet}/events")
    assert [e.type for e in others] == ["start", "progress", "progress", "progress", "done"]


@pytest.mark.e2e
def test_event_limit_is_exact_when_the_publisher_batches(make_stack: Stack) -> None:
    """A job yielding as fast as it can is written in batches of hundreds; the limit cuts inside one."""
    make_stack.env["FACTORY_MAX_EVENTS_PER_JOB"] = "1500"
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    flood = invoke(gateway.url, "counter", {"count": 5000})
    _, events = read_events(f"{gateway.url}/jobs/{flood}/events")
    assert [e.seq for e in events] == list(range(1, 1502))
    assert [e.event["data"]["current"] for e in events[1:1500]] == list(range(1, 1500))  # every event kept
    assert events[-1].type == "error" and events[-1].event["error_code"] == "EVENT_LIMIT_EXCEEDED"
    assert wait_status(gateway.url, flood, {"failed"})["last_event_id"] == 1501
    exactly = invoke(gateway.url, "counter", {"count": 1499})  # start + 1499 = the limit, then its done
    _, events = read_events(f"{gateway.url}/jobs/{exactly}/events")
    assert len(events) == 1501 and events[-1].type == "done"


@pytest.mark.e2e
def test_event_size_limit_ends_the_job_and_keeps_its_events(make_stack: Stack) -> None:
    make_stack.env["FACTORY_MAX_EVENT_BYTES"] = "1000"
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    job_id = invoke(gateway.url, "counter", {"count": 3, "payload": "x" * 2000})
    _, events = read_events(f"{gateway.url}/jobs/{job_id}/events")
    assert [e.type for e in events] == ["start", "error"]
    assert events[0].event["data"] == {"total": 3}
    assert events[-1].event["error_code"] == "INVALID_EVENT"
    assert "exceeds the limit of 1000 bytes" in events[-1].event["data"]
    small = invoke(gateway.url, "counter", {"count": 2, "payload": "x" * 100})
    _, events = read_events(f"{gateway.url}/jobs/{small}/events")
    assert events[-1].type == "done"


MB = 1024 * 1024
STALL_BUFFER_BYTES = 16 * 1024


def stalled_bytes() -> int:
    """Bytes of events a reader must leave unread to overflow its mailbox for sure: what the sockets
    can hold (the gateway's send buffer grows up to ``tcp_wmem``'s maximum; a receive buffer
    that is not read from stays at ``tcp_rmem``'s default), plus a margin for what the asyncio
    transport, the relay's pending writes and the mailbox hold."""
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    rmem_default = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[1])
    return wmem_max + rmem_default + 4 * MB


@pytest.mark.e2e
def test_a_reader_stalled_past_its_buffer_holds_no_one_up_and_resyncs_from_the_log(
    make_stack: Stack, redis_url: str
) -> None:
    """A reader that reads nothing while the job publishes far more than its buffer (and every socket
    buffer on the way) holds: its mailbox overflows, yet neither the job nor another reader waits for
    it, and once it reads again it gets every event from the log, none twice, a page at a time."""
    payload = "y" * 2000
    count = stalled_bytes() // len(payload)
    gateway = make_stack.start_gateway(
        FACTORY_READER_BUFFER_BYTES=str(STALL_BUFFER_BYTES),
        FACTORY_READER_SEND_TIMEOUT_S="600",  # the stall is the test's, not a reader the gateway should cut
    )
    job_id = invoke(gateway.url, "counter", {"count": count, "payload": payload})  # no worker yet: it waits
    url = f"{gateway.url}/jobs/{job_id}/events"
    store = redis.Redis.from_url(redis_url)
    with httpx.stream("GET", url, timeout=60) as stalled:
        assert stalled.status_code == 200  # open: every event reaches it, from the log or its mailbox
        make_stack.start_worker()
        seqs: list[int] = []

        def reader() -> None:
            with httpx.stream("GET", url, timeout=60) as response:
                seqs.extend(e.seq for e in parse_frames(response.iter_lines()))

        other = threading.Thread(target=reader)
        other.start()
        other.join(90)
        assert not other.is_alive(), "the other reader was held up"
        assert seqs == list(range(1, count + 3))
        assert wait_status(gateway.url, job_id, {"finished"})["last_event_id"] == count + 2
        reads_before = log_reads(store)
        stalled_seqs = [e.seq for e in parse_frames(stalled.iter_lines())]
    assert stalled_seqs == list(range(1, count + 3))
    # What did not fit in the socket came from the log, in pages of about the buffer's size: at least
    # the 4 MB of margin in ``stalled_bytes``, so hundreds of pages (a reader that kept every message
    # it was sent in memory would not read the log here at all).
    assert log_reads(store) - reads_before >= 4 * MB // STALL_BUFFER_BYTES // 2
