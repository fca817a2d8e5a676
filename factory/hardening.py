"""Keeping prefab code away from the factory's own processes.

Prefab runners run as a user of their own when the factory runs as root (docs/security.md), but
where it does not they share the factory's user. A process of the same user can read
another's ``/proc/<pid>/environ`` and memory, which hold ``REDIS_URL``, API keys and storage
credentials; a *non-dumpable* process's ``/proc`` files belong to root and it cannot be traced,
so :func:`make_undumpable` closes that door for the gateway, the workers (and their horses, which
inherit it) and the supervisor. Root keeps full access (as it would anyway).
"""

import ctypes
import logging

logger = logging.getLogger(__name__)

PR_SET_DUMPABLE = 4


def make_undumpable() -> None:
    """Mark this process non-dumpable (Linux); a no-op where ``prctl`` is missing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            logger.warning("cannot mark the process non-dumpable (errno %d)", ctypes.get_errno())
    except (OSError, AttributeError):
        logger.warning("prctl is not available: the process stays dumpable")
