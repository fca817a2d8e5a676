"""The worker's prefork engine, against real processes: one long-lived work horse runs job after
job, is replaced when it must be, and RQ's own view of each job stays truthful.
"""

import os
import signal
import time
from typing import Any

import httpx
import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer

from factory.jobs import JobRecord, JobStatus
from factory.settings import Settings
from factory.store import keys
from factory.supervisor import descendants
from tests.stack import Gateway, Proc, Stack, enqueue_call, invoke, parent_of, read_events, wait_status

pytestmark = pytest.mark.e2e


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


def wait_until(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_one_horse_runs_job_after_job(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway()
    worker = make_stack.start_worker()
    first, second = call(gateway, "whoami")["pid"], call(gateway, "whoami")["pid"]
    assert first == second != worker.popen.pid  # one prefab runner, in one horse, ran both
    assert first in descendants_of(worker)


@pytest.mark.parametrize("max_jobs", [1, 2])
def test_a_horse_is_replaced_after_max_jobs_per_horse(make_stack: Stack, max_jobs: int) -> None:
    gateway = make_stack.start_gateway()
    worker = make_stack.start_worker(FACTORY_MAX_JOBS_PER_HORSE=str(max_jobs))
    pids = [call(gateway, "whoami")["pid"] for _ in range(3 * max_jobs)]
    assert [len(set(pids[i : i + max_jobs])) for i in range(0, len(pids), max_jobs)] == [1, 1, 1]
    assert len(set(pids)) == 3
    # The horses let go were collected: one horse is ready (its runners are its own children).
    wait_until(lambda: len(horses_of(worker)) == 1, timeout_s=30)


def test_a_killed_idle_horse_is_replaced_and_the_next_job_runs(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway()
    worker = make_stack.start_worker()
    killed = call(gateway, "whoami")["pid"]  # the prefab's runner, idle between jobs
    os.kill(killed, signal.SIGKILL)
    assert call(gateway, "whoami")["pid"] != killed
    assert worker.popen.poll() is None


def test_a_job_leaves_nothing_in_the_environment_of_the_next(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    first = call(gateway, "leak_state", name="BEHAVIOURS_LEFT_OVER")
    second = call(gateway, "leak_state", name="BEHAVIOURS_LEFT_OVER")
    assert first == {"pid": first["pid"], "env": None, "module": None, "sigterm": "ignored"}
    assert second["pid"] == first["pid"]  # the same horse ran both...
    assert second["env"] is None and second["sigterm"] == "ignored"  # ...and put back what the first changed
    assert second["module"] == "left by an earlier job"  # module state lives on, as in Celery's prefork pool


def test_a_horse_interrupted_by_a_timeout_is_replaced(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    before = call(gateway, "whoami")["pid"]
    _, events = read_events(f"{gateway.url}/jobs/{invoke(gateway.url, 'sleeper', {'seconds': 5})}/events")
    assert events[-1].event["error_code"] == "TIMEOUT"
    assert call(gateway, "whoami")["pid"] != before


def test_cancel_stops_a_job_blocked_between_events(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    job_id = invoke(gateway.url, "stubborn", {"seconds": 60})
    read_events(f"{gateway.url}/jobs/{job_id}/events", limit=1)  # it started, then blocks
    canceled_at = time.monotonic()
    assert httpx.post(f"{gateway.url}/jobs/{job_id}/cancel", timeout=10).json()["status"] == "canceled"
    call(gateway, "whoami")  # the only worker is free again: the blocked horse was killed
    assert time.monotonic() - canceled_at < 5
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
