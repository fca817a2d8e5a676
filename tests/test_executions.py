"""Executions against a real Redis, without processes: claims, fencing, settling, the reaper."""

import orjson
import pytest
import redis
from rq import Queue
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer

from factory import reaper
from factory.events import WORKER_LOST
from factory.jobs import JobRecord, JobStatus
from factory.registry import register_folders
from factory.settings import Settings
from factory.store import executions, keys
from factory.store.eventlog import Outcome, append_args, append_keys, parse_append
from factory.store.scripts import APPEND_LUA
from tests.stack import enqueue_call
from worker.rqjobs import RQJobs


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture(autouse=True)
def deployed(client: redis.Redis, settings: Settings) -> None:
    """The test prefabs deployed, as a gateway or worker does at start (their builds left aside)."""
    register_folders(client, settings)
    Queue(keys.deploy_queue_name(settings.queue_name), connection=client).empty()


def _new_job(client: redis.Redis, settings: Settings, retries: int = 0) -> str:
    """A queued job as the gateway leaves it: record plus RQ job on its prefab's queue."""
    return enqueue_call(client, settings, "counter", {"count": 1}, retries=retries)


def _queue(client: redis.Redis, settings: Settings) -> Queue:
    name = keys.prefab_queue_name(settings.queue_name, "behaviours")
    return Queue(name, connection=client, serializer=JSONSerializer)


def _append(client: redis.Redis, job_id: str, token: str) -> Outcome:
    script = client.register_script(APPEND_LUA)
    args = append_args([b'{"type":"progress"}'], retention_s=60, token=token)
    return parse_append(script(keys=append_keys(job_id), args=args)).outcome


def _record(client: redis.Redis, job_id: str) -> JobRecord:
    return JobRecord.from_hash(client.hgetall(keys.job_key(job_id)))  # type: ignore[arg-type]


def _log(client: redis.Redis, job_id: str) -> list[dict[str, object]]:
    return [orjson.loads(raw) for raw in client.lrange(keys.events_key(job_id), 0, -1)]  # type: ignore[union-attr]


def test_a_superseded_execution_cannot_write(client: redis.Redis, settings: Settings) -> None:
    job_id = _new_job(client, settings)
    first = executions.claim(client, job_id, 1, lost_after_s=30)
    second = executions.claim(client, job_id, 1, lost_after_s=30)
    assert first is not None and second is not None and first.attempt == second.attempt == 1
    assert _append(client, job_id, first.token) is Outcome.SUPERSEDED
    assert _append(client, job_id, second.token) is Outcome.APPENDED
    assert _append(client, job_id, "") is Outcome.APPENDED  # unfenced writers (cancel) always may


def test_settling_a_lost_execution_is_idempotent(client: redis.Redis, settings: Settings) -> None:
    job_id = _new_job(client, settings)
    claim = executions.claim(client, job_id, 1, lost_after_s=30)
    assert claim is not None
    assert executions.settle(client, settings, job_id, claim.token, WORKER_LOST, "gone") is executions.Settled.FAILED
    assert executions.settle(client, settings, job_id, claim.token, WORKER_LOST, "gone") is executions.Settled.ENDED
    assert [e["error_code"] for e in _log(client, job_id)] == [WORKER_LOST]
    record = _record(client, job_id)
    assert record.status is JobStatus.FAILED and record.error is not None and record.error.code == WORKER_LOST
    assert executions.claim(client, job_id, 1, lost_after_s=30) is None  # an ended job is never claimed again


def test_a_lost_execution_with_attempts_left_is_requeued(client: redis.Redis, settings: Settings) -> None:
    job_id = _new_job(client, settings, retries=1)
    queue = _queue(client, settings)
    assert queue.pop_job_id() == job_id  # a worker took it
    claim = executions.claim(client, job_id, 2, lost_after_s=30)
    assert claim is not None
    assert executions.settle(client, settings, job_id, claim.token, WORKER_LOST, "gone") is executions.Settled.RETRIED
    assert executions.settle(client, settings, job_id, claim.token, WORKER_LOST, "gone") is executions.Settled.REQUEUED
    assert queue.get_job_ids() == [job_id]  # once, however often it is settled
    assert queue.fetch_job(job_id).get_status() == RQStatus.QUEUED  # type: ignore[union-attr]
    (retry,) = _log(client, job_id)
    assert retry["type"] == "retry" and retry["data"] == {
        "attempt": 2,
        "max_attempts": 2,
        "error_code": WORKER_LOST,
        "reason": "gone",
    }
    record = _record(client, job_id)
    assert record.status is JobStatus.QUEUED and record.attempt == 2
    assert _append(client, job_id, claim.token) is Outcome.SUPERSEDED
    again = executions.claim(client, job_id, 2, lost_after_s=30)
    assert again is not None and again.attempt == 2


def test_the_reaper_settles_only_lapsed_heartbeats(client: redis.Redis, settings: Settings) -> None:
    settings = settings.model_copy(update={"worker_lost_after_s": 0.0, "worker_heartbeat_s": 0.05})
    lapsed_job, live_job = _new_job(client, settings), _new_job(client, settings)
    lapsed = executions.claim(client, lapsed_job, 1, lost_after_s=-1)
    live = executions.claim(client, live_job, 1, lost_after_s=60)
    assert lapsed is not None and live is not None
    assert reaper.reap_once(client, settings, "test") == 1
    assert _record(client, lapsed_job).status is JobStatus.FAILED
    assert _record(client, live_job).status is JobStatus.QUEUED
    assert client.zrange(keys.running_jobs_key(), 0, -1) == [live.member.encode()]
    assert reaper.reap_once(client, settings, "test") == 0


def test_a_worker_woken_for_a_job_leaves_it_queued_until_its_take(client: redis.Redis, settings: Settings) -> None:
    """A worker that dies between its doorbell ringing and its take leaves the job for another worker."""
    job_id = _new_job(client, settings)
    queue = _queue(client, settings)
    first = RQJobs(settings, client, client, "first")
    second = RQJobs(settings, client, client, "second")
    first.load_scripts()
    for jobs in (first, second):
        jobs.queues.refresh()
    assert client.llen(keys.doorbell_key(queue.name)) == 1  # the doorbell rang for a worker... which dies here
    assert queue.job_ids == [job_id]
    takes = []
    for jobs, token in ((second, "t2"), (first, "t1")):  # both try; one wins
        with client.pipeline(transaction=False) as pipe:
            jobs.take_on(pipe, token, lost_after_s=30)
            takes.append(jobs.parse_take(pipe.execute()[-1]))
    assert takes[0] is not None and takes[0].attempt == 1 and takes[0].runnable is not None
    assert takes[1] is None
    assert queue.job_ids == []
    assert _record(client, job_id).status is JobStatus.STARTED
