"""A hard per-job time limit that prefab code cannot swallow.

The seed's functions wrap their bodies in ``try/except Exception`` and would turn an ordinary
timeout exception into their own ``error`` event; :class:`DeadlineExceeded` derives from
``BaseException`` so it passes through them and the worker reports ``TIMEOUT`` itself.
SIGALRM interrupts even a function blocked in ``time.sleep`` or a socket read.
"""

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class DeadlineExceeded(BaseException):
    """The job ran past its timeout."""


def _raise_deadline(signum: int, frame: FrameType | None) -> None:
    raise DeadlineExceeded


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`DeadlineExceeded` in the block once ``seconds`` have passed."""
    previous = signal.signal(signal.SIGALRM, _raise_deadline)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
