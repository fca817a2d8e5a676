"""The worker's side of RQ: take jobs off RQ's queue, read each with RQ's own decoder, and keep
RQ's job hash truthful about the job's start and end.

Jobs stay real RQ jobs, enqueued by the gateway through RQ (``rq info`` shows the queue), but
no RQ worker runs them: RQ's per-job bookkeeping (worker state, registries, executions,
results) cost ~15 round trips a job. The worker takes a job in one (:data:`TAKE_LUA`), pipelined
with the release of the job before. The RQ job's hash says ``started`` while a horse runs it and
``finished`` once the factory is done with it, and then expires after the factory's retention,
as RQ's result TTL would; how the job went is in the factory's own record. A job that goes back
on the queue for another attempt is requeued through RQ (``factory.reaper.requeue``).
"""

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import redis
from pydantic import ValidationError
from redis.client import Pipeline
from redis.typing import EncodableT, FieldT
from rq import Queue
from rq.exceptions import DeserializationError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat

from factory import keys, reaper
from factory.eventlog import APPEND_LUA, CLAIM_FUNCTION, started_fields
from factory.jobs import InvocationRequest
from factory.settings import Settings
from worker.tasks import TASK

logger = logging.getLogger(__name__)

# RQ's own deadline when a job has none: the gateway sets it to the factory's timeout plus this.
DEFAULT_MARGIN_S = 30.0

# Takes a job for a worker: the given id, or the next one off the queue; reads its RQ job, marks
# it started there, and claims its factory record (``factory.eventlog.CLAIM_FUNCTION``): one
# round trip. The keys of a popped job are built here, from the parts RQ and ``factory.keys``
# give around its id, so this script could not run on a Redis Cluster (nor could RQ).
# KEYS: RQ queue, running set. ARGV: 1 job id ('' = pop the next; else removed from the queue
# here), 2/3 RQ job key and 4/5 factory job key before/after the id, 6 execution token,
# 7 heartbeat deadline (ms), 8 how many items follow for RQ, then RQ's field/value pairs of the
# start, then the record's. Replies false when the queue is empty (or the given id is no longer
# on it), else {id, RQ data, RQ timeout, attempt} where attempt is below 1 when the job cannot be
# claimed, and RQ data false when RQ has no such job. The running-set member is
# ``<id>:<token>``, as ``factory.reaper.Claim.member``.
TAKE_LUA = (
    CLAIM_FUNCTION
    + """
local id = ARGV[1]
if id == '' then
  id = redis.call('LPOP', KEYS[1])
  if not id then return false end
elseif redis.call('LREM', KEYS[1], -1, id) == 0 then
  return false  -- another worker took it first
end
local rq_job = ARGV[2] .. id .. ARGV[3]
local data, timeout = unpack(redis.call('HMGET', rq_job, 'data', 'timeout'))
if not data then return {id, false, false, -3} end
local n = tonumber(ARGV[8])
redis.call('HSET', rq_job, unpack(ARGV, 9, 8 + n))
local token = ARGV[6]
local attempt = claim(ARGV[4] .. id .. ARGV[5], KEYS[2], token, id .. ':' .. token, ARGV[7], {unpack(ARGV, 9 + n)})
return {id, data, timeout, attempt}
"""
)
# Run by SHA in a pipeline (redis-py's Script would cost a SCRIPT EXISTS round trip each time).
TAKE_SHA = hashlib.sha1(TAKE_LUA.encode()).hexdigest()


def _around_id(key_for: Callable[[str], str]) -> tuple[str, str]:
    """What a per-job key holds before and after the job's id."""
    before, _, after = key_for("\0").partition("\0")
    return before, after


@dataclass(frozen=True)
class Runnable:
    """A job taken off the queue: the request, and how long before the worker stops it by force."""

    request: InvocationRequest
    backstop_s: float


@dataclass(frozen=True)
class Take:
    """What the take step found."""

    job_id: str
    attempt: int  # below 1: not claimed (the job ended, or the factory has no record of it)
    runnable: Runnable | None  # None: nothing to run
    in_rq: bool = True  # False: RQ has no such job


class RQJobs:
    """RQ's queue and job hashes, as the worker uses them."""

    def __init__(self, settings: Settings, client: redis.Redis, blocking: redis.Redis, worker_name: str) -> None:
        self.settings = settings
        self.client = client
        self.blocking = blocking  # no socket timeout: for the blocking pop
        self.worker_name = worker_name
        self.queue = Queue(settings.queue_name, connection=client, serializer=JSONSerializer)
        self._rq_key = _around_id(Job.key_for)
        self._job_key = _around_id(keys.job_key)

    def take(self, timeout_s: float) -> str | None:
        """The next job id on the queue, waiting up to ``timeout_s``; None if there was none.

        The id stays on the queue (moved from its head to its tail, where the take step removes
        it with the claim, atomically): a worker that dies between the two leaves the job queued
        for another, never lost. Two idle workers may see the same id; one take step wins.
        """
        reply: bytes | None = self.blocking.blmove(  # type: ignore[assignment]
            self.queue.key,
            self.queue.key,
            timeout_s,  # type: ignore[arg-type]  # Redis takes fractions of a second; the stub says int
            "LEFT",
            "RIGHT",
        )
        return None if reply is None else reply.decode()

    def take_on(self, pipe: Pipeline, job_id: str | None, token: str, lost_after_s: float) -> None:
        """Queue on ``pipe`` the take of ``job_id`` (None: the queue's next) by execution ``token``.

        Its reply goes to :meth:`parse_take`. When Redis answers NOSCRIPT (it restarted), call
        :meth:`load_scripts` and run the pipeline again.
        """
        rq_started: list[EncodableT] = ["status", JobStatus.STARTED.value, "started_at", utcformat(now())]
        rq_started += ["worker_name", self.worker_name]
        record_started = [item for pair in started_fields(self.worker_name).items() for item in pair]
        args: list[EncodableT] = [job_id or "", *self._rq_key, *self._job_key, token, reaper.deadline_ms(lost_after_s)]
        pipe.evalsha(
            TAKE_SHA, 2, self.queue.key, keys.running_jobs_key(), *args, len(rq_started), *rq_started, *record_started
        )

    def load_scripts(self) -> None:
        """Load the scripts run by SHA: the take step's, and the append the work horses run."""
        self.client.script_load(TAKE_LUA)
        self.client.script_load(APPEND_LUA)

    def parse_take(self, reply: list[bytes | int | None] | None) -> Take | None:
        """What :meth:`take_on` found; None when the queue was empty."""
        if reply is None:
            return None
        raw_id, data, timeout, raw_attempt = reply
        job_id, attempt = bytes(raw_id or b"").decode(), int(raw_attempt or 0)
        if data is None:
            logger.error("RQ has no such job", extra={"job_id": job_id})
            return Take(job_id, attempt, None, in_rq=False)
        job = Job(job_id, connection=self.client, serializer=JSONSerializer)
        job.restore({"data": data, "timeout": timeout})
        try:
            if job.func_name != TASK:
                raise ValueError(f"it calls {job.func_name!r}, not {TASK!r}")
            request = InvocationRequest.model_validate(job.args[0])
        except (DeserializationError, ValidationError, ValueError, IndexError, TypeError) as exc:
            logger.error("not a factory invocation: %s", exc, extra={"job_id": job_id})
            return Take(job_id, attempt, None)
        backstop_s = float(job.timeout) if job.timeout else request.timeout_s + DEFAULT_MARGIN_S
        return Take(job_id, attempt, Runnable(request, backstop_s))

    def release(self, claim: reaper.Claim | None, job_id: str, rq_status: JobStatus | None) -> None:
        """:meth:`release_on`, in a round trip of its own."""
        with self.client.pipeline(transaction=False) as pipe:
            self.release_on(pipe, claim, job_id, rq_status)
            pipe.execute()

    def release_on(self, pipe: Pipeline, claim: reaper.Claim | None, job_id: str, rq_status: JobStatus | None) -> None:
        """Queue on ``pipe`` the drop of the execution's heartbeat and, with ``rq_status`` (the job
        ended), its record in RQ's hash, which then expires."""
        if claim is not None:
            reaper.release(pipe, claim)
        if rq_status is not None:
            key = Job.key_for(job_id)
            ended: dict[FieldT, EncodableT] = {"status": rq_status.value, "ended_at": utcformat(now())}
            pipe.hset(key, mapping=ended)
            pipe.expire(key, self.settings.retention_s)
