"""How one execution of a job ended, as the worker acts on it: one type from the horse's report to the release.

The work horse reports the first five members (``worker.runner`` finds them); the worker finds the
others itself, when the horse died or had to be killed (``worker.engine``). Each member says what
is left to do before the execution is released: whether the job still needs settling
(``factory.executions.settle``: it is requeued after a retry, or retried or ended with an error when
nothing closed its stream), whether that may retry it, and whether the horse may run another job.

The Redis side answers in its own terms (the append's ``factory.store.eventlog.Outcome``, the settle's
``factory.executions.Settled``); :meth:`RunOutcome.of_append` is the one place that reads an append's.
"""

from enum import StrEnum

from factory.store.eventlog import Outcome as AppendOutcome


class RunOutcome(StrEnum):
    """How one execution of a job ended."""

    # Reported by the horse, which ran the job to the end:
    CLOSED = "closed"
    """The job's stream has its terminal event: this run's own, or one written from outside (a cancel)."""
    RETRY_WRITTEN = "retry_written"
    """This run wrote a ``retry`` event: the job goes back on the queue for its next attempt."""
    SUPERSEDED = "superseded"
    """The job belongs to another execution now (this one was taken for lost), or no longer exists."""
    EVENTS_UNWRITTEN = "events_unwritten"
    """The run could not write all its events (the limit's terminal, Redis gone): the stream may be open."""
    RUN_FAILED = "run_failed"
    """The horse could not run the job at all (Redis gone for good, a bug in the factory)."""
    # Found by the worker, whose horse did not report:
    HORSE_DIED = "horse_died"
    """The horse died under the job (it crashed, the OOM killer, a SIGKILL from outside)."""
    KILLED_ENDED_ELSEWHERE = "killed_ended_elsewhere"
    """The stream was ended from outside (a cancel, a reaper) and the horse did not stop by itself: killed."""
    KILLED_FOR_SHUTDOWN = "killed_for_shutdown"
    """The worker is stopping and the job did not finish within the grace period: horse killed."""
    KILLED_PAST_BACKSTOP = "killed_past_backstop"
    """The job outran the worker's backstop behind its timeout (``worker.deadlines``): horse killed."""

    @classmethod
    def of_append(cls, outcome: AppendOutcome) -> "RunOutcome":
        """What the answer to an execution's last append (its terminal or retry event) leaves to do."""
        if outcome in (AppendOutcome.APPENDED, AppendOutcome.DUPLICATE, AppendOutcome.ALREADY_ENDED):
            return cls.CLOSED
        if outcome in (AppendOutcome.UNKNOWN_JOB, AppendOutcome.SUPERSEDED):
            return cls.SUPERSEDED
        return cls.EVENTS_UNWRITTEN  # LIMIT_REACHED: the limit's own terminal event is still to be written

    @property
    def reported(self) -> bool:
        """Whether the horse reported it (it ran to the end and cleaned up after the job)."""
        return self in _REPORTED

    @property
    def needs_settling(self) -> bool:
        """Whether the job may be left neither ended nor queued, or must be requeued: ``factory.executions.settle``."""
        return self not in (RunOutcome.CLOSED, RunOutcome.SUPERSEDED)

    @property
    def may_retry(self) -> bool:
        """Whether settling may give the job another attempt (a timeout is final)."""
        return self is not RunOutcome.KILLED_PAST_BACKSTOP


_REPORTED = frozenset(
    {
        RunOutcome.CLOSED,
        RunOutcome.RETRY_WRITTEN,
        RunOutcome.SUPERSEDED,
        RunOutcome.EVENTS_UNWRITTEN,
        RunOutcome.RUN_FAILED,
    }
)
