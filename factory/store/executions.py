"""Executions of a job: claim, refresh, release, settle, requeue.

A worker *claims* a job before running it (:func:`claim`, or its worker's take step, which runs
the same Lua function): the job gets a fresh execution token and its attempt number, and the
execution a heartbeat in ``keys.running_jobs_key()``, a sorted set scored by the time (ms) the
heartbeat lapses. The worker process (not its work horse) refreshes it while the horse runs
(:func:`refresh`). How many attempts a job may have is read from its request, in RQ's job
(:func:`max_attempts`), when an execution is settled: a claim needs nothing from the request.

When an execution stops, :func:`settle` makes sure its job is not left hanging: the job already
ended (the usual case), or its horse asked for a retry and the job goes back on the RQ queue, or
nothing closed the stream (the horse died, the worker was shut down) and the job is retried when
it has attempts left, else ends with the given error. The worker settles its own executions as
soon as its horse reports or dies; the reaper (``factory.reaper``) settles those whose worker
vanished with it. Settling is idempotent (every write is fenced by the token, see
``factory.store.scripts``, and a requeue checks the job is not queued already), and the execution
leaves the running set only once it is settled (:func:`release`), so a settle cut short (a crash,
Redis gone) is finished by the next pass.
"""

import logging
import uuid
from dataclasses import dataclass
from enum import StrEnum

import redis
from pydantic import ValidationError
from redis.client import Pipeline

from factory.enqueue import DOORBELL_TTL_S
from factory.jobs import InvocationRequest, now_ms
from factory.settings import Settings
from factory.store import fields, keys, rqview
from factory.store.eventlog import (
    RETRY_PREFIX,
    Outcome,
    append_keys,
    parse_append,
    retry_args,
    terminal_error_args,
)
from factory.store.scripts import APPEND_LUA, CLAIM_LUA

logger = logging.getLogger(__name__)


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
    execution, terminal, attempt = client.hmget(
        keys.job_key(job_id), [fields.EXECUTION, fields.TERMINAL, fields.ATTEMPT]
    )
    if terminal is not None:
        return Settled.ENDED
    current = execution.decode() if isinstance(execution, bytes) else ""
    if current == RETRY_PREFIX + token:
        return Settled.REQUEUED if requeue(client, job_id, token) else Settled.GONE
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
        return Settled.RETRIED if requeue(client, job_id, token) else Settled.GONE
    args = terminal_error_args(code, message, retention_s=settings.retention_s, token=token)
    result = parse_append(script(keys=append_keys(job_id), args=args))
    if result.outcome is not Outcome.APPENDED:
        return Settled.ENDED
    # The worker that would have ended RQ's view of the job may be gone: end it here, or it never expires.
    rqview.end_job(client, job_id, rqview.RQStatus.FAILED, settings.retention_s, token=token)
    return Settled.FAILED


def max_attempts(client: redis.Redis, job_id: str) -> int:
    """How many attempts the job may have, from its request in RQ's job (1 when that cannot be read)."""
    try:
        call = rqview.read_call(client, job_id)
        if call is None:
            raise LookupError("RQ has no such job")
        return InvocationRequest.model_validate(call.args[0]).retries + 1
    except (LookupError, rqview.RQJobUnreadable, ValidationError, IndexError, TypeError):
        logger.error("cannot read the job's request from RQ: no retry", extra={"job_id": job_id})
        return 1


def requeue(client: redis.Redis, job_id: str, token: str) -> bool:
    """Put the RQ job back on the queue it came from (once, however often it is called), waking its
    workers; execution ``token``, which handed it on, leaves RQ's started registry."""
    queue_name = rqview.put_back(client, job_id, token)
    if queue_name is None:
        logger.error("cannot requeue: RQ no longer has the job", extra={"job_id": job_id})
        return False
    client.rpush(keys.doorbell_key(queue_name), 1)
    client.expire(keys.doorbell_key(queue_name), DOORBELL_TTL_S)
    return True
