"""Faults caused for real against real processes and a real redis-server: dead work horses and
workers, retries, Redis restarts, graceful shutdown, gateways that go away mid-stream.

Timing bounds are generous: they show that nothing waits forever, not how fast it is.
"""

import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from factory_cli.embedded_redis import EmbeddedRedis, free_port
from factory_cli.processes import descendants
from tests.stack import (
    Gateway,
    Proc,
    Received,
    Stack,
    events_url,
    invoke,
    parent_of,
    parse_frames,
    read_events,
    wait_status,
)

pytestmark = [pytest.mark.e2e, pytest.mark.churn]

# Fast heartbeats so a lost worker is noticed in seconds (the defaults are 5 s and 30 s).
FAST_LOSS = {"FACTORY_WORKER_HEARTBEAT_S": "1", "FACTORY_WORKER_LOST_AFTER_S": "3"}


class StreamReader(threading.Thread):
    """Reads a job's events in the background, as they come, until the stream ends."""

    def __init__(self, url: str, last_event_id: int | None = None) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.last_event_id = last_event_id
        self.events: list[Received] = []
        self.status: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        headers = {"Last-Event-ID": str(self.last_event_id)} if self.last_event_id is not None else {}
        try:
            with httpx.stream("GET", self.url, headers=headers, timeout=60) as response:
                self.status = response.status_code
                for received in parse_frames(response.iter_lines()):
                    self.events.append(received)
        except httpx.HTTPError as exc:
            self.error = exc

    def wait_for(self, count: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.events) < count:
            assert time.monotonic() < deadline, f"only {len(self.events)} events: {self.error}"
            time.sleep(0.02)

    def finish(self, timeout_s: float = 60.0) -> list[Received]:
        self.join(timeout_s)
        assert not self.is_alive(), "the stream never ended"
        return self.events


def follow(url: str) -> StreamReader:
    reader = StreamReader(url)
    reader.start()
    return reader


def assert_contiguous(events: list[Received]) -> None:
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


def horse_pids(worker: Proc) -> list[int]:
    """The worker's work horses (its children; their prefab runners are theirs)."""
    return sorted(pid for pid in descendants(worker.popen.pid) if parent_of(pid) == worker.popen.pid)


def kill_machine(worker: Proc) -> None:
    """SIGKILL a worker and its work horse together, as when their machine vanishes."""
    horses = horse_pids(worker)
    worker.kill()
    for pid in horses:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def job(gateway: Gateway, job_id: str) -> dict[str, object]:
    body: dict[str, object] = httpx.get(f"{gateway.url}/jobs/{job_id}", timeout=10).json()
    return body


def error_code(event: Received) -> object:
    return event.event.get("error_code")


# 1. A work horse dies mid-stream.


def test_horse_that_kills_itself_ends_with_worker_lost(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway()
    worker = make_stack.start_worker()
    job_id = invoke(gateway.url, "die", {"after": 2})
    _, events = read_events(events_url(gateway, job_id))
    assert [e.type for e in events] == ["progress", "progress", "error"]
    assert error_code(events[-1]) == "WORKER_LOST" and "SIGKILL" in str(events[-1].event["data"])
    record = wait_status(gateway.url, job_id, {"failed"})
    assert record["error"]["code"] == "WORKER_LOST"
    follow_up = invoke(gateway.url, "counter", {"count": 2})
    assert wait_status(gateway.url, follow_up, {"finished"})["worker"] == record["worker"]
    assert worker.popen.poll() is None


def test_horse_killed_from_outside_ends_with_worker_lost(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway()
    worker = make_stack.start_worker()
    job_id = invoke(gateway.url, "counter", {"count": 1000, "delay_s": 0.05})
    reader = follow(events_url(gateway, job_id))
    reader.wait_for(4)
    (horse,) = horse_pids(worker)
    killed_at = time.monotonic()
    os.kill(horse, signal.SIGKILL)
    events = reader.finish()
    assert time.monotonic() - killed_at < 15
    assert_contiguous(events)
    assert events[-1].type == "error" and error_code(events[-1]) == "WORKER_LOST"
    assert wait_status(gateway.url, job_id, {"failed"})["error"]["code"] == "WORKER_LOST"
    assert wait_status(gateway.url, invoke(gateway.url, "counter", {"count": 1}), {"finished"})
    assert worker.popen.poll() is None


# 2. A whole worker dies.


def test_lost_worker_ends_its_job_and_others_take_the_queue(make_stack: Stack) -> None:
    make_stack.env.update(FAST_LOSS)
    gateway = make_stack.start_gateway()
    doomed = make_stack.start_worker()
    running = invoke(gateway.url, "counter", {"count": 1000, "delay_s": 0.05})
    reader = follow(events_url(gateway, running))
    reader.wait_for(4)
    queued = invoke(gateway.url, "counter", {"count": 3})
    killed_at = time.monotonic()
    kill_machine(doomed)
    make_stack.start_worker()
    events = reader.finish()
    assert time.monotonic() - killed_at < 30  # worker_lost_after_s is 3 s here
    assert_contiguous(events)
    assert events[-1].type == "error" and error_code(events[-1]) == "WORKER_LOST"
    lost = wait_status(gateway.url, running, {"failed"})
    assert lost["error"]["code"] == "WORKER_LOST"
    done = wait_status(gateway.url, queued, {"finished"})
    assert done["worker"] != lost["worker"]
    status, _ = read_events(events_url(gateway, running), last_event_id=events[-1].seq)
    assert status == 204


def test_gateway_ends_a_lost_job_when_no_worker_is_left(make_stack: Stack) -> None:
    """No reader waits forever, even while every worker is gone: gateways reap too."""
    make_stack.env.update(FAST_LOSS)
    gateway = make_stack.start_gateway()
    doomed = make_stack.start_worker()
    running = invoke(gateway.url, "counter", {"count": 1000, "delay_s": 0.05})
    reader = follow(events_url(gateway, running))
    reader.wait_for(3)
    kill_machine(doomed)
    events = reader.finish()
    assert_contiguous(events)
    assert events[-1].type == "error" and error_code(events[-1]) == "WORKER_LOST"
    assert wait_status(gateway.url, running, {"failed"})["error"]["code"] == "WORKER_LOST"


def test_lost_worker_job_is_retried_on_another_worker(make_stack: Stack) -> None:
    make_stack.env.update(FAST_LOSS)
    gateway = make_stack.start_gateway()
    doomed = make_stack.start_worker()
    job_id = invoke(gateway.url, "counter", {"count": 40, "delay_s": 0.1}, retries=1)
    reader = follow(events_url(gateway, job_id))
    reader.wait_for(4)
    kill_machine(doomed)
    make_stack.start_worker()
    events = reader.finish()
    assert_contiguous(events)
    retries = [e for e in events if e.type == "retry"]
    assert len(retries) == 1
    assert retries[0].event["data"]["attempt"] == 2 and retries[0].event["data"]["max_attempts"] == 2
    assert retries[0].event["data"]["error_code"] == "WORKER_LOST"
    after = events[events.index(retries[0]) + 1 :]
    assert [e.type for e in after] == ["start"] + ["progress"] * 40 + ["done"]
    record = wait_status(gateway.url, job_id, {"finished"})
    assert record["attempt"] == 2


# 3. Retries.


def test_exception_is_retried_in_the_same_stream(make_stack: Stack, tmp_path: Path) -> None:
    # The prefab counts attempts in a file of the test's, out of any sandbox's reach (docs/security.md).
    make_stack.env["FACTORY_SANDBOX"] = "off"
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    job_id = invoke(gateway.url, "flaky", {"marker": str(tmp_path / "flaky"), "failures": 1})
    _, events = read_events(events_url(gateway, job_id))
    assert_contiguous(events)
    assert [e.type for e in events] == ["start", "retry", "start", "done"]
    retry = events[1].event["data"]
    assert retry["attempt"] == 2 and retry["max_attempts"] == 3  # the manifest declares 2 retries
    assert retry["error_code"] == "UNEXPECTED_ERROR" and "flaky failure on attempt 1" in retry["reason"]
    record = wait_status(gateway.url, job_id, {"finished"})
    assert record["attempt"] == 2 and record["output"] == {"attempt": 2}


def test_retries_from_the_call_end_with_the_last_error(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    job_id = invoke(gateway.url, "raises", {"message": "always"}, retries=2)
    _, events = read_events(events_url(gateway, job_id))
    assert_contiguous(events)
    assert [e.type for e in events] == ["start", "retry", "start", "retry", "start", "error"]
    assert [e.event["data"]["attempt"] for e in events if e.type == "retry"] == [2, 3]
    assert error_code(events[-1]) == "UNEXPECTED_ERROR"
    record = wait_status(gateway.url, job_id, {"failed"})
    assert record["attempt"] == 3 and record["error"]["code"] == "UNEXPECTED_ERROR"


def test_timeouts_and_bad_events_are_not_retried(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    timed_out = invoke(gateway.url, "sleeper", {"seconds": 5}, retries=2)
    invalid = invoke(gateway.url, "malformed", {"kind": "number"}, retries=2)
    for job_id, code in ((timed_out, "TIMEOUT"), (invalid, "INVALID_EVENT")):
        _, events = read_events(events_url(gateway, job_id))
        assert [e.type for e in events] == ["start", "error"] and error_code(events[-1]) == code
        assert wait_status(gateway.url, job_id, {"failed"})["attempt"] == 1


def test_dead_horse_is_retried(make_stack: Stack, tmp_path: Path) -> None:
    # The prefab counts attempts in a file of the test's, out of any sandbox's reach (docs/security.md).
    make_stack.env["FACTORY_SANDBOX"] = "off"
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    job_id = invoke(gateway.url, "die_once", {"marker": str(tmp_path / "died")}, retries=1)
    _, events = read_events(events_url(gateway, job_id))
    assert_contiguous(events)
    assert [e.type for e in events] == ["progress", "progress", "retry", "progress", "progress", "done"]
    assert events[2].event["data"]["error_code"] == "WORKER_LOST"
    assert wait_status(gateway.url, job_id, {"finished"})["output"] == {"first": False}


def test_invoke_retries_are_bounded(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway()
    for retries in (-1, 11, "many"):
        body = {"function_name": "counter", "inputs": {"count": 1}, "retries": retries}
        response = httpx.post(f"{gateway.url}/invoke", json=body, timeout=10)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"


def test_cancel_during_retries_ends_the_job(make_stack: Stack, tmp_path: Path) -> None:
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    job_id = invoke(gateway.url, "counter", {"count": 1000, "delay_s": 0.05}, retries=3)
    reader = follow(events_url(gateway, job_id))
    reader.wait_for(3)
    assert httpx.post(f"{gateway.url}/jobs/{job_id}/cancel", timeout=10).json()["status"] == "canceled"
    events = reader.finish()
    assert events[-1].type == "error" and error_code(events[-1]) == "CANCELED"
    assert not [e for e in events if e.type == "retry"]


# 5. Redis restarts.


class RestartableRedis:
    """A private redis-server with the persistence `factory up` uses, that a test stops and starts again."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.port = free_port()
        self.server = EmbeddedRedis(state_dir, self.port).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server = EmbeddedRedis(self.state_dir, self.port).start()


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[tuple[RestartableRedis, Stack]]:
    server = RestartableRedis(tmp_path / "redis-state")
    stack = Stack(server.url, tmp_path)
    try:
        yield server, stack
    finally:
        stack.stop()
        server.stop()


def assert_fails_fast(method: str, url: str, **kwargs: object) -> None:
    started = time.monotonic()
    response = httpx.request(method, url, timeout=30, **kwargs)  # type: ignore[arg-type]
    assert time.monotonic() - started < 10
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"


def test_redis_restart_loses_nothing(restartable: tuple[RestartableRedis, Stack]) -> None:
    server, stack = restartable
    gateway = stack.start_gateway()
    worker = stack.start_worker()
    finished = invoke(gateway.url, "counter", {"count": 2})
    finished_before = wait_status(gateway.url, finished, {"finished"})
    running = invoke(gateway.url, "counter", {"count": 80, "delay_s": 0.05})
    reader = follow(events_url(gateway, running))
    reader.wait_for(5)
    queued = invoke(gateway.url, "counter", {"count": 3})  # the one worker is busy: this one waits

    server.stop()
    assert_fails_fast("GET", f"{gateway.url}/readyz")
    assert_fails_fast("POST", f"{gateway.url}/invoke", json={"function_name": "counter", "inputs": {"count": 1}})
    # Restart once both sides have met the outage: the worker's appends and the gateway's pub/sub.
    worker.wait_for_log("Redis unreachable, retrying the append")
    gateway.wait_for_log("pub/sub connection lost")
    server.start()

    events = reader.finish()
    assert reader.error is None
    assert_contiguous(events)
    errors = [e for e in events if e.type == "error"]
    assert [e.type for e in events] == ["start"] + ["progress"] * 80 + ["done"], errors
    assert wait_status(gateway.url, running, {"finished"})["last_event_id"] == 82
    assert job(gateway, finished) == finished_before
    assert wait_status(gateway.url, queued, {"finished"}, timeout_s=60)["status"] == "finished"
    assert httpx.get(f"{gateway.url}/readyz", timeout=10).status_code == 200
    after = invoke(gateway.url, "counter", {"count": 1})
    assert wait_status(gateway.url, after, {"finished"})["status"] == "finished"
    assert worker.popen.poll() is None and gateway.popen.poll() is None
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text  # the outage, as the gateway counted it
    assert re.search(r'^factory_redis_errors_total\{where="readyz"\} [1-9]', metrics, re.M), metrics
    assert re.search(r'^factory_requests_refused_total\{code="SERVICE_UNAVAILABLE"\} [1-9]', metrics, re.M)


def test_long_redis_outage_ends_the_job_with_redis_unavailable(restartable: tuple[RestartableRedis, Stack]) -> None:
    server, stack = restartable
    stack.env["FACTORY_REDIS_OUTAGE_S"] = "2"
    gateway = stack.start_gateway()
    worker = stack.start_worker()
    job_id = invoke(gateway.url, "counter", {"count": 1000, "delay_s": 0.05})
    _, head = read_events(events_url(gateway, job_id), limit=5)
    server.stop()
    worker.wait_for_log("event publisher stopped")  # the worker gave up after FACTORY_REDIS_OUTAGE_S
    server.start()
    record = wait_status(gateway.url, job_id, {"failed"}, timeout_s=60)
    assert record["error"]["code"] == "REDIS_UNAVAILABLE"
    _, events = read_events(events_url(gateway, job_id))
    assert_contiguous(events)
    assert events[-1].type == "error" and error_code(events[-1]) == "REDIS_UNAVAILABLE"
    assert [e.type for e in events[:-1]] == ["start"] + ["progress"] * (len(events) - 2)
    after = invoke(gateway.url, "counter", {"count": 1})
    assert wait_status(gateway.url, after, {"finished"}, timeout_s=60)["status"] == "finished"
    assert worker.popen.poll() is None


# 6. Graceful shutdown.


def test_sigterm_lets_the_running_job_finish(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway()
    worker = make_stack.start_worker()
    job_id = invoke(gateway.url, "counter", {"count": 30, "delay_s": 0.1})
    reader = follow(events_url(gateway, job_id))
    reader.wait_for(3)
    worker.signal(signal.SIGTERM)
    events = reader.finish()
    assert_contiguous(events)
    assert events[-1].type == "done"
    assert worker.popen.wait(30) == 0
    waiting = invoke(gateway.url, "counter", {"count": 1})
    make_stack.start_worker()
    assert wait_status(gateway.url, waiting, {"finished"})["status"] == "finished"


def test_sigterm_past_the_grace_period_ends_the_job_with_worker_shutdown(make_stack: Stack) -> None:
    make_stack.env["FACTORY_SHUTDOWN_GRACE_S"] = "1"
    gateway = make_stack.start_gateway()
    worker = make_stack.start_worker()
    job_id = invoke(gateway.url, "counter", {"count": 1000, "delay_s": 0.05})
    reader = follow(events_url(gateway, job_id))
    reader.wait_for(3)
    worker.signal(signal.SIGTERM)
    events = reader.finish()
    assert_contiguous(events)
    assert events[-1].type == "error" and error_code(events[-1]) == "WORKER_SHUTDOWN"
    assert wait_status(gateway.url, job_id, {"failed"})["error"]["code"] == "WORKER_SHUTDOWN"
    assert worker.popen.wait(30) == 0
    assert not horse_pids(worker)


def test_sigterm_past_the_grace_period_hands_a_retryable_job_to_another_worker(make_stack: Stack) -> None:
    make_stack.env["FACTORY_SHUTDOWN_GRACE_S"] = "1"
    gateway = make_stack.start_gateway()
    stopping = make_stack.start_worker()
    # 3 s of work against a 1 s grace period: the job cannot end inside it, however slow the machine.
    job_id = invoke(gateway.url, "counter", {"count": 60, "delay_s": 0.05}, retries=1)
    reader = follow(events_url(gateway, job_id))
    reader.wait_for(3)
    stopping.signal(signal.SIGTERM)  # first: a stopping worker takes no new job, so the retry goes elsewhere
    make_stack.start_worker()
    events = reader.finish()
    assert_contiguous(events)
    (retry,) = [e for e in events if e.type == "retry"]
    assert retry.event["data"]["error_code"] == "WORKER_SHUTDOWN"
    assert events[-1].type == "done"
    assert stopping.popen.wait(30) == 0


# 4 and 6. A gateway goes away mid-stream: the client resumes on another one.


def _read_until_gone(gateway: Gateway, job_id: str, stop: Callable[[], None]) -> list[Received]:
    """Read from ``gateway`` until it goes away; ``stop`` is called after the fifth event."""
    events: list[Received] = []
    try:
        with httpx.stream("GET", events_url(gateway, job_id), timeout=30) as response:
            for received in parse_frames(response.iter_lines()):
                events.append(received)
                if len(events) == 5:
                    stop()
    except httpx.HTTPError:
        pass  # the connection broke: what a client sees when its gateway dies
    return events


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_client_resumes_on_another_gateway_when_its_gateway_goes_away(make_stack: Stack, how: str) -> None:
    doomed = make_stack.start_gateway()
    other = make_stack.start_gateway()
    make_stack.start_worker()
    job_id = invoke(doomed.url, "counter", {"count": 100, "delay_s": 0.05})
    started = time.monotonic()
    stop = (lambda: doomed.signal(signal.SIGTERM)) if how == "sigterm" else doomed.kill
    head = _read_until_gone(doomed, job_id, stop)
    assert time.monotonic() - started < 20  # a SIGTERM closes the streams instead of waiting for them
    assert head and head[-1].type != "done"
    assert doomed.popen.wait(30) is not None
    _, tail = read_events(events_url(other, job_id), last_event_id=head[-1].seq)
    events = head + tail
    assert_contiguous(events)
    assert [e.type for e in events] == ["start"] + ["progress"] * 100 + ["done"]
    if how == "sigterm":  # the stream was ended, not cut: its response completed
        assert "without completing response" not in doomed.log()
