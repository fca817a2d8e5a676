"""Child processes that do not outlive their parent, even when it is SIGKILLed.

A supervisor that is killed outright (``kill -9``, the OOM killer) runs no cleanup, so its
children would keep running, orphaned: Redis holding its port, a gateway serving, workers taking
jobs. :func:`die_with_parent` is a ``preexec_fn`` that asks Linux (``PR_SET_PDEATHSIG``) to send
the child SIGTERM when the thread that started it dies; the child then stops as it would on any
SIGTERM (a worker finishing or handing back its job). Elsewhere than Linux it does nothing.
"""

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` tying the child to this process (None where the platform has no such thing)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the prctl: nobody will send the signal
            os._exit(1)

    return preexec
