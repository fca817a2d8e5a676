"""RQ's private layout, as the factory's scripts assume it, checked against the installed RQ.

The factory writes RQ's records itself (``factory.store.rqview``, ``factory.store.scripts``): the
key names, the hash fields and the job decoding are RQ's, not the factory's. These tests read what
the factory wrote through RQ's own API, so an RQ release that lays anything out otherwise fails
here before it misleads an operator.
"""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import redis
from rq import Queue, Worker, worker_registration
from rq.job import Job, JobStatus
from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import utcformat

from factory.events import CANCELED, UNEXPECTED_ERROR, ErrorInfo
from factory.jobs import JobStatus as FactoryStatus
from factory.jobs import now_ms, terminal_fields
from factory.registry import register_folders
from factory.rqtask import TASK
from factory.settings import Settings
from factory.store import fields, keys, rqview
from factory.store.eventlog import append_args, append_keys, terminal_error_args
from factory.store.executions import Claim
from factory.store.scripts import APPEND_LUA, CLOCK_FUNCTIONS
from tests.stack import enqueue_call
from worker.rqjobs import FORMER_TASKS, RQJobs, Take

WORKER = "contract-worker"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture
def jobs(client: redis.Redis, settings: Settings) -> RQJobs:
    register_folders(client, settings)
    Queue(keys.deploy_queue_name(settings.queue_name), connection=client).empty()
    jobs = RQJobs(settings, client, client, WORKER)
    jobs.queues.refresh()
    jobs.load_scripts()
    return jobs


def _queue(client: redis.Redis, settings: Settings) -> Queue:
    return Queue(
        keys.prefab_queue_name(settings.queue_name, "behaviours"), connection=client, serializer=JSONSerializer
    )


def _take(jobs: RQJobs, token: str) -> Take:
    with jobs.client.pipeline(transaction=False) as pipe:
        jobs.take_on(pipe, token, 30)
        take = jobs.parse_take(pipe.execute()[-1])
    assert take is not None
    return take


def _end(client: redis.Redis, job_id: str, token: str, status: FactoryStatus) -> None:
    """The job's terminal event, as its horse writes it."""
    error = None if status is FactoryStatus.FINISHED else ErrorInfo(code=UNEXPECTED_ERROR, message="boom")
    event = orjson.dumps({"type": "done" if error is None else "error", "data": None})
    args = append_args(
        [event], retention_s=60, terminal_fields=terminal_fields(status, now_ms(), None, error), token=token
    )
    client.register_script(APPEND_LUA)(keys=append_keys(job_id), args=args)


def _beat(client: redis.Redis, queue_names: list[str]) -> None:
    with client.pipeline() as pipe:
        rqview.worker_beat_on(
            pipe, WORKER, queue_names, pid=4242, hostname="contract-host", birth_ms=now_ms(), ttl_s=30
        )
        pipe.execute()


def test_key_layout_is_the_installed_rqs(client: redis.Redis) -> None:
    queue = Queue("q", connection=client)
    assert keys.rq_job_key("j") == Job.key_for("j")
    assert keys.RQ_QUEUE_PREFIX == Queue.redis_queue_namespace_prefix and keys.rq_queue_key("q") == queue.key
    assert keys.rq_queues_key() == Queue.redis_queues_keys
    registries = (StartedJobRegistry, FinishedJobRegistry, FailedJobRegistry, CanceledJobRegistry)
    assert keys.rq_registry_keys("q") == tuple(r("q", connection=client).key for r in registries)
    assert keys.rq_worker_key("w") == Worker.redis_worker_namespace_prefix + "w"
    assert keys.rq_workers_key() == worker_registration.REDIS_WORKER_KEYS == Worker.redis_workers_keys
    assert keys.rq_queue_workers_key("q") == worker_registration.WORKERS_BY_QUEUE_KEY % "q"


def _but_times(commands: list[tuple[tuple[object, ...], dict[str, object]]]) -> list[list[object]]:
    """The commands' arguments, each RQ timestamp value replaced by a mark."""
    found: list[list[object]] = []
    for args, _ in commands:
        flat = list(args)
        for at in range(len(flat) - 1):
            if flat[at] in (fields.RQ_CREATED_AT, fields.RQ_ENQUEUED_AT):
                flat[at + 1] = "<time>"
        found.append(flat)
    return found


def test_a_job_is_written_as_rqs_own_enqueue_writes_it(client: redis.Redis) -> None:
    """``job_writes`` fills in RQ's writes made once per queue and function: for any job, the
    commands RQ's ``enqueue_call`` sends, but for the times."""
    # The second queue's prefab id is the text RQ's writes are made with in place of a job's id.
    for name, description in (("q", "p.f"), ("factory.rqview_placeholder_job", "rqview_placeholder_job.f")):
        _assert_rqs_own_writes(client, name, description)


def _assert_rqs_own_writes(client: redis.Redis, name: str, description: str) -> None:
    queue = Queue(name, connection=client, serializer=JSONSerializer)
    for job_id, inputs in (("j-1", {"count": 1}), ("j-2", {"text": "ünï \u2028 code", "n": [1, 2.5, None]})):
        args = [{"job_id": job_id, "inputs": inputs}]
        with client.pipeline() as ours, client.pipeline() as rqs:
            ours.multi()
            rqs.multi()
            writes = rqview.job_writes(
                client, name, job_id, TASK, args, timeout_s=37, ttl_s=90, description=description
            )
            for command in writes:
                ours.execute_command(*command)  # type: ignore[no-untyped-call]
            queue.enqueue_call(
                TASK,
                args=args,
                job_id=job_id,
                timeout=37,
                result_ttl=90,
                failure_ttl=90,
                description=description,
                pipeline=rqs,
            )
            assert _but_times(ours.command_stack) == _but_times(rqs.command_stack)
            ours.execute()
        job = Job.fetch(job_id, connection=client, serializer=JSONSerializer)
        assert (job.func_name, list(job.args), job.timeout, job.description) == (TASK, args, 37, description)
        assert job.enqueued_at is not None and job.created_at is not None and job.origin == name
        client.delete(job.key)
    assert queue.get_job_ids() == ["j-1", "j-2"]


def test_an_enqueued_job_has_the_fields_and_call_the_scripts_read(
    client: redis.Redis, settings: Settings, jobs: RQJobs
) -> None:
    job_id = enqueue_call(client, settings, "counter", {"count": 1}, timeout_s=7)
    stored = {k.decode() for k in client.hkeys(keys.rq_job_key(job_id))}  # type: ignore[union-attr]
    assert {fields.RQ_DATA, fields.RQ_TIMEOUT, fields.RQ_STATUS, fields.RQ_ORIGIN} <= stored
    job = Job.fetch(job_id, connection=client, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.QUEUED and job.origin == _queue(client, settings).name
    assert _queue(client, settings).get_job_ids() == [job_id]
    data, timeout = client.hmget(keys.rq_job_key(job_id), [fields.RQ_DATA, fields.RQ_TIMEOUT])
    call = rqview.decode_call(job_id, data, timeout)  # type: ignore[arg-type]
    assert (call.func_name, call.args[0]["job_id"], call.timeout_s) == (TASK, job_id, 7 + 30)
    assert (call.func_name, call.args, call.timeout_s) == (job.func_name, list(job.args), float(job.timeout or 0))

    take = _take(jobs, "t1")
    assert take.attempt == 1 and take.runnable is not None
    assert take.runnable.request.job_id == job_id and take.runnable.deadlines.backstop_s == 37


@pytest.mark.parametrize(("func_name", "runs"), [(FORMER_TASKS[0], True), ("tasks.something_else", False)])
def test_a_job_queued_under_the_former_task_name_still_runs(
    client: redis.Redis, settings: Settings, jobs: RQJobs, func_name: str, runs: bool
) -> None:
    """A job an older gateway queued (its call named the task's former module) is taken and run; a job
    calling anything else is not a factory invocation."""
    job_id = enqueue_call(client, settings, "counter", {"count": 1})
    data, timeout = client.hmget(keys.rq_job_key(job_id), [fields.RQ_DATA, fields.RQ_TIMEOUT])
    call = rqview.decode_call(job_id, data, timeout)  # type: ignore[arg-type]
    client.hset(keys.rq_job_key(job_id), fields.RQ_DATA, rqview.encode_call(func_name, call.args))
    take = _take(jobs, "t1")
    assert take.job_id == job_id and (take.runnable is not None) is runs
    if runs:
        assert take.runnable is not None and take.runnable.request.job_id == job_id


@pytest.mark.parametrize(
    ("field", "value"), [(fields.RQ_DATA, b"\x00 not a call"), (fields.RQ_TIMEOUT, b"ten minutes")]
)
def test_a_job_rq_could_not_read_is_claimed_and_not_run(
    client: redis.Redis, settings: Settings, jobs: RQJobs, field: str, value: bytes
) -> None:
    """A call RQ's decoding cannot read: the take claims the job and hands nothing to run (the
    worker then ends it with an error), and the worker goes on."""
    job_id = enqueue_call(client, settings, "counter", {"count": 1})
    client.hset(keys.rq_job_key(job_id), field, value)
    take = _take(jobs, "t1")
    assert (take.job_id, take.attempt, take.runnable) == (job_id, 1, None)


def test_rq_sees_a_started_job_and_its_real_end(client: redis.Redis, settings: Settings, jobs: RQJobs) -> None:
    queue = _queue(client, settings)
    _beat(client, jobs.queues.names())
    ids = [enqueue_call(client, settings, "counter", {"count": 1}) for _ in range(2)]
    before = datetime.now(UTC)
    take = _take(jobs, "t1")
    after = datetime.now(UTC)
    assert take.job_id == ids[0]

    job = Job.fetch(ids[0], connection=client, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.STARTED and job.worker_name == WORKER and job.started_at is not None
    # The take's times are Redis' clock, here the same machine's: within the round trip, to the ms.
    slack = timedelta(milliseconds=1)
    assert before - slack <= job.started_at.replace(tzinfo=UTC) <= after + slack
    started_ms = int(client.hget(keys.job_key(ids[0]), fields.STARTED_MS) or 0)
    assert before.timestamp() * 1000 - 1 <= started_ms <= after.timestamp() * 1000 + 1
    assert StartedJobRegistry(queue=queue).get_job_and_execution_ids() == [(ids[0], "t1")]
    worker = Worker.find_by_key(keys.rq_worker_key(WORKER), connection=client)
    assert worker is not None and worker.get_state() == "busy"

    _end(client, ids[0], "t1", FactoryStatus.FINISHED)
    jobs.release(Claim(ids[0], "t1", 1, 1), ids[0], rqview.RQStatus.FINISHED)
    second = _take(jobs, "t2")
    assert second.job_id == ids[1]
    _end(client, ids[1], "t2", FactoryStatus.FAILED)
    jobs.release(Claim(ids[1], "t2", 1, 1), ids[1], rqview.RQStatus.FINISHED)  # the record's status wins

    finished = Job.fetch(ids[0], connection=client, serializer=JSONSerializer)
    failed = Job.fetch(ids[1], connection=client, serializer=JSONSerializer)
    assert finished.get_status() == JobStatus.FINISHED and finished.ended_at is not None
    assert failed.get_status() == JobStatus.FAILED and failed.ended_at is not None
    assert StartedJobRegistry(queue=queue).get_job_ids() == []
    assert FinishedJobRegistry(queue=queue).get_job_ids() == [ids[0]]
    assert FailedJobRegistry(queue=queue).get_job_ids() == [ids[1]]
    for key in (keys.rq_job_key(ids[0]), *keys.rq_registry_keys(queue.name)[1:3]):
        assert 0 < int(client.ttl(key)) <= settings.retention_s  # type: ignore[arg-type]
    worker = Worker.find_by_key(keys.rq_worker_key(WORKER), connection=client)
    assert worker is not None and worker.get_state() == "idle"
    assert (worker.successful_job_count, worker.failed_job_count) == (1, 1)


@pytest.mark.parametrize(
    "moment",
    [
        "1970-01-01T00:00:00.000000",
        "1999-12-31T23:59:59.999999",
        "2000-02-29T12:00:00.000001",
        "2024-02-29T23:59:59.500000",
        "2024-03-01T00:00:00.000000",
        "2026-11-30T20:08:25.123456",
        "2100-02-28T23:59:59.000000",
        "2100-03-01T00:00:00.000000",
    ],
)
def test_the_takes_clock_writes_rqs_timestamp_format(client: redis.Redis, moment: str) -> None:
    """TAKE formats Redis' TIME as RQ does (``utcformat``), by a calendar of its own in Lua."""
    when = datetime.fromisoformat(moment).replace(tzinfo=UTC)
    seconds = int(when.timestamp())
    lua = CLOCK_FUNCTIONS + "return rq_time(tonumber(ARGV[1]), tonumber(ARGV[2]))"
    written = client.eval(lua, 0, seconds, when.microsecond)
    assert written.decode() == utcformat(when)


def test_rq_sees_a_queued_job_canceled(client: redis.Redis, settings: Settings, jobs: RQJobs) -> None:
    queue = _queue(client, settings)
    job_id = enqueue_call(client, settings, "counter", {"count": 1})
    args = terminal_error_args(CANCELED, "the job was canceled", retention_s=settings.retention_s)
    client.register_script(APPEND_LUA)(keys=append_keys(job_id), args=args)
    assert rqview.end_job(client, job_id, rqview.RQStatus.CANCELED, settings.retention_s)
    assert queue.count == 0
    assert Job.fetch(job_id, connection=client, serializer=JSONSerializer).get_status() == JobStatus.CANCELED
    assert CanceledJobRegistry(queue=queue).get_job_ids(cleanup=False) == [job_id]
    assert 0 < int(client.ttl(keys.rq_registry_keys(queue.name)[3])) <= settings.retention_s  # type: ignore[arg-type]


def test_rq_lists_the_workers_that_beat(client: redis.Redis, jobs: RQJobs) -> None:
    names = jobs.queues.names()
    _beat(client, names)
    workers = Worker.all(connection=client)
    assert [w.name for w in workers] == [WORKER]
    worker = workers[0]
    assert worker.queue_names() == names and worker.pid == 4242 and worker.hostname == "contract-host"
    assert worker.get_state() == "idle" and worker.last_heartbeat is not None and worker.birth_date is not None
    assert [w.name for w in Worker.all(queue=Queue(names[-1], connection=client))] == [WORKER]
    assert 0 < int(client.ttl(keys.rq_worker_key(WORKER))) <= 30  # type: ignore[arg-type]

    client.delete(keys.rq_worker_key(WORKER))  # a worker killed outright: its hash lapsed
    client.sadd(keys.rq_workers_key(), keys.rq_worker_key("gone"))
    with client.pipeline() as pipe:
        rqview.worker_beat_on(pipe, "other", names, pid=1, hostname="h", birth_ms=now_ms(), ttl_s=30)
        pipe.execute()
    assert client.smembers(keys.rq_workers_key()) == {keys.rq_worker_key("other").encode()}
    with client.pipeline() as pipe:
        rqview.worker_gone_on(pipe, "other", names)
        pipe.execute()
    assert Worker.all(connection=client) == [] and not client.exists(keys.rq_workers_key())


def test_a_release_loads_its_script_again_when_redis_lost_it(
    client: redis.Redis, settings: Settings, jobs: RQJobs
) -> None:
    job_id = enqueue_call(client, settings, "counter", {"count": 1})
    assert _take(jobs, "t1").job_id == job_id
    _end(client, job_id, "t1", FactoryStatus.FINISHED)
    client.script_flush()  # what a restarted Redis has: no scripts
    jobs.release(Claim(job_id, "t1", 1, 1), job_id, rqview.RQStatus.FINISHED)
    assert Job.fetch(job_id, connection=client, serializer=JSONSerializer).get_status() == JobStatus.FINISHED
    assert StartedJobRegistry(queue=_queue(client, settings)).get_job_ids() == []
