"""Executions of a job and what happens when one stops without ending its stream.

A worker *claims* a job before running it (:func:`claim`, or its worker's take step, which
runs the same Lua function): the job gets a fresh execution token and its attempt number, and
the execution a heartbeat in ``keys.running_jobs_key()``, a sorted set scored by the time (ms)
the heartbeat lapses. The worker process (not its work horse) refreshes it while the horse runs
(:func:`refresh`). How many attempts a job may have is read from its request, in RQ's job
(:func:`max_attempts`), when an execution is settled: a claim needs nothing from the request.

When an execution stops, :func:`settle` makes sure its job is not left hanging: the job
already ended (the usual case), or its horse asked for a retry and the job goes back on the RQ
queue, or nothing closed the stream (the horse died, the worker was shut down) and the job is
retried when it has attempts left, else ends with ``WORKER_LOST`` / ``WORKER_SHUTDOWN``. The
worker settles its own executions as soon as its horse reports or dies; :func:`reap_once`, run
periodically by every worker, settles those whose worker vanished with it (lapsed heartbeat).
Settling is idempotent (every write is fenced by the token, see ``factory.eventlog``, and a
requeue checks the job is not queued already), and the execution leaves the running set only
once it is settled, so a settle cut short (a crash, Redis gone) is finished by the next pass.

RQ holds the queue and each job's payload; its workers and registries play no part (the
factory's worker takes job ids off RQ's queue itself, see ``worker.engine``), so a requeue only
puts the RQ job back on its queue. Heartbeats are compared with each process's clock; a Redis
that restarted less than ``worker_lost_after_s`` ago reaps nothing, since nobody could send
heartbeats while it was down.
"""

import logging
import uuid
from dataclasses import dataclass
from enum import StrEnum

import redis
from pydantic import ValidationError
from redis.client import Pipeline
from rq import Queue
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from factory import keys
from factory.connections import RETRYABLE
from factory.enqueue import DOORBELL_TTL_S
from factory.eventlog import (
    APPEND_LUA,
    CLAIM_LUA,
    RETRY_PREFIX,
    Outcome,
    append_keys,
    parse_append,
    retry_args,
    terminal_error_args,
)
from factory.events import WORKER_LOST
from factory.jobs import InvocationRequest, now_ms
from factory.retention import end_rq_job
from factory.settings import Settings

logger = logging.getLogger(__name__)

REAP_BATCH = 100


@dataclass(frozen=True)
class Claim:
    """One execution (attempt) of a job, as claimed by a worker."""

    job_id: str
    token: str
    attempt: int
    max_attempts: int

    @property
    def member(self) -> str:
        """The execution's member of the running set."""
        return f"{self.job_id}:{self.token}"


class Settled(StrEnum):
    """What :func:`settle` found or did."""

    ENDED = "ended"  # the stream already has its terminal event
    REQUEUED = "requeued"  # the horse asked for a retry; the job is back on the queue
    RETRIED = "retried"  # the execution was lost; a retry event was written and the job requeued
    FAILED = "failed"  # the execution was lost with no attempt left; the terminal error was written
    SUPERSEDED = "superseded"  # a later execution owns the job now
    GONE = "gone"  # the job's record (or RQ job) no longer exists


def deadline_ms(lost_after_s: float) -> int:
    """When a heartbeat sent now lapses (ms): an execution's score in the running set."""
    return now_ms() + int(lost_after_s * 1000)


def claim(client: redis.Redis, job_id: str, max_attempts: int, lost_after_s: float) -> Claim | None:
    """Claim the job for a new execution, registering its heartbeat (the caller refreshes it).

    None when the job ended already or is unknown. (A worker claims each job it takes off the
    queue within its take step, ``worker.rqjobs``, with the same Lua function.)
    """
    token = uuid.uuid4().hex
    script = client.register_script(CLAIM_LUA)
    args: list[str | int] = [token, f"{job_id}:{token}", deadline_ms(lost_after_s)]
    attempt = int(script(keys=[keys.job_key(job_id), keys.running_jobs_key()], args=args))
    return Claim(job_id, token, attempt, max_attempts) if attempt >= 1 else None


def refresh(client: redis.Redis, claim: Claim, lost_after_s: float) -> None:
    """Push the execution's heartbeat deadline forward (never re-adds one that was reaped)."""
    client.zadd(keys.running_jobs_key(), {claim.member: deadline_ms(lost_after_s)}, xx=True)


def release(pipe: Pipeline, claim: Claim) -> None:
    """Queue on ``pipe`` the execution's removal from the running set (a settled execution's last step)."""
    pipe.zrem(keys.running_jobs_key(), claim.member)


def settle(
    client: redis.Redis, settings: Settings, job_id: str, token: str, code: str, message: str, *, retry: bool = True
) -> Settled:
    """Make sure execution ``token`` of the job leaves it ended or queued again; see the module docstring.

    ``code`` and ``message`` say why the execution stopped, for when nothing closed its stream;
    ``retry=False`` ends the job with them even when it has attempts left.
    """
    execution, terminal, attempt = client.hmget(keys.job_key(job_id), ["execution", "terminal", "attempt"])
    if terminal is not None:
        return Settled.ENDED
    current = execution.decode() if isinstance(execution, bytes) else ""
    if current == RETRY_PREFIX + token:
        return Settled.REQUEUED if requeue(client, job_id) else Settled.GONE
    if current != token:
        return Settled.GONE if execution is None and attempt is None else Settled.SUPERSEDED
    attempt_n = int(attempt or 1)
    max_n = max_attempts(client, job_id)
    script = client.register_script(APPEND_LUA)
    if retry and attempt_n < max_n:
        args = retry_args(token, attempt_n + 1, max_n, code, message, retention_s=settings.retention_s)
        result = parse_append(script(keys=append_keys(job_id), args=args))
        if result.outcome is not Outcome.APPENDED:
            return Settled.ENDED
        return Settled.RETRIED if requeue(client, job_id) else Settled.GONE
    args = terminal_error_args(code, message, retention_s=settings.retention_s, token=token)
    result = parse_append(script(keys=append_keys(job_id), args=args))
    if result.outcome is not Outcome.APPENDED:
        return Settled.ENDED
    # The worker that would have closed RQ's hash is gone: close it here, or it never expires.
    end_rq_job(client, job_id, JobStatus.FAILED, settings.retention_s)
    return Settled.FAILED


def max_attempts(client: redis.Redis, job_id: str) -> int:
    """How many attempts the job may have, from its request in RQ's job (1 when that cannot be read)."""
    try:
        job = Job.fetch(job_id, connection=client, serializer=JSONSerializer)
        return InvocationRequest.model_validate(job.args[0]).retries + 1
    except (NoSuchJobError, DeserializationError, ValidationError, IndexError, TypeError):
        logger.error("cannot read the job's request from RQ: no retry", extra={"job_id": job_id})
        return 1


def requeue(client: redis.Redis, job_id: str) -> bool:
    """Put the RQ job back on the queue it came from (once, however often it is called), waking its workers."""
    try:
        job = Job.fetch(job_id, connection=client, serializer=JSONSerializer)
    except NoSuchJobError:
        logger.error("cannot requeue: RQ no longer has the job", extra={"job_id": job_id})
        return False
    queue = Queue(job.origin, connection=client, serializer=JSONSerializer)
    if job.get_status(refresh=False) == JobStatus.QUEUED and client.lpos(queue.key, job_id) is not None:
        return True  # someone requeued it already
    job.started_at = None
    job.ended_at = None
    job.worker_name = None
    queue.enqueue_job(job)
    client.rpush(keys.doorbell_key(queue.name), 1)
    client.expire(keys.doorbell_key(queue.name), DOORBELL_TTL_S)
    return True


def reap_once(client: redis.Redis, settings: Settings, owner: str) -> int:
    """Settle the executions whose heartbeat lapsed (at most one process per interval does it)."""
    interval_ms = max(100, int(settings.worker_heartbeat_s * 1000))
    if not client.set(keys.reaper_lock_key(), owner, nx=True, px=interval_ms):
        return 0
    lapsed: list[bytes] = client.zrangebyscore(  # type: ignore[assignment]
        keys.running_jobs_key(), "-inf", now_ms(), start=0, num=REAP_BATCH
    )
    if not lapsed:
        return 0
    uptime_s = int(client.info("server").get("uptime_in_seconds", 0))
    if uptime_s < settings.worker_lost_after_s:
        logger.info("Redis restarted %d s ago; giving %d lapsed heartbeats time to resume", uptime_s, len(lapsed))
        return 0
    reaped = 0
    message = f"the worker running this job stopped sending heartbeats for {settings.worker_lost_after_s:g} s"
    for raw in lapsed:
        member = raw.decode()
        job_id, _, token = member.partition(":")
        try:
            outcome = settle(client, settings, job_id, token, WORKER_LOST, message)
        except RETRYABLE:
            raise
        except Exception:  # one job's broken state must not keep the others lost; the next pass tries again
            logger.exception("settling lost execution %s failed", token, extra={"job_id": job_id})
            continue
        client.zrem(keys.running_jobs_key(), member)
        logger.warning("lost execution %s: %s", token, outcome.value, extra={"job_id": job_id})
        reaped += 1
    return reaped
