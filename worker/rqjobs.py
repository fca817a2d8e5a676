"""The worker's side of RQ: take jobs off RQ's queues, read each with RQ's own decoder, and keep
RQ's view of each job (its hash, registries, the worker's state) truthful about its start and end.

Jobs stay real RQ jobs, enqueued by the gateway through RQ (``rq info`` shows the queues, the
workers and the registries), but no RQ worker runs them: RQ's per-job bookkeeping (worker state,
registries, executions, results) cost ~15 round trips a job. The worker takes a job in one
(TAKE, ``factory.store.scripts``), pipelined with the release of the job before, which ends RQ's
view of it (``factory.store.rqview``). A job that goes back on the queue for another attempt is
requeued through RQ (``factory.store.executions.requeue``).
"""

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait

import redis
from pydantic import ValidationError
from redis.client import Pipeline
from redis.exceptions import NoScriptError
from redis.typing import EncodableT

from factory.connections import RETRYABLE
from factory.enqueue import RQ_TIMEOUT_MARGIN_S
from factory.jobs import InvocationRequest
from factory.rqtask import TASK
from factory.settings import Settings
from factory.store import executions, keys, rqview
from factory.store.eventlog import started_fields
from factory.store.rqview import RQStatus
from factory.store.scripts import APPEND_LUA, TAKE_LUA, TAKE_SHA
from worker.deadlines import Deadlines
from worker.queues import ServedQueues

logger = logging.getLogger(__name__)

# The name factory jobs called before the task moved into the core (``factory.rqtask``): a job an
# older gateway queued runs on a newer worker, so an upgrade with calls in the queues loses none.
FORMER_TASKS = ("worker.tasks.run_invocation",)
RUNNABLE_TASKS = frozenset({TASK, *FORMER_TASKS})

STOP_MARK_TTL_S = 60  # longer than any doorbell wait: a stopping worker's mark outlasts the take behind it


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
        self._rq_key = _around_id(keys.rq_job_key)
        self._job_key = _around_id(keys.job_key)
        self._rq_worker_key = keys.rq_worker_key(worker_name)
        self._stop_key = keys.worker_stop_key(worker_name)

    def take_on(self, pipe: Pipeline, token: str, lost_after_s: float) -> None:
        """Queue on ``pipe`` the take of the next job of the worker's queues by execution ``token``.

        Its reply goes to :meth:`parse_take`. When Redis answers NOSCRIPT (it restarted), call
        :meth:`load_scripts` and run the pipeline again.
        """
        pipe.execute_command(*self._take_command(token, lost_after_s))  # type: ignore[no-untyped-call]

    def wait_and_take(
        self, token: str, lost_after_s: float, timeout_s: float, woken: socket.socket, stopping: Callable[[], bool]
    ) -> Take | None:
        """Block until a doorbell of the worker's queues rings (at most ``timeout_s``), then take the
        next job as :meth:`take_on` does, in one round trip: the take is sent behind the wait, and Redis
        runs it the moment the wait ends, with no turn of the worker in between.

        A ring is a hint, not a job: the take finds the job, or another worker was faster. Jobs never
        leave a queue but in the take, so a worker that dies while waiting loses none. ``woken`` (the
        worker's signal wake-up) is watched meanwhile: each time it is readable, ``stopping()`` drains
        it and says whether the worker stops; then the worker's stop mark is set before the wait ends,
        so the take queued behind it takes nothing. :class:`NoScriptError` when Redis lost the script
        (call :meth:`load_scripts`); nothing was taken then.
        """
        doorbells = [keys.doorbell_key(name) for name in self.queues.names()]
        commands = [("BLPOP", *doorbells, timeout_s), self._take_command(token, lost_after_s)]
        pool = self.blocking.connection_pool
        conn = pool.get_connection()
        try:
            packed = conn.pack_commands(commands)  # type: ignore[no-untyped-call]
            conn.send_packed_command(packed)  # type: ignore[no-untyped-call]
            answer = conn._sock  # where the replies come (redis-py has no public name for it)
            while answer is not None and woken in wait([answer, woken]):
                if stopping():
                    self._mark_stopping()
                    break
            conn.read_response()  # the bell, or none
            reply = conn.read_response()
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]  # a reply may be unread: start afresh
            raise
        finally:
            pool.release(conn)
        return self.parse_take(reply)

    def _mark_stopping(self) -> None:
        try:
            self.client.set(self._stop_key, 1, ex=STOP_MARK_TTL_S)
        except RETRYABLE as exc:  # the take behind the wait may then take a job: it runs, as one taken before
            logger.warning("cannot reach Redis to stop taking jobs: %s", exc)

    def _take_command(self, token: str, lost_after_s: float) -> list[EncodableT]:
        """TAKE's EVALSHA for execution ``token`` (its times are Redis' own when it runs)."""
        rq_started = rqview.start_fields(self.worker_name)
        record_started = [item for pair in started_fields(self.worker_name).items() for item in pair]
        args: list[EncodableT] = [*self._rq_key, *self._job_key, token, round(lost_after_s * 1000)]
        args += [keys.RQ_QUEUE_PREFIX, keys.RQ_STARTED_PREFIX, rqview.STARTED_GRACE_S, RQ_TIMEOUT_MARGIN_S]
        args += [self._rq_worker_key, len(rq_started), *rq_started, *record_started]
        queue_keys = self.queues.keys_in_turn()
        head: list[EncodableT] = ["EVALSHA", TAKE_SHA, 2 + len(queue_keys), keys.running_jobs_key(), self._stop_key]
        return [*head, *queue_keys, *args]

    def load_scripts(self) -> None:
        """Load the scripts run by SHA: the take step's, RQ's end of a job, and the append the work horses run."""
        for script in (TAKE_LUA, APPEND_LUA, *rqview.SCRIPTS):
            self.client.script_load(script)

    def parse_take(self, reply: list[bytes | int | None] | None) -> Take | None:
        """What :meth:`take_on` found; None when the queue was empty."""
        if reply is None:
            return None
        raw_id, data, timeout, raw_attempt = reply
        job_id, attempt = bytes(raw_id or b"").decode(), int(raw_attempt or 0)
        if data is None:
            logger.error("RQ has no such job", extra={"job_id": job_id})
            return Take(job_id, attempt, None, in_rq=False)
        try:
            call = rqview.decode_call(job_id, bytes(data), None if timeout is None else bytes(timeout))
            if call.func_name not in RUNNABLE_TASKS:
                raise ValueError(f"it calls {call.func_name!r}, not {TASK!r}")
            request = InvocationRequest.model_validate(call.args[0])
        except (rqview.RQJobUnreadable, ValidationError, ValueError, IndexError, TypeError) as exc:
            logger.error("not a factory invocation: %s", exc, extra={"job_id": job_id})
            return Take(job_id, attempt, None)
        deadlines = Deadlines.of(request, call.timeout_s)
        return Take(job_id, attempt, Runnable(request, deadlines))

    def release(self, claim: executions.Claim | None, job_id: str, rq_status: RQStatus | None) -> None:
        """:meth:`release_on`, in a round trip of its own (loading the scripts again if Redis lost them)."""
        for first in (True, False):
            try:
                with self.client.pipeline(transaction=False) as pipe:
                    self.release_on(pipe, claim, job_id, rq_status)
                    pipe.execute()
                return
            except NoScriptError:
                if not first:
                    raise
                self.load_scripts()  # each part of the release is idempotent: run it again

    def release_on(
        self, pipe: Pipeline, claim: executions.Claim | None, job_id: str, rq_status: RQStatus | None
    ) -> None:
        """Queue on ``pipe`` the drop of the execution's heartbeat and its end in RQ's view: with
        ``rq_status`` (the job ended) RQ's hash and registries take the record's status (``rq_status``
        when the record has none) and expire after the retention."""
        if claim is not None:
            executions.release(pipe, claim)
        token = claim.token if claim is not None else ""
        rqview.end_job_on(pipe, job_id, token, rq_status, self.settings.retention_s, self.worker_name)
