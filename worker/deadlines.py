"""Every deadline of one execution of a job, derived in one place from its request, RQ's job and the settings.

The worker process and its work horse each keep a clock on a running job; both read it here:

- **the job's timeout** (``request.timeout_s``): the horse gives the function that long from the
  moment it starts it, then stops it and ends the job with ``TIMEOUT`` (:meth:`Deadlines.function_by`).
  Making the runner ready (an environment built on a new machine) and fetching the input files
  do not count against it;
- **the backstop**: should the horse not stop by itself (a function that defeats its deadline), the
  worker kills it :attr:`Deadlines.backstop_s` after handing it the job, and the job ends with
  ``TIMEOUT`` too (:meth:`Deadlines.horse_by`). It is RQ's own timeout of the job, which the gateway
  sets to the job's timeout plus :data:`factory.enqueue.RQ_TIMEOUT_MARGIN_S`; a job RQ gives none
  gets the same margin;
- **an end from outside** (a cancel, a reaper): the horse has :data:`STOP_GRACE_S` to stop by itself
  (it does at its next event) before the worker kills it (:func:`stop_by`);
- **a shutdown**: the running job has ``shutdown_grace_s`` from the first stop signal, nothing from
  the second (:func:`shutdown_by`);
- **the heartbeat**: the worker refreshes the execution's every ``worker_heartbeat_s``
  (:func:`next_beat`); it lapses ``worker_lost_after_s`` after it was sent (``factory.reaper.deadline_ms``).

Instants are ``time.monotonic()`` seconds of the process that holds them; a :class:`Deadlines`
holds durations only, so it crosses the pipe to the horse unchanged.
"""

from dataclasses import dataclass

from factory.enqueue import RQ_TIMEOUT_MARGIN_S
from factory.jobs import InvocationRequest
from factory.settings import Settings

STOP_GRACE_S = 0.3  # how long a horse whose job ended from outside may take to stop by itself


@dataclass(frozen=True)
class Deadlines:
    """The two time limits of a job's run: the function's own and the worker's backstop behind it."""

    timeout_s: float  # the function's, from its start in the horse
    backstop_s: float  # the horse's, from the moment the worker hands it the job

    @classmethod
    def of(cls, request: InvocationRequest, rq_timeout_s: float | None) -> "Deadlines":
        """The deadlines of ``request``, given RQ's timeout of its job (None or 0: RQ has none)."""
        backstop_s = rq_timeout_s if rq_timeout_s else request.timeout_s + RQ_TIMEOUT_MARGIN_S
        return cls(timeout_s=request.timeout_s, backstop_s=backstop_s)

    def function_by(self, started: float) -> float:
        """When the horse stops a function it started at ``started``."""
        return started + self.timeout_s

    def horse_by(self, dispatched: float) -> float:
        """When the worker kills a horse it handed the job to at ``dispatched``."""
        return dispatched + self.backstop_s


def stop_by(now: float) -> float:
    """When the worker kills a horse whose job it saw ended from outside at ``now``."""
    return now + STOP_GRACE_S


def shutdown_by(settings: Settings, now: float, signals: int) -> float:
    """When a running job is stopped, after the ``signals``-th stop signal at ``now``."""
    return now + (settings.shutdown_grace_s if signals == 1 else 0.0)


def next_beat(settings: Settings, now: float) -> float:
    """When the worker next refreshes a running execution's heartbeat."""
    return now + settings.worker_heartbeat_s
