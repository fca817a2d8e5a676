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
from rq.exceptions import DeserializationError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat

from factory import keys, reaper
from factory.eventlog import APPEND_LUA, CLAIM_FUNCTION, started_fields
from factory.jobs import InvocationRequest
from factory.rqtask import TASK
from factory.settings import Settings
from worker.deadlines import Deadlines
from worker.queues import ServedQueues

logger = logging.getLogger(__name__)

# Takes a job for a worker: the next one off the first of its queues that has one; reads its RQ
# job, marks it started there, and claims its factory record (``factory.eventlog.CLAIM_FUNCTION``):
# one round trip. The keys of a popped job are built here, from the parts RQ and ``factory.keys``
# give around its id, so this script could not run on a Redis Cluster (nor could RQ).
# KEYS: the running set, then the queues in the order to try them. ARGV: 1/2 RQ job key and 3/4
# factory job key before/after the id, 5 execution token, 6 heartbeat deadline (ms), 7 how many
# items follow for RQ, then RQ's field/value pairs of the start, then the record's. Replies false
# when every queue is empty, else {id, RQ data, RQ timeout, attempt} where attempt is below 1 when
# the job cannot be claimed, and RQ data false when RQ has no such job. The running-set member is
# ``<id>:<token>``, as ``factory.reaper.Claim.member``.
TAKE_LUA = (
    CLAIM_FUNCTION
    + """
local id = false
for i = 2, #KEYS do
  id = redis.call('LPOP', KEYS[i])
  if id then break end
end
if not id then return false end
local rq_job = ARGV[1] .. id .. ARGV[2]
local data, timeout = unpack(redis.call('HMGET', rq_job, 'data', 'timeout'))
if not data then return {id, false, false, -3} end
local n = tonumber(ARGV[7])
redis.call('HSET', rq_job, unpack(ARGV, 8, 7 + n))
local token = ARGV[5]
local attempt = claim(ARGV[3] .. id .. ARGV[4], KEYS[1], token, id .. ':' .. token, ARGV[6], {unpack(ARGV, 8 + n)})
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
    """A job taken off the queue: the request, and its deadlines (RQ's timeout of it is the backstop)."""

    request: InvocationRequest
    deadlines: Deadlines


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
        self.queues = ServedQueues(settings, client)
        self._rq_key = _around_id(Job.key_for)
        self._job_key = _around_id(keys.job_key)

    def wait(self, timeout_s: float) -> bool:
        """Block until a doorbell of the worker's queues rings, or ``timeout_s`` passed; whether one rang.

        A ring is a hint, not a job: the take that follows finds the job, or another worker was
        faster. Jobs never leave a queue but in the take step, so a worker that dies here loses none.
        """
        doorbells = [keys.doorbell_key(name) for name in self.queues.names()]
        reply = self.blocking.blpop(doorbells, timeout_s)  # fractions of a second work
        return reply is not None

    def take_on(self, pipe: Pipeline, token: str, lost_after_s: float) -> None:
        """Queue on ``pipe`` the take of the next job of the worker's queues by execution ``token``.

        Its reply goes to :meth:`parse_take`. When Redis answers NOSCRIPT (it restarted), call
        :meth:`load_scripts` and run the pipeline again.
        """
        rq_started: list[EncodableT] = ["status", JobStatus.STARTED.value, "started_at", utcformat(now())]
        rq_started += ["worker_name", self.worker_name]
        record_started = [item for pair in started_fields(self.worker_name).items() for item in pair]
        args: list[EncodableT] = [*self._rq_key, *self._job_key, token, reaper.deadline_ms(lost_after_s)]
        queue_keys = self.queues.keys_in_turn()
        pipe.evalsha(
            TAKE_SHA,
            1 + len(queue_keys),
            keys.running_jobs_key(),
            *queue_keys,
            *args,
            len(rq_started),
            *rq_started,
            *record_started,
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
        deadlines = Deadlines.of(request, float(job.timeout) if job.timeout else None)
        return Take(job_id, attempt, Runnable(request, deadlines))

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
