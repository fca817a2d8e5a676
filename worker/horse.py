"""The work horse: a child the worker forks once and hands jobs to over a pipe, one at a time.

Parent side, :class:`Horse`: fork the child, send it a :class:`HorseOrder` (the request, the
worker's claim on it and its deadlines), read its :class:`HorseReply` (how the run ended), kill
its process group, collect its exit status. Child side, :func:`_serve`: read an order, run it
with :class:`InvocationRunner`, reply, until the pipe closes. Messages are pydantic models as
JSON, framed by ``multiprocessing.connection`` (a length prefix per message).

The child leads a process group of its own, ignores SIGINT and SIGTERM and leaves the worker's
signal wake-up descriptor alone: the worker decides when a job stops. It never imports prefab
code: it runs each job through the prefab version's runner (``worker.runners``), a process of
its own in the version's environment that dies with its horse; module state of a prefab lives
on from one job to the next of the same runner, as in Celery's prefork pool. That is the
deliberate difference from RQ's fork per job, which cost ~7 ms a job; the worker retires a horse
after ``max_jobs_per_horse`` jobs and after any job it had to stop by force.
"""

import logging
import os
import shutil
import signal
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import replace
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path
from typing import NoReturn

from pydantic import BaseModel

from factory.connections import RETRYABLE
from factory.events import TIMEOUT
from factory.jobs import InvocationRequest
from factory.store import executions
from worker.deadlines import Deadlines
from worker.joblog import logged_run
from worker.outcomes import RunOutcome
from worker.runner import InvocationRunner, WorkerRuntime
from worker.workspace import spare_workspace

logger = logging.getLogger(__name__)


class HorseOrder(BaseModel):
    """Run this request under this claim, within these deadlines."""

    request: InvocationRequest
    claim: executions.Claim
    deadlines: Deadlines


class HorseReply(BaseModel):
    """How the horse's run of one order ended."""

    job_id: str
    outcome: RunOutcome  # one the horse reports (``RunOutcome.reported``)
    error_code: str | None = None
    failure: str | None = None  # the run itself failed (not the prefab): why (outcome ``RUN_FAILED``)

    @property
    def spent(self) -> bool:
        """The horse should not run another job: a deadline interrupted it anywhere, or its run failed."""
        return self.error_code == TIMEOUT or self.outcome is RunOutcome.RUN_FAILED


class HorseGone(Exception):
    """The horse's end of the pipe closed: it died (or exited)."""


def describe_exit(status: int | None) -> str:
    """A wait status in words, for the job's ``WORKER_LOST`` message."""
    if status is None:
        return "its exit was not seen"
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"


class Horse:
    """The worker's handle on one work horse."""

    def __init__(self, pid: int, conn: Connection, spare: Path) -> None:
        self.pid = pid
        self.conn = conn
        self.spare = spare  # its spare workspace
        self.jobs = 0  # orders sent to it
        self.gone = False
        self.status: int | None = None  # its wait status once it is gone (None: not seen)

    @classmethod
    def fork(cls, runtime: WorkerRuntime, other_ends: Iterable[Connection]) -> "Horse":
        """Fork a horse; ``other_ends`` are the worker's ends of its other horses' pipes, closed in the child."""
        parent_end, child_end = Pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            parent_end.close()
            for conn in other_ends:
                conn.close()
            _child(runtime, child_end)
        child_end.close()
        spare = spare_workspace(runtime.settings.state_dir, pid)
        try:
            os.setpgid(pid, pid)  # the child does it too: whichever runs first, a kill finds the group
        except OSError:
            pass  # it did already, or died already
        logger.debug("forked work horse %d", pid)
        return cls(pid, parent_end, spare)

    def send(self, order: HorseOrder) -> None:
        """Hand the horse a job; :class:`HorseGone` if it is dead."""
        try:
            self.conn.send_bytes(order.model_dump_json().encode())
        except OSError as exc:
            raise HorseGone(str(exc)) from exc
        self.jobs += 1

    def reply(self, timeout_s: float) -> HorseReply | None:
        """The horse's reply, or None if none came within ``timeout_s``; :class:`HorseGone` if it died."""
        try:
            if not self.conn.poll(timeout_s):
                return None
            return HorseReply.model_validate_json(self.conn.recv_bytes())
        except (EOFError, OSError) as exc:
            raise HorseGone(str(exc)) from exc

    def exited(self) -> bool:
        """Whether the horse is gone (its status then in :attr:`status`), without waiting."""
        if not self.gone:
            self._collect(os.WNOHANG)
        return self.gone

    def wait(self) -> int | None:
        """Wait for a horse whose pipe closed (it is dying) and return its wait status."""
        if not self.gone:
            self._collect(0)
        return self.status

    def _collect(self, options: int) -> None:
        try:
            pid, status = os.waitpid(self.pid, options)
        except ChildProcessError:
            pid, status = self.pid, None
        if pid == 0:
            return
        self.gone, self.status = True, status
        self.conn.close()
        self._kill_group()  # whatever the prefab spawned does not outlive its horse
        shutil.rmtree(self.spare, ignore_errors=True)

    def kill(self) -> int | None:
        """SIGKILL the horse's process group and collect its wait status."""
        self._kill_group()
        self.conn.close()
        return self.wait()

    def retire(self) -> None:
        """Let an idle horse go: it exits when its pipe closes (collect it later with :meth:`exited`)."""
        self.conn.close()

    def _kill_group(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # nothing left in the group


def _child(runtime: WorkerRuntime, conn: Connection) -> NoReturn:
    code = 0
    try:
        os.setpgrp()
        signal.set_wakeup_fd(-1)  # the worker's: a signal of the horse must not wake the worker
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the worker's handler only feeds that descriptor
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        runtime = replace(runtime, spare_workspace=spare_workspace(runtime.settings.state_dir, os.getpid()))
        with suppress(*RETRYABLE):
            runtime.redis.ping()  # connect now, not during the first job
            runtime.wire.call("PING")
        _serve(runtime, conn)
    except BaseException:  # the horse must report why it stopped, whatever it was
        logger.exception("work horse %d failed", os.getpid())
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def _serve(runtime: WorkerRuntime, conn: Connection) -> None:
    """Run orders one at a time until the worker closes the pipe."""
    while True:
        try:
            raw = conn.recv_bytes()
        except EOFError:
            return
        order = HorseOrder.model_validate_json(raw)
        conn.send_bytes(_run(runtime, order).model_dump_json().encode())


def _run(runtime: WorkerRuntime, order: HorseOrder) -> HorseReply:
    job_id = order.request.job_id
    with logged_run(runtime.redis, order.request, order.claim.attempt, runtime.worker_name) as logged:
        try:
            runner = InvocationRunner(runtime, order.request, order.claim, order.deadlines, logged.log_started)
            report = runner.run()
        except Exception as exc:  # Redis gone for good, or a bug: the worker settles the job
            logger.exception("the job could not be run")
            failure = f"{type(exc).__name__}: {exc}"
            return HorseReply(job_id=job_id, outcome=RunOutcome.RUN_FAILED, failure=failure)
        logged.retrying = report.outcome is RunOutcome.RETRY_WRITTEN
        logged.closed_as, logged.error_code = report.closed_as, report.error_code
    return HorseReply(job_id=job_id, outcome=report.outcome, error_code=report.error_code)
