"""RQ's view of the factory's jobs and workers; the one module that imports ``rq``.

RQ is kept on purpose: jobs are real RQ jobs, created through RQ's own API (:func:`job_writes`), so
``rq info``, rq-dashboard and RQ's Python API see the queues, the jobs and their calls. No RQ worker
runs them: the factory's worker takes and settles jobs in one round trip each (``worker.rqjobs``,
``factory.store.scripts``), and keeps RQ's records true as it goes, which costs no round trip of its
own: RQ's job hash says ``started`` while a horse runs the job and then the job's real end
(``finished``, ``failed`` or ``canceled``) until it expires with the factory's retention; the
execution sits in the queue's started registry while it runs and the job in the finished, failed or
canceled registry after; each worker keeps RQ's worker hash (busy or idle, its queues, its counts)
and its place in RQ's sets of workers fresh with its heartbeat (:func:`worker_beat_on`).

That makes RQ's private layout part of the factory's contract: the key names in
``factory.store.keys``, the hash fields in ``factory.store.fields``, and the decoding of a job's
call here. ``tests/test_rq_contract.py`` fails when the installed RQ differs, and the dependency is
pinned to the RQ release line those tests ran against.

Every RQ key the factory writes ends: a job's hash and the finished, failed and canceled registries
expire after the retention (the registries are trimmed of expired entries as they are written, as
RQ's own cleanup would); a started entry is removed when its execution ends, whoever settles it;
a worker's hash and the sets of workers carry the heartbeat's TTL.
"""

import functools
import sys
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from redis.client import Pipeline
from redis.typing import EncodableT
from rq import Queue
from rq.exceptions import NoSuchJobError, TimeoutFormatError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now, parse_timeout, utcformat
from rq.version import VERSION

from factory.store import fields, keys
from factory.store.scripts import END_RQ_JOB_LUA, END_RQ_JOB_SHA, RQ_WORKER_BEAT_LUA

# RQ's statuses, for the few callers that name one (its values are the factory's own JobStatus's and more).
RQStatus = JobStatus

# How long past RQ's timeout of a job its started entry lasts (s): RQ's own cleanup (``rq info`` runs
# it) takes an entry past its score for an abandoned job, and the factory's reaper settles a lost
# execution well before (``worker_lost_after_s``).
STARTED_GRACE_S = 600


class RQJobUnreadable(Exception):
    """RQ's hash of the job holds no call its decoder can read."""


@dataclass(frozen=True)
class RQCall:
    """A job's call as RQ stores it."""

    func_name: str
    args: list[Any]
    timeout_s: float | None  # RQ's own deadline of the job


def rq_time() -> str:
    """Now, in RQ's timestamp format."""
    return utcformat(now())


def job_writes(
    client: redis.Redis,
    queue_name: str,
    job_id: str,
    func: str,
    args: list[Any],
    *,
    timeout_s: int,
    ttl_s: int,
    description: str,
) -> list[list[Any]]:
    """The commands that create an RQ job calling ``func`` (a dotted path) and put it on the queue.

    The writes are RQ's own (:func:`_rq_writes`), made once per queue, function, timeout, TTL and
    description (``client`` only records them, then); each job fills in its id, its call and its
    times, which is all RQ's writes of it differ in. RQ's ``Job`` (its serializer checks, its dict)
    cost more than the rest of an enqueue.
    """
    writes = _rq_writes(client, queue_name, func, timeout_s, ttl_s, description)
    stamp = rq_time()
    own = {fields.RQ_DATA: encode_call(func, args), fields.RQ_CREATED_AT: stamp, fields.RQ_ENQUEUED_AT: stamp}
    commands = [list(command) for command in writes.commands]
    job_key = keys.rq_job_key(job_id)
    for command, at, is_key in writes.ids:
        commands[command][at] = job_key if is_key else job_id
    for command, at, name in writes.own:
        commands[command][at] = own[name]
    return commands


_PLACEHOLDER_ID = "rqview_placeholder_job"  # no dot: never a queue name (``factory.<prefab>``) nor a description
_OWN_FIELDS = (fields.RQ_DATA, fields.RQ_CREATED_AT, fields.RQ_ENQUEUED_AT)


@dataclass(frozen=True)
class _RQWrites:
    """RQ's writes creating a job, and where each job's own values go in them."""

    commands: tuple[tuple[Any, ...], ...]
    ids: tuple[tuple[int, int, bool], ...]  # (command, argument, True: the job's hash key / False: its id)
    own: tuple[tuple[int, int, str], ...]  # (command, argument, field): a hash value of the job's own


@functools.lru_cache(maxsize=1024)
def _rq_writes(
    client: redis.Redis, queue_name: str, func: str, timeout_s: int, ttl_s: int, description: str
) -> _RQWrites:
    """What RQ's ``enqueue_call`` writes for a job of ``func`` on the queue, made with a placeholder id
    (in its key names and on the queue) and no arguments; nothing is sent."""
    with client.pipeline() as pipe:
        pipe.multi()
        _queue(client, queue_name).enqueue_call(
            func,
            args=[],
            job_id=_PLACEHOLDER_ID,
            timeout=timeout_s,
            result_ttl=ttl_s,
            failure_ttl=ttl_s,
            description=description,
            pipeline=pipe,
        )
        commands = tuple(tuple(args) for args, _ in pipe.command_stack)
    placeholder_key = keys.rq_job_key(_PLACEHOLDER_ID)
    ids: list[tuple[int, int, bool]] = []
    own: list[tuple[int, int, str]] = []
    for command, args in enumerate(commands):
        ids += [
            (command, at, arg == placeholder_key)
            for at, arg in enumerate(args)
            if arg in (_PLACEHOLDER_ID, placeholder_key)
        ]
        if args[0] == "HSET":
            own += [(command, at + 1, args[at]) for at in range(2, len(args) - 1, 2) if args[at] in _OWN_FIELDS]
    # Each job's writes would otherwise be another job's, or lack its call: an RQ that writes a job
    # otherwise than these places say is one the factory cannot enqueue through.
    if not ({True, False} <= {is_key for _, _, is_key in ids} and {name for *_, name in own} == set(_OWN_FIELDS)):
        raise RuntimeError(f"RQ {VERSION} writes a job in a way the factory does not know: {commands!r}")
    return _RQWrites(commands, tuple(ids), tuple(own))


@functools.lru_cache(maxsize=4096)
def _queue(client: redis.Redis, name: str) -> Queue:
    """One ``Queue`` per client and name: RQ asks the server's version (an ``INFO`` round trip) once
    per ``Queue`` object, on its first enqueue."""
    return Queue(name, connection=client, serializer=JSONSerializer)


def queue_length(client: redis.Redis, queue_name: str) -> int:
    """How many jobs wait on the queue."""
    return int(client.llen(keys.rq_queue_key(queue_name)))


def encode_call(func: str, args: list[Any]) -> bytes:
    """RQ's hash field ``data`` of a job calling ``func(*args)``, as RQ's ``Job`` writes it: its
    serializer's (function, instance, args, kwargs), compressed (:func:`decode_call` reads it)."""
    return zlib.compress(JSONSerializer.dumps((func, None, args, {})))  # type: ignore[no-untyped-call]


def decode_call(job_id: str, data: bytes, timeout: bytes | None) -> RQCall:
    """The call in RQ's hash fields ``data`` and ``timeout``, decoded as RQ's ``Job.restore`` and
    ``Job.func_name`` decode them: zlib (else the bytes as they are), RQ's serializer's (function,
    instance, args, kwargs), RQ's timeout parser. An RQ ``Job`` made for it, which restores every
    field, cost three times as much on the way of every job's start (``test_rq_contract`` holds the
    two equal)."""
    try:
        raw = zlib.decompress(data)
    except zlib.error:
        raw = data  # RQ's fallback: a job written uncompressed
    try:
        func_name, _instance, args, _kwargs = JSONSerializer.loads(raw)  # type: ignore[no-untyped-call]
    except Exception as exc:  # as RQ's ``_deserialize_data``: any failure of the serializer
        raise RQJobUnreadable(f"RQ job {job_id}: its data cannot be decoded ({type(exc).__name__})") from exc
    try:
        seconds = parse_timeout(timeout.decode(errors="replace")) if timeout else None
    except (TimeoutFormatError, ValueError) as exc:
        raise RQJobUnreadable(f"RQ job {job_id}: its timeout {timeout!r} cannot be read") from exc
    return RQCall(str(func_name), list(args), float(seconds) if seconds else None)


def read_call(client: redis.Redis, job_id: str) -> RQCall | None:
    """The job's call from RQ's hash; None when RQ has no such job."""
    data, timeout = client.hmget(keys.rq_job_key(job_id), [fields.RQ_DATA, fields.RQ_TIMEOUT])
    if not isinstance(data, bytes):
        return None
    return decode_call(job_id, data, timeout if isinstance(timeout, bytes) else None)


def put_back(client: redis.Redis, job_id: str, token: str) -> str | None:
    """Put the RQ job back on its queue once (however often called), its execution ``token`` out of
    the started registry; the queue's name, or None when RQ no longer has the job."""
    try:
        job = Job.fetch(job_id, connection=client, serializer=JSONSerializer)
    except NoSuchJobError:
        return None
    queue = Queue(job.origin, connection=client, serializer=JSONSerializer)
    client.zrem(keys.rq_registry_keys(queue.name)[0], f"{job_id}:{token}")
    if job.get_status(refresh=False) == RQStatus.QUEUED and client.lpos(queue.key, job_id) is not None:
        return queue.name  # someone requeued it already
    job.started_at = None
    job.ended_at = None
    job.worker_name = None
    queue.enqueue_job(job)
    return queue.name


def start_fields(worker_name: str) -> list[EncodableT]:
    """RQ's job hash fields of a start, as a flat field/value list, but the time: the take writes
    ``started_at`` with Redis' clock when it runs (``TAKE_LUA``)."""
    return [fields.RQ_STATUS, RQStatus.STARTED.value, fields.RQ_WORKER_NAME, worker_name]


def _end_args(job_id: str, token: str, status: RQStatus | None, retention_s: int, unqueue: bool) -> list[EncodableT]:
    started, finished, failed, canceled = keys.rq_registry_keys("")
    head: list[EncodableT] = [job_id, token, status.value if status else "", rq_time(), time.time(), retention_s]
    return [*head, keys.RQ_QUEUE_PREFIX, started, finished, failed, canceled, "1" if unqueue else "0"]


def _end_keys(job_id: str, worker_name: str) -> list[str]:
    ends = [keys.rq_job_key(job_id), keys.job_key(job_id)]
    return [*ends, keys.rq_worker_key(worker_name)] if worker_name else ends


def end_job(
    client: redis.Redis, job_id: str, status: RQStatus, retention_s: int, *, token: str = "", worker_name: str = ""
) -> bool:
    """End RQ's view of a job ended from outside its worker (a cancel, a settle): off its queue, the
    execution ``token`` out of the started registry, RQ's hash ended with the record's status (else
    ``status``) and expiring after the retention, the job in that status's registry. False if RQ had none."""
    script = client.register_script(END_RQ_JOB_LUA)
    args = _end_args(job_id, token, status, retention_s, unqueue=True)
    return bool(script(keys=_end_keys(job_id, worker_name), args=args))


def end_job_on(
    pipe: Pipeline, job_id: str, token: str, status: RQStatus | None, retention_s: int, worker_name: str
) -> None:
    """Queue on ``pipe`` the worker's end of its execution ``token`` in RQ's view (the script must be
    loaded, see :data:`SCRIPTS`): the started entry goes, the worker is idle again and, with ``status``
    (the job ended), the job's hash and registries are ended as :func:`end_job` does, but for the queue,
    which the take left already."""
    job_keys = _end_keys(job_id, worker_name)
    pipe.evalsha(END_RQ_JOB_SHA, len(job_keys), *job_keys, *_end_args(job_id, token, status, retention_s, False))


def worker_beat_on(
    pipe: Pipeline, name: str, queue_names: list[str], *, pid: int, hostname: str, birth_ms: int, ttl_s: int
) -> None:
    """Queue on ``pipe`` a worker's heartbeat in RQ's view: its hash (busy or idle as its jobs set it)
    and its key in RQ's sets of workers, each with the TTL ``ttl_s``."""
    birth = utcformat(datetime.fromtimestamp(birth_ms / 1000, tz=UTC))
    described: list[EncodableT] = ["birth", birth, "last_heartbeat", rq_time(), "queues", ",".join(queue_names)]
    described += ["pid", pid, "hostname", hostname, "version", VERSION, "python_version", sys.version]
    sets = [keys.rq_workers_key(), *(keys.rq_queue_workers_key(q) for q in queue_names)]
    pipe.eval(RQ_WORKER_BEAT_LUA, 1 + len(sets), keys.rq_worker_key(name), *sets, max(1, ttl_s), *described)


def worker_gone_on(pipe: Pipeline, name: str, queue_names: list[str]) -> None:
    """Queue on ``pipe`` a worker's clean exit from RQ's view."""
    key = keys.rq_worker_key(name)
    pipe.delete(key)
    pipe.srem(keys.rq_workers_key(), key)
    for queue in queue_names:
        pipe.srem(keys.rq_queue_workers_key(queue), key)


# The scripts the worker runs by SHA from here, loaded by ``worker.rqjobs``.
SCRIPTS = (END_RQ_JOB_LUA,)
