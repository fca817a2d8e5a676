"""Keeps job tokens out of uvicorn's access log: the ``token`` query parameter is logged redacted.

The README recommends ``?token=`` for browsers (an ``EventSource`` cannot send headers), so every
such request would otherwise write a live credential to the log.
"""

import logging
import re

ACCESS_LOGGER = "uvicorn.access"
REDACTED = "[redacted]"
# ``token=<value>`` as a query parameter, in any case.
_TOKEN = re.compile(r"([?&]token=)[^&#\s]*", re.IGNORECASE)


def redact(path: str) -> str:
    """``path`` with the value of every ``token`` query parameter replaced."""
    return _TOKEN.sub(r"\g<1>" + REDACTED, path)


class RedactTokens(logging.Filter):
    """Rewrites the path argument of uvicorn's access-log records (``client, method, path, version, status``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact(args[2]), *args[3:])
        return True


def redact_tokens() -> None:
    """Install the filter on uvicorn's access logger (once)."""
    access = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, RedactTokens) for f in access.filters):
        access.addFilter(RedactTokens())
