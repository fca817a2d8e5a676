"""Redis steps of the worker process that ride out an outage instead of ending the worker.

A step is retried with backoff while Redis is unreachable. A step with a deadline raises
:class:`Unreachable` once it has waited that long; one without gives up only when the worker is
stopping (the lost-job reaper of another process then finishes what it leaves).
"""

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from factory.connections import RETRYABLE

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_DELAY_S = 2.0


class Unreachable(Exception):
    """Redis stayed unreachable for a step that gave up waiting."""


class Steps:
    def __init__(self, stopping: Callable[[], bool]) -> None:
        self.stopping = stopping

    def retrying(self, what: str, step: Callable[[], T], job_id: str | None, give_up_after_s: float | None = None) -> T:
        """Run ``step`` (of job ``job_id``), retrying through an outage; :class:`Unreachable` once it gives up."""
        deadline = None if give_up_after_s is None else time.monotonic() + give_up_after_s
        delay_s = 0.1
        extra = {"job_id": job_id}
        while True:
            try:
                return step()
            except RETRYABLE as exc:
                if deadline is None and self.stopping() or deadline is not None and time.monotonic() > deadline:
                    logger.error("could not %s: Redis unreachable (%s)", what, exc, extra=extra)
                    raise Unreachable(what) from exc
                logger.warning(
                    "could not %s: Redis unreachable (%s); retrying in %.1f s", what, exc, delay_s, extra=extra
                )
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, MAX_DELAY_S)

    def quietly(self, what: str, step: Callable[[], object], job_id: str, give_up_after_s: float) -> None:
        """:meth:`retrying`, logging instead of raising when it gives up (for steps nothing waits on)."""
        try:
            self.retrying(what, step, job_id, give_up_after_s)
        except Unreachable:
            pass  # logged
