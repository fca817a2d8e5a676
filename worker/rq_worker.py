"""FactoryWorker: RQ's forking worker, taught the factory's side of a job's life.

- Before forking a work horse it claims the job (``factory.reaper.claim``): an execution token
  the horse writes with, the attempt number, and a heartbeat this process refreshes every
  ``job_monitoring_interval`` (``worker_heartbeat_s``) while the horse runs.
- When the horse exits it settles the execution: nothing to do when the horse ended the stream;
  a retry the horse asked for, or a horse that died (SIGKILL, OOM), puts the job back on the
  queue when it has attempts left, else ends it with ``WORKER_LOST``. The worker goes on.
- Idle or busy, it runs the lost-job reaper about every heartbeat: the dequeue blocks at most
  that long, and a busy worker reaps from its monitor loop.
- SIGTERM (RQ's warm shutdown): no new job, and the running one has ``shutdown_grace_s`` to
  finish; then its horse is killed and the job, like a lost one, is retried on another worker
  when it has attempts left, else ends with ``WORKER_SHUTDOWN``. A second signal (RQ's cold
  shutdown) does the same at once.
- Redis outages: RQ reconnects with backoff in its dequeue loop but gives up elsewhere; the
  overrides here log and carry on instead, and the settling waits for Redis to come back.
"""

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

from pydantic import ValidationError
from rq import Queue, Worker
from rq.job import Job

from factory import reaper
from factory.connections import RETRYABLE
from factory.events import SHUTDOWN, WORKER_LOST
from factory.jobs import InvocationRequest
from worker.runner import WorkerRuntime
from worker.workspace import Workspace

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _horse_end(status: int | None) -> str:
    if status is None:
        return "its exit was not seen"
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"


class FactoryWorker(Worker):
    # Cap RQ's reconnect backoff, so workers resume soon after Redis comes back.
    max_connection_wait_time = 5.0

    def __init__(self, *args: Any, runtime: WorkerRuntime, **kwargs: Any) -> None:
        self.runtime = runtime  # first: RQ's constructor reads dequeue_timeout
        super().__init__(*args, **kwargs)
        self.stop_signalled = False
        self._claim: reaper.Claim | None = None
        self._horse_status: int | None = None
        self._shutdown_timer: threading.Timer | None = None
        self._shutdown_kill = False
        self._next_reap_s = 0.0

    @property
    def dequeue_timeout(self) -> int:
        """Wake up from an idle dequeue every heartbeat, to reap lost jobs."""
        return max(1, int(self.runtime.settings.worker_heartbeat_s))

    def execute_job(self, job: Job, queue: Queue) -> None:
        claim = self._claim_job(job)
        self._horse_status = None
        try:
            super().execute_job(job, queue)
        except RETRYABLE as exc:
            logger.error("Redis failed under the job's bookkeeping: %s", exc, extra={"job_id": job.id})
        finally:
            self.runtime.claims.pop(job.id, None)
            self._claim = None
            if claim is not None:
                self._settle(claim)
            Workspace(self.runtime.settings.state_dir, job.id).remove()

    def _claim_job(self, job: Job) -> reaper.Claim | None:
        """Claim the job before forking, so the horse inherits its execution."""
        try:
            request = InvocationRequest.model_validate(job.args[0])
        except (ValidationError, IndexError, TypeError):
            logger.error("not a factory invocation; running it unclaimed", extra={"job_id": job.id})
            return None
        settings = self.runtime.settings
        claim = self._retrying(
            "claim the job",
            lambda: reaper.claim(self.runtime.redis, job.id, request.retries + 1, settings.worker_lost_after_s),
            give_up_after_s=settings.redis_outage_s,
        )
        if claim is not None:
            self.runtime.claims[job.id] = claim
            self._claim = claim
        return claim

    def _settle(self, claim: reaper.Claim) -> None:
        """Leave the job ended or queued again, then drop the execution's heartbeat."""
        if self._shutdown_kill:
            grace = self.runtime.settings.shutdown_grace_s
            code, message = SHUTDOWN, f"the worker was shut down and the job did not finish within {grace:g} s"
        else:
            code, message = WORKER_LOST, f"the work horse running this job died ({_horse_end(self._horse_status)})"
        settings, client = self.runtime.settings, self.runtime.redis
        outcome = self._retrying(
            "settle the job", lambda: reaper.settle(client, settings, claim.job_id, claim.token, code, message)
        )
        if outcome is None:
            logger.error("Redis unreachable: leaving the job to the reaper", extra={"job_id": claim.job_id})
            return
        if outcome is not reaper.Settled.ENDED:
            logger.warning("execution ended: %s (%s)", outcome.value, message, extra={"job_id": claim.job_id})
        self._retrying("drop the heartbeat", lambda: reaper.release(client, claim))

    def _retrying(self, what: str, step: Callable[[], T], give_up_after_s: float | None = None) -> T | None:
        """Run a Redis step, retrying through an outage; None if it gave up (deadline, or stopping)."""
        deadline = None if give_up_after_s is None else time.monotonic() + give_up_after_s
        delay_s = 0.1
        while True:
            try:
                return step()
            except RETRYABLE as exc:
                stopping = self.stop_signalled and give_up_after_s is None
                if stopping or (deadline is not None and time.monotonic() > deadline):
                    logger.error("could not %s: Redis unreachable (%s)", what, exc)
                    return None
                logger.warning("could not %s: Redis unreachable (%s); retrying in %.1f s", what, exc, delay_s)
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, 2.0)

    def wait_for_horse(self) -> tuple[int | None, int | None, Any]:
        pid, status, rusage = super().wait_for_horse()
        if pid:
            self._horse_status = status
        return pid, status, rusage

    def maintain_heartbeats(self, job: Job, execution: Any) -> None:
        """RQ's heartbeats plus the execution's; an outage skips a beat instead of ending the worker."""
        try:
            if self._claim is not None:
                reaper.refresh(self.runtime.redis, self._claim, self.runtime.settings.worker_lost_after_s)
            super().maintain_heartbeats(job, execution)
        except RETRYABLE as exc:
            logger.warning("cannot reach Redis for the heartbeat: %s", exc, extra={"job_id": job.id})
        self._reap_if_due()

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None:
            super().heartbeat(timeout, pipeline)
            return
        try:
            super().heartbeat(timeout)
        except RETRYABLE as exc:
            logger.warning("cannot reach Redis for the worker's heartbeat: %s", exc)
            return
        if not self.is_horse:
            self._reap_if_due()

    def set_state(self, state: str, pipeline: Any = None) -> None:
        try:
            super().set_state(state, pipeline)
        except RETRYABLE as exc:
            if pipeline is not None:
                raise
            logger.warning("cannot reach Redis to record the worker's state: %s", exc)

    def check_for_suspension(self, burst: bool) -> None:
        try:
            super().check_for_suspension(burst)
        except RETRYABLE as exc:
            logger.warning("cannot reach Redis to check for suspension: %s", exc)

    def run_maintenance_tasks(self) -> None:
        self._reap_if_due()  # before RQ's registry cleanup, which would mark lost jobs failed in RQ
        try:
            super().run_maintenance_tasks()  # type: ignore[no-untyped-call]
        except RETRYABLE as exc:
            logger.warning("cannot reach Redis for maintenance: %s", exc)

    def _reap_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_reap_s:
            return
        settings = self.runtime.settings
        self._next_reap_s = now + settings.worker_heartbeat_s
        try:
            reaper.reap_once(self.runtime.redis, settings, self.name)
        except RETRYABLE as exc:
            logger.warning("cannot reach Redis to look for lost jobs: %s", exc)
        except Exception:  # the reaper must never take the worker down with it
            logger.exception("looking for lost jobs failed")

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_signalled = True
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.horse_pid:
            self._shutdown_kill = True
        super().request_force_stop(signum, frame)

    def handle_warm_shutdown_request(self) -> None:
        super().handle_warm_shutdown_request()  # type: ignore[no-untyped-call]
        if self.horse_pid and self._shutdown_timer is None:
            grace_s = self.runtime.settings.shutdown_grace_s
            logger.info("shutting down: the running job has %g s to finish", grace_s)
            self._shutdown_timer = threading.Timer(grace_s, self._grace_over)
            self._shutdown_timer.daemon = True
            self._shutdown_timer.start()

    def _grace_over(self) -> None:
        """Runs on the timer's thread: stop the job that outlived the shutdown grace period."""
        pid = self.horse_pid  # read once: the main thread sets it to 0 when the horse exits
        if not pid:
            return
        self._shutdown_kill = True
        logger.warning("shutdown grace period over: stopping the running job")
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)  # the horse leads its own process group
        except ProcessLookupError:
            pass  # it ended meanwhile

    def teardown(self) -> None:
        if self._shutdown_timer is not None:
            self._shutdown_timer.cancel()
        try:
            super().teardown()  # type: ignore[no-untyped-call]
        except RETRYABLE as exc:
            logger.warning("cannot reach Redis to deregister the worker: %s", exc)
