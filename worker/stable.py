"""The worker's work horses: the one that runs the next job, its successor, and those let go.

A horse is replaced after ``max_jobs_per_horse`` jobs: its successor is forked while it runs its
last one, off the critical path. One that must not run another job (a deadline interrupted it)
is let go: the worker closes its pipe, it exits, and it is collected later. One that died or was
killed is replaced before the worker waits for its next job.
"""

import gc
import logging
import time

from worker.horse import Horse, describe_exit
from worker.runner import WorkerRuntime

logger = logging.getLogger(__name__)

DISMISS_WAIT_S = 5.0  # how long idle horses have to exit when the worker stops


class Stable:
    def __init__(self, runtime: WorkerRuntime, max_jobs: int) -> None:
        self.runtime = runtime
        self.max_jobs = max_jobs
        self._horse: Horse | None = None
        self._successor: Horse | None = None
        self._retired: list[Horse] = []  # let go, not yet collected

    def ready(self) -> Horse:
        """The horse for the next job, forked if there is none (or it died while idle)."""
        self._retired = [horse for horse in self._retired if not horse.exited()]
        if self._horse is not None and self._horse.exited():
            logger.warning("idle work horse %d died (%s)", self._horse.pid, describe_exit(self._horse.status))
            self._horse, self._successor = self._successor, None
        if self._horse is None:
            self._horse = self._fork()
        return self._horse

    def replace(self, dead: Horse) -> Horse:
        """A fresh horse in place of one found dead when handed a job."""
        dead.wait()
        self._horse = self._fork()
        return self._horse

    def dispatched(self, horse: Horse) -> None:
        """The horse took a job: if it is its last, fork its successor now, while it runs."""
        if horse.jobs >= self.max_jobs and self._successor is None:
            self._successor = self._fork()

    def done(self, horse: Horse, reusable: bool) -> None:
        """The horse's job is over: keep it if ``reusable`` and not spent, else let it go (or forget it, if gone)."""
        if reusable and not horse.gone and horse.jobs < self.max_jobs:
            return
        if not horse.gone:
            horse.retire()
            self._retired.append(horse)
        if horse is self._horse:
            self._horse, self._successor = self._successor, None

    def dismiss(self) -> None:
        """Let every horse go and wait for them (killing those that do not exit)."""
        for horse in (self._horse, self._successor):
            if horse is not None:
                horse.retire()
                self._retired.append(horse)
        self._horse = self._successor = None
        deadline = time.monotonic() + DISMISS_WAIT_S
        while self._retired and time.monotonic() < deadline:
            self._retired = [horse for horse in self._retired if not horse.exited()]
            time.sleep(0.01)
        for horse in self._retired:
            horse.kill()

    def _fork(self) -> Horse:
        # Objects alive now are never collected in the horse: its garbage collector then leaves
        # their pages shared with this process instead of copying them all on its first full pass.
        gc.freeze()
        return Horse.fork(self.runtime, [h.conn for h in (self._horse, self._successor) if h is not None])
