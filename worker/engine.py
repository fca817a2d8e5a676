"""The worker's engine: takes jobs off the RQ queue and runs each in a long-lived work horse.

Celery's prefork pool with one child: the worker process imports the prefabs, forks one work
horse (``worker.horse``, ``worker.stable``) and hands it jobs over a pipe, one at a time, so the
fork RQ paid for every job (~7 ms) is paid once per horse. :meth:`Engine.run` reads top-down;
each job goes through three steps:

1. **run** (:meth:`Engine._run`): the horse runs the job while the worker keeps the execution alive
   (its heartbeat every ``worker_heartbeat_s``, the lost-job reaper when due) and watches the job's
   channel (``worker.endwatch``): once its stream is ended from outside (a cancel, a reaper) or the
   job passes to another execution, the horse has a short grace to stop by itself (it does at its
   next event), then its process group is SIGKILLed. A job still running past its backstop (a
   function that defeats its timeout) is stopped the same way and ends with ``TIMEOUT``. Every
   deadline comes from ``worker.deadlines``. The run ends with one ``worker.outcomes.RunOutcome``,
   reported by the horse or found by the worker (the horse died, or was killed);
2. **settle** (:meth:`Engine._settle`): when that outcome leaves the job open (or asks for a retry),
   ``factory.executions.settle`` puts it back on the queue, retries it when it has attempts left, or ends
   it with the error the outcome names (``WORKER_LOST``, ``WORKER_SHUTDOWN``, ``TIMEOUT``);
3. **release and take next** (:meth:`Engine._release_and_take_next`): one round trip drops the
   execution's heartbeat (recording the job's end in RQ's hash) and takes the next job of the
   worker's queues (``worker.rqjobs``): its request read, its start recorded and the job claimed
   (an execution token, the attempt number, a heartbeat). A busy worker so goes from one job to
   the next without waiting; the job it took is run at the next turn of the loop.

An idle worker takes a job the same way (:meth:`Engine._take_or_wait`), off the first of its
queues that has one (the deployments' builds, then one queue per prefab it serves, in turn;
``worker.queues``). Once a take found none, it blocks on its queues' doorbells for at most a
second, to follow the catalog of deployments (its presence record, ``worker.presence``, tells the
gateways), run the reaper every heartbeat and see a stop; its next take is sent behind that wait
and runs in Redis when a doorbell rings, so a job enqueued to an idle worker is taken with no
round trip of its own.

SIGTERM or SIGINT: no new job (a wait in progress marks the worker stopping first, so the take
queued behind it takes nothing), and the running one has ``shutdown_grace_s`` to finish; then its
horse is killed and the job is retried on another worker when it has attempts left, else ends
with ``WORKER_SHUTDOWN``. A second signal does it at once. A signal, a horse's death and a
message on the job's channel each wake the worker at once (signals through Python's wake-up
descriptor). Redis outages: every step retries with backoff (``worker.outage``), and the worker
never dies of one.
"""

import logging
import signal
import socket
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from types import FrameType

import redis
from redis.exceptions import NoScriptError

from factory import reaper
from factory.connections import RETRYABLE
from factory.events import SHUTDOWN, TIMEOUT, UNEXPECTED_ERROR, WORKER_LOST
from factory.jobs import InvocationRequest
from factory.settings import Settings
from factory.store import executions
from factory.store.rqview import RQStatus
from worker import deadlines
from worker.deadlines import Deadlines
from worker.endwatch import EndWatch, left_execution, queue_read_of_record
from worker.horse import Horse, HorseGone, HorseOrder, HorseReply, describe_exit
from worker.outage import Steps, Unreachable
from worker.outcomes import RunOutcome
from worker.rqjobs import RQJobs, Take
from worker.runner import WorkerRuntime
from worker.stable import Stable
from worker.workspace import Workspace

logger = logging.getLogger(__name__)

WATCH_AFTER_S = 0.05  # a run not over by then follows its job's channel (a quick job costs no subscription)
IDLE_WAKE_S = 1.0  # the longest an idle worker blocks on the queue
CATALOG_POLL_S = 1.0  # how often the worker looks for prefabs deployed since


@dataclass(frozen=True)
class _Job:
    """A job taken and claimed, ready for a horse."""

    request: InvocationRequest
    claim: executions.Claim
    deadlines: Deadlines


@dataclass
class _Run:
    """One job's run in a horse, and how it ended."""

    job: _Job
    horse: Horse
    outcome: RunOutcome = RunOutcome.HORSE_DIED
    reply: HorseReply | None = None  # the horse's report, when it made one


class Engine:
    def __init__(self, settings: Settings, runtime: WorkerRuntime, blocking: redis.Redis) -> None:
        self.settings = settings
        self.runtime = runtime
        self.client = runtime.redis
        self.jobs = RQJobs(settings, runtime.redis, blocking, runtime.worker_name)
        self.horses = Stable(runtime, settings.max_jobs_per_horse)
        self.watch = EndWatch(runtime.redis)
        self._signals = 0
        self._stop_at: float | None = None  # when a stop signal ends the running job
        self._next_reap_s = 0.0
        self._take_delay_s = 0.0
        self._next_catalog_s = 0.0
        self._queues_empty = False  # the last take found no job: the next one waits for a doorbell first
        self._wake_r, self._wake_w = socket.socketpair()  # a signal's byte wakes the wait for the horse
        self.steps = Steps(stopping=lambda: self._signals > 0)

    def run(self) -> None:
        """Take jobs until a stop signal; a job already claimed still runs."""
        self._catch_signals()
        with suppress(*RETRYABLE):  # else they are loaded on first use
            self.jobs.load_scripts()
            self._follow_catalog()
        name = self.runtime.worker_name
        served = ", ".join(self.jobs.queues.prefab_ids) or "no prefab yet"
        logger.info("Listening on %s: worker %s serving %s", self.settings.queue_name, name, served)
        job: _Job | None = None
        try:
            while job is not None or not self._signals:
                self._reap_if_due()
                horse = self.horses.ready()  # forked here, before a job waits for it
                job = job or self._take_or_wait()  # the job taken with the last release, else one taken now
                if job is None:
                    continue
                run = self._run(job, horse)
                try:
                    ended = self._settle(run)
                    job = self._release_and_take_next(run.job.claim, ended)
                except Unreachable:
                    logger.error(
                        "Redis unreachable: leaving the job to the reaper", extra={"job_id": run.job.claim.job_id}
                    )
                    job = None
        finally:
            self.horses.dismiss()
            self.watch.close()
            signal.set_wakeup_fd(-1)
        logger.info("worker %s stopped", name)

    def _catch_signals(self) -> None:
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # a horse that dies wakes the worker

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        now = time.monotonic()
        self._stop_at = deadlines.shutdown_by(self.settings, now, self._signals)
        grace_s = self._stop_at - now
        logger.info("%s: taking no new job; a running one has %g s to finish", signal.Signals(signum).name, grace_s)

    # 1. Run

    def _run(self, job: _Job, horse: Horse) -> _Run:
        """Hand the job to the horse and supervise it to its end; the horse is kept, or let go, after."""
        run = _Run(job, horse)
        run.outcome, run.reply = self._dispatch(run)
        self.horses.done(run.horse, reusable=run.reply is not None and not run.reply.spent)
        if not run.outcome.reported:  # the horse could not clean up after the job
            Workspace(self.settings.state_dir, job.claim.job_id).remove()
        return run

    def _dispatch(self, run: _Run) -> tuple[RunOutcome, HorseReply | None]:
        """Hand the job to the horse (a fresh one if the idle horse died) and supervise it."""
        order = HorseOrder(request=run.job.request, claim=run.job.claim, deadlines=run.job.deadlines)
        try:
            run.horse.send(order)
        except HorseGone:
            run.horse = self.horses.replace(run.horse)
            try:
                run.horse.send(order)
            except HorseGone:
                run.horse.wait()
                return RunOutcome.HORSE_DIED, None
        self.horses.dispatched(run.horse)
        return self._supervise(run)

    def _supervise(self, run: _Run) -> tuple[RunOutcome, HorseReply | None]:
        """Wait for the horse's reply while keeping the execution alive; stop the horse when it must.

        The worker sleeps until the horse replies or dies, a message comes on the job's channel, a
        signal, or the next of its deadlines: the heartbeat, the subscription's start, the backstop,
        the grace of a job that left this execution, the shutdown's.
        """
        horse, claim, now = run.horse, run.job.claim, time.monotonic()
        kill_by = run.job.deadlines.horse_by(now)
        beat_at = deadlines.next_beat(self.settings, now)
        watch_at: float | None = now + WATCH_AFTER_S
        stop_by: float | None = None  # the job left this execution: the horse's grace ends then
        try:
            while True:
                wake_at = min(t for t in (kill_by, beat_at, watch_at, stop_by, self._stop_at) if t is not None)
                self._wait(horse, wake_at - now)
                try:
                    reply = horse.reply(0)
                except HorseGone:
                    horse.wait()
                    return RunOutcome.HORSE_DIED, None
                if reply is not None:
                    return reply.outcome, reply
                if horse.exited():  # its pipe may be held open by what its prefab spawned
                    return RunOutcome.HORSE_DIED, None
                now = time.monotonic()
                if watch_at is not None and now >= watch_at:
                    watch_at = None
                    self.watch.follow(claim)
                left = self.watch.poll()
                if now >= beat_at:
                    beat_at = deadlines.next_beat(self.settings, now)
                    left = self._beat(claim) or left
                    self.watch.repair()
                if left and stop_by is None:
                    stop_by = deadlines.stop_by(now)
                killed = self._must_stop(now, kill_by, stop_by)
                if killed is not None:
                    horse.kill()
                    return killed, None
        finally:
            self.watch.stop()

    def _wait(self, horse: Horse, timeout_s: float) -> None:
        """Block until the horse writes (or dies), a message for the watch, a signal, or ``timeout_s``."""
        watched: list[Connection | socket.socket | int] = [horse.conn, self._wake_r]
        channel = self.watch.fileno()
        if channel is not None:
            watched.append(channel)
        if self._wake_r in wait(watched, max(0.0, timeout_s)):
            self._woken_to_stop()

    def _must_stop(self, now: float, kill_by: float, stop_by: float | None) -> RunOutcome | None:
        if self._stop_at is not None and now >= self._stop_at:
            return RunOutcome.KILLED_FOR_SHUTDOWN
        if now >= kill_by:
            return RunOutcome.KILLED_PAST_BACKSTOP
        if stop_by is not None and now >= stop_by:
            return RunOutcome.KILLED_ENDED_ELSEWHERE
        return None

    def _beat(self, claim: executions.Claim) -> bool:
        """Refresh the execution's heartbeat and read the job's record, in one round trip (the safety
        net under the watch); whether the job left this execution."""
        left = False
        try:
            with self.client.pipeline(transaction=False) as pipe:
                executions.refresh(pipe, claim, self.settings.worker_lost_after_s)
                queue_read_of_record(pipe, claim.job_id)
                left = left_execution(pipe.execute()[-1], claim)
        except RETRYABLE as exc:
            logger.warning("cannot reach Redis for the heartbeat: %s", exc, extra={"job_id": claim.job_id})
        self._reap_if_due()
        return left

    # 2. Settle

    def _settle(self, run: _Run) -> bool:
        """Settle the execution when its outcome leaves the job open or asks for a retry; whether the job ended.

        :class:`Unreachable` when Redis stayed away while the worker was stopping."""
        outcome, claim = run.outcome, run.job.claim
        if not outcome.needs_settling:
            return outcome is RunOutcome.CLOSED
        code, message = self._why(run)
        settled = self.steps.retrying(
            "settle the job", lambda: self._settle_as(claim, code, message, outcome.may_retry), claim.job_id
        )
        if settled not in (executions.Settled.ENDED, executions.Settled.REQUEUED):
            logger.warning("execution ended: %s (%s)", settled.value, message, extra={"job_id": claim.job_id})
        return settled in (executions.Settled.ENDED, executions.Settled.FAILED)

    def _settle_as(self, claim: executions.Claim, code: str, message: str, retry: bool) -> executions.Settled:
        return executions.settle(self.client, self.settings, claim.job_id, claim.token, code, message, retry=retry)

    def _why(self, run: _Run) -> tuple[str, str]:
        """The error code and message that end the job if nothing closed its stream."""
        match run.outcome:
            case RunOutcome.KILLED_FOR_SHUTDOWN:
                grace_s = self.settings.shutdown_grace_s
                return SHUTDOWN, f"the worker was shut down and the job did not finish within {grace_s:g} s"
            case RunOutcome.KILLED_PAST_BACKSTOP:
                timeout_s = run.job.deadlines.timeout_s
                return TIMEOUT, f"the job exceeded its timeout of {timeout_s:g} s and was stopped"
            case RunOutcome.HORSE_DIED:
                return WORKER_LOST, f"the work horse running this job died ({describe_exit(run.horse.status)})"
            case RunOutcome.RUN_FAILED if run.reply is not None:
                return WORKER_LOST, f"the work horse could not run the job: {run.reply.failure}"
            case RunOutcome.KILLED_ENDED_ELSEWHERE:
                return WORKER_LOST, "the job left this execution and its work horse was stopped"
            case _:
                return WORKER_LOST, "the work horse could not write the job's last events"

    # 3. Release and take next

    def _release_and_take_next(self, claim: executions.Claim, ended: bool) -> _Job | None:
        """Release the execution (its job's end recorded in RQ if it ``ended``) and take the next job,
        in one round trip; :class:`Unreachable` when Redis stayed away while the worker was stopping."""
        token = uuid.uuid4().hex
        released = (claim, RQStatus.FINISHED if ended else None)
        take = self.steps.retrying("release the job", lambda: self._step(released, token), claim.job_id)
        return self._accept(take, token)

    def _take_or_wait(self) -> _Job | None:
        """Take the next job of the served queues; when the last take found none, wait for a doorbell
        first (at most :data:`IDLE_WAKE_S`), the take sent behind the wait."""
        if self._signals:
            return None
        token = uuid.uuid4().hex
        try:
            self._follow_catalog()
            if self._queues_empty:
                take = self._wait_and_take(token)
            else:
                take = self._step(None, token)
        except RETRYABLE as exc:
            self._queues_empty = False  # Redis may have come back with jobs and no doorbell: look first
            self._take_delay_s = min(max(self._take_delay_s * 2, 0.1), 5.0)
            logger.warning("cannot reach Redis to take a job (%s); again in %.1f s", exc, self._take_delay_s)
            deadline = time.monotonic() + self._take_delay_s
            while not self._signals and time.monotonic() < deadline:
                time.sleep(0.05)
            return None
        self._take_delay_s = 0.0
        return self._accept(take, token)

    def _wait_and_take(self, token: str) -> Take | None:
        timeout_s = min(IDLE_WAKE_S, self.settings.worker_heartbeat_s)
        try:
            take = self.jobs.wait_and_take(
                token, self.settings.worker_lost_after_s, timeout_s, self._wake_r, self._woken_to_stop
            )
        except NoScriptError:
            self.jobs.load_scripts()  # Redis restarted since: nothing was taken; look again at once
            self._queues_empty = False
            return None
        self._queues_empty = take is None
        return take

    def _woken_to_stop(self) -> bool:
        """Drain the signal wake-up; whether a stop signal came (a horse's death also wakes it)."""
        with suppress(BlockingIOError):
            while self._wake_r.recv(512):
                pass
        return self._signals > 0

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
                found = self.jobs.parse_take(replies[-1]) if take else None
                self._queues_empty = found is None
                return found
            except NoScriptError:
                if not first:
                    raise
                self.jobs.load_scripts()  # Redis restarted since: run it again (each part is idempotent)
        return None

    def _accept(self, take: Take | None, token: str) -> _Job | None:
        """The job to run, from what the take step found; a job that will not run is dealt with here."""
        if take is None:
            return None
        job_id, runnable, outage_s = take.job_id, take.runnable, self.settings.redis_outage_s
        if take.attempt >= 1 and runnable is not None:
            claim = executions.Claim(job_id, token, take.attempt, runnable.request.retries + 1)
            return _Job(runnable.request, claim, runnable.deadlines)
        if take.attempt >= 1:  # claimed, but there is nothing to run: the job ends here
            claim = executions.Claim(job_id, token, take.attempt, 1)
            message = "the job's request could not be read"
            self.steps.quietly(
                "end the job", lambda: self._settle_as(claim, UNEXPECTED_ERROR, message, False), job_id, outage_s
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

    # Between jobs

    def _follow_catalog(self) -> None:
        """Serve the prefabs deployed since (one GET a second when nothing changed)."""
        now = time.monotonic()
        if now < self._next_catalog_s:
            return
        self._next_catalog_s = now + CATALOG_POLL_S
        if self.jobs.queues.refresh():
            logger.info("serving %s", ", ".join(self.jobs.queues.prefab_ids) or "no prefab yet")

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
