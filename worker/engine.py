"""The worker's engine: takes jobs off the RQ queue and runs each in a long-lived work horse.

Celery's prefork pool with one child: the worker process imports the prefabs, forks one work
horse (``worker.horse``, ``worker.stable``) and hands it jobs over a pipe, one at a time, so the
fork RQ paid for every job (~7 ms) is paid once per horse. For each job the worker

- takes it in one round trip (``worker.rqjobs``): off the first of its queues that has one (the
  deployments' builds, then one queue per prefab it serves, in turn; ``worker.queues``), its
  request read, its start recorded and the job claimed (an execution token, the attempt number, a
  heartbeat). A busy worker does that in the same round trip that releases the job before; an idle
  one blocks on its queues' doorbells for at most a second, to follow the catalog of deployments
  (its presence record, ``worker.presence``, tells the gateways), run the lost-job reaper every
  heartbeat and see a stop;
- while the horse runs it, refreshes the heartbeat every ``worker_heartbeat_s``, runs the reaper
  when due, and reads the job's record every :data:`POLL_S`: once its stream was ended from
  outside (a cancel, a reaper) or the job passed to another execution, the horse has
  :data:`STOP_GRACE_S` to stop by itself (it does at its next event), then its process group is
  SIGKILLed. A job still running past RQ's own timeout of it (the horse's SIGALRM deadline plus
  the gateway's margin) is stopped the same way and ends with ``TIMEOUT``;
- when the horse replies, releases the execution (settling it first when the run asked for a
  retry or could not close its stream); when the horse dies (SIGKILL, OOM, a crash), settles it
  as lost: retried when it has attempts left, else ``WORKER_LOST``. The worker goes on with a
  fresh horse.

SIGTERM or SIGINT: no new job, and the running one has ``shutdown_grace_s`` to finish; then its
horse is killed and the job is retried on another worker when it has attempts left, else ends
with ``WORKER_SHUTDOWN``. A second signal does it at once. Redis outages: every step retries with
backoff (``worker.outage``), and the worker never dies of one.
"""

import logging
import signal
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from enum import StrEnum
from types import FrameType

import redis
from redis.exceptions import NoScriptError

from factory import reaper
from factory.connections import RETRYABLE
from factory.events import SHUTDOWN, TIMEOUT, UNEXPECTED_ERROR, WORKER_LOST
from factory.jobs import InvocationRequest
from factory.settings import Settings
from factory.store import executions, keys
from factory.store.rqview import RQStatus
from worker.horse import Horse, HorseGone, HorseOrder, HorseReply, describe_exit
from worker.outage import Steps, Unreachable
from worker.rqjobs import RQJobs, Take
from worker.runner import RunEnd, WorkerRuntime
from worker.stable import Stable
from worker.workspace import Workspace

logger = logging.getLogger(__name__)

POLL_S = 0.1  # how often a running job's record is read for an end from outside
STOP_GRACE_S = 0.3  # how long a horse whose job ended from outside may take to stop by itself
IDLE_WAKE_S = 1.0  # the longest an idle worker blocks on the queue
CATALOG_POLL_S = 1.0  # how often the worker looks for prefabs deployed since


class Exit(StrEnum):
    """How the horse's run of a job ended, seen from the worker."""

    REPLIED = "replied"  # the horse ran the job and reported
    DIED = "died"  # the horse died under the job
    ENDED = "ended"  # the job was ended from outside: horse killed
    SHUTDOWN = "shutdown"  # the worker is stopping and the grace period is over: horse killed
    OVERTIME = "overtime"  # the job outran its backstop deadline: horse killed


@dataclass(frozen=True)
class _Start:
    """A job taken and claimed, ready for a horse."""

    request: InvocationRequest
    claim: executions.Claim
    backstop_s: float


@dataclass
class _Run:
    request: InvocationRequest
    claim: executions.Claim
    horse: Horse
    overtime_at: float  # time.monotonic()


class Engine:
    def __init__(self, settings: Settings, runtime: WorkerRuntime, blocking: redis.Redis) -> None:
        self.settings = settings
        self.runtime = runtime
        self.client = runtime.redis
        self.jobs = RQJobs(settings, runtime.redis, blocking, runtime.worker_name)
        self.horses = Stable(runtime, settings.max_jobs_per_horse)
        self._signals = 0
        self._stop_at: float | None = None  # when a stop signal ends the running job
        self._next_reap_s = 0.0
        self._take_delay_s = 0.0
        self._pending: _Start | None = None  # taken with the last job's release
        self._next_catalog_s = 0.0
        self.steps = Steps(stopping=lambda: self._signals > 0)

    def run(self) -> None:
        """Take jobs until a stop signal."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        with suppress(*RETRYABLE):  # else they are loaded on first use
            self.jobs.load_scripts()
            self._follow_catalog()
        name = self.runtime.worker_name
        served = ", ".join(self.jobs.queues.prefab_ids) or "no prefab yet"
        logger.info("Listening on %s: worker %s serving %s", self.settings.queue_name, name, served)
        try:
            while not self._signals or self._pending is not None:  # a job already claimed still runs
                self._reap_if_due()
                horse = self.horses.ready()
                start, self._pending = self._pending or self._wait_for_job(), None
                if start is None:
                    continue
                run = _Run(start.request, start.claim, horse, time.monotonic() + start.backstop_s)
                self._conclude(run, *self._dispatch(run))
        finally:
            self.horses.dismiss()
        logger.info("worker %s stopped", name)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        grace_s = self.settings.shutdown_grace_s if self._signals == 1 else 0.0
        self._stop_at = time.monotonic() + grace_s
        logger.info("%s: taking no new job; a running one has %g s to finish", signal.Signals(signum).name, grace_s)

    def _wait_for_job(self) -> _Start | None:
        """Take the next job of the served queues; with none, wait for a doorbell (at most :data:`IDLE_WAKE_S`)."""
        if self._signals:
            return None
        token = uuid.uuid4().hex
        try:
            self._follow_catalog()
            take = self._step(None, token)
            if take is None:
                self.jobs.wait(min(IDLE_WAKE_S, self.settings.worker_heartbeat_s))
                return None
        except RETRYABLE as exc:
            self._take_delay_s = min(max(self._take_delay_s * 2, 0.1), 5.0)
            logger.warning("cannot reach Redis to take a job (%s); again in %.1f s", exc, self._take_delay_s)
            deadline = time.monotonic() + self._take_delay_s
            while not self._signals and time.monotonic() < deadline:
                time.sleep(0.05)
            return None
        self._take_delay_s = 0.0
        return self._accept(take, token)

    def _follow_catalog(self) -> None:
        """Serve the prefabs deployed since (one GET a second when nothing changed)."""
        now = time.monotonic()
        if now < self._next_catalog_s:
            return
        self._next_catalog_s = now + CATALOG_POLL_S
        if self.jobs.queues.refresh():
            logger.info("serving %s", ", ".join(self.jobs.queues.prefab_ids) or "no prefab yet")

    def _step(self, ended: tuple[executions.Claim, RQStatus | None] | None, token: str) -> Take | None:
        """One round trip: release the execution that ``ended`` (if any), then take the queues' next job
        (none when stopping) for execution ``token``."""
        take = not self._signals
        for first in (True, False):
            try:
                with self.client.pipeline(transaction=False) as pipe:
                    if ended is not None:
                        self.jobs.release_on(pipe, ended[0], ended[0].job_id, ended[1])
                    if take:
                        self.jobs.take_on(pipe, token, self.settings.worker_lost_after_s)
                    replies = pipe.execute()
                return self.jobs.parse_take(replies[-1]) if take else None
            except NoScriptError:
                if not first:
                    raise
                self.jobs.load_scripts()  # Redis restarted since: run it again (each part is idempotent)
        return None

    def _accept(self, take: Take | None, token: str) -> _Start | None:
        """The job to run, from what the take step found; a job that will not run is dealt with here."""
        if take is None:
            return None
        job_id, runnable, outage_s = take.job_id, take.runnable, self.settings.redis_outage_s
        if take.attempt >= 1 and runnable is not None:
            claim = executions.Claim(job_id, token, take.attempt, runnable.request.retries + 1)
            return _Start(runnable.request, claim, runnable.backstop_s)
        if take.attempt >= 1:  # claimed, but there is nothing to run: the job ends here
            claim = executions.Claim(job_id, token, take.attempt, 1)
            message = "the job's request could not be read"
            self.steps.quietly(
                "end the job", lambda: self._settle(claim, UNEXPECTED_ERROR, message, False), job_id, outage_s
            )
            self.steps.quietly("drop the heartbeat", lambda: self.jobs.release(claim, job_id, None), job_id, outage_s)
        else:
            logger.info("job already ended, or unknown to the factory; not running it", extra={"job_id": job_id})
        if take.in_rq:
            status = RQStatus.FINISHED if runnable is not None else RQStatus.FAILED
            self.steps.quietly(
                "record the job's end in RQ", lambda: self.jobs.release(None, job_id, status), job_id, outage_s
            )
        return None

    def _dispatch(self, run: _Run) -> tuple[Exit, HorseReply | None]:
        """Hand the job to the horse (a fresh one if the idle horse died) and supervise it."""
        order = HorseOrder(request=run.request, claim=run.claim)
        try:
            run.horse.send(order)
        except HorseGone:
            run.horse = self.horses.replace(run.horse)
            try:
                run.horse.send(order)
            except HorseGone:
                run.horse.wait()
                return Exit.DIED, None
        self.horses.dispatched(run.horse)
        return self._supervise(run)

    def _supervise(self, run: _Run) -> tuple[Exit, HorseReply | None]:
        """Wait for the horse's reply while keeping the execution alive; stop the horse when it must."""
        horse, heartbeat_s = run.horse, self.settings.worker_heartbeat_s
        started = time.monotonic()
        next_beat, next_poll = started + heartbeat_s, started + POLL_S
        kill_at: float | None = None
        while True:
            try:
                reply = horse.reply(POLL_S)
            except HorseGone:
                horse.wait()
                return Exit.DIED, None
            if reply is not None:
                return Exit.REPLIED, reply
            if horse.exited():  # its pipe may be held open by what its prefab spawned
                return Exit.DIED, None
            now = time.monotonic()
            stop = self._must_stop(run, now, kill_at)
            if stop is not None:
                horse.kill()
                return stop, None
            if now >= next_beat:
                next_beat = now + heartbeat_s
                self._beat(run.claim)
            if kill_at is None and now >= next_poll:
                next_poll = now + POLL_S
                if self._ended_elsewhere(run.claim):
                    kill_at = now + STOP_GRACE_S

    def _must_stop(self, run: _Run, now: float, kill_at: float | None) -> Exit | None:
        if self._stop_at is not None and now >= self._stop_at:
            return Exit.SHUTDOWN
        if now >= run.overtime_at:
            return Exit.OVERTIME
        if kill_at is not None and now >= kill_at:
            return Exit.ENDED
        return None

    def _beat(self, claim: executions.Claim) -> None:
        try:
            executions.refresh(self.client, claim, self.settings.worker_lost_after_s)
        except RETRYABLE as exc:
            logger.warning("cannot reach Redis for the heartbeat: %s", exc, extra={"job_id": claim.job_id})
        self._reap_if_due()

    def _ended_elsewhere(self, claim: executions.Claim) -> bool:
        """Whether the job's stream ended, or the job passed to another execution, under the running horse."""
        try:
            terminal, execution = self.client.hmget(keys.job_key(claim.job_id), ["terminal", "execution"])
        except RETRYABLE:
            return False
        return terminal is not None or execution != claim.token.encode()

    def _conclude(self, run: _Run, exit_: Exit, reply: HorseReply | None) -> None:
        """Settle the execution if the run left anything to settle, then release it (taking the next job)."""
        claim = run.claim
        self.horses.done(run.horse, reusable=exit_ is Exit.REPLIED and reply is not None and not reply.spent)
        if exit_ is not Exit.REPLIED:  # the horse could not clean up after the job
            Workspace(self.settings.state_dir, claim.job_id).remove()
        try:
            if reply is not None and reply.end in (RunEnd.ENDED, RunEnd.SUPERSEDED):
                ended = reply.end is RunEnd.ENDED
            else:
                code, message, retry = self._why(run, exit_, reply)
                settled = self.steps.retrying(
                    "settle the job", lambda: self._settle(claim, code, message, retry), claim.job_id
                )
                if settled not in (executions.Settled.ENDED, executions.Settled.REQUEUED):
                    logger.warning("execution ended: %s (%s)", settled.value, message, extra={"job_id": claim.job_id})
                ended = settled in (executions.Settled.ENDED, executions.Settled.FAILED)
            released = (claim, RQStatus.FINISHED if ended else None)
            token = uuid.uuid4().hex
            take = self.steps.retrying("drop the heartbeat", lambda: self._step(released, token), claim.job_id)
        except Unreachable:
            logger.error("Redis unreachable: leaving the job to the reaper", extra={"job_id": claim.job_id})
            return
        self._pending = self._accept(take, token)

    def _settle(self, claim: executions.Claim, code: str, message: str, retry: bool) -> executions.Settled:
        return executions.settle(self.client, self.settings, claim.job_id, claim.token, code, message, retry=retry)

    def _why(self, run: _Run, exit_: Exit, reply: HorseReply | None) -> tuple[str, str, bool]:
        """The error code and message that end the job if nothing closed its stream, and whether it may retry."""
        if exit_ is Exit.SHUTDOWN:
            grace_s = self.settings.shutdown_grace_s
            return SHUTDOWN, f"the worker was shut down and the job did not finish within {grace_s:g} s", True
        if exit_ is Exit.OVERTIME:
            return TIMEOUT, f"the job exceeded its timeout of {run.request.timeout_s:g} s and was stopped", False
        if exit_ is Exit.DIED:
            return WORKER_LOST, f"the work horse running this job died ({describe_exit(run.horse.status)})", True
        if reply is not None and reply.failure is not None:
            return WORKER_LOST, f"the work horse could not run the job: {reply.failure}", True
        return WORKER_LOST, "the work horse could not write the job's last events", True

    def _reap_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_reap_s:
            return
        self._next_reap_s = now + self.settings.worker_heartbeat_s
        try:
            reaper.reap_once(self.client, self.settings, self.runtime.worker_name)
        except RETRYABLE as exc:
            logger.warning("cannot reach Redis to look for lost jobs: %s", exc)
        except Exception:  # the reaper must never take the worker down with it
            logger.exception("looking for lost jobs failed")
