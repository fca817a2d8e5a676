"""The event protocol: what a prefab yields, how it is stored and how it travels.

A prefab yields the seed's events ``{"type", "data", "error_code"?}``; any string ``type`` is
accepted (``start``, ``progress``, ``content``, ``done`` and ``error`` are the seed's; the
factory adds ``files`` and ``retry``), a bare ``str`` is a ``content`` event, and ``done`` or
``error`` ends the stream. Each event is stored as one line of compact JSON in the job's log;
its ``seq`` is its position in the log, counted from 1.

On the job's pub/sub channel one message carries a batch of consecutive events::

    <seq of the first event>\n<event JSON>\n<event JSON>...

Compact JSON never contains a raw newline, so the gateway splits a batch without parsing it.
"""

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict

TERMINAL_TYPES = frozenset({"done", "error"})

# Error codes the factory itself puts in a terminal ``error`` event.
UNEXPECTED_ERROR = "UNEXPECTED_ERROR"
TIMEOUT = "TIMEOUT"
CANCELED = "CANCELED"
WORKER_LOST = "WORKER_LOST"
INVALID_EVENT = "INVALID_EVENT"
MISSING_SECRET = "MISSING_SECRET"
EVENT_LIMIT = "EVENT_LIMIT_EXCEEDED"
INPUT_FILE_ERROR = "INPUT_FILE_ERROR"
OUTPUT_FILE_ERROR = "OUTPUT_FILE_ERROR"
SHUTDOWN = "WORKER_SHUTDOWN"
REDIS_UNAVAILABLE = "REDIS_UNAVAILABLE"
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
DEPLOYMENT_FAILED = "DEPLOYMENT_FAILED"


class InvalidEvent(ValueError):
    """A yielded value that is not an event."""


class Event(BaseModel):
    """One event, as a prefab yields it and a caller reads it (``data:`` of an SSE frame)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str
    data: Any = None
    error_code: str | None = None


class ErrorInfo(BaseModel):
    """The ``error`` of a failed job: the terminal event's code and message."""

    code: str
    message: str


def error_event(code: str, message: str) -> bytes:
    """Encoded terminal ``error`` event emitted by the factory itself."""
    return orjson.dumps({"type": "error", "data": message, "error_code": code})


def encode_yielded(value: object) -> tuple[str, bytes]:
    """Check a value a prefab yielded and return its type and compact JSON.

    Raises :class:`InvalidEvent` with a reason a prefab author can act on.
    """
    if isinstance(value, str):
        return "content", orjson.dumps({"type": "content", "data": value})
    if not isinstance(value, dict):
        raise InvalidEvent(f"yielded {type(value).__name__}, expected a dict with a string 'type'")
    event_type = value.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise InvalidEvent("event has no string 'type'")
    try:
        return event_type, orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise InvalidEvent(f"event of type {event_type!r} is not JSON-serialisable: {exc}") from exc


def accept_encoded(raw: bytes) -> tuple[str, bytes]:
    """:func:`encode_yielded` for a value already encoded as strict, compact JSON (a prefab runner's):
    the same checks, and the same bytes kept when they are an event (no second encoding)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not JSON: {exc}") from exc
    if isinstance(value, dict):
        event_type = value.get("type")
        if not isinstance(event_type, str) or not event_type:
            raise InvalidEvent("event has no string 'type'")
        return event_type, raw
    return encode_yielded(value)


def is_terminal(event_type: str) -> bool:
    """Whether an event of this type ends the stream."""
    return event_type in TERMINAL_TYPES


def decode(raw: bytes | str) -> Event:
    """Parse one stored event."""
    return Event.model_validate(orjson.loads(raw))


def split_batch(message: bytes) -> tuple[int, list[bytes]]:
    """Split a pub/sub batch into its first seq and its encoded events."""
    header, _, body = message.partition(b"\n")
    return int(header), body.split(b"\n")


TerminalStatus = Literal["finished", "failed", "canceled"]


def terminal_status(event: Event) -> TerminalStatus:
    """The job status a terminal event leaves behind."""
    if event.type == "done":
        return "finished"
    if event.error_code == CANCELED:
        return "canceled"
    return "failed"
