"""The worker's prefork engine, against real processes: one long-lived work horse runs job after
job, is replaced when it must be, and RQ's own view of each job stays truthful.
"""

import os
import select
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer

from factory.events import CANCELED, WORKER_LOST
from factory.jobs import JobRecord, JobStatus, new_job_id, now_ms
from factory.settings import Settings
from factory.store import executions, keys
from factory.store.eventlog import Outcome, append_args, append_keys, parse_append, retry_args, terminal_error_args
from factory.store.scripts import APPEND_LUA
from factory_cli.processes import descendants
from tests.stack import (
    Gateway,
    Proc,
    Stack,
    enqueue_call,
    invoke,
    parent_of,
    read_events,
    runner_pids,
    running,
    wait_status,
    wait_until,
)
from worker.endwatch import EndWatch

pytestmark = [pytest.mark.e2e, pytest.mark.churn]


def call(gateway: Gateway, function_name: str, **inputs: Any) -> dict[str, Any]:
    """Run a non-streaming function through the seed's form; its output."""
    response = httpx.post(f"{gateway.url}/invoke/{function_name}", json={"inputs": inputs}, timeout=30)
    assert response.status_code == 200, response.text
    output: dict[str, Any] = response.json()["output"]
    return output


def horses_of(worker: Proc) -> set[int]:
    """The worker's work horses: its own children."""
    return {pid for pid in descendants_of(worker) if parent_of(pid) == worker.popen.pid}


def descendants_of(worker: Proc) -> set[int]:
    """The worker's work horses and their prefab runners."""
    return set(descendants(worker.popen.pid))


def test_one_horse_runs_job_after_job(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway()
    worker = make_stack.start_worker()
    first, second = call(gateway, "whoami")["runner"], call(gateway, "whoami")["runner"]
    assert first == second  # one prefab runner, in one horse, ran both
    (runner,), (horse,) = runner_pids(worker), horses_of(worker)
    assert runner in descendants(horse)


@pytest.mark.parametrize("max_jobs", [1, 2])
def test_a_horse_is_replaced_after_max_jobs_per_horse(make_stack: Stack, max_jobs: int) -> None:
    gateway = make_stack.start_gateway()
    worker = make_stack.start_worker(FACTORY_MAX_JOBS_PER_HORSE=str(max_jobs))
    pids = [call(gateway, "whoami")["runner"] for _ in range(3 * max_jobs)]
    assert [len(set(pids[i : i + max_jobs])) for i in range(0, len(pids), max_jobs)] == [1, 1, 1]
    assert len(set(pids)) == 3
    # The horses let go were collected: one horse is ready (its runners are its own children).
    wait_until(lambda: len(horses_of(worker)) == 1, timeout_s=30)


def test_a_killed_idle_horse_is_replaced_and_the_next_job_runs(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway()
    worker = make_stack.start_worker()
    killed = call(gateway, "whoami")["runner"]  # the prefab's runner, idle between jobs
    (pid,) = runner_pids(worker)
    os.kill(pid, signal.SIGKILL)
    assert call(gateway, "whoami")["runner"] != killed
    assert worker.popen.poll() is None


def test_a_job_leaves_nothing_in_the_environment_of_the_next(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    first = call(gateway, "leak_state", name="BEHAVIOURS_LEFT_OVER")
    second = call(gateway, "leak_state", name="BEHAVIOURS_LEFT_OVER")
    assert first == {"runner": first["runner"], "env": None, "module": None, "sigterm": "ignored"}
    assert second["runner"] == first["runner"]  # the same horse ran both...
    assert second["env"] is None and second["sigterm"] == "ignored"  # ...and put back what the first changed
    assert second["module"] == "left by an earlier job"  # module state lives on, as in Celery's prefork pool


def test_a_horse_interrupted_by_a_timeout_is_replaced(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    before = call(gateway, "whoami")["runner"]
    _, events = read_events(f"{gateway.url}/jobs/{invoke(gateway.url, 'sleeper', {'seconds': 5})}/events")
    assert events[-1].event["error_code"] == "TIMEOUT"
    assert call(gateway, "whoami")["runner"] != before


def test_cancel_stops_a_job_blocked_between_events(make_stack: Stack, redis_url: str, settings: Settings) -> None:
    """The cancel reaches the worker on the job's channel: its horse, whose function yields nothing more,
    is gone within a second, with heartbeats (the worker's other reading of the job's record) 30 s apart."""
    client = redis.Redis.from_url(redis_url)
    gateway = make_stack.start_gateway()
    worker = make_stack.start_worker(FACTORY_WORKER_HEARTBEAT_S="30", FACTORY_WORKER_LOST_AFTER_S="120")
    job_id = enqueue_call(client, settings, "stubborn", {"seconds": 600}, timeout_s=600)
    read_events(f"{gateway.url}/jobs/{job_id}/events", limit=1)  # it started, then blocks
    (horse,) = horses_of(worker)
    prefab = descendants_of(worker) - {horse}  # the prefab's runner, and whatever it spawned
    assert prefab
    assert httpx.post(f"{gateway.url}/jobs/{job_id}/cancel", timeout=10).json()["status"] == "canceled"
    canceled_at = time.monotonic()  # the terminal event is written and published before the answer
    wait_until(lambda: not running(horse), timeout_s=30)
    assert time.monotonic() - canceled_at < 1.0
    wait_until(lambda: not any(running(pid) for pid in prefab), timeout_s=30)  # they die with their horse
    call(gateway, "whoami")  # the only worker is free again
    _, events = read_events(f"{gateway.url}/jobs/{job_id}/events")
    assert [e.type for e in events] == ["start", "error"] and events[-1].event["error_code"] == "CANCELED"


def _enqueue(client: redis.Redis, settings: Settings, function_name: str, inputs: dict[str, Any], rq_s: int) -> str:
    """A job as the gateway leaves it (record plus RQ job), with RQ's own timeout of it (``rq_s``) set
    well under the factory's (60 s): the worker's backstop, should the horse itself not stop it."""
    return enqueue_call(client, settings, function_name, inputs, timeout_s=60, rq_timeout_s=rq_s)


def _record(client: redis.Redis, job_id: str) -> JobRecord:
    return JobRecord.from_hash(client.hgetall(keys.job_key(job_id)))  # type: ignore[arg-type]


def test_a_job_that_outruns_its_deadline_is_stopped_at_rqs_timeout(
    make_stack: Stack, redis_url: str, settings: Settings
) -> None:
    client = redis.Redis.from_url(redis_url)
    worker = make_stack.start_worker()
    job_id = _enqueue(client, settings, "stubborn", {"seconds": 60}, rq_s=2)
    wait_until(lambda: _record(client, job_id).status is JobStatus.FAILED, timeout_s=15)
    error = _record(client, job_id).error
    assert error is not None and error.code == "TIMEOUT" and "stopped" in error.message
    follow_up = _enqueue(client, settings, "whoami", {}, rq_s=30)
    wait_until(lambda: _record(client, follow_up).status is JobStatus.FINISHED)
    assert worker.popen.poll() is None


def test_rq_sees_each_job_start_and_end(make_stack: Stack, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    gateway = make_stack.start_gateway()
    canceled = invoke(gateway.url, "counter", {"count": 1})  # no worker yet: it stays queued
    assert httpx.post(f"{gateway.url}/jobs/{canceled}/cancel", timeout=10).json()["status"] == "canceled"
    make_stack.start_worker()
    finished = invoke(gateway.url, "counter", {"count": 1})
    record = wait_status(gateway.url, finished, {"finished"})
    rq_job = Job.fetch(finished, connection=client, serializer=JSONSerializer)
    assert rq_job.get_status() == RQStatus.FINISHED
    assert rq_job.worker_name == record["worker"] and rq_job.started_at and rq_job.ended_at
    assert 0 < int(client.ttl(Job.key_for(finished))) <= 86400  # kept as long as the factory keeps the job
    assert Job.fetch(canceled, connection=client, serializer=JSONSerializer).get_status() == RQStatus.CANCELED
    assert Queue(keys.prefab_queue_name("factory", "behaviours"), connection=client).count == 0


def test_the_worker_loads_its_scripts_again_when_redis_lost_them(make_stack: Stack, redis_url: str) -> None:
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    assert call(gateway, "whoami")
    redis.Redis.from_url(redis_url).script_flush()  # what a restarted Redis has: no scripts
    assert call(gateway, "whoami") and call(gateway, "whoami")


def test_a_stopping_worker_that_waits_for_a_job_takes_none(make_stack: Stack, redis_url: str) -> None:
    """SIGTERM while the worker waits on its doorbells, its next take queued behind the wait: it marks
    itself stopping first, so a job enqueued then stays queued, for the next worker."""
    client = redis.Redis.from_url(redis_url)
    gateway = make_stack.start_gateway()
    stopping = make_stack.start_worker()
    first = invoke(gateway.url, "counter", {"count": 1})
    name = wait_status(gateway.url, first, {"finished"})["worker"]  # its queue empty since: it waits
    stopping.signal(signal.SIGTERM)
    # A signal between two waits stops it with no mark: then it is gone before the job comes.
    wait_until(lambda: client.exists(keys.worker_stop_key(name)) or stopping.popen.poll() is not None)
    assert client.ttl(keys.worker_stop_key(name)) != -1  # the mark ends, as every key does
    job_id = invoke(gateway.url, "counter", {"count": 1})  # its doorbell ends the wait; the take finds the mark
    assert stopping.popen.wait(30) == 0
    assert httpx.get(f"{gateway.url}/jobs/{job_id}", timeout=5).json()["status"] == "queued"
    make_stack.start_worker()
    assert wait_status(gateway.url, job_id, {"finished"})["worker"] != name


# The worker's watch on its running job (``worker.endwatch``), against a real Redis: what it reports
# is read from the job's record, so a cancel lands however the subscription and the cancel interleave.


def _claimed_job(client: redis.Redis) -> executions.Claim:
    """A job claimed by an execution, as a worker's take step leaves it."""
    job_id = new_job_id()
    record = JobRecord(
        job_id=job_id, prefab_id="behaviours", function_name="counter", status=JobStatus.QUEUED, created_ms=now_ms()
    )
    client.hset(keys.job_key(job_id), mapping=record.to_hash())  # type: ignore[arg-type]
    client.expire(keys.job_key(job_id), 60)
    claim = executions.claim(client, job_id, max_attempts=2, lost_after_s=60)
    assert claim is not None
    return claim


def _append(client: redis.Redis, job_id: str, args: list[bytes | str | int]) -> Outcome:
    """An append as the gateway's cancel and the work horse make it (the job statistics left out)."""
    script = client.register_script(APPEND_LUA)
    return parse_append(script(keys=append_keys(job_id, stats=False), args=args)).outcome


def _cancel(client: redis.Redis, job_id: str) -> None:
    assert (
        _append(client, job_id, terminal_error_args(CANCELED, "the job was canceled", retention_s=60))
        is Outcome.APPENDED
    )


def _watch_until(watch: EndWatch, condition: Any, timeout_s: float = 10.0) -> bool:
    """Wait on the watch's descriptor, as the worker does, until ``condition`` holds; whether it did."""
    deadline = time.monotonic() + timeout_s
    while (remaining_s := deadline - time.monotonic()) > 0:
        channel = watch.fileno()
        if channel is not None:
            select.select([channel], [], [], remaining_s)
        watch.poll()
        if condition():
            return True
    return False


@pytest.fixture
def watch(redis_url: str) -> Iterator[EndWatch]:
    end_watch = EndWatch(redis.Redis.from_url(redis_url))
    yield end_watch
    end_watch.close()


def test_the_watch_sees_a_cancel_published_before_it_subscribed(redis_url: str, watch: EndWatch) -> None:
    client = redis.Redis.from_url(redis_url)
    claim = _claimed_job(client)
    _cancel(client, claim.job_id)  # no subscriber hears it
    watch.follow(claim)
    assert _watch_until(watch, lambda: watch.left)


def test_the_watch_wakes_on_a_cancel_and_not_on_the_jobs_own_events(redis_url: str, watch: EndWatch) -> None:
    client = redis.Redis.from_url(redis_url)
    claim = _claimed_job(client)
    watch.follow(claim)
    assert _watch_until(watch, lambda: watch.subscribed) and not watch.left
    progress = append_args([b'{"type":"progress","data":1}'], retention_s=60, token=claim.token)
    assert _append(client, claim.job_id, progress) is Outcome.APPENDED
    assert not _watch_until(watch, lambda: watch.left, timeout_s=0.5)
    _cancel(client, claim.job_id)
    assert _watch_until(watch, lambda: watch.left)


def test_the_watch_sees_the_job_pass_to_another_attempt(redis_url: str, watch: EndWatch) -> None:
    """A reaper that took this execution for lost hands the job on with a ``retry`` event, not a terminal one."""
    client = redis.Redis.from_url(redis_url)
    claim = _claimed_job(client)
    watch.follow(claim)
    assert _watch_until(watch, lambda: watch.subscribed) and not watch.left
    handed_on = retry_args(claim.token, 2, 2, WORKER_LOST, "lost", retention_s=60)
    assert _append(client, claim.job_id, handed_on) is Outcome.APPENDED
    assert _watch_until(watch, lambda: watch.left)
    client.zrem(keys.running_jobs_key(), claim.member)


def test_the_watch_follows_one_job_after_another(redis_url: str, watch: EndWatch) -> None:
    """What the watch heard of the job before (its end, even heard after the worker moved on) is not
    taken for the next job's."""
    client = redis.Redis.from_url(redis_url)
    first, second, third = _claimed_job(client), _claimed_job(client), _claimed_job(client)
    watch.follow(first)
    _cancel(client, first.job_id)
    assert _watch_until(watch, lambda: watch.left)
    watch.stop()
    assert not watch.poll()  # it follows no job now
    watch.follow(second)
    assert _watch_until(watch, lambda: watch.subscribed) and not watch.left
    watch.stop()
    _cancel(client, second.job_id)
    watch.follow(third)
    assert _watch_until(watch, lambda: watch.subscribed)
    assert not _watch_until(watch, lambda: watch.left, timeout_s=0.5)
    _cancel(client, third.job_id)
    assert _watch_until(watch, lambda: watch.left)
